"""``tx demo``: the whole path once, end to end, on embedded defaults.

1. private Redis (unless ``TX_REDIS_URL``), ``feast apply``, migrated Airflow DB;
2. the ``market_data`` DAG, one ``dag.test()`` per day, over ~30 days of the source;
3. the ``train_and_promote`` DAG as of the end of that span;
4. BentoML serving the ``champion`` imported from MLflow, started as a real HTTP server;
5. the engine in paper mode over the next, unseen week: per closed bar the feature pusher
   writes that bar's features to Redis, the engine reads them, asks serving, runs its risk
   check, sends orders to the simulated terminal and journals every decision;
6. everything started is stopped, and a summary printed.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from titanovax.settings import PlatformSettings

log = logging.getLogger(__name__)

SATURDAY = 5


def last_saturday(t: datetime) -> datetime:
    d = t.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return d - timedelta(days=(d.weekday() - SATURDAY) % 7)


@dataclass
class DemoPlan:
    history_start: datetime  # first market_data interval
    as_of: datetime  # training data ends here (a Saturday)
    engine_end: datetime  # the engine replays [as_of, engine_end)


def plan_span(
    settings: PlatformSettings, history_days: int, now: datetime | None = None
) -> DemoPlan:
    """Pick the span: the engine week ends at the latest Saturday with data."""
    if settings.mt5_exports:
        from engine.mt5.exports import scan_exports
        from feature_repo.pipeline.ingest import export_of

        files = scan_exports(settings.mt5_exports)
        key = (settings.symbols[0], settings.timeframe)
        if key not in files:
            raise SystemExit(
                f"no export for {key} in {settings.mt5_exports}; found {sorted(files)}"
            )
        try:
            ex = export_of(settings, *key)
        except ValueError as exc:  # a file without a spread/tick_volume column and no source
            raise SystemExit(f"error: {exc}") from exc
        last = datetime.fromtimestamp(
            int(ex.rates["time"][-1]) - settings.broker_utc_offset_hours * 3600, UTC
        )
        engine_end = last_saturday(last)
    else:
        engine_end = last_saturday(now or datetime.now(UTC))
    as_of = engine_end - timedelta(days=7)
    return DemoPlan(as_of - timedelta(days=history_days), as_of, engine_end)


@dataclass
class Summary:
    lines: list[tuple[str, str]] = field(default_factory=list)

    def add(self, k: str, v: object) -> None:
        self.lines.append((k, str(v)))

    def render(self) -> str:
        w = max(len(k) for k, _ in self.lines)
        return "\n".join(
            [
                "",
                "TitanovaX demo summary",
                "-" * (w + 40),
                *[f"{k:<{w}}  {v}" for k, v in self.lines],
            ]
        )


def _autodetect(settings: PlatformSettings) -> tuple[PlatformSettings, str] | None:
    """What ``TX_MT5_EXPORTS`` holds, when the settings do not name it
    (:func:`feature_repo.pipeline.ingest.autodetect_exports`); the choice is exported as
    ``TX_SYMBOLS``/``TX_TIMEFRAME`` so the DAG runs read it too, and printed."""
    from feature_repo.pipeline.ingest import autodetect_exports

    try:
        chosen, note = autodetect_exports(settings)
    except (ValueError, KeyError) as exc:
        raise SystemExit(f"error: {exc}") from exc
    if note is None:
        return None
    os.environ["TX_SYMBOLS"] = ",".join(chosen.symbols)
    os.environ["TX_TIMEFRAME"] = chosen.timeframe
    print(note, flush=True)
    return chosen, note


def _column_sources(settings: PlatformSettings) -> str:
    """The columns the exports lacked and where their values came from (the lake's record)."""
    from feature_repo.pipeline import lake

    rec = lake.read_column_sources(settings.lake_dir)
    if not rec:
        return "every column from the data"
    return "; ".join(
        f"{key}: " + ", ".join(f"{c}={v['source']}" for c, v in r["filled"].items())
        for key, r in rec.items()
    )


def _count_rows(root: Any, pattern: str) -> int:
    import pyarrow.parquet as pq

    return sum(pq.read_metadata(p).num_rows for p in root.glob(pattern))


def run_demo(
    history_days: int = 30, experiment: str = "trend_v1", port: int | None = None
) -> Summary:
    import warnings

    from titanovax.airflow_env import airflow_env, ensure_airflow_db
    from titanovax.redis_local import LocalRedis, free_port

    warnings.filterwarnings("ignore", category=FutureWarning, module=r"dask\..*")
    base = PlatformSettings()
    summary = Summary()
    t_start = time.perf_counter()
    with ExitStack() as stack:
        if not base.redis_url:
            redis_srv = stack.enter_context(LocalRedis())
            os.environ["TX_REDIS_URL"] = redis_srv.url
        os.environ.setdefault("TX_HOME", str(base.home))
        settings = PlatformSettings()
        detected = _autodetect(settings)
        if detected is not None:
            settings = detected[0]
        settings.home.mkdir(parents=True, exist_ok=True)
        os.environ.update(airflow_env(settings))
        ensure_airflow_db(settings)
        from feature_repo.pipeline.store import feast_apply

        feast_apply(settings)
        plan = plan_span(settings, history_days)
        log.info(
            "plan: history %s → %s, engine week %s → %s",
            plan.history_start,
            plan.as_of,
            plan.as_of,
            plan.engine_end,
        )

        # --- 2. market_data, one daily interval at a time ----------------------------------
        from rich.progress import Progress

        from dags.market_data import dag as market_dag  # a DAG object

        days = [
            plan.history_start + timedelta(days=i)
            for i in range((plan.as_of - plan.history_start).days)
        ]
        failed: list[str] = []
        t0 = time.perf_counter()
        with Progress(transient=False) as progress:
            bar = progress.add_task("market_data (dag.test per day)", total=len(days))
            for day in days:
                # Airflow 3 runs the data interval that ends at the given date
                dr = market_dag.test(logical_date=day + timedelta(days=1))
                if str(getattr(dr, "state", "")) not in ("success", "DagRunState.SUCCESS"):
                    failed.append(f"{day:%Y-%m-%d}: {dr.state}")
                progress.advance(bar)
        md_s = time.perf_counter() - t0
        lake_rows = _count_rows(settings.lake_dir, "**/bars.parquet")
        quarantined = (
            _count_rows(settings.quarantine_dir, "**/bars.parquet")
            if settings.quarantine_dir.exists()
            else 0
        )
        feat_rows = _count_rows(settings.offline_features_dir, "*.parquet")
        summary.add(
            "source",
            str(settings.mt5_exports or f"synthetic market (seed {settings.synthetic_seed})"),
        )
        summary.add("symbols / timeframe", f"{','.join(settings.symbols)} {settings.timeframe}")
        if detected is not None:
            summary.add("auto-detected", detected[1])
        summary.add("column sources", _column_sources(settings))
        summary.add(
            "history span (UTC)",
            f"{plan.history_start:%Y-%m-%d} → {plan.as_of:%Y-%m-%d} ({len(days)} daily runs, {md_s:.0f} s)",
        )
        summary.add("market_data runs failed", ", ".join(failed) or "none")
        summary.add("bars ingested (lake)", lake_rows)
        summary.add("bars quarantined", quarantined)
        summary.add("feature rows materialised", feat_rows)

        # --- 3. train_and_promote -------------------------------------------------------
        from dags.train_and_promote import dag as train_dag

        t0 = time.perf_counter()
        dr = train_dag.test(logical_date=plan.as_of, run_conf={"experiment": experiment})
        train_s = time.perf_counter() - t0
        from mlflow import MlflowClient

        client = MlflowClient(settings.tracking_uri, settings.tracking_uri)
        latest = max(
            client.search_model_versions(f"name='{settings.model_name}'"),
            key=lambda v: int(v.version),
        )
        run = client.get_run(str(latest.run_id))
        m = run.data.metrics
        summary.add("train_and_promote", f"{dr.state} in {train_s:.0f} s")
        summary.add(
            "MLflow model version",
            f"{settings.model_name} v{latest.version} (run {str(latest.run_id)[:8]})",
        )
        summary.add(
            "test metrics",
            f"acc {m.get('test_accuracy', float('nan')):.3f}  net {m.get('test_net_return', float('nan')):+.5f}"
            f"  sharpe {m.get('test_sharpe', float('nan')):.2f}  trades {m.get('test_trades', 0):.0f}"
            f"  parity {m.get('onnx_parity_max_abs_diff', float('nan')):.1e}",
        )
        summary.add(
            "test vs baselines (net)",
            f"sharpe 90% CI [{m.get('test_sharpe_ci_low', float('nan')):.2f}, {m.get('test_sharpe_ci_high', float('nan')):.2f}]"
            f"  buy&hold {m.get('baseline_buy_and_hold_net_return', float('nan')):+.5f}"
            f"  momentum {m.get('baseline_momentum_net_return', float('nan')):+.5f}  flat +0.00000"
            f"  onnx 1-row p50 {m.get('onnx_latency_p50_us', float('nan')):.0f} µs",
        )
        try:
            champ = client.get_model_version_by_alias(settings.model_name, "champion")
        except Exception:
            champ = None
        gate = latest.tags.get("gate", "")
        summary.add("gate", gate)
        alias = "champion"
        if champ is None:
            # Nothing passed the gate: paper trade the refused challenger, and say so loudly.
            alias = "challenger"
            log.warning(
                "no champion: the demo serves the gate-refused challenger, in paper mode only"
            )
        summary.add(
            "served alias",
            alias if champ else "challenger (NOT promoted: refused by the gate; paper mode only)",
        )

        # --- 4. serving -----------------------------------------------------------------
        import secrets

        from serving.importer import AliasNotSetError, import_from_registry
        from serving.server import start_server, stop_server, wait_ready

        os.environ.setdefault("BENTOML_HOME", str(settings.home / "bentoml"))
        imported = import_from_registry(settings.tracking_uri, settings.model_name, alias)
        shadow = None
        if alias == "champion":
            try:
                shadow = import_from_registry(
                    settings.tracking_uri, settings.model_name, "challenger"
                )
            except AliasNotSetError:
                shadow = None
        # a token of this run unless one is configured: serving refuses to start without one
        serving_token = os.environ.get("TX_SERVING_TOKEN") or secrets.token_urlsafe(24)
        port = port or free_port()
        url = f"http://127.0.0.1:{port}"
        proc = start_server(
            host="127.0.0.1",
            port=port,
            model_tag=imported.bentoml_tag,
            challenger_tag=shadow.bentoml_tag if shadow else None,
            bentoml_home=os.environ["BENTOML_HOME"],
            log_path=settings.home / "logs" / "serving.log",
            token=serving_token,
            tracking_uri=settings.tracking_uri,
            model_name=settings.model_name,
            env={"TX_HOME": str(settings.home), "TX_MODEL_ALIAS": alias}
            | ({} if alias == "champion" else {"TX_SERVING_CHALLENGER_ALIAS": ""}),
        )
        stack.callback(stop_server, proc)
        ready_s = wait_ready(url, 120, proc=proc, token=serving_token)
        summary.add(
            "serving",
            f"{url}/v1/predict (BentoML {imported.bentoml_tag}, ready in {ready_s:.1f} s; "
            f"shadow: {f'challenger v{shadow.mlflow_version}' if shadow else 'none'})",
        )

        # --- 5. engine over the unseen week ---------------------------------------------
        engine_summary = run_engine_week(
            settings, plan, url, imported.manifest, serving_token=serving_token
        )
        for k, v in engine_summary.items():
            summary.add(k, v)
    summary.add("demo wall time", f"{time.perf_counter() - t_start:.0f} s")
    return summary


def run_engine_week(
    settings: PlatformSettings,
    plan: DemoPlan,
    serving_url: str,
    manifest: dict[str, Any],
    *,
    serving_token: str | None = None,
) -> dict[str, str]:
    """Paper-trade the unseen week bar by bar through serving (contract 3, Bearer token from
    ``serving_token`` or TX_SERVING_TOKEN) with the full risk layer and journal."""
    import redis

    from engine.config import RiskLimits
    from engine.features import OnlineFeatureReader
    from engine.journal import Journal
    from engine.loop import Engine
    from engine.mt5 import TIMEFRAMES, timeframe_seconds
    from engine.serving_client import ServingClient
    from feature_repo.pipeline.ingest import open_platform_terminal
    from feature_repo.pipeline.stream import FeaturePusher

    clock_now = [int(plan.as_of.timestamp())]
    terminal = open_platform_terminal(settings, clock=lambda: clock_now[0])
    tf = settings.timeframe
    off = settings.broker_utc_offset_hours * 3600
    closes: set[int] = set()
    clock_now[0] = int(plan.engine_end.timestamp())  # look at the whole week once, to list its bars
    for sym in settings.symbols:
        rates = terminal.copy_rates_range(
            sym,
            TIMEFRAMES[tf],
            int(plan.as_of.timestamp()) + off,
            int(plan.engine_end.timestamp()) + off - 1,
        )
        if rates is not None:
            closes.update(int(t) - off + timeframe_seconds(tf) for t in rates["time"])
    clock_now[0] = int(plan.as_of.timestamp())
    bar_closes = sorted(c for c in closes if c <= int(plan.engine_end.timestamp()))

    journal_path = (
        settings.home / "engine" / f"journal-demo-{datetime.now(UTC):%Y%m%dT%H%M%S}.sqlite"
    )
    journal = Journal(journal_path)
    r = redis.Redis.from_url(settings.require_redis_url())
    reader = OnlineFeatureReader.from_manifest(r, manifest, project=settings.feast_project)
    client = ServingClient(
        serving_url, timeout_s=2.0, token=serving_token or os.environ.get("TX_SERVING_TOKEN")
    )
    engine = Engine(
        terminal=terminal,
        features=reader,
        model=client,
        journal=journal,
        limits=RiskLimits(max_position_lots=1.0),
        lots=0.1,
        magic=20260101,
        clock=lambda: float(clock_now[0]),
    )
    pusher = FeaturePusher(settings, terminal)
    from rich.progress import Progress

    t0 = time.perf_counter()
    with Progress() as progress:
        task = progress.add_task("engine paper week (bar by bar)", total=len(bar_closes))

        def set_time(t: int) -> None:
            clock_now[0] = t
            progress.advance(task)

        engine.replay(bar_closes, settings.symbols, set_time, before_bar=pusher.push)
    wall = time.perf_counter() - t0
    counts = journal.counts()
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(journal.reason_counts().items())) or "none"
    state = engine.status()["trading_state"]
    lat = np.array(engine.stats.latencies_ms) if engine.stats.latencies_ms else np.zeros(1)
    acct = terminal.account_info()
    client.close()
    journal.close()
    return {
        "engine week (UTC)": f"{plan.as_of:%Y-%m-%d} → {plan.engine_end:%Y-%m-%d}, {len(bar_closes)} closed bars, {wall:.0f} s",
        "engine decisions": f"{sum(counts.values())} (orders sent {counts.get('sent', 0)}, holds {counts.get('hold', 0)}, "
        f"abstained {counts.get('abstain', 0)}, refused {counts.get('refused', 0)}, order errors {counts.get('error', 0)})",
        "engine reasons": f"{reasons}; trading state at the end {state}",
        "tick-to-decision (ms)": f"p50 {np.percentile(lat, 50):.2f}  p99 {np.percentile(lat, 99):.2f}  (features + HTTP serving + order)",
        "paper account": f"balance {acct.balance:.2f} equity {acct.equity:.2f}" if acct else "n/a",
        "journal": str(journal_path),
    }
