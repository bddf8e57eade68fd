"""Labels look forward from the bar close, net of the spread, and never past the data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.unit.test_transforms import make_bars
from training.labels import make_labels

pytestmark = pytest.mark.unit


def _with_weekend(bars: pd.DataFrame, at: int = 50, hours: int = 48) -> pd.DataFrame:
    """``bars`` with every bar from index ``at`` on moved ``hours`` later: a market gap, so a
    bar's row position and its time no longer agree."""
    out = bars.copy()
    out.loc[at:, ["time", "close_time"]] += pd.Timedelta(hours=hours)
    return out


def test_labels_when_built_then_each_window_runs_from_its_own_close_to_the_close_h_bars_later() -> (
    None
):
    bars = _with_weekend(make_bars(100))
    h = 6

    lab = make_labels(bars, horizon=h, point=1e-5)

    closes = bars.set_index("close_time")["close"]
    later = pd.Series(bars["close_time"].shift(-h).to_numpy(), index=bars["close_time"])
    nxt = pd.Series(bars["close_time"].shift(-1).to_numpy(), index=bars["close_time"])
    t = lab["event_timestamp"]
    assert t.isin(bars["close_time"]).all()  # a row per bar close, nothing else
    assert (lab["label_end"].to_numpy() == later.loc[t].to_numpy()).all()
    np.testing.assert_allclose(
        lab["fwd_ret"], np.log(closes.loc[lab["label_end"]].to_numpy() / closes.loc[t].to_numpy()),
        rtol=0, atol=1e-15,
    )  # fmt: skip
    np.testing.assert_allclose(
        lab["ret_next"], np.log(closes.loc[nxt.loc[t]].to_numpy() / closes.loc[t].to_numpy()),
        rtol=0, atol=1e-15,
    )  # fmt: skip
    # the window over the gap still spans h bars, not h x 5 minutes
    assert (lab["label_end"] - t).max() == pd.Timedelta(hours=48, minutes=5 * h)
    assert set(t) == set(bars["close_time"].iloc[:-h])


def test_labels_when_move_is_inside_the_spread_then_flat() -> None:
    bars = make_bars(20)
    bars["close"] = 1.10000
    bars.loc[10, "close"] = 1.10001  # +0.9 bp, below a 2-point spread (1.8 bp)
    bars["spread"] = 2
    lab = make_labels(bars, horizon=1, point=1e-5)
    assert (lab["label"] == 1).all()


def test_labels_when_move_beats_the_spread_then_long_or_short() -> None:
    bars = make_bars(10)
    bars["spread"] = 1
    bars["close"] = [1.1, 1.1010, 1.1, 1.0990, 1.1, 1.1, 1.1, 1.1, 1.1, 1.1]
    lab = make_labels(bars, horizon=1, point=1e-5)
    assert lab["label"].tolist()[:4] == [2, 0, 0, 2]
    np.testing.assert_allclose(lab["fwd_ret"].iloc[0], np.log(1.1010 / 1.1))


def test_labels_when_commission_is_charged_then_the_dead_zone_widens() -> None:
    bars = make_bars(10)
    bars["spread"] = 1
    bars["close"] = [1.1, 1.1010, 1.1, 1.0990, 1.1, 1.1, 1.1, 1.1, 1.1, 1.1]
    # a 9 bp move beats a 0.1 bp spread but not spread + 10 bp commission
    lab = make_labels(bars, horizon=1, point=1e-5, commission=1e-3)
    assert (lab["label"] == 1).all()
    np.testing.assert_allclose(
        lab["cost"], bars["spread"].iloc[:9] * 1e-5 / bars["close"].iloc[:9] + 1e-3
    )


def test_labels_when_a_later_bar_changes_then_only_the_labels_whose_window_holds_it_change() -> (
    None
):
    bars = _with_weekend(make_bars(200), at=147)
    base = make_labels(bars, horizon=6, point=1e-5).set_index("event_timestamp")
    bumped = bars.copy()
    bumped.loc[150, ["close", "high"]] *= 1.01

    after = make_labels(bumped, horizon=6, point=1e-5).set_index("event_timestamp")

    changed = base.index[(base["fwd_ret"] != after["fwd_ret"]).to_numpy()]
    # bar 150's close ends the window of the bar 6 bars before it and starts its own
    assert set(changed) == {bars.loc[144, "close_time"], bars.loc[150, "close_time"]}


def test_triple_barrier_when_price_jumps_up_then_long_and_down_then_short() -> None:
    bars = make_bars(120)
    up, down = bars.copy(), bars.copy()
    up.loc[101:, ["open", "high", "low", "close"]] *= 1.02
    down.loc[101:, ["open", "high", "low", "close"]] *= 0.98
    lab_up = make_labels(up, horizon=6, point=1e-5, method="triple_barrier", tp=1.0, sl=1.0)
    lab_dn = make_labels(down, horizon=6, point=1e-5, method="triple_barrier", tp=1.0, sl=1.0)
    t100 = bars["close_time"].iloc[100]
    assert lab_up.set_index("event_timestamp").loc[t100, "label"] == 2
    assert lab_dn.set_index("event_timestamp").loc[t100, "label"] == 0


def test_triple_barrier_when_a_bar_is_changed_then_labels_before_its_horizon_are_unchanged() -> (
    None
):
    bars = make_bars(200)
    base = make_labels(bars, horizon=6, point=1e-5, method="triple_barrier")
    bumped = bars.copy()
    bumped.loc[150, ["close", "high", "low", "open"]] *= 1.05
    after = make_labels(bumped, horizon=6, point=1e-5, method="triple_barrier").set_index(
        "event_timestamp"
    )
    base = base.set_index("event_timestamp")
    cut = bars["close_time"].iloc[143]  # bars <= 143 never see bar 150 (forward window of 6)
    common = base.index[base.index <= cut]
    # the ATR unit of bar t uses bars <= t, outcomes use bars > t: bars 150+ only affect 144..149 and later
    assert (base.loc[common, "label"] == after.loc[common, "label"]).all()
    assert (base["label"] != after["label"].reindex(base.index)).any()
