"""Labels from the bar lake. They look forward from the bar's close, never back.

For bar *t* (features known at its close), two labelling methods:

``fixed`` (default)
    The forward log return over ``h`` bars, ``log(close[t+h] / close[t])``, against the cost of
    a round trip: ``cost_t = cost_multiplier * spread_t * point / close_t + commission``
    (commission is the round-trip commission in return units, e.g. 7 USD per 100k lot =
    7e-5). Long (2) above the cost, short (0) below minus the cost, flat (1) inside (the
    cost-aware dead zone).
``triple_barrier``
    Barriers at ``close_t * exp(±k * unit_t)`` where ``unit_t`` is the ATR (mean true range of
    the last ``atr_window`` bars up to *t*, relative to ``close_t``) or the realised volatility of
    the last ``atr_window`` one-bar returns, scaled by ``sqrt(h)``. The first barrier touched by
    the highs/lows of bars ``t+1 … t+h`` decides: take-profit → long, stop-loss → short; both in
    the same bar → flat (the order inside a bar is unknown); none (time barrier) → the
    ``fixed`` rule on the return at ``t+h``.

The barrier unit uses bars ``≤ t`` only; outcomes use bars ``> t`` only. The last ``h`` bars
have no label. ``label_end`` is the close of bar ``t+h`` for both methods (an upper bound of
when the label is known, which is what purging needs). ``ret_next`` (the next bar's log
return), ``spread_ret`` (spread / close) and ``cost`` feed the cost-aware backtest.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

CLASSES: tuple[str, ...] = ("short", "flat", "long")
POSITIONS: tuple[int, ...] = (-1, 0, 1)

LabelMethod = Literal["fixed", "triple_barrier"]


def _barrier_unit(b: pd.DataFrame, window: int, unit: str) -> np.ndarray:
    close = b["close"].to_numpy(dtype="float64")
    if unit == "atr":
        prev = np.concatenate([[np.nan], close[:-1]])
        tr = np.nanmax(
            np.vstack([b["high"] - b["low"], np.abs(b["high"] - prev), np.abs(b["low"] - prev)]),
            axis=0,
        )
        return pd.Series(tr).rolling(window, min_periods=window).mean().to_numpy() / close
    if unit == "vol":
        r = np.concatenate([[np.nan], np.diff(np.log(close))])
        return pd.Series(r).rolling(window, min_periods=window).std().to_numpy()
    raise ValueError(f"unknown barrier unit {unit!r} (atr | vol)")


def triple_barrier_labels(
    b: pd.DataFrame,
    *,
    horizon: int,
    cost: np.ndarray,
    tp: float,
    sl: float,
    unit: str = "atr",
    window: int = 14,
) -> np.ndarray:
    """Triple-barrier class per bar (NaN-free for bars with ``horizon`` bars after them and a
    defined barrier unit; -1 where undefined)."""
    n = len(b)
    close = b["close"].to_numpy(dtype="float64")
    high = b["high"].to_numpy(dtype="float64")
    low = b["low"].to_numpy(dtype="float64")
    u = _barrier_unit(b, window, unit)
    if unit == "vol":
        u = u * np.sqrt(horizon)
    upper = close * np.exp(tp * u)
    lower = close * np.exp(-sl * u)
    label = np.full(n, -1, dtype=np.int64)
    decided = np.zeros(n, dtype=bool)
    valid = ~np.isnan(u)
    valid[max(n - horizon, 0) :] = False
    idx = np.arange(n)
    for k in range(1, horizon + 1):
        j = np.minimum(idx + k, n - 1)
        hit_up = high[j] >= upper
        hit_dn = low[j] <= lower
        open_ = valid & ~decided
        both = open_ & hit_up & hit_dn
        label[both] = 1
        label[open_ & hit_up & ~hit_dn] = 2
        label[open_ & hit_dn & ~hit_up] = 0
        decided |= open_ & (hit_up | hit_dn)
    rest = valid & ~decided
    jh = np.minimum(idx + horizon, n - 1)
    fwd = np.log(close[jh] / close)
    label[rest] = np.where(fwd[rest] > cost[rest], 2, np.where(fwd[rest] < -cost[rest], 0, 1))
    return label


def make_labels(
    bars: pd.DataFrame,
    *,
    horizon: int,
    point: float,
    cost_multiplier: float = 1.0,
    commission: float = 0.0,
    method: LabelMethod = "fixed",
    tp: float = 1.5,
    sl: float = 1.5,
    barrier_unit: str = "atr",
    barrier_window: int = 14,
) -> pd.DataFrame:
    """Label every bar of one symbol that has ``horizon`` bars after it.

    Returns ``symbol``, ``event_timestamp`` (the bar's close: when its features exist),
    ``label_end`` (close of bar t+h: when the label is known at the latest), ``fwd_ret``,
    ``spread_ret``, ``spread_points`` (the bar's spread in points), ``cost`` (round trip),
    ``ret_next`` and ``label`` (0 short, 1 flat, 2 long).
    """
    if horizon < 1:
        raise ValueError("horizon must be >= 1")
    if commission < 0 or cost_multiplier < 0:
        raise ValueError("costs must be >= 0")
    b = bars.sort_values("time").reset_index(drop=True)
    logc = np.log(b["close"].to_numpy(dtype="float64"))
    n = len(b)
    fwd = np.full(n, np.nan)
    nxt = np.full(n, np.nan)
    if n > horizon:
        fwd[: n - horizon] = logc[horizon:] - logc[: n - horizon]
    if n > 1:
        nxt[: n - 1] = logc[1:] - logc[:-1]
    spread_rel = (
        b["spread"].to_numpy(dtype="float64") * point / b["close"].to_numpy(dtype="float64")
    )
    cost = spread_rel * cost_multiplier + commission
    if method == "fixed":
        label = np.where(fwd > cost, 2, np.where(fwd < -cost, 0, 1))
        keep = ~np.isnan(fwd)
    elif method == "triple_barrier":
        label = triple_barrier_labels(
            b, horizon=horizon, cost=cost, tp=tp, sl=sl, unit=barrier_unit, window=barrier_window
        )
        keep = ~np.isnan(fwd) & (label >= 0)
    else:
        raise ValueError(f"unknown label method {method!r}")
    end = b["close_time"].shift(-horizon)
    out = pd.DataFrame(
        {
            "symbol": b["symbol"].astype(str),
            "event_timestamp": b["close_time"],
            "label_end": end,
            "fwd_ret": fwd,
            "spread_ret": spread_rel,
            "spread_points": b["spread"].to_numpy(dtype="float64"),  # learned slippage's input
            "cost": cost,
            "ret_next": nxt,
            "label": label,
        }
    )
    return out[keep].reset_index(drop=True)
