"""The vectorised cost-aware backtest: costs per unit traded, metrics, CIs and baselines."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training.backtest import (
    Costs,
    SpreadVolSlippage,
    backtest,
    baselines,
    bootstrap_ci,
    max_drawdown,
    momentum_positions,
    pnl_frame,
    positions_from_proba,
)

pytestmark = pytest.mark.unit


def window(n: int = 500, drift: float = 0.0, seed: int = 1, spread: float = 1e-4) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    t = pd.date_range("2026-01-05 00:05", periods=n, freq="5min", tz="UTC")
    return pd.DataFrame(
        {
            "symbol": "EURUSD",
            "event_timestamp": t,
            "ret_next": rng.normal(drift, 5e-4, n),
            "spread_ret": spread,
        }
    )


def test_backtest_when_always_flat_then_nothing_is_earned_or_paid() -> None:
    m = backtest(
        window(),
        np.zeros(500, dtype=np.int64),
        "M5",
        Costs(commission=1e-4, slippage=SpreadVolSlippage()),
    )
    assert (
        m["net_return"] == 0.0
        and m["trades"] == 0
        and m["exposure"] == 0.0
        and m["max_drawdown"] == 0.0
    )


def test_backtest_when_one_round_trip_then_it_pays_spread_commission_and_slippage_once() -> None:
    ds = window(10)
    ds["ret_next"] = 0.0
    pos = np.array([0, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    m = backtest(ds, pos, "M5", Costs(commission=2e-4))
    # in and out: the whole spread (1e-4) plus the round-trip commission (2e-4)
    assert m["net_return"] == pytest.approx(-(1e-4 + 2e-4))
    assert m["trades"] == 2 and m["turnover"] == 2
    slip = backtest(ds, pos, "M5", Costs(slippage=SpreadVolSlippage(spread_k=0.5, vol_k=0.0)))
    assert slip["net_return"] == pytest.approx(-(1e-4 + 2 * 0.5 * 1e-4))


def test_backtest_when_reversing_then_two_units_are_traded() -> None:
    ds = window(4)
    f = pnl_frame(ds, np.array([1, -1, -1, 0]), "M5")
    assert f["turnover"].tolist() == [1, 2, 0, 1]


def test_backtest_when_swap_is_charged_then_holding_costs_per_bar() -> None:
    ds = window(288)
    ds["ret_next"] = 0.0
    m = backtest(ds, np.ones(288, dtype=np.int64), "M5", Costs(swap_long_per_day=-1e-4))
    assert m["net_return"] == pytest.approx(
        -1e-4 - 1e-4 / 2, rel=1e-6
    )  # one day of swap + half spread in


def test_metrics_when_a_known_series_then_drawdown_sharpe_and_profit_factor_match() -> None:
    assert max_drawdown(np.array([0.01, -0.02, 0.005, -0.01, 0.03])) == pytest.approx(0.025)
    ds = window(1000, drift=2e-4, seed=4, spread=0.0)
    m = backtest(ds, np.ones(1000, dtype=np.int64), "M5")
    r = ds["ret_next"].to_numpy()
    assert m["sharpe"] == pytest.approx(r.mean() / r.std(ddof=1) * np.sqrt(252 * 288))
    assert m["profit_factor"] == pytest.approx(r[r > 0].sum() / -r[r < 0].sum())
    assert m["sharpe_ci_low"] < m["sharpe"] < m["sharpe_ci_high"]
    assert m["sortino"] > m["sharpe"] > 0


def test_bootstrap_ci_when_the_series_is_longer_then_the_interval_is_narrower() -> None:
    rng = np.random.default_rng(0)
    short = bootstrap_ci(rng.normal(0, 1, 200), lambda m: m.mean(axis=1))
    long = bootstrap_ci(rng.normal(0, 1, 5000), lambda m: m.mean(axis=1))
    assert (long[1] - long[0]) < (short[1] - short[0]) / 3


def test_baselines_when_market_trends_up_then_buy_and_hold_beats_flat_and_momentum_goes_long() -> (
    None
):
    ds = window(600, drift=3e-4, seed=2, spread=1e-5)
    b = baselines(ds, "M5", Costs())
    assert set(b) == {"flat", "buy_and_hold", "momentum"}
    assert b["buy_and_hold"]["net_return"] > b["flat"]["net_return"] == 0.0
    assert (momentum_positions(ds)[50:] == 1).mean() > 0.8


def test_momentum_when_computed_then_it_uses_only_past_returns() -> None:
    ds = window(100)
    a = momentum_positions(ds)
    ds2 = ds.copy()
    ds2.loc[60:, "ret_next"] = 1.0  # future returns from bar 60 on
    b = momentum_positions(ds2)
    assert (a[:61] == b[:61]).all()  # bar 60's own return is ret_next[59]: unchanged


def test_positions_when_confidence_is_low_then_flat() -> None:
    p = np.array([[0.2, 0.3, 0.5], [0.6, 0.2, 0.2], [0.34, 0.33, 0.33]])
    assert positions_from_proba(p, 0.45).tolist() == [1, -1, 0]
