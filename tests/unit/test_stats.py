"""The Diebold-Mariano test (HLN-corrected, Newey-West variance) against hand-checkable cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from training.stats import diebold_mariano, newey_west_variance

pytestmark = pytest.mark.unit


def test_dm_when_worked_by_hand_then_matches_the_formula() -> None:
    # d = [2, 0, 2, 0]: mean 1, deviations ±1; γ0 = 4/4 = 1, γ1 = (-1-1-1)/4 = -0.75
    # lag 1, Bartlett weight 1/2: V = 1 + 2 * 0.5 * (-0.75) = 0.25; DM = 1 / sqrt(0.25 / 4) = 4
    # HLN, h = 2: sqrt((4 + 1 - 4 + 2/4) / 4) = sqrt(3/8) → DM* = 4 * sqrt(3/8) = sqrt(6)
    res = diebold_mariano(np.array([2.0, 0.0, 2.0, 0.0]), np.zeros(4), lag=1)
    assert res.lrv == pytest.approx(0.25)
    assert res.stat == pytest.approx(np.sqrt(6.0))
    assert res.p_value == pytest.approx(stats.t.sf(np.sqrt(6.0), df=3))
    assert (res.mean_diff, res.lag, res.n) == (1.0, 1, 4)


def test_dm_when_lag_is_zero_then_it_is_the_one_sample_t_test_on_the_differences() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(2e-5, 1e-4, 500), rng.normal(0.0, 1e-4, 500)
    res = diebold_mariano(a, b, lag=0)
    t = stats.ttest_1samp(a - b, 0.0, alternative="greater")
    assert res.stat == pytest.approx(t.statistic, rel=1e-12)
    assert res.p_value == pytest.approx(t.pvalue, rel=1e-9)


def test_newey_west_when_computed_then_equals_a_direct_double_loop() -> None:
    rng = np.random.default_rng(1)
    d = rng.normal(size=60)
    lag = 3
    e = d - d.mean()
    n = len(d)
    gamma = [sum(e[t] * e[t - k] for t in range(k, n)) / n for k in range(lag + 1)]
    direct = gamma[0] + 2 * sum((1 - k / (lag + 1)) * gamma[k] for k in range(1, lag + 1))
    assert newey_west_variance(d, lag) == pytest.approx(direct, rel=1e-12)


def test_dm_when_the_challenger_is_clearly_better_or_worse_then_the_p_value_says_so_and_is_symmetric() -> (
    None
):
    rng = np.random.default_rng(2)
    champ = rng.normal(0.0, 1e-4, 2000)
    better = champ + rng.normal(3e-5, 5e-5, 2000)
    up, down = diebold_mariano(better, champ, lag=5), diebold_mariano(champ, better, lag=5)
    assert up.stat > 3 and up.p_value < 1e-3
    assert down.stat == pytest.approx(-up.stat) and down.p_value > 0.999
    assert up.p_value + down.p_value == pytest.approx(1.0)


def test_dm_when_the_differential_is_autocorrelated_then_the_hac_lag_widens_the_variance() -> None:
    rng = np.random.default_rng(3)
    eps = rng.normal(size=3005)
    d = 0.05 + np.convolve(
        eps, np.ones(6), mode="valid"
    )  # MA(5): what 6-bar overlapping forecasts give
    naive, hac = (
        diebold_mariano(d, np.zeros_like(d), lag=0),
        diebold_mariano(d, np.zeros_like(d), lag=5),
    )
    assert hac.lrv > 3 * naive.lrv  # the true long-run variance is 36 vs γ0 = 6
    assert 0 < hac.stat < naive.stat and hac.p_value > naive.p_value


def test_dm_when_inputs_are_degenerate_then_defined_answers_or_clear_errors() -> None:
    same = np.full(10, 1e-4)
    assert diebold_mariano(same, same).p_value == pytest.approx(
        0.5
    )  # identical P&L: no evidence either way
    assert diebold_mariano(same + 1e-5, same).p_value == 0.0  # better on every bar, by a constant
    with pytest.raises(ValueError, match="aligned"):
        diebold_mariano(np.zeros(5), np.zeros(6))
    with pytest.raises(ValueError, match="at least 3"):
        diebold_mariano(np.zeros(2), np.zeros(2))
    with pytest.raises(ValueError, match="lag"):
        diebold_mariano(np.zeros(5), np.zeros(5), lag=-1)
