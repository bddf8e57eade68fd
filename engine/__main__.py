"""``python -m engine``: the lean engine in live mode, with nothing but ``engine/`` and
``engine/requirements.txt`` installed (the engine image, or the Windows host next to MT5).

The terminal is native or an mt5linux bridge (``TX_MT5_MODE``), features come from Redis in
Feast's format, the model from serving; the control API and ``/metrics`` serve on
``TX_ENGINE_CONTROL_HOST:PORT`` when ``TX_ENGINE_TOKEN`` is set. Paper and backtest modes need
the platform (``tx engine run``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

log = logging.getLogger("engine")


def main(argv: list[str] | None = None) -> int:
    """Run live until interrupted; returns the exit code."""
    p = argparse.ArgumentParser(prog="python -m engine", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--features",
        default="",
        help="comma-separated feature names in the model's order; default: the manifest of "
        "TX_ENGINE_BUNDLE_DIR",
    )
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    import redis

    from engine.app import ModelHandle, build_engine, start_explain_worker
    from engine.config import EngineSettings
    from engine.control import ControlServer
    from engine.features import OnlineFeatureReader
    from engine.mt5 import TIMEFRAMES

    es = EngineSettings()
    if es.mt5_mode == "sim" and not es.venues:
        print(
            "error: live mode trades a real terminal: set TX_MT5_MODE=native or bridge",
            file=sys.stderr,
        )
        return 2
    names = [f for f in args.features.split(",") if f]
    if not names and es.bundle_dir is not None:
        names = list(json.loads((es.bundle_dir / "manifest.json").read_text())["features"])
    if not names:
        print(
            "error: give --features or TX_ENGINE_BUNDLE_DIR (its manifest.json lists them)",
            file=sys.stderr,
        )
        return 2
    from engine.app import engine_slippage, open_router
    from engine.journal import Journal

    journal = Journal(es.journal_target)
    # TX_ENGINE_VENUES: several venues, else None; costs with the learned slippage when on
    router = open_router(es, journal, estimator=engine_slippage(es))
    terminal = router.terminal if router is not None else es.open_terminal()
    reader = OnlineFeatureReader(
        redis.Redis.from_url(es.redis_url),
        project=es.feast_project,
        feature_view=es.feature_view,
        features=names,
    )
    engine = build_engine(
        es,
        terminal=terminal,
        features=reader,
        model=ModelHandle(es),
        clock=time.time,
        journal=journal,
        router=router,
    )
    from engine.reconcile import start_reconcile

    recon = start_reconcile(engine, es, own_link=es.mt5_mode == "bridge" and router is None)
    worker = start_explain_worker(es, engine)
    server = None
    token = es.secret("engine_token")
    if token:
        server = ControlServer(
            engine, token=token, host=es.control_host, port=es.control_port
        ).start()
    else:
        log.warning("TX_ENGINE_TOKEN is not set: the control API, console and /metrics are off")
    try:
        engine.run_live(
            es.symbols, TIMEFRAMES[es.timeframe], utc_offset_hours=es.broker_utc_offset_hours
        )
    except KeyboardInterrupt:
        log.info("stopped")
    finally:
        if recon is not None:
            recon.stop()
        if server is not None:
            server.stop()
        if worker is not None:
            worker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
