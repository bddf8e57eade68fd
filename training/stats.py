"""Significance tests the promotion gate uses (pure functions on numpy arrays).

:func:`diebold_mariano` — Diebold-Mariano (1995) test of equal expected per-bar P&L with the
Harvey-Leybourne-Newbold (1997) small-sample correction, one-sided for "the challenger's P&L
is higher". The loss differential is ``d_t = challenger_t - champion_t`` (per-bar net P&L, so
a *gain* differential: positive means the challenger earned more on that bar).

* Mean ``d̄`` and autocovariances ``γ_k = (1/n) Σ_{t>k} (d_t - d̄)(d_{t-k} - d̄)``;
* long-run variance, Newey-West (Bartlett weights, never negative):
  ``V = γ_0 + 2 Σ_{k=1..L} (1 - k/(L+1)) γ_k``;
* ``DM = d̄ / sqrt(V / n)``;
* HLN: ``DM* = DM · sqrt((n + 1 - 2h + h(h-1)/n) / n)`` with ``h = L + 1``, compared with
  Student's t with ``n - 1`` degrees of freedom; p-value ``P(t_{n-1} ≥ DM*)``.

Lag rule (the gate's): ``L = label horizon - 1`` — a position is chosen from an ``h``-bar
forecast, so per-bar P&L of overlapping forecasts is serially dependent up to ``h - 1`` lags,
the classical DM choice for ``h``-step forecasts (``gate.dm_lag`` overrides it). With ``L = 0``
``DM*`` is exactly the one-sample t statistic of ``d`` (``(n-1)/n`` times the biased variance
is the unbiased one). HLN derived the factor for the rectangular kernel; used with the
Bartlett kernel it is the usual, slightly conservative, approximation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class DMResult:
    stat: float  # HLN-corrected statistic DM*
    p_value: float  # one-sided: P(t_{n-1} >= DM*), small when the challenger is better
    mean_diff: float  # d̄, per bar
    lrv: float  # Newey-West long-run variance of d
    lag: int
    n: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def newey_west_variance(d: np.ndarray, lag: int) -> float:
    """Long-run variance of ``d`` with Bartlett weights up to ``lag`` (biased autocovariances)."""
    e = np.asarray(d, dtype=float) - float(np.mean(d))
    n = len(e)
    v = float(e @ e) / n
    for k in range(1, min(lag, n - 1) + 1):
        v += 2.0 * (1.0 - k / (lag + 1.0)) * float(e[k:] @ e[:-k]) / n
    return max(v, 0.0)


def diebold_mariano(challenger: np.ndarray, champion: np.ndarray, lag: int = 0) -> DMResult:
    """One-sided DM/HLN test that ``challenger`` has the higher expected per-bar value.

    ``challenger`` and ``champion`` are aligned per-bar net P&L series of equal length."""
    from scipy import stats

    a = np.asarray(challenger, dtype=float)
    b = np.asarray(champion, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"need two aligned 1-d series, got shapes {a.shape} and {b.shape}")
    if lag < 0:
        raise ValueError("lag must be >= 0")
    d = a - b
    n = len(d)
    if n < 3:
        raise ValueError(f"the DM test needs at least 3 aligned bars, got {n}")
    mean = float(d.mean())
    lrv = newey_west_variance(d, lag)
    h = lag + 1
    hln = np.sqrt(max(n + 1 - 2 * h + h * (h - 1) / n, 0.0) / n)
    if lrv <= 1e-300:  # a constant differential: the sign decides, with certainty
        stat = 0.0 if mean == 0 else float(np.copysign(np.inf, mean))
    else:
        stat = float(mean / np.sqrt(lrv / n) * hln)
    return DMResult(
        stat=stat, p_value=float(stats.t.sf(stat, df=n - 1)), mean_diff=mean, lrv=lrv, lag=lag, n=n
    )
