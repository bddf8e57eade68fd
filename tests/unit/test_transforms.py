"""Feature transforms: no look-ahead, no NaN rows, documented warm-up."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from feature_repo.pipeline.transforms import FEATURE_NAMES, FEATURES, WARMUP_BARS, compute_features

pytestmark = pytest.mark.unit


def make_bars(n: int = 400, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    t = pd.date_range("2026-01-05 00:00", periods=n, freq="5min", tz="UTC")
    close = 1.1 * np.exp(np.cumsum(rng.normal(0, 3e-4, n)))
    open_ = np.concatenate([[close[0]], close[:-1]])
    high = np.maximum(open_, close) * (1 + rng.uniform(0, 2e-4, n))
    low = np.minimum(open_, close) * (1 - rng.uniform(0, 2e-4, n))
    return pd.DataFrame(
        {
            "time": t,
            "close_time": t + pd.Timedelta(minutes=5),
            "symbol": "EURUSD",
            "open": open_,
            "high": high,
            "low": low,
            "close": close,
            "tick_volume": rng.integers(50, 500, n),
            "spread": rng.integers(0, 20, n).astype("int32"),
        }
    )


def test_features_when_history_is_cut_at_bar_t_then_bar_t_features_are_unchanged() -> None:
    bars = make_bars()
    full = compute_features(bars, 1e-5).set_index("event_timestamp")
    for cut in (WARMUP_BARS + 5, 150, 399):
        part = compute_features(bars.iloc[: cut + 1], 1e-5).set_index("event_timestamp")
        t = part.index[-1]
        np.testing.assert_allclose(part.loc[t, list(FEATURE_NAMES)].astype(float), full.loc[t, list(FEATURE_NAMES)].astype(float), rtol=0, atol=0)


def test_features_when_a_future_bar_changes_then_past_features_do_not() -> None:
    bars = make_bars()
    changed = bars.copy()
    changed.loc[300:, ["open", "high", "low", "close"]] *= 1.05
    a = compute_features(bars, 1e-5).set_index("event_timestamp")
    b = compute_features(changed, 1e-5).set_index("event_timestamp")
    before = a.index[a.index <= bars["close_time"].iloc[299]]
    pd.testing.assert_frame_equal(a.loc[before], b.loc[before])


def test_features_event_timestamp_is_the_bar_close_and_warmup_rows_are_dropped() -> None:
    bars = make_bars()
    f = compute_features(bars, 1e-5)
    assert f["event_timestamp"].iloc[0] == bars["close_time"].iloc[WARMUP_BARS - 1]
    assert not f[list(FEATURE_NAMES)].isna().any().any()
    assert len(f) == len(bars) - WARMUP_BARS + 1


def test_feature_catalogue_is_documented_and_around_ten_features() -> None:
    assert 10 <= len(FEATURES) <= 16
    assert all(f.formula and f.window >= 1 for f in FEATURES)
    assert max(f.window for f in FEATURES) == WARMUP_BARS
