"""Feature transforms: no look-ahead, no NaN rows, documented warm-up, families, sequences."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from feature_repo.pipeline.transforms import (
    FEATURE_NAMES,
    FEATURES,
    SEQ_CHANNELS,
    SEQ_LEN,
    SEQ_WARMUP_BARS,
    SPECS,
    STREAM_BARS,
    TREND_V1_FEATURES,
    WARMUP_BARS,
    XS_TOLERANCE_BARS,
    compute_features,
    compute_sequences,
    feature_frame,
    last_row,
    last_sequence,
    select_rows,
    sequence_channels,
    sequence_to_array,
)

pytestmark = pytest.mark.unit


def make_bars(
    n: int = 400, seed: int = 3, symbol: str = "EURUSD", start: str = "2026-01-05 00:00"
) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    t = pd.date_range(start, periods=n, freq="5min", tz="UTC")
    close = 1.1 * np.exp(np.cumsum(rng.normal(0, 3e-4, n)))
    open_ = np.concatenate([[close[0]], close[:-1]])
    high = np.maximum(open_, close) * (1 + rng.uniform(0, 2e-4, n))
    low = np.minimum(open_, close) * (1 - rng.uniform(0, 2e-4, n))
    return pd.DataFrame(
        {
            "time": t,
            "close_time": t + pd.Timedelta(minutes=5),
            "symbol": symbol,
            "open": open_,
            "high": high,
            "low": low,
            "close": close,
            "tick_volume": rng.integers(50, 500, n),
            "spread": rng.integers(0, 20, n).astype("int32"),
        }
    )


def _others(n: int = 400) -> dict[str, pd.DataFrame]:
    return {
        "GBPUSD": make_bars(n, seed=11, symbol="GBPUSD"),
        "USDJPY": make_bars(n, seed=12, symbol="USDJPY"),
    }


def test_features_when_history_is_cut_at_bar_t_then_bar_t_features_are_unchanged_to_the_bit() -> (
    None
):
    bars, others = make_bars(), _others()
    full = compute_features(bars, 1e-5, others).set_index("event_timestamp")
    for cut in (WARMUP_BARS + 5, 250, 399):
        # the per-bar path's view: only the last STREAM_BARS bars of every symbol
        lo = max(0, cut + 1 - STREAM_BARS)
        part = compute_features(
            bars.iloc[lo : cut + 1],
            1e-5,
            {k: v.iloc[max(0, lo - XS_TOLERANCE_BARS) : cut + 1] for k, v in others.items()},
        ).set_index("event_timestamp")
        t = part.index[-1]
        assert t == bars["close_time"].iloc[cut]
        np.testing.assert_array_equal(
            part.loc[t, list(FEATURE_NAMES)].astype(float),
            full.loc[t, list(FEATURE_NAMES)].astype(float),
        )


def test_features_when_a_future_bar_changes_then_past_features_do_not() -> None:
    bars, others = make_bars(), _others()
    changed = bars.copy()
    changed.loc[300:, ["open", "high", "low", "close"]] *= 1.05
    others_changed = {
        k: v.assign(close=v["close"].where(v.index < 300, v["close"] * 0.9))
        for k, v in others.items()
    }
    a = compute_features(bars, 1e-5, others).set_index("event_timestamp")
    b = compute_features(changed, 1e-5, others_changed).set_index("event_timestamp")
    before = a.index[a.index <= bars["close_time"].iloc[299]]
    pd.testing.assert_frame_equal(a.loc[before], b.loc[before])
    assert not a.loc[a.index > bars["close_time"].iloc[299]].equals(
        b.loc[b.index > bars["close_time"].iloc[299]]
    )


def test_features_event_timestamp_is_the_bar_close_and_warmup_rows_are_dropped() -> None:
    bars = make_bars()
    f = compute_features(bars, 1e-5, _others())
    assert f["event_timestamp"].iloc[0] == bars["close_time"].iloc[WARMUP_BARS - 1]
    assert not f[list(FEATURE_NAMES)].isna().any().any()
    assert len(f) == len(bars) - WARMUP_BARS + 1


def test_each_feature_first_valid_bar_is_its_documented_window() -> None:
    frame = feature_frame(make_bars(), 1e-5, _others())
    for f in FEATURES:
        col = frame[f.name]
        assert col.iloc[: f.window - 1].isna().all(), f"{f.name} defined before its window"
        assert col.iloc[f.window - 1 :].notna().all(), f"{f.name} undefined after its window"


def test_feature_catalogue_has_40_plus_documented_features_in_every_issue_family() -> None:
    assert len(FEATURES) >= 40 and len(set(FEATURE_NAMES)) == len(FEATURE_NAMES)
    assert all(f.formula and f.window >= 1 and f.family for f in FEATURES)
    assert max(f.window for f in FEATURES) == WARMUP_BARS
    families = {f.family for f in FEATURES}
    assert {
        "returns",
        "volatility",
        "momentum",
        "macd",
        "bollinger",
        "stochastic",
        "adx",
        "volume",
        "spread",
        "session",
        "calendar",
        "cross_symbol",
        "regime",
    } <= families
    vol = {f.name for f in FEATURES if f.family == "volatility"}
    assert {"vol_24", "park_24", "gk_24", "atr_14_rel"} <= vol


def test_trend_v1_keeps_the_13_original_features_and_its_own_warmup() -> None:
    assert TREND_V1_FEATURES == (
        "ret_1",
        "ret_6",
        "ret_24",
        "vol_24",
        "atr_14_rel",
        "rsi_14",
        "sma_ratio_12_48",
        "bb_pos_20",
        "range_atr",
        "spread_atr",
        "tickvol_z_48",
        "hour_sin",
        "hour_cos",
    )
    bars = make_bars()
    v1 = compute_features(bars, 1e-5, names=TREND_V1_FEATURES)
    assert list(v1.columns) == ["symbol", "event_timestamp", *TREND_V1_FEATURES]
    assert v1["event_timestamp"].iloc[0] == bars["close_time"].iloc[47]
    full = compute_features(bars, 1e-5).set_index("event_timestamp")
    common = v1.set_index("event_timestamp").index.intersection(full.index)
    np.testing.assert_array_equal(
        v1.set_index("event_timestamp").loc[common].to_numpy(object)[:, 1:],
        full.loc[common, list(TREND_V1_FEATURES)].to_numpy(object),
    )


def test_cross_symbol_when_the_other_symbol_is_a_copy_then_correlation_is_one_and_strength_zero() -> (
    None
):
    bars = make_bars()
    f = compute_features(bars, 1e-5, {"COPY": bars.assign(symbol="COPY")})
    np.testing.assert_allclose(f["xs_corr_48"], 1.0, atol=1e-12)
    np.testing.assert_allclose(f[["xs_rs_6", "xs_rs_24"]], 0.0, atol=0)
    assert (f["xs_rank_24"] == 0.5).all()


def test_cross_symbol_without_other_symbols_takes_neutral_values() -> None:
    f = compute_features(make_bars(), 1e-5)
    assert (
        (f["xs_corr_48"] == 0).all()
        and (f["xs_rs_24"] == 0).all()
        and (f["xs_rank_24"] == 0.5).all()
    )


def test_cross_symbol_when_the_other_symbol_has_a_long_gap_then_those_rows_are_dropped_not_nan() -> (
    None
):
    bars = make_bars()
    other = make_bars(seed=11, symbol="GBPUSD")
    gap = other.drop(index=range(200, 200 + XS_TOLERANCE_BARS + 2))
    f = compute_features(bars, 1e-5, {"GBPUSD": gap})
    assert not f.isna().any().any()
    dropped = set(bars["close_time"].iloc[WARMUP_BARS - 1 :]) - set(f["event_timestamp"])
    assert dropped and all(
        bars["close_time"].iloc[200] <= t <= bars["close_time"].iloc[260] for t in dropped
    )
    # a short gap (within the tolerance) is bridged by the other's last close
    short = other.drop(index=[200])
    assert len(compute_features(bars, 1e-5, {"GBPUSD": short})) == len(bars) - WARMUP_BARS + 1


def test_zscores_when_the_spread_is_constant_then_zero_and_the_rows_are_kept() -> None:
    bars = make_bars().assign(spread=np.int32(12))
    f = compute_features(bars, 1e-5)
    assert len(f) == len(bars) - WARMUP_BARS + 1
    assert (f["spread_z_48"] == 0).all()


@pytest.mark.parametrize(
    "open_utc,london,newyork,tokyo,sydney",
    [
        ("2026-01-14 08:00", 1, 0, 1, 0),  # winter: London 08:00 GMT; Tokyo 17:00
        ("2026-07-14 07:00", 1, 0, 1, 0),  # summer: London 08:00 BST = 07:00 UTC; Tokyo 16:00
        ("2026-01-14 13:00", 1, 1, 0, 0),  # New York 08:00 EST
        ("2026-01-14 01:00", 0, 0, 1, 1),  # Tokyo 10:00, Sydney 12:00 AEDT
        ("2026-01-14 22:00", 0, 0, 0, 1),  # Sydney 09:00 AEDT
        ("2026-01-14 19:00", 0, 1, 0, 0),  # New York 14:00; Sydney 06:00
    ],
)
def test_session_flags_follow_local_hours_with_dst(
    open_utc: str, london: int, newyork: int, tokyo: int, sydney: int
) -> None:
    bars = make_bars(n=2, start=open_utc)
    row = feature_frame(bars, 1e-5).iloc[0]
    assert (row["sess_london"], row["sess_newyork"], row["sess_tokyo"], row["sess_sydney"]) == (
        london,
        newyork,
        tokyo,
        sydney,
    )


def test_sequence_is_the_last_64_channel_vectors_oldest_first_as_float32() -> None:
    bars = make_bars()
    seq = compute_sequences(bars, 1e-5)
    assert seq["event_timestamp"].iloc[0] == bars["close_time"].iloc[SEQ_WARMUP_BARS - 1]
    assert len(seq) == len(bars) - SEQ_WARMUP_BARS + 1
    ch = sequence_channels(bars, 1e-5).astype(np.float32)
    for i in (0, 50, len(seq) - 1):
        t = int(np.flatnonzero(bars["close_time"] == seq["event_timestamp"].iloc[i])[0])
        arr = sequence_to_array(seq["seq"].iloc[i], len(SEQ_CHANNELS))
        assert arr.dtype == np.float32 and arr.shape == (SEQ_LEN, len(SEQ_CHANNELS))
        np.testing.assert_array_equal(
            arr, ch[t - SEQ_LEN + 1 : t + 1]
        )  # newest row = the event bar


def test_sequence_when_history_is_cut_then_the_last_window_is_unchanged_to_the_bit() -> None:
    bars = make_bars()
    full = compute_sequences(bars, 1e-5).set_index("event_timestamp")
    for cut in (SEQ_WARMUP_BARS + 3, 399):
        part = compute_sequences(
            bars.iloc[max(0, cut + 1 - STREAM_BARS) : cut + 1], 1e-5
        ).set_index("event_timestamp")
        t = part.index[-1]
        np.testing.assert_array_equal(part.loc[t, "seq"], full.loc[t, "seq"])


def test_sequence_to_array_rejects_a_wrong_length() -> None:
    with pytest.raises(ValueError):
        sequence_to_array(np.zeros(SEQ_LEN * len(SEQ_CHANNELS) - 1))


def test_specs_index_every_feature() -> None:
    assert set(SPECS) == set(FEATURE_NAMES)


def test_per_bar_helpers_when_given_the_stream_window_then_equal_the_batch_rows_to_the_bit() -> (
    None
):
    bars, others = make_bars(), _others()
    batch = select_rows(feature_frame(bars, 1e-5, others)).set_index("event_timestamp")
    seqs = compute_sequences(bars, 1e-5).set_index("event_timestamp")
    for cut in (WARMUP_BARS + 1, 333, 399):
        lo = max(0, cut + 1 - STREAM_BARS)
        own = bars.iloc[lo : cut + 1].reset_index(drop=True)
        row = last_row(
            feature_frame(own, 1e-5, {k: v.iloc[: cut + 1] for k, v in others.items()}),
            FEATURE_NAMES,
        )
        assert row is not None and row["event_timestamp"] == bars["close_time"].iloc[cut]
        assert [row[n] for n in FEATURE_NAMES] == batch.loc[
            row["event_timestamp"], list(FEATURE_NAMES)
        ].tolist()
        np.testing.assert_array_equal(
            last_sequence(own, 1e-5), seqs.loc[row["event_timestamp"], "seq"]
        )
    assert last_row(feature_frame(bars.iloc[: WARMUP_BARS - 1], 1e-5), FEATURE_NAMES) is None
    assert last_sequence(bars.iloc[: SEQ_WARMUP_BARS - 1], 1e-5) is None


@pytest.mark.parametrize("start", ["2026-03-25 00:00", "2026-10-20 00:00", "2026-01-05 00:00"])
def test_session_flags_over_a_dst_change_equal_a_full_time_zone_conversion(start: str) -> None:
    bars = make_bars(
        n=3000, start=start
    )  # ~10 days: the London/New York DST changes fall inside two of them
    frame = feature_frame(bars, 1e-5)
    for col, tz, a, b in (
        ("sess_london", "Europe/London", 8, 17),
        ("sess_newyork", "America/New_York", 8, 17),
        ("sess_sydney", "Australia/Sydney", 7, 16),
    ):
        hour = bars["time"].dt.tz_convert(tz).dt.hour
        np.testing.assert_array_equal(
            frame[col].to_numpy(), ((hour >= a) & (hour < b)).astype(float).to_numpy()
        )
        for i in range(150, 3000, 97):  # the per-bar path's short spans
            short = feature_frame(bars.iloc[i - 150 : i].reset_index(drop=True), 1e-5)
            assert short[col].iloc[-1] == frame[col].iloc[i - 1]
