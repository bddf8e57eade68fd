"""The engine's world per mode, wired from the platform side (``tx engine run``, the bench).

The engine package stays lean; this module may use the platform (feature_repo) to give it a
world: ``live`` — native/bridge terminal, wall clock, features from Redis; ``paper`` —
simulated terminal on the wall clock, features pushed to Redis each bar and read back;
``backtest`` — simulated terminal on a simulated clock, features computed in memory from the
terminal's bars, as fast as the engine goes. The engine code is the same in all three.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def precompute_sequences(
    terminal: Any,
    symbols: list[str],
    timeframe: str,
    start_utc: int,
    end_utc: int,
    offset_hours: int,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each symbol's sequence feature (``[N, SEQ_LEN, C]`` float32, event time = bar close)."""
    from engine.mt5 import TIMEFRAMES, timeframe_seconds
    from feature_repo.pipeline.ingest import rates_to_frame
    from feature_repo.pipeline.transforms import (
        SEQ_CHANNELS,
        SEQ_FIELD,
        SEQ_LEN,
        SEQ_WARMUP_BARS,
        compute_sequences,
    )

    step = timeframe_seconds(timeframe)
    off = offset_hours * 3600
    lo = start_utc - max((SEQ_WARMUP_BARS + 60) * step * 3, 10 * 86_400)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for sym in symbols:
        rates = terminal.copy_rates_range(
            sym, TIMEFRAMES[timeframe], lo + off, end_utc + off - step
        )
        f = compute_sequences(
            rates_to_frame(rates, sym, timeframe, offset_hours),
            float(terminal.symbol_info(sym).point),
        )
        t = np.array([int(x.timestamp()) for x in f["event_timestamp"]], dtype=np.int64)
        keep = (t >= start_utc) & (t <= end_utc)
        seq = (
            np.stack(list(f[SEQ_FIELD]))
            if len(f)
            else np.zeros((0, SEQ_LEN * len(SEQ_CHANNELS)), np.float32)
        )
        out[sym] = (t[keep], seq[keep].reshape(-1, SEQ_LEN, len(SEQ_CHANNELS)).astype(np.float32))
    return out


def precompute_features(
    terminal: Any,
    symbols: list[str],
    timeframe: str,
    start_utc: int,
    end_utc: int,
    offset_hours: int,
    names: list[str],
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each symbol's feature rows (event time = bar close, UTC) for bars closing in
    ``[start_utc, end_utc]``, from the same transforms the pipeline uses. The terminal's clock
    must stand at or after ``end_utc``."""
    from engine.mt5 import TIMEFRAMES, timeframe_seconds
    from feature_repo.pipeline.ingest import rates_to_frame
    from feature_repo.pipeline.transforms import SPECS, compute_features

    step = timeframe_seconds(timeframe)
    warm = max(SPECS[n].window for n in names) + 60
    off = offset_hours * 3600
    lo = start_utc - max(warm * step * 3, 10 * 86_400)  # weekends and gaps in the warm-up
    frames = {}
    for sym in symbols:
        rates = terminal.copy_rates_range(
            sym, TIMEFRAMES[timeframe], lo + off, end_utc + off - step
        )
        frames[sym] = rates_to_frame(rates, sym, timeframe, offset_hours)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for sym in symbols:
        info = terminal.symbol_info(sym)
        others = {k: v for k, v in frames.items() if k != sym}
        f = compute_features(frames[sym], float(info.point), others or None, names=names)
        t = np.array([int(x.timestamp()) for x in f["event_timestamp"]], dtype=np.int64)
        keep = (t >= start_utc) & (t <= end_utc)
        out[sym] = (t[keep].astype(np.int64), f[names].to_numpy(np.float64)[keep])
    return out


@dataclass
class BacktestWorld:
    """A simulated terminal on a settable clock, its bar closes and in-memory features."""

    terminal: Any
    now: list[int]
    closes: list[int]
    features: Any

    def set_time(self, t: int) -> None:
        """Move the simulated clock."""
        self.now[0] = int(t)


def backtest_world(
    settings: Any, start_utc: int, end_utc: int, names: list[str], *, sequence: bool = False
) -> BacktestWorld:
    """The world of a backtest over ``(start_utc, end_utc]`` on the platform's terminal
    (``names`` may be ``view:feature`` refs; ``sequence`` adds the bar sequence feature)."""
    from engine.backtest import ArrayFeatureSource, bar_closes
    from engine.mt5 import TIMEFRAMES
    from feature_repo.pipeline.ingest import open_platform_terminal

    now = [int(end_utc)]
    terminal = open_platform_terminal(settings, clock=lambda: now[0])
    plain = [n.split(":", 1)[-1] for n in names]
    tables = precompute_features(
        terminal,
        list(settings.symbols),
        settings.timeframe,
        start_utc,
        end_utc,
        settings.broker_utc_offset_hours,
        plain,
    )
    seqs = None
    if sequence:
        seqs = precompute_sequences(
            terminal,
            list(settings.symbols),
            settings.timeframe,
            start_utc,
            end_utc,
            settings.broker_utc_offset_hours,
        )
    closes = bar_closes(
        terminal,
        list(settings.symbols),
        TIMEFRAMES[settings.timeframe],
        start_utc,
        end_utc,
        settings.broker_utc_offset_hours,
    )
    now[0] = int(start_utc)
    return BacktestWorld(
        terminal,
        now,
        closes,
        ArrayFeatureSource(plain, tables, clock=lambda: float(now[0]), sequences=seqs),
    )


def _feature_names(es: Any, given: list[str]) -> list[str]:
    if given:
        return given
    if es.bundle_dir is not None:
        import json

        return list(json.loads((es.bundle_dir / "manifest.json").read_text())["features"])
    from feature_repo.pipeline.transforms import TREND_V1_FEATURES

    return list(TREND_V1_FEATURES)  # trend_fv, the engine's default view


def default_bundle_dir(settings: Any, ref: str = "champion") -> Path:
    """Where ``tx models pull REF`` writes by default: ``$TX_HOME/bundles/<REF>``."""
    return Path(settings.home) / "bundles" / ref


def backtest_model(es: Any, ps: Any) -> Any:
    """The model a backtest scores with, in this order: ``TX_ENGINE_BUNDLE_DIR``; the bundle
    ``tx models pull champion`` wrote under ``TX_HOME`` (in-process ONNX, hash-checked); the
    serving API when it answers. None of them: a :class:`TxError` before any bar is replayed
    (a backtest that refuses every bar for want of a model is not a result)."""
    from engine.app import ModelHandle
    from engine.serving_client import OnnxModel
    from titanovax.errors import TxError

    if es.bundle_dir is not None:
        return OnnxModel.from_dir(es.bundle_dir)
    pulled = default_bundle_dir(ps)
    if (pulled / "model.onnx").is_file():
        log.info("backtest scores with the pulled bundle %s", pulled)
        return OnnxModel.from_dir(pulled)
    import httpx

    url = es.serving_url.rstrip("/")
    try:
        httpx.get(f"{url}/healthz", timeout=2.0)
    except httpx.HTTPError as exc:
        raise TxError(
            f"no model to backtest: no bundle in TX_ENGINE_BUNDLE_DIR or {pulled}, and serving "
            f"at {url} does not answer",
            "run `tx models pull champion` (or start `tx serve`) and run again",
        ) from exc
    return ModelHandle(es)


def _replay_quietly(engine: Any, world: BacktestWorld, symbols: list[str]) -> Any:
    """The backtest's replay with a progress bar over its bar closes (on a terminal only) and
    without the simulated terminal's line per order (``opened #…``, ``closed #…``): every fill
    is in the journal and the summary counts them. ``tx -v`` (debug logging) keeps them."""
    from engine.backtest import run_backtest
    from titanovax.progress import progress

    sim_log = logging.getLogger("engine.mt5.sim")
    level = sim_log.level
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        sim_log.setLevel(max(level, logging.WARNING))
    step = 64  # closes per bar update: the bar's lock stays off the per-close path
    try:
        with progress("backtest", len(world.closes)) as advance:
            seen = [0]

            def set_time(t: int) -> None:
                world.set_time(t)
                seen[0] += 1
                if seen[0] % step == 0:
                    advance(step)

            return run_backtest(engine, world.closes, symbols, set_time)
    finally:
        sim_log.setLevel(level)


def run_engine(
    mode: str | None,
    *,
    start_utc: int | None = None,
    end_utc: int | None = None,
    feature_names: list[str] | None = None,
) -> dict[str, Any]:
    """Run the engine in ``mode`` (default ``TX_ENGINE_MODE``): ``backtest`` returns its
    summary; ``live`` and ``paper`` run until interrupted (the control API serves meanwhile
    when ``TX_ENGINE_TOKEN`` is set)."""
    import time
    from datetime import UTC, datetime

    from engine.app import ModelHandle, build_engine, start_explain_worker
    from engine.backtest import PrecomputedModel
    from engine.config import EngineSettings
    from engine.control import ControlServer
    from engine.journal import Journal, redact_dsn
    from engine.mt5 import TIMEFRAMES
    from engine.serving_client import OnnxModel
    from titanovax.settings import PlatformSettings

    es = EngineSettings()
    ps = PlatformSettings()
    mode = mode or es.mode
    names = _feature_names(es, feature_names or [])
    if mode == "backtest":
        if start_utc is None or end_utc is None:
            from titanovax.errors import TxError

            raise TxError("a backtest needs its span", "give --start and --end", exit_code=2)
        model: Any = backtest_model(es, ps)
        seq = bool(getattr(model, "seq_input", None))
        world = backtest_world(
            ps.model_copy(update={"symbols": es.symbols}), start_utc, end_utc, names, sequence=seq
        )
        if isinstance(model, OnnxModel):  # stateless: score every bar in one batched call
            model = PrecomputedModel.score(model, world.features, es.symbols)
        # a backtest never writes into the paper/live journal (TX_JOURNAL_URL/PATH) unless
        # TX_ENGINE_BACKTEST_JOURNAL names it explicitly; its rows are scoped "backtest" anyway
        target = es.backtest_journal or str(
            ps.home / "engine" / f"backtest-{datetime.now(UTC):%Y%m%dT%H%M%S%f}.sqlite"
        )
        engine = build_engine(
            es,
            terminal=world.terminal,
            features=world.features,
            model=model,
            clock=lambda: float(world.now[0]),
            journal=Journal(target, durable=es.backtest_journal_durable),
            sleep=lambda s: None,
            mode="backtest",
        )
        res = _replay_quietly(engine, world, es.symbols)
        lat = np.array(engine.stats.latencies_ms or [0.0])
        return {
            "mode": "backtest",
            "bars": res.bars,
            "decisions": res.decisions,
            "seconds": round(res.seconds, 2),
            "bars_per_s": round(res.bars_per_s, 1),
            "verdicts": res.counts,
            "refusals": res.refusals,
            "balance": res.balance,
            "equity": res.equity,
            "decision_ms_p50": round(float(np.percentile(lat, 50)), 3),
            "decision_ms_p99": round(float(np.percentile(lat, 99)), 3),
            "predictions": (
                {"precomputed": model.hits, "scored_per_bar": model.misses}
                if isinstance(model, PrecomputedModel)
                else {"scored_per_bar": res.decisions}
            ),
            "journal": redact_dsn(target),
            "journal_scope": engine.journal.scope,
            # commit points that waited for the disk: 0 unless TX_ENGINE_BACKTEST_JOURNAL_DURABLE
            "journal_durable": engine.journal.durable,
            "journal_sync_commits": engine.journal.sync_commits,
        }

    from engine.features import OnlineFeatureReader, redis_client

    before_bar = None
    router, journal = None, None
    if mode == "live" and es.venues:  # several venues: the smart order router (engine.router)
        from engine.app import engine_slippage, open_router
        from engine.journal import Journal

        journal = Journal(es.journal_target)
        router = open_router(es, journal, estimator=engine_slippage(es))
        terminal = router.terminal
    elif mode == "live":
        if es.mt5_mode == "sim":
            raise ValueError(
                "live mode trades a real terminal: set TX_MT5_MODE=native or bridge (paper mode uses the simulator)"
            )
        terminal = es.open_terminal()
    elif mode == "paper":
        from feature_repo.pipeline.ingest import open_platform_terminal
        from feature_repo.pipeline.stream import FeaturePusher

        sim = ps.model_copy(
            update={
                "mt5_mode": "sim",
                "symbols": es.symbols,
                "redis_url": ps.redis_url or es.redis_url,
            }
        )
        terminal = open_platform_terminal(sim)  # the simulated terminal on the wall clock
        before_bar = FeaturePusher(sim, terminal).push
    else:
        raise ValueError(f"unknown mode {mode!r}: live, paper or backtest")
    reader = OnlineFeatureReader(
        redis_client(es.redis_url, es.redis_timeout_s),
        project=es.feast_project,
        feature_view=es.feature_view,
        features=names,
        max_abs=es.feature_max_abs,
    )
    engine = build_engine(
        es,
        terminal=terminal,
        features=reader,
        model=ModelHandle(es),
        clock=time.time,
        mode=mode,
        journal=journal,
        router=router,
    )
    from engine.reconcile import start_reconcile

    own = es.mt5_mode == "bridge" and mode == "live" and router is None
    recon = start_reconcile(engine, es, own_link=own)
    worker = start_explain_worker(es, engine)
    server = None
    token = es.secret("engine_token")
    if token:
        server = ControlServer(
            engine,
            token=token,
            host=es.control_host,
            port=es.control_port,
            timeout_s=es.control_timeout_s,
        ).start()
    else:
        log.warning("TX_ENGINE_TOKEN is not set: the control API and console are off")
    log.info(
        "engine %s on %s %s; journal %s",
        mode,
        es.symbols,
        es.timeframe,
        redact_dsn(es.journal_target),
    )
    try:
        engine.run_live(
            es.symbols,
            TIMEFRAMES[es.timeframe],
            utc_offset_hours=es.broker_utc_offset_hours,
            before_bar=before_bar,
        )
    finally:
        if recon is not None:
            recon.stop()
        if server is not None:
            server.stop()
        if worker is not None:
            worker.stop()
    return {"mode": mode, "status": engine.status()}
