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
