"""Feature transforms: the single code path behind the offline and the online store.

Every feature of bar *t* is computed at that bar's close from bars ``t-W+1 … t`` only (``W``
= the feature's ``window``), with fixed-length windows (no recursive EMAs), so a value does
not depend on where the history happens to start and never on a later bar: the batch path
(days of history) and the per-bar streaming path (the last :data:`STREAM_BARS` bars) agree to
the bit. The Feast ``event_timestamp`` of a row is the bar's close time. Rows still inside
their warm-up (any requested feature undefined) are dropped, never materialised as NaN; the
first valid bar of feature ``f`` is bar index ``f.window - 1`` of a gap-free history.

Three outputs, one per Feast feature view:

- ``trend_fv`` — the 13 original features (:data:`TREND_V1_FEATURES`, service ``trend_v1``);
- ``trend_v2_fv`` — all :data:`FEATURES` (46, in families), service ``trend_v2``;
- ``bar_sequence_fv`` — field ``seq``: the last :data:`SEQ_LEN` bars × :data:`SEQ_CHANNELS`
  as one float32 array, row-major ``[bar][channel]``, oldest bar first, newest = the bar
  whose close is the row's event time (see :func:`compute_sequences`).

Cross-symbol features need the other configured symbols' bars: each other symbol's close is
aligned to this symbol's bar closes as of that close (its last bar closing at or before it,
at most :data:`XS_TOLERANCE_BARS` bars earlier; beyond that the value is undefined and the row
is dropped). With no other symbol configured they take their neutral values (0, 0, 0.5).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class FeatureSpec:
    """One tabular feature: its formula, the bars of history it needs and its family."""

    name: str
    formula: str
    window: int  # bars of history the value needs, this bar included (first valid bar = window - 1)
    family: str


_R = "log(close_t / close_t-{k})"
FEATURES: tuple[FeatureSpec, ...] = (
    # --- the 13 originals (trend_v1): names, formulas and windows unchanged -----------------
    FeatureSpec("ret_1", "log(close_t / close_t-1)", 2, "returns"),
    FeatureSpec("ret_6", "log(close_t / close_t-6)", 7, "returns"),
    FeatureSpec("ret_24", "log(close_t / close_t-24)", 25, "returns"),
    FeatureSpec("vol_24", "stdev of ret_1 over 24 bars", 25, "volatility"),
    FeatureSpec("atr_14_rel", "mean true range over 14 bars / close", 15, "volatility"),
    FeatureSpec(
        "rsi_14",
        "Cutler RSI: 100 * mean gain / (mean gain + mean loss), 14 bars, in [0, 1]",
        15,
        "momentum",
    ),
    FeatureSpec("sma_ratio_12_48", "SMA12 / SMA48 - 1", 48, "momentum"),
    FeatureSpec("bb_pos_20", "(close - SMA20) / (2 * stdev20 of close)", 20, "bollinger"),
    FeatureSpec("range_atr", "(high - low) / ATR14", 15, "volatility"),
    FeatureSpec("spread_atr", "spread * point / ATR14", 15, "spread"),
    FeatureSpec("tickvol_z_48", "(tick_volume - mean48) / stdev48", 48, "volume"),
    FeatureSpec("hour_sin", "sin(2π · UTC hour of the close / 24)", 1, "calendar"),
    FeatureSpec("hour_cos", "cos(2π · UTC hour of the close / 24)", 1, "calendar"),
    # --- returns -----------------------------------------------------------------------------
    FeatureSpec("ret_3", _R.format(k=3), 4, "returns"),
    FeatureSpec("ret_12", _R.format(k=12), 13, "returns"),
    FeatureSpec("ret_48", _R.format(k=48), 49, "returns"),
    # --- volatility --------------------------------------------------------------------------
    FeatureSpec("vol_48", "stdev of ret_1 over 48 bars (realised volatility)", 49, "volatility"),
    FeatureSpec("park_24", "Parkinson: sqrt(mean24(ln(high/low)^2) / (4 ln 2))", 24, "volatility"),
    FeatureSpec(
        "gk_24",
        "Garman-Klass: sqrt(max(0, mean24(0.5 ln(high/low)^2 - (2 ln 2 - 1) ln(close/open)^2)))",
        24,
        "volatility",
    ),
    FeatureSpec("vol_ratio_12_48", "stdev12(ret_1) / stdev48(ret_1)", 49, "volatility"),
    # --- MACD (SMA-based, fixed windows) -----------------------------------------------------
    FeatureSpec("macd_atr", "(SMA12 - SMA26 of close) / ATR14", 26, "macd"),
    FeatureSpec("macd_signal_atr", "mean9(macd_atr)", 34, "macd"),
    FeatureSpec("macd_hist_atr", "macd_atr - macd_signal_atr", 34, "macd"),
    # --- Bollinger ---------------------------------------------------------------------------
    FeatureSpec("bb_width_20", "4 * stdev20 / SMA20 of close", 20, "bollinger"),
    # --- stochastic --------------------------------------------------------------------------
    FeatureSpec(
        "stoch_k_14",
        "(close - min14(low)) / (max14(high) - min14(low)), in [0, 1]",
        14,
        "stochastic",
    ),
    FeatureSpec("stoch_d_3", "mean3(stoch_k_14)", 16, "stochastic"),
    # --- ADX (finite windows: sums over 14 bars, ADX = mean14 of DX; in [0, 1]) --------------
    FeatureSpec("di_plus_14", "sum14(+DM) / sum14(TR)", 15, "adx"),
    FeatureSpec("di_minus_14", "sum14(-DM) / sum14(TR)", 15, "adx"),
    FeatureSpec(
        "adx_14", "mean14(|DI+ - DI-| / (DI+ + DI-)), DX = 0 when DI+ + DI- = 0", 28, "adx"
    ),
    # --- volume (tick volume) ----------------------------------------------------------------
    FeatureSpec(
        "tickvol_z_12", "(tick_volume - mean12) / stdev12, 0 when stdev12 = 0", 12, "volume"
    ),
    FeatureSpec("tickvol_ratio_12_48", "mean12(tick_volume) / mean48(tick_volume)", 48, "volume"),
    # --- spread ------------------------------------------------------------------------------
    FeatureSpec("spread_rel", "spread * point / close (level)", 1, "spread"),
    FeatureSpec("spread_z_48", "(spread - mean48) / stdev48, 0 when stdev48 = 0", 48, "spread"),
    # --- session (DST-aware local hours of the bar's open, expressed in UTC) -----------------
    FeatureSpec(
        "sess_sydney", "1 if the bar opens 07:00-16:00 Australia/Sydney time, else 0", 1, "session"
    ),
    FeatureSpec(
        "sess_tokyo", "1 if the bar opens 09:00-18:00 Asia/Tokyo time, else 0", 1, "session"
    ),
    FeatureSpec(
        "sess_london", "1 if the bar opens 08:00-17:00 Europe/London time, else 0", 1, "session"
    ),
    FeatureSpec(
        "sess_newyork", "1 if the bar opens 08:00-17:00 America/New_York time, else 0", 1, "session"
    ),
    # --- calendar ----------------------------------------------------------------------------
    FeatureSpec(
        "dow_sin", "sin(2π · (UTC weekday + hour/24 of the bar's open) / 7)", 1, "calendar"
    ),
    FeatureSpec(
        "dow_cos", "cos(2π · (UTC weekday + hour/24 of the bar's open) / 7)", 1, "calendar"
    ),
    # --- cross-symbol (against the other configured symbols, closes aligned as of the close) -
    FeatureSpec(
        "xs_corr_48",
        "mean over others of corr48(ret_1, other ret_1); 0 without others",
        49,
        "cross_symbol",
    ),
    FeatureSpec(
        "xs_rs_6", "ret_6 - mean over others of their ret_6; 0 without others", 7, "cross_symbol"
    ),
    FeatureSpec(
        "xs_rs_24",
        "ret_24 - mean over others of their ret_24; 0 without others",
        25,
        "cross_symbol",
    ),
    FeatureSpec(
        "xs_rank_24",
        "share of others whose ret_24 is below ours (ties count 1/2); 0.5 without others",
        25,
        "cross_symbol",
    ),
    # --- regime inputs -----------------------------------------------------------------------
    FeatureSpec(
        "er_48", "Kaufman efficiency: |close_t - close_t-48| / sum48(|Δclose|)", 49, "regime"
    ),
    FeatureSpec(
        "trend_t_48", "ret_48 / (vol_48 * sqrt(48)) (trend strength in sigmas)", 49, "regime"
    ),
    FeatureSpec(
        "vol_pct_96",
        "share of the last 96 vol_24 values <= the current one (volatility percentile)",
        120,
        "regime",
    ),
)
FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
WARMUP_BARS: int = max(f.window for f in FEATURES)
FAMILIES: tuple[str, ...] = tuple(dict.fromkeys(f.family for f in FEATURES))
SPECS: dict[str, FeatureSpec] = {f.name: f for f in FEATURES}

TREND_V1_FEATURES: tuple[str, ...] = FEATURE_NAMES[:13]
"""The 13 features of ``trend_fv`` / service ``trend_v1`` (the walking skeleton's model)."""
TREND_V1_WARMUP_BARS: int = max(SPECS[n].window for n in TREND_V1_FEATURES)

# --- the sequence feature --------------------------------------------------------------------
SEQ_LEN = 64
SEQ_CHANNELS: tuple[str, ...] = (
    "ret_atr",  # (close_t - close_t-1) / ATR14_t
    "open_atr",  # (open - close) / ATR14
    "high_atr",  # (high - close) / ATR14
    "low_atr",  # (low - close) / ATR14
    "range_atr",  # (high - low) / ATR14
    "tickvol_z",  # (tick_volume - mean48) / stdev48, 0 when stdev48 = 0
    "spread_atr",  # spread * point / ATR14
    "hour_sin",  # sin(2π · UTC hour of the close / 24)
    "hour_cos",  # cos(2π · UTC hour of the close / 24)
)
SEQ_CHANNEL_WARMUP = 48  # bars one channel vector needs (tickvol_z); ATR needs 15
SEQ_WARMUP_BARS: int = SEQ_LEN + SEQ_CHANNEL_WARMUP - 1
SEQ_FIELD = "seq"

XS_TOLERANCE_BARS = 3
"""An other symbol's close counts at our bar close if its bar closed at most this many bars earlier."""

STREAM_BARS: int = max(WARMUP_BARS, SEQ_WARMUP_BARS) + 8
"""Bars the per-bar path reads: enough for every feature and the sequence of the last bar."""


def sequence_to_array(values: object, n_channels: int = len(SEQ_CHANNELS)) -> np.ndarray:
    """A stored ``seq`` value (flat, row-major ``[bar][channel]``) → ``float32 [SEQ_LEN, C]``."""
    a = np.asarray(values, dtype=np.float32)
    if a.size != SEQ_LEN * n_channels:
        raise ValueError(f"sequence has {a.size} values, expected {SEQ_LEN} x {n_channels}")
    return a.reshape(SEQ_LEN, n_channels)


# --- window-local rolling statistics (numpy; NaN until the window is full) --------------------
_NAN = np.nan


def _shift(x: np.ndarray, k: int) -> np.ndarray:
    out = np.full(len(x), _NAN)
    if k < len(x):
        out[k:] = x[: len(x) - k]
    return out


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a / b, NaN where b is 0 (or NaN)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b != 0, a / np.where(b != 0, b, 1.0), _NAN)


def _win(x: np.ndarray, w: int) -> np.ndarray:
    """Read-only ``[n - w + 1, w]`` view of the trailing windows of a 1-D float64 array: the
    same memory layout as ``sliding_window_view`` (so the same reductions, bit for bit) at a
    fraction of its Python overhead, which dominates on the per-bar path's short arrays."""
    x = np.ascontiguousarray(x, dtype="float64")
    v = np.ndarray((len(x) - w + 1, w), dtype="float64", buffer=x, strides=(8, 8))
    v.flags.writeable = False
    return v


def _roll(x: np.ndarray, w: int, how: str) -> np.ndarray:
    """A statistic of the last ``w`` values, computed from each window alone, so the batch
    path (long history) and the per-bar path (short history) agree to the bit."""
    out = np.full(len(x), _NAN)
    if len(x) < w:
        return out
    win = _win(x, w)
    out[w - 1 :] = getattr(win, how)(axis=1)
    return out


def rolling_mean(x: np.ndarray, w: int) -> np.ndarray:
    """Mean over the last ``w`` values (window-local, unlike a running-sum rolling mean)."""
    return _roll(x, w, "mean")


def rolling_std(x: np.ndarray, w: int) -> np.ndarray:
    """Population standard deviation over the last ``w`` values, from the window alone."""
    return _roll(x, w, "std")


def rolling_corr(x: np.ndarray, y: np.ndarray, w: int) -> np.ndarray:
    """Pearson correlation over the last ``w`` pairs; 0 when either side is constant."""
    out = np.full(len(x), _NAN)
    if len(x) < w:
        return out
    wx, wy = _win(x, w), _win(y, w)
    dx = wx - wx.mean(axis=1, keepdims=True)
    dy = wy - wy.mean(axis=1, keepdims=True)
    num = (dx * dy).sum(axis=1)
    den = np.sqrt((dx * dx).sum(axis=1) * (dy * dy).sum(axis=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        out[w - 1 :] = np.where(
            den > 0, num / np.where(den > 0, den, 1.0), np.where(np.isnan(den), _NAN, 0.0)
        )
    return out


def rolling_rank(x: np.ndarray, w: int) -> np.ndarray:
    """Share of the last ``w`` values (this one included) that are <= the current value."""
    out = np.full(len(x), _NAN)
    if len(x) < w:
        return out
    win = _win(x, w)
    r = (win <= win[:, -1:]).sum(axis=1) / w
    out[w - 1 :] = np.where(np.isnan(win).any(axis=1), _NAN, r)
    return out


def zscore(x: np.ndarray, w: int) -> np.ndarray:
    """(x - mean_w) / stdev_w, and 0 where the window is constant (stdev 0 up to rounding)."""
    m, sd = rolling_mean(x, w), rolling_std(x, w)
    with np.errstate(invalid="ignore"):
        flat = sd <= 1e-12 * np.maximum(np.abs(m), 1e-300)
    return np.where(flat, 0.0, _div(x - m, sd))


def _true_range(h: np.ndarray, lo: np.ndarray, c: np.ndarray) -> np.ndarray:
    prev_c = _shift(c, 1)
    return np.maximum(np.maximum(h - lo, np.abs(h - prev_c)), np.abs(lo - prev_c))


def _hours(t: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(hour + minute/60, weekday Monday=0) of UTC timestamps."""
    secs = t.to_numpy(dtype="datetime64[s]").astype("int64")
    day = secs % 86400
    hour = (day // 3600) + (day % 3600 // 60) / 60.0
    return hour.astype("float64"), ((secs // 86400 + 3) % 7).astype("float64")


def _local_hour_flag(open_utc: pd.Series, tz: str, start: int, end: int) -> np.ndarray:
    """1.0 where the local hour in ``tz`` is in [start, end). Spans under 30 days whose ends
    have the same UTC offset contain no DST change (changes are months apart): one offset
    then serves every bar, which is what keeps the per-bar path fast."""
    secs = open_utc.to_numpy(dtype="datetime64[s]").astype("int64")
    if len(secs) and secs[-1] - secs[0] < 30 * 86400:
        zi = ZoneInfo(tz)
        first, last = (
            datetime.fromtimestamp(int(x), UTC).astimezone(zi).utcoffset()
            for x in (secs[0], secs[-1])
        )
        if first == last and first is not None:
            hour = (secs + int(first.total_seconds())) % 86400 // 3600
            return ((hour >= start) & (hour < end)).astype("float64")
    hour = open_utc.dt.tz_convert(tz).dt.hour.to_numpy()
    return ((hour >= start) & (hour < end)).astype("float64")


def _aligned_log_close(own: pd.DataFrame, other: pd.DataFrame, step: pd.Timedelta) -> np.ndarray:
    """Log close of ``other`` as of each of ``own``'s bar closes (NaN beyond the tolerance)."""
    left = own["close_time"].to_numpy(dtype="datetime64[ns]").astype("int64")
    o = other.sort_values("close_time")
    right = o["close_time"].to_numpy(dtype="datetime64[ns]").astype("int64")
    oc = np.log(o["close"].to_numpy("float64"))
    pos = np.searchsorted(right, left, side="right") - 1
    ok = (
        (pos >= 0) & (left - right[np.clip(pos, 0, None)] <= XS_TOLERANCE_BARS * step.value)
        if len(right)
        else pos >= 0
    )
    return np.where(ok, oc[np.clip(pos, 0, None)] if len(right) else _NAN, _NAN)


def _sorted(bars: pd.DataFrame) -> pd.DataFrame:
    """``bars`` by open time with a fresh 0..n-1 index (no copy when already so)."""
    if (
        bars["time"].is_monotonic_increasing
        and isinstance(bars.index, pd.RangeIndex)
        and bars.index.start == 0
        and bars.index.step == 1
    ):
        return bars
    return bars.sort_values("time").reset_index(drop=True)


def feature_frame(
    bars: pd.DataFrame, point: float, others: Mapping[str, pd.DataFrame] | None = None
) -> pd.DataFrame:
    """All :data:`FEATURES` of every bar (sorted by open time), NaN where not yet defined.

    ``others``: bars of the other configured symbols (same timeframe), for the cross-symbol
    family; they must reach back :data:`XS_TOLERANCE_BARS` bars before ``bars``' first bar."""
    b = _sorted(bars)
    c, h, lo, o = (b[k].to_numpy("float64") for k in ("close", "high", "low", "open"))
    logc = np.log(c)
    ret = {k: logc - _shift(logc, k) for k in (1, 3, 6, 12, 24, 48)}
    r1 = ret[1]
    tr = _true_range(h, lo, c)
    atr = rolling_mean(tr, 14)
    gain, loss = np.maximum(r1, 0.0), np.maximum(-r1, 0.0)
    g, lss = rolling_mean(gain, 14), rolling_mean(loss, 14)
    sma20, sd20 = rolling_mean(c, 20), rolling_std(c, 20)
    tv = b["tick_volume"].to_numpy("float64")
    spread = b["spread"].to_numpy("float64")
    hour, _ = _hours(b["close_time"])
    open_hour, weekday = _hours(b["time"])
    vol_24, vol_48 = rolling_std(r1, 24), rolling_std(r1, 48)

    # volatility estimators
    hl2 = np.log(h / lo) ** 2
    co2 = np.log(c / o) ** 2
    park = np.sqrt(rolling_mean(hl2, 24) / (4 * np.log(2)))
    gk = np.sqrt(np.maximum(rolling_mean(0.5 * hl2 - (2 * np.log(2) - 1) * co2, 24), 0.0))

    # MACD on SMAs, in ATRs
    macd = _div(rolling_mean(c, 12) - rolling_mean(c, 26), atr)
    macd_sig = rolling_mean(macd, 9)

    # stochastic
    ll, hh = _roll(lo, 14, "min"), _roll(h, 14, "max")
    stoch_k = _div(c - ll, hh - ll)

    # ADX, finite windows
    up, dn = h - _shift(h, 1), _shift(lo, 1) - lo
    with np.errstate(invalid="ignore"):
        pdm = np.where(np.isnan(up), _NAN, np.where((up > dn) & (up > 0), up, 0.0))
        mdm = np.where(np.isnan(dn), _NAN, np.where((dn > up) & (dn > 0), dn, 0.0))
    tr14 = _roll(tr, 14, "sum")
    pdi, mdi = _div(_roll(pdm, 14, "sum"), tr14), _div(_roll(mdm, 14, "sum"), tr14)
    den = pdi + mdi
    dx = np.where(den == 0, 0.0, _div(np.abs(pdi - mdi), den))

    # cross-symbol
    own = str(b["symbol"].iloc[0]) if len(b) else ""
    others = {k: v for k, v in (others or {}).items() if k != own}
    if others:
        step = (b["close_time"] - b["time"]).iloc[0]
        corrs, rs6, rs24, below = [], [], [], []
        for name in sorted(others):
            olc = _aligned_log_close(b, others[name], step)
            corrs.append(rolling_corr(r1, olc - _shift(olc, 1), 48))
            rs6.append(olc - _shift(olc, 6))
            o24 = olc - _shift(olc, 24)
            rs24.append(o24)
            with np.errstate(invalid="ignore"):
                below.append(
                    np.where(
                        np.isnan(o24) | np.isnan(ret[24]),
                        _NAN,
                        (o24 < ret[24]) + 0.5 * (o24 == ret[24]),
                    )
                )
        n = float(len(others))
        xs_corr = np.sum(corrs, axis=0) / n
        xs_rs6 = ret[6] - np.sum(rs6, axis=0) / n
        xs_rs24 = ret[24] - np.sum(rs24, axis=0) / n
        xs_rank = np.sum(below, axis=0) / n
    else:
        # no other symbol: neutral values, defined from the same first bar as with others
        xs_corr, xs_rs6, xs_rs24, xs_rank = (
            vol_48 * 0.0,
            ret[6] * 0.0,
            ret[24] * 0.0,
            ret[24] * 0.0 + 0.5,
        )

    dow = 2 * np.pi * (weekday + np.floor(open_hour) / 24.0) / 7.0
    cols: dict[str, np.ndarray] = {
        "ret_1": r1,
        "ret_6": ret[6],
        "ret_24": ret[24],
        "vol_24": vol_24,
        "atr_14_rel": atr / c,
        "rsi_14": _div(g, g + lss),
        "sma_ratio_12_48": rolling_mean(c, 12) / rolling_mean(c, 48) - 1.0,
        "bb_pos_20": _div(c - sma20, 2.0 * sd20),
        "range_atr": _div(h - lo, atr),
        "spread_atr": _div(spread * point, atr),
        "tickvol_z_48": _div(tv - rolling_mean(tv, 48), rolling_std(tv, 48)),
        "hour_sin": np.sin(2 * np.pi * hour / 24.0),
        "hour_cos": np.cos(2 * np.pi * hour / 24.0),
        "ret_3": ret[3],
        "ret_12": ret[12],
        "ret_48": ret[48],
        "vol_48": vol_48,
        "park_24": park,
        "gk_24": gk,
        "vol_ratio_12_48": _div(rolling_std(r1, 12), vol_48),
        "macd_atr": macd,
        "macd_signal_atr": macd_sig,
        "macd_hist_atr": macd - macd_sig,
        "bb_width_20": _div(4.0 * sd20, sma20),
        "stoch_k_14": stoch_k,
        "stoch_d_3": rolling_mean(stoch_k, 3),
        "di_plus_14": pdi,
        "di_minus_14": mdi,
        "adx_14": rolling_mean(dx, 14),
        "tickvol_z_12": zscore(tv, 12),
        "tickvol_ratio_12_48": _div(rolling_mean(tv, 12), rolling_mean(tv, 48)),
        "spread_rel": spread * point / c,
        "spread_z_48": zscore(spread, 48),
        "sess_sydney": _local_hour_flag(b["time"], "Australia/Sydney", 7, 16),
        "sess_tokyo": _local_hour_flag(b["time"], "Asia/Tokyo", 9, 18),
        "sess_london": _local_hour_flag(b["time"], "Europe/London", 8, 17),
        "sess_newyork": _local_hour_flag(b["time"], "America/New_York", 8, 17),
        "dow_sin": np.sin(dow),
        "dow_cos": np.cos(dow),
        "xs_corr_48": xs_corr,
        "xs_rs_6": xs_rs6,
        "xs_rs_24": xs_rs24,
        "xs_rank_24": xs_rank,
        "er_48": _div(np.abs(c - _shift(c, 48)), _roll(np.abs(c - _shift(c, 1)), 48, "sum")),
        "trend_t_48": _div(ret[48], vol_48 * np.sqrt(48.0)),
        "vol_pct_96": rolling_rank(vol_24, 96),
    }
    m = (
        np.column_stack([cols[n] for n in FEATURE_NAMES])
        if len(b)
        else np.empty((0, len(FEATURE_NAMES)))
    )
    m[~np.isfinite(m)] = _NAN
    out = pd.DataFrame(m, columns=list(FEATURE_NAMES))
    out.insert(0, "event_timestamp", b["close_time"])
    out.insert(0, "symbol", b["symbol"].astype(str))
    return out


def select_rows(
    frame: pd.DataFrame, names: tuple[str, ...] | list[str] = FEATURE_NAMES
) -> pd.DataFrame:
    """The rows of a :func:`feature_frame` past the warm-up of ``names`` with all of them defined."""
    names = list(names)
    warmup = max(SPECS[n].window for n in names)
    out = frame.iloc[warmup - 1 :][["symbol", "event_timestamp", *names]]
    return out.dropna(subset=names).reset_index(drop=True)


def compute_features(
    bars: pd.DataFrame,
    point: float,
    others: Mapping[str, pd.DataFrame] | None = None,
    names: tuple[str, ...] | list[str] = FEATURE_NAMES,
) -> pd.DataFrame:
    """Features for every bar of one symbol/timeframe (``bars`` sorted by open time, UTC).

    Returns ``symbol``, ``event_timestamp`` (bar close, UTC) and ``names`` (default: all
    :data:`FEATURE_NAMES`), with warm-up rows and rows whose value is undefined dropped.
    ``others``: the other symbols' bars for the cross-symbol family (see the module doc).
    """
    names = list(names)
    if bars.empty:
        return pd.DataFrame(columns=["symbol", "event_timestamp", *names])
    return select_rows(feature_frame(bars, point, others), names)


def sequence_channels(bars: pd.DataFrame, point: float) -> np.ndarray:
    """The per-bar channel vectors ``[n, C]`` of :data:`SEQ_CHANNELS` (NaN in their warm-up),
    float64, each normalised only with data known at that bar's close."""
    b = _sorted(bars)
    c, h, lo, o = (b[k].to_numpy("float64") for k in ("close", "high", "low", "open"))
    atr = rolling_mean(_true_range(h, lo, c), 14)
    hour, _ = _hours(b["close_time"])
    ch = {
        "ret_atr": _div(c - _shift(c, 1), atr),
        "open_atr": _div(o - c, atr),
        "high_atr": _div(h - c, atr),
        "low_atr": _div(lo - c, atr),
        "range_atr": _div(h - lo, atr),
        "tickvol_z": zscore(b["tick_volume"].to_numpy("float64"), SEQ_CHANNEL_WARMUP),
        "spread_atr": _div(b["spread"].to_numpy("float64") * point, atr),
        "hour_sin": np.sin(2 * np.pi * hour / 24.0),
        "hour_cos": np.cos(2 * np.pi * hour / 24.0),
    }
    m = np.column_stack([ch[k] for k in SEQ_CHANNELS])
    m[: SEQ_CHANNEL_WARMUP - 1] = _NAN
    m[~np.isfinite(m)] = _NAN
    return m


def compute_sequences(bars: pd.DataFrame, point: float) -> pd.DataFrame:
    """``symbol``, ``event_timestamp`` and ``seq``: per bar, the float32 array of the last
    :data:`SEQ_LEN` channel vectors (``[bar][channel]``, oldest first), for every bar whose
    window is complete and defined (first valid bar: index :data:`SEQ_WARMUP_BARS` - 1)."""
    cols = ["symbol", "event_timestamp", SEQ_FIELD]
    if len(bars) < SEQ_WARMUP_BARS:
        return pd.DataFrame(columns=cols)
    b = bars.sort_values("time").reset_index(drop=True)
    m = sequence_channels(b, point).astype(np.float32)
    win = np.lib.stride_tricks.sliding_window_view(m, SEQ_LEN, axis=0)  # [n-L+1, C, L]
    flat = np.ascontiguousarray(win.transpose(0, 2, 1)).reshape(len(win), -1)  # [n-L+1, L*C]
    ok = ~np.isnan(flat).any(axis=1)
    idx = np.arange(SEQ_LEN - 1, len(b))[ok]
    return pd.DataFrame(
        {
            "symbol": b["symbol"].astype(str).iloc[idx].to_numpy(),
            "event_timestamp": b["close_time"].iloc[idx].reset_index(drop=True),
            SEQ_FIELD: list(flat[ok]),
        },
        columns=cols,
    )


def last_sequence(bars: pd.DataFrame, point: float) -> np.ndarray | None:
    """The ``seq`` value of the last bar of ``bars`` (what :func:`compute_sequences` gives for
    it), or ``None`` when its window is not complete or not defined. The per-bar path."""
    if len(bars) < SEQ_WARMUP_BARS:
        return None
    b = _sorted(bars)
    m = sequence_channels(b.iloc[len(b) - SEQ_WARMUP_BARS :].reset_index(drop=True), point).astype(
        np.float32
    )
    last = m[-SEQ_LEN:]
    if np.isnan(last).any():
        return None
    return np.ascontiguousarray(last).reshape(-1)


def last_row(frame: pd.DataFrame, names: tuple[str, ...] | list[str]) -> dict[str, object] | None:
    """The last row of a :func:`feature_frame` as ``{symbol, event_timestamp, *names}``, or
    ``None`` when it is still in the warm-up of ``names`` or any of them is undefined (the row
    :func:`select_rows` would drop). The per-bar path."""
    names = list(names)
    if len(frame) < max(SPECS[n].window for n in names):
        return None
    vals = frame[names].iloc[-1].to_numpy(dtype="float64")
    if np.isnan(vals).any():
        return None
    return {
        "symbol": frame["symbol"].iloc[-1],
        "event_timestamp": frame["event_timestamp"].iloc[-1],
        **dict(zip(names, vals.tolist(), strict=True)),
    }
