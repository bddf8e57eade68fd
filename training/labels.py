"""Labels from the bar lake. They look forward from the bar's close, never back.

For bar *t* (features known at its close), the forward log return over ``h`` bars is
``log(close[t+h] / close[t])``. The spread paid to take the trade, ``spread_t * point /
close_t``, sets a dead zone: long (2) above it, short (0) below minus it, flat (1) inside.
The last ``h`` bars have no label. ``ret_next`` (the next bar's log return) and ``cost`` feed
the cost-aware backtest.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

CLASSES: tuple[str, ...] = ("short", "flat", "long")
POSITIONS: tuple[int, ...] = (-1, 0, 1)


def make_labels(
    bars: pd.DataFrame, *, horizon: int, point: float, cost_multiplier: float = 1.0
) -> pd.DataFrame:
    """Label every bar of one symbol that has ``horizon`` bars after it.

    Returns ``symbol``, ``event_timestamp`` (the bar's close: when its features exist),
    ``label_end`` (close of bar t+h: when the label becomes known), ``fwd_ret``, ``cost``,
    ``ret_next`` and ``label`` (0 short, 1 flat, 2 long).
    """
    if horizon < 1:
        raise ValueError("horizon must be >= 1")
    b = bars.sort_values("time").reset_index(drop=True)
    logc = np.log(b["close"].to_numpy())
    n = len(b)
    fwd = np.full(n, np.nan)
    nxt = np.full(n, np.nan)
    if n > horizon:
        fwd[: n - horizon] = logc[horizon:] - logc[: n - horizon]
    if n > 1:
        nxt[: n - 1] = logc[1:] - logc[:-1]
    cost = b["spread"].to_numpy(dtype="float64") * point / b["close"].to_numpy() * cost_multiplier
    label = np.where(fwd > cost, 2, np.where(fwd < -cost, 0, 1))
    end = b["close_time"].shift(-horizon)
    out = pd.DataFrame(
        {
            "symbol": b["symbol"].astype(str),
            "event_timestamp": b["close_time"],
            "label_end": end,
            "fwd_ret": fwd,
            "cost": cost,
            "ret_next": nxt,
            "label": label,
        }
    )
    return out[~np.isnan(fwd)].reset_index(drop=True)
