"""Labels look forward from the bar close, net of the spread, and never past the data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.unit.test_transforms import make_bars
from training.labels import make_labels

pytestmark = pytest.mark.unit


def test_labels_when_built_then_label_end_is_h_bars_after_the_feature_time() -> None:
    bars = make_bars(100)
    lab = make_labels(bars, horizon=6, point=1e-5)
    assert len(lab) == len(bars) - 6
    assert (lab["label_end"] - lab["event_timestamp"] == pd.Timedelta(minutes=30)).all()
    assert (lab["event_timestamp"] == bars["close_time"].iloc[: len(lab)].to_numpy()).all()


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


def test_labels_when_a_later_bar_changes_then_only_earlier_labels_within_the_horizon_change() -> (
    None
):
    bars = make_bars(200)
    base = make_labels(bars, horizon=6, point=1e-5)
    bumped = bars.copy()
    bumped.loc[150, ["close", "high"]] *= 1.01
    after = make_labels(bumped, horizon=6, point=1e-5)
    changed = np.flatnonzero((base["fwd_ret"] != after["fwd_ret"]).to_numpy())
    # bar 150's close ends bar 144's 6-bar window and starts its own; no earlier bar sees it
    assert set(changed.tolist()) == {144, 150}


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
