"""The null-market canary: a market with nothing to learn, and the edge a model must not show on it.

A pure random walk (i.i.d. Gaussian log returns) has no predictable next move, so any model
trained on it through the real pipeline must score no better than chance on its test window:
accuracy within a stated band of the majority class, and net P&L no better than staying flat
beyond its bootstrap interval. An edge on this market is the signature of look-ahead (a label
attached late, a feature from the next bar, a P&L earned on a known return), not of skill.

:func:`write_random_walk_export` writes such a market as an MT5 ``copy_rates`` CSV, so it enters
through the same door as a real export (``TX_MT5_EXPORTS`` → ingest → validate → features).
:func:`null_edge` measures a run's edge from its ``backtest_step`` metrics and the test labels;
:func:`assert_no_edge` fails the run when the edge is beyond chance.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)


def random_walk_bars(
    symbol: str,
    start: datetime,
    days: int,
    *,
    seed: int,
    sigma: float = 3e-4,
    price: float = 1.1,
    digits: int = 5,
) -> pd.DataFrame:
    """M5 bars of a driftless random walk over the FX week (Sunday 22:00 to Friday 22:00 UTC).

    Close-to-close log returns are i.i.d. ``N(0, sigma)``; highs and lows add independent
    wicks. Tick volume and spread follow a fixed hour-of-day activity profile (busier in the
    London/New York overlap, tighter spreads then) with independent noise, as real FX bars do,
    so the validation rules see an ordinary market; none of it says anything about the next
    return. Columns: ``time`` (UTC open), ``open``, ``high``, ``low``, ``close``,
    ``tick_volume``, ``spread`` (points), ``real_volume``."""
    del symbol  # the path depends on the seed only; the name is the file's
    rng = np.random.default_rng(seed)
    t = pd.date_range(start, start + timedelta(days=days), freq="5min", inclusive="left", tz="UTC")
    wd, hr = t.dayofweek, t.hour
    t = t[(wd < 4) | ((wd == 4) & (hr < 22)) | ((wd == 6) & (hr >= 22))]
    n = len(t)
    hour = t.hour.to_numpy() + t.minute.to_numpy() / 60.0
    activity = (
        1.0
        + 2.0 * np.exp(-0.5 * ((hour - 14.0) / 3.0) ** 2)
        + 0.8 * np.exp(-0.5 * ((hour - 3.0) / 2.5) ** 2)
    )
    close = price * np.exp(np.cumsum(rng.normal(0.0, sigma, n)))
    open_ = np.concatenate([[price], close[:-1]])
    wick = np.abs(rng.normal(0.0, sigma / 2, (2, n)))
    high = np.maximum(open_, close) * np.exp(wick[0])
    low = np.minimum(open_, close) * np.exp(-wick[1])
    return pd.DataFrame(
        {
            "time": t,
            "open": open_.round(digits),
            "high": high.round(digits),
            "low": low.round(digits),
            "close": close.round(digits),
            "tick_volume": np.round(100 * activity * rng.uniform(0.7, 1.3, n)).astype(np.int64),
            "spread": np.round(30 / activity + rng.integers(0, 3, n)).astype(np.int64),
            "real_volume": np.zeros(n, dtype=np.int64),
        }
    )


def write_random_walk_export(
    folder: Path,
    symbol: str,
    start: datetime,
    days: int,
    *,
    seed: int,
    server_utc_offset_hours: int = 2,
    sigma: float = 3e-4,
) -> Path:
    """:func:`random_walk_bars` as ``<folder>/<symbol>_M5.csv`` in MT5 ``copy_rates`` form
    (times in broker server time, ``server_utc_offset_hours`` ahead of UTC)."""
    bars = random_walk_bars(symbol, start, days, seed=seed, sigma=sigma)
    bars["time"] = (bars["time"] + pd.Timedelta(hours=server_utc_offset_hours)).dt.strftime(
        "%Y-%m-%d %H:%M:%S"
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{symbol}_M5.csv"
    bars.to_csv(path, index=False)
    return path


class EdgeOnNullMarket(AssertionError):
    """A model showed an edge beyond chance on a market with nothing to learn: look-ahead."""


@dataclass(frozen=True)
class NullEdge:
    """A run's edge on the null market, against the band chance allows.

    ``accuracy_limit`` = majority share + ``z`` standard errors of a proportion over
    ``n_effective`` = test rows / label horizon (overlapping ``h``-bar labels are not
    independent; dividing by ``h`` is the conservative count). The P&L has an edge when the
    lower end of its block-bootstrap interval is above always-flat's net return."""

    accuracy: float
    majority: float
    accuracy_limit: float
    n_test: int
    n_effective: float
    net_return: float
    net_return_ci_low: float
    net_return_ci_high: float
    flat_net_return: float
    z: float

    @property
    def accuracy_edge(self) -> bool:
        return self.accuracy > self.accuracy_limit

    @property
    def pnl_edge(self) -> bool:
        return self.net_return_ci_low > self.flat_net_return

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def null_edge(
    metrics: dict[str, float], test_labels: np.ndarray, horizon: int, *, z: float = 3.0
) -> NullEdge:
    """The edge of a ``backtest_step`` run (its ``metrics``) whose test window has ``test_labels``."""
    y = np.asarray(test_labels)
    if len(y) == 0:
        raise ValueError("no test labels")
    majority = float(np.bincount(y.astype(np.int64), minlength=3).max() / len(y))
    n_eff = len(y) / max(horizon, 1)
    se = float(np.sqrt(majority * (1 - majority) / n_eff))
    edge = NullEdge(
        accuracy=float(metrics["test_accuracy"]),
        majority=majority,
        accuracy_limit=majority + z * se,
        n_test=len(y),
        n_effective=n_eff,
        net_return=float(metrics["test_net_return"]),
        net_return_ci_low=float(metrics["test_net_return_ci_low"]),
        net_return_ci_high=float(metrics["test_net_return_ci_high"]),
        flat_net_return=float(metrics.get("baseline_flat_net_return", 0.0)),
        z=z,
    )
    log.info("edge on the null market: %s", edge.to_dict())
    return edge


def assert_no_edge(edge: NullEdge) -> None:
    """Fail (:class:`EdgeOnNullMarket`) when the accuracy or the net P&L beats chance."""
    why = []
    if edge.accuracy_edge:
        why.append(
            f"accuracy {edge.accuracy:.3f} > {edge.accuracy_limit:.3f} (majority "
            f"{edge.majority:.3f} + {edge.z:g} s.e. over {edge.n_effective:.0f} effective rows)"
        )
    if edge.pnl_edge:
        why.append(
            f"net return interval [{edge.net_return_ci_low:.4f}, {edge.net_return_ci_high:.4f}] "
            f"lies above always-flat's {edge.flat_net_return:.4f}"
        )
    if why:
        raise EdgeOnNullMarket(
            "edge on a market with nothing to learn (look-ahead?): " + "; ".join(why)
        )
