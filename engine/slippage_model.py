"""Expected slippage of one order, for the engine's edge gate and the training backtest:
the promoted learned model (MLflow ``tx_slippage`` alias ``champion``, fitted on journaled
fills by :mod:`training.slippage`) or, when there is none, the fixed formula
``0.25 × spread + 0.05 × volatility`` (points).

**Never on the hot path's clock.** :func:`load_slippage_estimator` is called at start and on
the engine's reload, never per order: it reads the champion's folder once (pulled from the registry by
``tx slippage pull``, refreshed by ``tx slippage fit`` when it promotes, the way the trading
model's bundle reaches the engine), caches it, and answers :class:`FixedSlippage` when there
is no model, ``xgboost`` is not installed or the files are unreadable; the reason is logged
once. The engine never imports MLflow (it deploys alone). :meth:`LearnedSlippage.points` is
one small in-memory XGBoost prediction.

The model's files (``manifest.json`` with the feature order, ``mean.ubj``,
``quantiles.ubj``) are the native XGBoost boosters, readable by any XGBoost ≥ 2; the same
folder is what :func:`training.slippage.fit` writes and logs.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

log = logging.getLogger(__name__)

MODEL_NAME = "tx_slippage"
CHAMPION = "champion"
BASE_FEATURES = ("spread_points", "vol_points", "volume", "side_buy", "hour_utc")
"""Numeric features in model order; one-hot columns ``venue=<name>``, ``symbol=<name>`` follow."""


@runtime_checkable
class SlippageEstimator(Protocol):
    """Expected adverse slippage of one market order, in points."""

    def points(
        self,
        *,
        symbol: str,
        venue: str,
        side: str,
        volume: float,
        spread_points: float,
        vol_points: float,
        hour: int,
    ) -> float: ...


@dataclass(frozen=True)
class FixedSlippage:
    """Today's formula ``spread_k × spread + vol_k × volatility`` (points); the fallback."""

    spread_k: float = 0.25
    vol_k: float = 0.05
    source: str = "fixed"

    def points(
        self,
        *,
        symbol: str,
        venue: str,
        side: str,
        volume: float,
        spread_points: float,
        vol_points: float,
        hour: int,
    ) -> float:
        return self.spread_k * max(float(spread_points), 0.0) + self.vol_k * max(
            float(vol_points), 0.0
        )


def feature_names(venues: Sequence[str], symbols: Sequence[str]) -> list[str]:
    """The model's column order: :data:`BASE_FEATURES`, then venue and symbol one-hots."""
    return list(BASE_FEATURES) + [f"venue={v}" for v in venues] + [f"symbol={s}" for s in symbols]


def feature_row(
    names: Sequence[str],
    *,
    symbol: str,
    venue: str,
    side: str,
    volume: float,
    spread_points: float,
    vol_points: float,
    hour: int,
) -> list[float]:
    """One order as a row in ``names`` order (an unseen venue or symbol is all zeros)."""
    if side not in ("buy", "sell"):
        raise ValueError(f"side must be 'buy' or 'sell', not {side!r}")
    base = {
        "spread_points": float(spread_points),
        "vol_points": float(vol_points),
        "volume": float(volume),
        "side_buy": 1.0 if side == "buy" else 0.0,
        "hour_utc": float(int(hour) % 24),
        f"venue={venue}": 1.0,
        f"symbol={symbol}": 1.0,
    }
    return [base.get(n, 0.0) for n in names]


class LearnedSlippage:
    """The fitted model: a mean booster (``reg:squarederror``) and one multi-quantile booster
    (``reg:quantileerror``), both XGBoost, with the manifest that names the feature order."""

    def __init__(self, manifest: Mapping[str, Any], mean: Any, quantiles: Any) -> None:
        self.manifest = dict(manifest)
        self.features: list[str] = list(manifest["features"])
        self.quantile_levels: list[float] = [float(q) for q in manifest["quantiles"]]
        self.version: str | None = manifest.get("model_version")
        self.source = f"{MODEL_NAME} v{self.version}" if self.version else MODEL_NAME
        self._mean = mean
        self._q = quantiles
        self._lock = threading.Lock()  # a Booster is not documented as thread-safe

    @classmethod
    def from_dir(cls, path: Path | str, version: str | None = None) -> LearnedSlippage:
        """Load ``manifest.json``, ``mean.ubj`` and ``quantiles.ubj`` from ``path``."""
        import xgboost as xgb

        p = Path(path)
        manifest = json.loads((p / "manifest.json").read_text(encoding="utf-8"))
        if version is not None:
            manifest["model_version"] = str(version)
        mean, q = xgb.Booster(), xgb.Booster()
        mean.load_model(str(p / manifest.get("mean_file", "mean.ubj")))
        q.load_model(str(p / manifest.get("quantiles_file", "quantiles.ubj")))
        return cls(manifest, mean, q)

    def predict(self, x: Any) -> dict[str, Any]:
        """Batch prediction on a 2-D array in :attr:`features` order: ``{"mean": (n,),
        "q": (n, len(quantiles))}``, points; quantiles sorted per row (no crossing)."""
        import numpy as np

        a = np.asarray(x, dtype=np.float32)
        if a.ndim != 2 or a.shape[1] != len(self.features):
            raise ValueError(f"expected (n, {len(self.features)}) features, got {a.shape}")
        with self._lock:
            mean = np.asarray(self._mean.inplace_predict(a), dtype=float).reshape(-1)
            q = np.asarray(self._q.inplace_predict(a), dtype=float).reshape(len(a), -1)
        return {"mean": np.maximum(mean, 0.0), "q": np.sort(q, axis=1)}

    def quantiles(self, **order: Any) -> dict[float, float]:
        """The quantiles of one order's slippage (keyword arguments as :meth:`points`)."""
        row = feature_row(self.features, **order)
        q = self.predict([row])["q"][0]
        return {lvl: float(v) for lvl, v in zip(self.quantile_levels, q, strict=True)}

    def points(
        self,
        *,
        symbol: str,
        venue: str,
        side: str,
        volume: float,
        spread_points: float,
        vol_points: float,
        hour: int,
    ) -> float:
        row = feature_row(
            self.features,
            symbol=symbol,
            venue=venue,
            side=side,
            volume=volume,
            spread_points=spread_points,
            vol_points=vol_points,
            hour=hour,
        )
        v = float(self.predict([row])["mean"][0])
        return v if math.isfinite(v) else 0.0


def gate_cost_points(engine: Any, symbol: str, position: int, spread_points: float) -> float:
    """Cost of the engine's edge gate with a slippage estimator (``engine.slippage``): the
    spread plus the estimate for an order of ``position``'s side now, in points.

    The state is the fill record's: the quote's spread, the standard deviation of the last 24
    one-bar returns of the engine's timeframe × price in points, the hour (engine clock, UTC),
    the engine's venue. The size is the configured ``fixed_lots``, because the gate runs
    before risk sizing. An estimator that raises costs the fixed formula for this order (said
    in the log); terminal reads fail as every read on the decision path does."""
    from engine.execution import FILL_VOL_WINDOW
    from engine.sizing import return_volatility

    term = engine.terminal
    info = engine._symbol_info(symbol)  # the bar's reads (one per decided bar)
    tick = term.symbol_info_tick(symbol)
    rates = engine._closed_bars(symbol, FILL_VOL_WINDOW + 1)
    vol_points = 0.0
    if rates is not None and info is not None and tick is not None and info.point:
        price = tick.ask if position > 0 else tick.bid
        vol_points = return_volatility(rates["close"], FILL_VOL_WINDOW) * price / info.point
    order = {
        "symbol": symbol,
        "venue": engine.executor.venue,
        "side": "buy" if position > 0 else "sell",
        "volume": float(engine.sizing.fixed_lots),
        "spread_points": float(spread_points),
        "vol_points": float(vol_points),
        "hour": int(engine.clock() // 3600) % 24,
    }
    try:
        slip = float(engine.slippage.points(**order))
        if not math.isfinite(slip):
            raise ValueError(f"estimate {slip}")
    except Exception as exc:
        log.warning("slippage estimator failed (%s): the fixed formula for this order", exc)
        slip = FixedSlippage().points(**order)
    return float(spread_points) + slip


def batch_points(
    estimator: SlippageEstimator,
    *,
    symbols: Any,
    venue: str,
    side: str,
    volume: float,
    spread_points: Any,
    vol_points: Any,
    hours: Any,
) -> Any:
    """Estimates for many orders (numpy arrays of equal length; ``venue``, ``side`` and
    ``volume`` shared): one matrix prediction for a :class:`LearnedSlippage`, else one
    :meth:`~SlippageEstimator.points` call per order."""
    import numpy as np

    sym = np.asarray(symbols).astype(str)
    sp = np.asarray(spread_points, dtype=float)
    vp = np.asarray(vol_points, dtype=float)
    hr = np.asarray(hours).astype(int) % 24
    if isinstance(estimator, LearnedSlippage):
        x = np.zeros((len(sp), len(estimator.features)), dtype=np.float32)
        cols = {
            "spread_points": sp,
            "vol_points": vp,
            "volume": np.full(len(sp), float(volume)),
            "side_buy": np.full(len(sp), 1.0 if side == "buy" else 0.0),
            "hour_utc": hr.astype(float),
        }
        for i, n in enumerate(estimator.features):
            if n in cols:
                x[:, i] = cols[n]
            elif n == f"venue={venue}":
                x[:, i] = 1.0
            elif n.startswith("symbol="):
                x[:, i] = sym == n[7:]
        return estimator.predict(x)["mean"]
    return np.array(
        [
            estimator.points(
                symbol=s,
                venue=venue,
                side=side,
                volume=volume,
                spread_points=a,
                vol_points=b,
                hour=int(h),
            )
            for s, a, b, h in zip(sym, sp, vp, hr, strict=True)
        ],
        dtype=float,
    )


_cache: dict[str, tuple[float, SlippageEstimator]] = {}
_cache_lock = threading.Lock()


def _stamp(p: Path) -> float:
    m = p / "manifest.json"
    return m.stat().st_mtime if m.is_file() else -1.0


def load_slippage_estimator(
    model_dir: Path | str | None = None,
    *,
    fallback: SlippageEstimator | None = None,
    reload: bool = False,
) -> SlippageEstimator:
    """The promoted slippage model (``tx_slippage@champion``) as pulled into ``model_dir``
    (``tx slippage pull``; ``tx slippage fit`` refreshes ``$TX_HOME/slippage/champion`` when
    it promotes), cached per folder; ``fallback`` (default :class:`FixedSlippage`) when there
    is no folder, no model in it, ``xgboost`` is not installed or the files are unreadable
    (logged once). The lean engine never imports MLflow: the registry is read by the platform
    side (:func:`training.slippage.pull_champion`). ``reload=True`` reads the folder again."""
    fb: SlippageEstimator = fallback if fallback is not None else FixedSlippage()
    if model_dir is None:
        return fb
    p = Path(model_dir)
    key = str(p.resolve())
    stamp = _stamp(p)
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None and not reload and hit[0] == stamp:
            return hit[1]
    est: SlippageEstimator
    if stamp < 0:
        log.info("slippage: no model in %s: using the fixed formula", p)
        est = fb
    else:
        try:
            est = LearnedSlippage.from_dir(p)
            log.info("slippage: using %s (%s)", getattr(est, "source", MODEL_NAME), p)
        except Exception as exc:  # any failure means: use the fallback, say why
            log.warning("slippage: model in %s not loaded (%s): using the fixed formula", p, exc)
            est = fb
    with _cache_lock:
        _cache[key] = (stamp, est)
    return est
