"""Position sizing, stops and the execution gate, as plain functions of numbers.

* :func:`atr` — mean true range of closed bars (the stop distance unit).
* :func:`lots_for_risk` — lots such that hitting the stop loses ``risk`` × equity, rounded
  *down* to the symbol's ``volume_step`` and clipped to ``[volume_min, volume_max]`` (0 when
  even ``volume_min`` would risk too much).
* :func:`stop_prices` — SL/TP at a distance that respects ``trade_stops_level`` (and the
  freeze level) of ``symbol_info``, measured from the price the position closes at.
* :func:`edge_points` / :func:`cost_points` — the execution gate: the expected edge of a
  call (probability margin × expected move) against spread plus predicted slippage.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np


def atr(rates: np.ndarray, period: int = 14) -> float:
    """Mean true range over the last ``period`` bars of ``rates`` (needs ``period + 1`` bars)."""
    if rates is None or len(rates) < 2:
        return 0.0
    r = rates[-(period + 1) :]
    h, lo, c = r["high"][1:], r["low"][1:], r["close"][:-1]
    tr = np.maximum(h - lo, np.maximum(np.abs(h - c), np.abs(lo - c)))
    return float(tr.sum()) / len(tr)  # tr.mean()'s bits (sum / n) without its dispatch


def round_volume(lots: float, volume_min: float, volume_step: float, volume_max: float) -> float:
    """Round ``lots`` down to the step; 0 below ``volume_min``; at most ``volume_max``."""
    if lots <= 0 or volume_step <= 0:
        return 0.0
    lots = min(lots, volume_max)
    steps = math.floor(lots / volume_step + 1e-9)
    out = round(steps * volume_step, 8)
    return out if out >= volume_min - 1e-12 else 0.0


def lots_for_risk(
    equity: float,
    risk: float,
    stop_distance: float,
    *,
    tick_size: float,
    tick_value: float,
    volume_min: float,
    volume_step: float,
    volume_max: float,
) -> float:
    """Lots that lose ``risk * equity`` (account currency) if price moves ``stop_distance``."""
    if equity <= 0 or risk <= 0 or stop_distance <= 0 or tick_size <= 0 or tick_value <= 0:
        return 0.0
    loss_per_lot = stop_distance / tick_size * tick_value
    return round_volume(equity * risk / loss_per_lot, volume_min, volume_step, volume_max)


def min_stop_distance(stops_level: int, freeze_level: int, point: float) -> float:
    """The closest a stop may be to the closing price: one point beyond the stops/freeze level."""
    return (max(stops_level, freeze_level) + 1) * point


def stop_prices(
    buy: bool,
    *,
    bid: float,
    ask: float,
    sl_distance: float,
    tp_distance: float,
    stops_level: int,
    freeze_level: int,
    point: float,
    digits: int,
) -> tuple[float, float]:
    """``(sl, tp)`` for a new position (0.0 = none), each at least the stops level away from
    the price the position would close at (bid for a buy, ask for a sell)."""
    floor = min_stop_distance(stops_level, freeze_level, point)
    ref = bid if buy else ask
    sign = -1.0 if buy else 1.0
    sl = round(ref + sign * max(sl_distance, floor), digits) if sl_distance > 0 else 0.0
    tp = round(ref - sign * max(tp_distance, floor), digits) if tp_distance > 0 else 0.0
    return sl, tp


def edge_points(
    probabilities: Mapping[str, float], position: int, atr_points: float, atr_mult: float
) -> float:
    """Expected edge of going ``position`` (+1 long / -1 short), in points: the probability
    margin of the called side over the opposite side times the expected move."""
    if position == 0:
        return 0.0
    p_side = float(probabilities.get("long" if position > 0 else "short", 0.0))
    p_opp = float(probabilities.get("short" if position > 0 else "long", 0.0))
    return (p_side - p_opp) * atr_points * atr_mult


def cost_points(spread_points: float, slippage_points: float, slippage_spread_frac: float) -> float:
    """Cost of a round trip's entry: spread plus predicted slippage, in points."""
    return spread_points + slippage_points + slippage_spread_frac * spread_points


def return_volatility(close: np.ndarray, window: int = 24) -> float:
    """Recent volatility: the standard deviation (ddof 1) of the last ``window`` one-bar
    returns of ``close`` — the measure of the cost formula ``0.25 × spread + 0.05 ×
    volatility`` (:class:`training.backtest.SpreadVolSlippage`), in return units. 0 with fewer
    than two returns."""
    c = np.asarray(close, dtype=float)[-(window + 1) :]
    if len(c) < 3:
        return 0.0
    r = c[1:] / c[:-1] - 1.0
    r = r[np.isfinite(r)]
    n = len(r)
    if n < 2:
        return 0.0
    # np.std(r, ddof=1)'s own steps (sum / n, squared deviations, sum / (n - 1), sqrt), the
    # same bits without its dispatch layers: this runs on every fill of a backtest
    d = r - r.sum() / n
    return math.sqrt(float((d * d).sum()) / (n - 1))
