"""A vectorised, cost-aware backtest of per-bar target positions.

Position ``p_t`` is taken at bar *t*'s close and earns the next bar's log return. Changing
the position by ``|Δp|`` units pays half the spread per unit (``cost_t / 2`` in return units),
so a round trip pays the whole spread.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from engine.mt5 import timeframe_seconds


def positions_from_proba(proba: np.ndarray, min_confidence: float) -> np.ndarray:
    """argmax class → position (-1 short, 0 flat, +1 long); flat below ``min_confidence``."""
    cls = proba.argmax(axis=1)
    pos = cls.astype(np.int64) - 1
    pos[proba.max(axis=1) < min_confidence] = 0
    return pos


def backtest(ds: pd.DataFrame, positions: np.ndarray, timeframe: str) -> dict[str, float]:
    """Net metrics of ``positions`` over ``ds`` (one symbol or several, sorted by time)."""
    out: dict[str, float] = {}
    pnl_all = []
    trades = 0
    for _, g in ds.assign(_pos=positions).groupby("symbol", sort=True):
        p = g["_pos"].to_numpy(dtype=float)
        turnover = np.abs(np.diff(np.concatenate([[0.0], p])))
        pnl = p * g["ret_next"].to_numpy() - turnover * g["cost"].to_numpy() / 2.0
        pnl_all.append(pnl)
        trades += int((turnover > 0).sum())
    pnl = np.concatenate(pnl_all) if pnl_all else np.zeros(0)
    bars_per_year = 252 * 86400 / timeframe_seconds(timeframe)
    std = pnl.std(ddof=1) if len(pnl) > 1 else 0.0
    equity = np.cumsum(pnl)
    out["net_return"] = float(pnl.sum())
    out["sharpe"] = float(pnl.mean() / std * np.sqrt(bars_per_year)) if std > 0 else 0.0
    out["max_drawdown"] = float((np.maximum.accumulate(np.concatenate([[0.0], equity])) - np.concatenate([[0.0], equity])).max())
    out["trades"] = float(trades)
    out["exposure"] = float(np.mean(positions != 0)) if len(positions) else 0.0
    active = positions != 0
    out["hit_rate"] = float(np.mean(np.sign(ds["ret_next"].to_numpy()[active]) == positions[active])) if active.any() else 0.0
    return out


def equity_curve(ds: pd.DataFrame, positions: np.ndarray) -> pd.Series:
    p = positions.astype(float)
    turnover = np.abs(np.diff(np.concatenate([[0.0], p])))
    pnl = p * ds["ret_next"].to_numpy() - turnover * ds["cost"].to_numpy() / 2.0
    return pd.Series(np.cumsum(pnl), index=ds["event_timestamp"])
