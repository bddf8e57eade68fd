"""Feature transforms: the single code path behind the offline and the online store.

Every feature of bar *t* is computed at that bar's close from bars ``t-W+1 … t`` only, with
fixed-length windows (no recursive EMAs), so a feature value does not depend on where the
history happens to start and never on a later bar. The Feast ``event_timestamp`` of a row is
the bar's close time. Rows still inside their warm-up (any feature undefined) are dropped,
never materialised as NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    formula: str
    window: int  # bars of history the value needs, this bar included


FEATURES: tuple[FeatureSpec, ...] = (
    FeatureSpec("ret_1", "log(close_t / close_t-1)", 2),
    FeatureSpec("ret_6", "log(close_t / close_t-6)", 7),
    FeatureSpec("ret_24", "log(close_t / close_t-24)", 25),
    FeatureSpec("vol_24", "stdev of ret_1 over 24 bars", 25),
    FeatureSpec("atr_14_rel", "mean true range over 14 bars / close", 15),
    FeatureSpec("rsi_14", "Cutler RSI: 100 * mean gain / (mean gain + mean loss), 14 bars, in [0, 1]", 15),
    FeatureSpec("sma_ratio_12_48", "SMA12 / SMA48 - 1", 48),
    FeatureSpec("bb_pos_20", "(close - SMA20) / (2 * stdev20 of close)", 20),
    FeatureSpec("range_atr", "(high - low) / ATR14", 15),
    FeatureSpec("spread_atr", "spread * point / ATR14", 15),
    FeatureSpec("tickvol_z_48", "(tick_volume - mean48) / stdev48", 48),
    FeatureSpec("hour_sin", "sin(2π · UTC hour of the close / 24)", 1),
    FeatureSpec("hour_cos", "cos(2π · UTC hour of the close / 24)", 1),
)
FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
WARMUP_BARS: int = max(f.window for f in FEATURES)


def _safe_div(a: pd.Series, b: pd.Series) -> pd.Series:
    return a / b.where(b != 0)


def _windows(x: pd.Series, w: int) -> tuple[np.ndarray, pd.Index]:
    v = x.to_numpy(dtype="float64")
    if len(v) < w:
        return np.empty((0, w)), x.index[:0]
    return np.lib.stride_tricks.sliding_window_view(v, w), x.index[w - 1 :]


def rolling_mean(x: pd.Series, w: int) -> pd.Series:
    """Mean over the last ``w`` values, computed from the window alone.

    Unlike pandas' running-sum rolling, the value depends only on the window's contents, so
    the batch path (long history) and the per-bar path (short history) agree to the bit."""
    win, idx = _windows(x, w)
    return pd.Series(win.mean(axis=1), index=idx).reindex(x.index)


def rolling_std(x: pd.Series, w: int) -> pd.Series:
    """Population standard deviation over the last ``w`` values, from the window alone."""
    win, idx = _windows(x, w)
    return pd.Series(win.std(axis=1), index=idx).reindex(x.index)


def compute_features(bars: pd.DataFrame, point: float) -> pd.DataFrame:
    """Features for every bar of one symbol/timeframe (``bars`` sorted by open time, UTC).

    Returns ``symbol``, ``event_timestamp`` (bar close, UTC) and :data:`FEATURE_NAMES`, with
    warm-up rows and rows whose value is undefined (e.g. a flat window) dropped.
    """
    if bars.empty:
        return pd.DataFrame(columns=["symbol", "event_timestamp", *FEATURE_NAMES])
    b = bars.sort_values("time").reset_index(drop=True)
    c, h, lo = b["close"], b["high"], b["low"]
    logc = np.log(c)
    r1 = logc.diff()
    prev_c = c.shift(1)
    tr = pd.concat([h - lo, (h - prev_c).abs(), (lo - prev_c).abs()], axis=1).max(axis=1, skipna=False)
    atr = rolling_mean(tr, 14)
    gain, loss = r1.clip(lower=0), (-r1).clip(lower=0)
    g, lss = rolling_mean(gain, 14), rolling_mean(loss, 14)
    sma20, sd20 = rolling_mean(c, 20), rolling_std(c, 20)
    tv = b["tick_volume"].astype("float64")
    hour = b["close_time"].dt.hour + b["close_time"].dt.minute / 60.0

    out = pd.DataFrame(
        {
            "symbol": b["symbol"].astype(str),
            "event_timestamp": b["close_time"],
            "ret_1": r1,
            "ret_6": logc - logc.shift(6),
            "ret_24": logc - logc.shift(24),
            "vol_24": rolling_std(r1, 24),
            "atr_14_rel": atr / c,
            "rsi_14": _safe_div(g, g + lss),
            "sma_ratio_12_48": rolling_mean(c, 12) / rolling_mean(c, 48) - 1.0,
            "bb_pos_20": _safe_div(c - sma20, 2.0 * sd20),
            "range_atr": _safe_div(h - lo, atr),
            "spread_atr": _safe_div(b["spread"].astype("float64") * point, atr),
            "tickvol_z_48": _safe_div(tv - rolling_mean(tv, 48), rolling_std(tv, 48)),
            "hour_sin": np.sin(2 * np.pi * hour / 24.0),
            "hour_cos": np.cos(2 * np.pi * hour / 24.0),
        }
    )
    out = out.iloc[WARMUP_BARS - 1 :]
    out = out.replace([np.inf, -np.inf], np.nan).dropna()
    return out.reset_index(drop=True)
