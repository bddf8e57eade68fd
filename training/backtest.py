"""A vectorised, cost-aware backtest of per-bar target positions, with bootstrap CIs.

Position ``p_t`` is taken at bar *t*'s close and earns the next bar's log return
``ret_next_t``. Changing the position by ``|Δp|`` units pays, per unit traded:

* half the bar's spread (``spread_ret_t / 2``; a round trip pays the whole spread),
* half the round-trip commission,
* the slippage model's estimate (replaceable; default ``k_s * spread + k_v * recent vol``),

and holding pays the daily swap pro rata per bar. Several symbols trade with equal capital: the
portfolio's per-bar P&L is the mean over the symbols quoting at that time.

Metrics: net return, Sharpe and Sortino annualised for the timeframe (252 trading days), max
drawdown of the cumulative log P&L, hit rate (share of winning bars in the market), profit
factor, turnover, trades, exposure; confidence intervals from a moving-block bootstrap of the
per-bar P&L. Baselines: always flat, buy-and-hold, and a momentum rule (sign of the last
``k`` bars' return).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd

from engine.mt5 import timeframe_seconds

TRADING_DAYS = 252


def bars_per_year(timeframe: str) -> float:
    return TRADING_DAYS * 86400 / timeframe_seconds(timeframe)


def positions_from_proba(proba: np.ndarray, min_confidence: float) -> np.ndarray:
    """argmax class → position (-1 short, 0 flat, +1 long); flat below ``min_confidence``."""
    cls = proba.argmax(axis=1)
    pos = cls.astype(np.int64) - 1
    pos[proba.max(axis=1) < min_confidence] = 0
    return pos


class SlippageModel(Protocol):
    """Slippage per unit traded, in return units, for each row of a dataset (past data only)."""

    def __call__(self, ds: pd.DataFrame) -> np.ndarray: ...


@dataclass(frozen=True)
class SpreadVolSlippage:
    """``spread_k * spread_ret + vol_k * stdev of the last `window` one-bar returns``."""

    spread_k: float = 0.25
    vol_k: float = 0.05
    window: int = 24

    def __call__(self, ds: pd.DataFrame) -> np.ndarray:
        spread = _spread_rel(ds)
        past = ds.groupby("symbol", sort=False)["ret_next"].shift(
            1
        )  # bar t's own return: known at its close
        vol = past.groupby(ds["symbol"], sort=False).transform(
            lambda s: s.rolling(self.window, min_periods=2).std()
        )
        return self.spread_k * spread + self.vol_k * np.nan_to_num(vol.to_numpy(dtype=float))


@dataclass(frozen=True)
class EstimatorSlippage:
    """Slippage per unit traded from a points estimator (:mod:`engine.slippage_model`, the
    promoted ``tx_slippage``): each bar's spread in points (``spread_points``), the recent
    volatility in points, the hour and ``volume``; the estimate in points is turned into
    return units by the bar's ``point / close`` (= ``spread_ret / spread_points``). The side
    of a trade is not known per unit traded: the mean of the buy and the sell estimates.
    A bar with a zero spread (``point / close`` unknown) pays ``fallback``."""

    estimator: Any  # engine.slippage_model.SlippageEstimator
    volume: float = 0.1
    venue: str = ""
    window: int = 24
    fallback: SpreadVolSlippage = SpreadVolSlippage()

    def __call__(self, ds: pd.DataFrame) -> np.ndarray:
        from engine.slippage_model import batch_points

        if "spread_points" not in ds:
            raise ValueError("learned slippage needs the labels' spread_points column")
        spread_pts = ds["spread_points"].to_numpy(dtype=float)
        spread_ret = _spread_rel(ds)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(spread_pts > 0, spread_ret / spread_pts, np.nan)  # point / close
        past = ds.groupby("symbol", sort=False)["ret_next"].shift(1)
        vol = past.groupby(ds["symbol"], sort=False).transform(
            lambda s: s.rolling(self.window, min_periods=2).std()
        )
        vol_pts = np.nan_to_num(vol.to_numpy(dtype=float)) / np.where(np.isnan(ratio), 1, ratio)
        hours = pd.to_datetime(ds["event_timestamp"], utc=True).dt.hour.to_numpy()
        kw = {
            "symbols": ds["symbol"].astype(str).to_numpy(),
            "venue": self.venue,
            "volume": self.volume,
            "spread_points": spread_pts,
            "vol_points": vol_pts,
            "hours": hours,
        }
        pts = (
            batch_points(self.estimator, side="buy", **kw)
            + batch_points(self.estimator, side="sell", **kw)
        ) / 2
        out = pts * ratio
        bad = ~np.isfinite(out)
        if bad.any():
            out[bad] = self.fallback(ds)[bad]
        return out


def slippage_for_costs(c: object) -> SlippageModel:
    """The backtest's slippage for a cost config (:class:`training.config.CostConfig` or its
    manifest dict): the formula, or with ``slippage_model: champion`` the promoted learned
    model of the registry in ``TX_MLFLOW_TRACKING_URI`` (the formula when none is promoted)."""

    def get(k: str, d: Any) -> Any:
        return c.get(k, d) if isinstance(c, dict) else getattr(c, k, d)

    formula = SpreadVolSlippage(
        float(get("slippage_spread_k", 0.25)), float(get("slippage_vol_k", 0.05))
    )
    if get("slippage_model", "fixed") != "champion":
        return formula
    from engine.slippage_model import FixedSlippage
    from titanovax.settings import PlatformSettings
    from training.slippage import load_champion

    est = load_champion(PlatformSettings(), FixedSlippage(formula.spread_k, formula.vol_k))
    if isinstance(est, FixedSlippage):
        return formula
    return EstimatorSlippage(est, volume=float(get("slippage_volume", 0.1)), fallback=formula)


@dataclass(frozen=True)
class Costs:
    commission: float = 0.0  # round trip, return units
    slippage: SlippageModel | None = None
    swap_long_per_day: float = 0.0  # return units per day held (negative = paid)
    swap_short_per_day: float = 0.0


def _spread_rel(ds: pd.DataFrame) -> np.ndarray:
    col = "spread_ret" if "spread_ret" in ds else "cost"
    if col not in ds:
        raise ValueError(
            "the dataset has no spread (column spread_ret or cost): costs cannot be charged; "
            "a learned decision policy needs them (decision.policy: legacy does not)"
        )
    return ds[col].to_numpy(dtype=float)


def pnl_frame(
    ds: pd.DataFrame, positions: np.ndarray, timeframe: str, costs: Costs | None = None
) -> pd.DataFrame:
    """Per-row gross, cost and net P&L plus turnover (rows in ``ds`` order)."""
    costs = costs or Costs()
    d = ds[["symbol", "event_timestamp", "ret_next"]].copy()
    d["_pos"] = np.asarray(positions, dtype=float)
    prev = d.groupby("symbol", sort=False)["_pos"].shift(1).fillna(0.0).to_numpy()
    turnover = np.abs(d["_pos"].to_numpy() - prev)
    per_unit = _spread_rel(ds) / 2.0 + costs.commission / 2.0
    if costs.slippage is not None:
        per_unit = per_unit + costs.slippage(ds)
    pos = d["_pos"].to_numpy()
    day_frac = timeframe_seconds(timeframe) / 86400
    swap = (
        np.where(pos > 0, costs.swap_long_per_day, np.where(pos < 0, costs.swap_short_per_day, 0.0))
        * np.abs(pos)
        * day_frac
    )
    gross = pos * d["ret_next"].to_numpy(dtype=float)
    cost = turnover * per_unit
    return pd.DataFrame(
        {
            "symbol": d["symbol"].to_numpy(),
            "event_timestamp": d["event_timestamp"].to_numpy(),
            "position": pos,
            "turnover": turnover,
            "gross": gross,
            "cost": cost,
            "net": gross - cost + swap,
        }
    )


def portfolio_pnl(frame: pd.DataFrame) -> pd.Series:
    """Per-bar portfolio net P&L: mean over the symbols quoting at each timestamp."""
    return frame.groupby("event_timestamp", sort=True)["net"].mean()


def _sharpe(p: np.ndarray, ann: float) -> float:
    sd = p.std(ddof=1) if len(p) > 1 else 0.0
    return float(p.mean() / sd * np.sqrt(ann)) if sd > 0 else 0.0


def _sortino(p: np.ndarray, ann: float) -> float:
    down = np.minimum(p, 0.0)
    dd = np.sqrt(np.mean(down**2)) if len(p) else 0.0
    return float(p.mean() / dd * np.sqrt(ann)) if dd > 0 else 0.0


def max_drawdown(p: np.ndarray) -> float:
    eq = np.concatenate([[0.0], np.cumsum(p)])
    return float((np.maximum.accumulate(eq) - eq).max())


def block_bootstrap_index(n: int, n_boot: int, block: int, rng: np.random.Generator) -> np.ndarray:
    """Moving-block bootstrap row indices, shape ``[n_boot, n]``."""
    block = max(1, min(block, n))
    n_blocks = int(np.ceil(n / block))
    starts = rng.integers(0, n - block + 1, size=(n_boot, n_blocks))
    idx = (starts[:, :, None] + np.arange(block)[None, None, :]).reshape(n_boot, -1)[:, :n]
    return idx


def bootstrap_ci(
    p: np.ndarray,
    stat: Callable[[np.ndarray], np.ndarray],
    *,
    n_boot: int = 500,
    ci: float = 0.9,
    block: int | None = None,
    seed: int = 3,
) -> tuple[float, float]:
    """CI of ``stat`` (vectorised over rows of a ``[n_boot, n]`` array) by moving-block bootstrap."""
    n = len(p)
    if n < 4:
        return (float("nan"), float("nan"))
    block = block or max(2, round(np.sqrt(n)))
    idx = block_bootstrap_index(n, n_boot, block, np.random.default_rng(seed))
    vals = stat(p[idx])
    a = (1 - ci) / 2
    return float(np.nanquantile(vals, a)), float(np.nanquantile(vals, 1 - a))


def sharpe_rows(ann: float) -> Callable[[np.ndarray], np.ndarray]:
    def f(m: np.ndarray) -> np.ndarray:
        sd = m.std(axis=1, ddof=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(sd > 0, m.mean(axis=1) / sd * np.sqrt(ann), 0.0)

    return f


def metrics_from_pnl(
    frame: pd.DataFrame, timeframe: str, *, n_boot: int = 300, ci: float = 0.9, seed: int = 3
) -> dict[str, float]:
    ann = bars_per_year(timeframe)
    p = portfolio_pnl(frame).to_numpy()
    pos = frame["position"].to_numpy()
    net = frame["net"].to_numpy()
    active = pos != 0
    wins, losses = net[net > 0].sum(), -net[net < 0].sum()
    sh_lo, sh_hi = bootstrap_ci(p, sharpe_rows(ann), n_boot=n_boot, ci=ci, seed=seed)
    nr_lo, nr_hi = bootstrap_ci(p, lambda m: m.sum(axis=1), n_boot=n_boot, ci=ci, seed=seed)
    return {
        "net_return": float(p.sum()),
        "net_return_ci_low": nr_lo,
        "net_return_ci_high": nr_hi,
        "gross_return": float(portfolio_pnl(frame.assign(net=frame["gross"])).sum()),
        "sharpe": _sharpe(p, ann),
        "sharpe_ci_low": sh_lo,
        "sharpe_ci_high": sh_hi,
        "sortino": _sortino(p, ann),
        "max_drawdown": max_drawdown(p),
        "hit_rate": float(np.mean(net[active] > 0)) if active.any() else 0.0,
        "profit_factor": float(wins / losses)
        if losses > 0
        else (float("inf") if wins > 0 else 0.0),
        "turnover": float(frame["turnover"].sum()),
        "trades": float((frame["turnover"] > 0).sum()),
        "exposure": float(np.mean(active)) if len(pos) else 0.0,
        "bars": float(len(p)),
    }


def backtest(
    ds: pd.DataFrame,
    positions: np.ndarray,
    timeframe: str,
    costs: Costs | None = None,
    *,
    n_boot: int = 300,
    ci: float = 0.9,
) -> dict[str, float]:
    """Net metrics of ``positions`` over ``ds`` (one symbol or several)."""
    return metrics_from_pnl(
        pnl_frame(ds, positions, timeframe, costs), timeframe, n_boot=n_boot, ci=ci
    )


def momentum_positions(ds: pd.DataFrame, lookback: int = 24) -> np.ndarray:
    """Sign of the last ``lookback`` bars' return (bars up to and including *t*)."""
    past = ds.groupby("symbol", sort=False)["ret_next"].shift(1).fillna(0.0)
    mom = past.groupby(ds["symbol"], sort=False).transform(
        lambda s: s.rolling(lookback, min_periods=1).sum()
    )
    return np.sign(mom.to_numpy()).astype(np.int64)


def baselines(
    ds: pd.DataFrame, timeframe: str, costs: Costs | None = None, *, n_boot: int = 300
) -> dict[str, dict[str, float]]:
    n = len(ds)
    return {
        "flat": backtest(ds, np.zeros(n, dtype=np.int64), timeframe, costs, n_boot=n_boot),
        "buy_and_hold": backtest(ds, np.ones(n, dtype=np.int64), timeframe, costs, n_boot=n_boot),
        "momentum": backtest(ds, momentum_positions(ds), timeframe, costs, n_boot=n_boot),
    }


def equity_curve(
    ds: pd.DataFrame, positions: np.ndarray, timeframe: str = "M5", costs: Costs | None = None
) -> pd.Series:
    """Cumulative portfolio net log return, indexed by bar close."""
    return portfolio_pnl(pnl_frame(ds, positions, timeframe, costs)).cumsum()


def costs_from_config(cfg: object) -> Costs:
    """:class:`Costs` from an :class:`training.config.CostConfig`."""
    c = cfg
    return Costs(
        commission=float(c.commission),  # type: ignore[attr-defined]
        slippage=slippage_for_costs(c),
        swap_long_per_day=float(c.swap_long_per_day),  # type: ignore[attr-defined]
        swap_short_per_day=float(c.swap_short_per_day),  # type: ignore[attr-defined]
    )
