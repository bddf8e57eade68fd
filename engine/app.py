"""Wiring the engine from :class:`~engine.config.EngineSettings`: the model client (serving,
with the configured fallback) and the engine itself. The CLI and the bench call these."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from engine.config import EngineSettings
from engine.grid import GridRunner
from engine.journal import Journal
from engine.loop import Engine, FeatureSource
from engine.metrics import EngineMetrics
from engine.model_guard import GuardedModel, ModelGuard, bundle_guard
from engine.mt5 import TIMEFRAMES
from engine.mt5.protocol import Terminal
from engine.serving_client import FallbackModel, OnnxModel, ServingClient

log = logging.getLogger(__name__)


class ModelHandle:
    """The engine's model client, re-openable (control API ``reload``), behind the model
    guard (:mod:`engine.model_guard`): the fallback bundle's manifest guards its answers, the
    manifest in ``TX_ENGINE_BUNDLE_DIR`` guards serving's answers of that same bundle."""

    def __init__(self, settings: EngineSettings) -> None:
        self.settings = settings
        self.model = self._open()
        self.guarded = self._guard(self.model)

    def _guard(self, model: FallbackModel) -> GuardedModel:
        s = self.settings
        kw = {"max_age_days": s.model_max_age_days, "iqr_k": s.ood_iqr_k}
        guards: dict[str, ModelGuard] = {}
        if s.bundle_dir is not None:
            found = bundle_guard(s.bundle_dir, **kw)
            if found is not None:
                guards[found[0]] = found[1]
        fb = model.fallback
        if fb is not None:
            guards[fb.bundle_sha256] = ModelGuard(fb.manifest, label=fb.model_version, **kw)
        fetch = getattr(model.primary, "guard_manifest", None)
        return GuardedModel(model, guards, fetch=fetch, guard_kw=kw)

    def _open(self) -> FallbackModel:
        s = self.settings
        client = ServingClient(
            s.serving_url, s.serving_timeout_s, token=s.secret("serving_token"), api=s.serving_api
        )
        local = None
        if s.serving_fallback == "onnx":
            if s.bundle_dir is None:
                raise ValueError(
                    "TX_ENGINE_SERVING_FALLBACK=onnx needs TX_ENGINE_BUNDLE_DIR (model.onnx + manifest.json)"
                )
            local = OnnxModel.from_dir(s.bundle_dir)
        return FallbackModel(client, local, expected_sha256=s.bundle_sha256)

    def predict(self, row: Any) -> Any:
        """Delegate to the current model, through its guard."""
        return self.guarded.predict(row)

    def reload(self) -> dict[str, Any]:
        """Re-open the serving client and the local bundle (a new bundle dir content is read)."""
        old = self.model
        self.model = self._open()
        self.guarded = self._guard(self.model)
        close = getattr(old.primary, "close", None)
        if close is not None:
            close()
        fb = self.model.fallback
        return {"reloaded": True, "fallback_bundle_sha256": fb.bundle_sha256 if fb else None}


def build_engine(
    settings: EngineSettings,
    *,
    terminal: Terminal,
    features: FeatureSource,
    model: Any,
    clock: Callable[[], float] = time.time,
    journal: Journal | None = None,
    metrics: EngineMetrics | None = None,
    sleep: Callable[[float], None] = time.sleep,
    mode: str | None = None,
    router: Any = None,
) -> Engine:
    """An engine with the settings' frozen limits, sizing and execution config (``mode``
    scopes its journal rows; default ``TX_ENGINE_MODE``); ``router``: an
    :class:`engine.router.OrderRouter` over ``TX_ENGINE_VENUES`` (``terminal`` is its
    ``router.terminal``)."""
    reload = getattr(model, "reload", None)
    strategies = settings.strategies()
    grid = (
        GridRunner(settings.grid(), settings.grid_limits(), strategies)
        if any(v != "model" for v in strategies.values())
        else None
    )
    engine = Engine(
        terminal=terminal,
        features=features,
        model=model,
        journal=journal or Journal(settings.journal_target),
        limits=settings.risk_limits(),
        lots=settings.lots,
        magic=settings.magic,
        clock=clock,
        sizing=settings.sizing(),
        execution=settings.execution(),
        timeframe=TIMEFRAMES[settings.timeframe],
        server_utc_offset_hours=settings.broker_utc_offset_hours,
        metrics=metrics,
        sleep=sleep,
        reload_hook=reload if callable(reload) else None,
        mode=mode or settings.mode,
        explain=settings.explain,
        grid=grid,
        router=router,
        slippage=engine_slippage(settings),
    )
    if settings.slippage_model:  # a reload also re-reads the slippage champion's folder
        engine.reload_hook = _reload_with_slippage(engine, settings, engine.reload_hook)
    return engine


def _reload_with_slippage(
    engine: Engine, settings: EngineSettings, inner: Callable[[], dict[str, Any]] | None
) -> Callable[[], dict[str, Any]]:
    def hook() -> dict[str, Any]:
        info = inner() if inner is not None else {"reloaded": False, "detail": "no reload hook"}
        engine.slippage = engine_slippage(settings, reload=True)
        return {**info, "slippage": getattr(engine.slippage, "source", "fixed")}

    return hook


def engine_slippage(settings: EngineSettings, *, reload: bool = False) -> Any:
    """The edge gate's slippage estimator: ``None`` (the fixed spread fraction, as before)
    unless ``TX_ENGINE_SLIPPAGE_MODEL``; then the pulled ``tx_slippage`` champion, loaded once
    here (never per order), or the fixed formula when there is none."""
    if not settings.slippage_model:
        return None
    from engine.slippage_model import load_slippage_estimator

    return load_slippage_estimator(
        settings.slippage_model_dir or settings.home / "slippage" / "champion", reload=reload
    )


def open_router(
    settings: EngineSettings,
    journal: Journal,
    *,
    clock: Callable[[], int] | None = None,
    estimator: Any = None,
) -> Any:
    """The :class:`engine.router.OrderRouter` of ``TX_ENGINE_VENUES`` over ``journal``, or
    ``None`` when no venue is configured (the engine trades its one terminal, as before).
    ``estimator``: any object with the slippage ``points(...)`` call (default: the fixed
    0.25 x spread + 0.05 x volatility formula)."""
    from engine.router import OrderRouter, open_venues, parse_venues

    configs = parse_venues(settings.venues)
    if not configs:
        return None
    venues = open_venues(
        configs, clock=clock, server_utc_offset_hours=settings.broker_utc_offset_hours
    )
    return OrderRouter(
        venues,
        journal,
        settings.execution(),
        magic=settings.magic,
        estimator=estimator,
        timeframe=TIMEFRAMES[settings.timeframe],
    )


def start_explain_worker(settings: EngineSettings, engine: Engine) -> Any:
    """The contributions worker of ``engine``'s journal (:mod:`engine.explain_worker`) when
    ``TX_ENGINE_EXPLAIN_WORKER`` is on, else ``None``; the caller stops it."""
    if not (settings.explain_worker and settings.explain) or engine.journal.target == ":memory:":
        return None
    from engine.explain_worker import ExplainClient, ExplainWorker

    client = ExplainClient(settings.serving_url, token=settings.secret("serving_token"))
    return ExplainWorker(engine.journal.target, engine.journal.scope, client).start()
