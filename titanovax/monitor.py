"""The monitoring loop's runner: run the checks, keep their verdicts, show them, act on them.

One monitoring run (``tx monitor run``, or the hourly ``monitoring`` DAG) does, in order:

1. runs the checks of :data:`CHECKS` (each a plain function of a :class:`MonitorContext`
   returning :class:`~training.monitor.result.CheckResult` rows; a check that raises becomes
   one ``breach`` row naming the error — a broken check must not look healthy);
2. stores every row in the results table ``monitor_results`` (SQLAlchemy: SQLite under
   ``TX_HOME`` by default, PostgreSQL with ``TX_MONITOR_DB_URL``), which ``tx monitor results``
   queries and :class:`MonitorResultsCollector` exports to Prometheus (``tx monitor exporter``,
   a service of ``tx stack`` and of the compose file, scraped as job ``monitor``);
3. logs an MLflow run in the experiment ``monitoring`` (per-check params and metrics, the
   rows as JSON, the Evidently HTML report as an artifact);
4. calls the actions hook (default ``titanovax.monitor_actions.apply`` when that module
   exists) with the context and the rows.

Why the exporter reads the table instead of the runner pushing gauges: the runs are short
batch jobs (Airflow tasks, CLI calls) and Prometheus pulls; the table is already the record of
truth, so a long-running exporter serving its newest rows needs no Pushgateway.
"""

from __future__ import annotations

import importlib
import json
import logging
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from titanovax.settings import PlatformSettings, utc
from training.monitor.result import CheckResult

log = logging.getLogger(__name__)

EXPERIMENT = "monitoring"
TABLE = "monitor_results"
STATUS_VALUE = {"ok": 0.0, "warn": 1.0, "breach": 2.0, "skipped": -1.0}


@dataclass
class MonitorContext:
    """What a check may read: the settings, the time the run judges at (UTC), and the champion
    bundle (pulled once per run from the registry unless ``bundle_dir`` is given)."""

    settings: PlatformSettings
    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    bundle_dir: Path | None = None
    model_ref: str = "champion"
    work_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="tx_monitor_")))
    _bundle_resolved: bool = False

    def __post_init__(self) -> None:
        self.now = utc(self.now)

    def bundle(self) -> Path | None:
        """The champion bundle folder, or ``None`` when no version carries the alias."""
        if self.bundle_dir is not None or self._bundle_resolved:
            return self.bundle_dir
        self._bundle_resolved = True
        from training.registry import BundleError, pull_bundle

        try:
            pull_bundle(self.settings, self.model_ref, self.work_dir / "bundle")
        except BundleError as exc:
            log.info("no %s bundle: %s", self.model_ref, exc)
            return None
        except Exception as exc:  # no registered model at all
            if "RESOURCE_DOES_NOT_EXIST" in str(exc) or "not found" in str(exc).lower():
                log.info("no %s bundle: %s", self.model_ref, exc)
                return None
            raise
        self.bundle_dir = self.work_dir / "bundle"
        return self.bundle_dir


# --- the checks -------------------------------------------------------------------------------
def _redis(settings: PlatformSettings) -> Any | None:
    if not settings.redis_url:
        return None
    from engine.features import redis_client

    return redis_client(settings.redis_url, timeout_s=2.0)


def freshness(ctx: MonitorContext) -> list[CheckResult]:
    """Lake, offline and online lag per symbol (market time; see training/monitor/freshness.py)."""
    from engine.mt5 import timeframe_seconds
    from feature_repo.pipeline.store import FEATURE_VIEW, offline_dir
    from training.monitor.freshness import FreshnessLimits, check_freshness

    s = ctx.settings
    view = FEATURE_VIEW
    b = ctx.bundle_dir  # the view the champion reads, when a bundle is already at hand
    if b is not None and (b / "manifest.json").is_file():
        view = json.loads((b / "manifest.json").read_text()).get("feature_view", FEATURE_VIEW)
    limits = FreshnessLimits(
        lake_s=s.monitor_lake_max_lag_hours * 3600,
        offline_s=s.monitor_offline_max_lag_hours * 3600,
        online_s=s.monitor_online_max_lag_bars * timeframe_seconds(s.timeframe),
    )
    return check_freshness(
        now=ctx.now,
        symbols=s.symbols,
        timeframe=s.timeframe,
        lake_dir=s.lake_dir,
        offline_dir=offline_dir(s, view),
        view=view,
        limits=limits,
        redis=_redis(s),
        project=s.feast_project,
    )


def live_window(
    settings: PlatformSettings, manifest: dict[str, Any], start: datetime, end: datetime
) -> pd.DataFrame:
    """The offline store's feature rows of the champion's views with event time in
    [start, end), joined on (symbol, event_timestamp) — the rows the model saw live."""
    from feature_repo.pipeline import lake
    from feature_repo.pipeline.store import offline_path

    tf = manifest.get("timeframe", settings.timeframe)
    symbols = [s for s in settings.symbols if s in manifest.get("symbols", settings.symbols)]
    views: list[str] = [str(manifest["feature_view"])]
    if manifest.get("sequence"):
        views.append(manifest["sequence"]["feature_view"])
    frames: list[pd.DataFrame] = []
    for view in views:
        parts = []
        for sym in symbols:
            for day in lake.days_in(start, end):
                p = offline_path(settings, sym, tf, day, view)
                if p.is_file():
                    parts.append(pd.read_parquet(p))
        if not parts:
            return pd.DataFrame()
        df = pd.concat(parts, ignore_index=True)
        ts = pd.to_datetime(df["event_timestamp"], utc=True)
        frames.append(df[(ts >= start) & (ts < end)])
    out = frames[0]
    for extra in frames[1:]:
        out = out.merge(
            extra.drop(
                columns=[
                    c
                    for c in extra.columns
                    if c in out.columns and c not in ("symbol", "event_timestamp")
                ]
            ),
            on=["symbol", "event_timestamp"],
        )
    return out.dropna(subset=list(manifest["features"])).reset_index(drop=True)


def drift(ctx: MonitorContext) -> list[CheckResult]:
    """Champion reference sample vs the live window (Evidently; training/monitor/drift.py)."""
    from training.monitor.drift import DriftLimits, check_drift

    s = ctx.settings
    bundle = ctx.bundle()
    start = ctx.now - timedelta(hours=s.monitor_window_hours)
    live = None
    if bundle is not None:
        manifest = json.loads((bundle / "manifest.json").read_text())
        if manifest.get("reference_sample"):
            live = live_window(s, manifest, start, ctx.now)
    return check_drift(
        now=ctx.now,
        bundle_dir=bundle,
        live=live,
        limits=DriftLimits(
            s.monitor_psi_threshold, s.monitor_drift_warn_share, s.monitor_drift_breach_share
        ),
        report_path=ctx.work_dir / "drift_report.html",
        window=(start, ctx.now),
    )


CHECKS: dict[str, Callable[[MonitorContext], list[CheckResult]]] = {
    "freshness": freshness,
    "drift": drift,
}
"""Every check the runner knows, by name (other modules add entries: ``live_vs_expected``,
``shadow_ab``)."""


# --- the run ----------------------------------------------------------------------------------
@dataclass
class MonitorRun:
    run_id: str
    at: datetime
    results: list[CheckResult]
    durations_s: dict[str, float]
    mlflow_run_id: str | None = None
    actions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def worst(self) -> str:
        order = ["ok", "skipped", "warn", "breach"]
        return max((r.status for r in self.results), key=order.index, default="ok")

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "at": self.at.isoformat(),
            "worst": self.worst,
            "mlflow_run_id": self.mlflow_run_id,
            "durations_s": self.durations_s,
            "results": [r.to_dict() for r in self.results],
            "actions": self.actions,
        }


class UnknownCheck(ValueError):
    """A check name that is not in :data:`CHECKS`."""


def default_actions() -> Callable[[MonitorContext, list[CheckResult]], list[dict[str, Any]]] | None:
    try:
        mod = importlib.import_module("titanovax.monitor_actions")
    except ModuleNotFoundError as exc:
        if exc.name == "titanovax.monitor_actions":
            return None
        raise
    return getattr(mod, "apply", None)


def run_checks(
    ctx: MonitorContext,
    only: list[str] | None = None,
    on_check: Callable[[str], None] | None = None,
) -> tuple[list[CheckResult], dict[str, float]]:
    names = list(only) if only else list(CHECKS)
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        raise UnknownCheck(f"unknown check {', '.join(unknown)} (known: {', '.join(CHECKS)})")
    results: list[CheckResult] = []
    durations: dict[str, float] = {}
    for name in names:
        if on_check is not None:
            on_check(name)
        t0 = time.perf_counter()
        try:
            rows = CHECKS[name](ctx)
        except Exception as exc:
            log.exception("check %s failed", name)
            rows = [
                CheckResult(
                    name, "check", "breach", f"check raised {type(exc).__name__}: {exc}", ctx.now
                )
            ]
        durations[name] = time.perf_counter() - t0
        results.extend(rows)
    return results, durations


def run(
    ctx: MonitorContext,
    only: list[str] | None = None,
    actions: Callable[[MonitorContext, list[CheckResult]], list[dict[str, Any]]] | None = None,
    *,
    log_mlflow: bool = True,
    on_check: Callable[[str], None] | None = None,
) -> MonitorRun:
    """Run the checks (all, or ``only``), store the rows, log the MLflow run, call ``actions``
    (``on_check(name)`` is called before each check: progress)."""
    results, durations = run_checks(ctx, only, on_check)
    return record(ctx, results, durations, actions, log_mlflow=log_mlflow)


def record(
    ctx: MonitorContext,
    results: list[CheckResult],
    durations: dict[str, float],
    actions: Callable[[MonitorContext, list[CheckResult]], list[dict[str, Any]]] | None = None,
    *,
    log_mlflow: bool = True,
    run_id: str | None = None,
) -> MonitorRun:
    """Store, log and act on the rows of checks already run (the DAG runs each check as its
    own task and records them together)."""
    mr = MonitorRun(run_id or uuid.uuid4().hex[:12], ctx.now, results, durations)
    store_results(ctx.settings.monitor_db, mr.run_id, results)
    if log_mlflow:
        mr.mlflow_run_id = log_run(ctx, mr)
    act = actions or default_actions()
    if act is not None:
        mr.actions = list(act(ctx, results) or [])
    return mr


def result_from_dict(d: dict[str, Any]) -> CheckResult:
    """The inverse of :meth:`CheckResult.to_dict` (rows passed between DAG tasks as XCom)."""
    return CheckResult(
        check=d["check"],
        subject=d["subject"],
        status=d["status"],
        detail=d["detail"],
        at=datetime.fromisoformat(d["at"]),
        metrics=dict(d.get("metrics") or {}),
        evidence=dict(d.get("evidence") or {}),
    )


# --- the results table ------------------------------------------------------------------------
def _table(metadata: Any) -> Any:
    import sqlalchemy as sa

    return sa.Table(
        TABLE,
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(32), nullable=False, index=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("check_name", sa.String(64), nullable=False, index=True),
        sa.Column("subject", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("metrics", sa.Text, nullable=False),
        sa.Column("evidence", sa.Text, nullable=False),
    )


_ENGINES: dict[str, Any] = {}


def _engine(db_url: str) -> tuple[Any, Any]:
    import sqlalchemy as sa

    if db_url not in _ENGINES:
        if db_url.startswith("sqlite:///"):
            Path(db_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        eng = sa.create_engine(db_url, pool_pre_ping=True)
        md = sa.MetaData()
        table = _table(md)
        md.create_all(eng)
        _ENGINES[db_url] = (eng, table)
    return _ENGINES[db_url]


def store_results(db_url: str, run_id: str, results: list[CheckResult]) -> None:
    eng, table = _engine(db_url)
    if not results:
        return
    with eng.begin() as c:
        c.execute(
            table.insert(),
            [
                {
                    "run_id": run_id,
                    "at": r.at,
                    "check_name": r.check,
                    "subject": r.subject,
                    "status": r.status,
                    "detail": r.detail,
                    "metrics": json.dumps(r.metrics),
                    "evidence": json.dumps(r.evidence, default=str),
                }
                for r in results
            ],
        )


def query_results(
    db_url: str, check: str | None = None, limit: int = 50, latest_run_only: bool = False
) -> list[dict[str, Any]]:
    """Newest rows first (optionally one check's; optionally the newest run's only)."""
    import sqlalchemy as sa

    eng, t = _engine(db_url)
    q = sa.select(t).order_by(t.c.id.desc())
    if check:
        q = q.where(t.c.check_name == check)
    if latest_run_only:
        newest = sa.select(t.c.run_id).order_by(t.c.id.desc()).limit(1)
        if check:
            newest = newest.where(t.c.check_name == check)
        q = q.where(t.c.run_id == newest.scalar_subquery())
    if limit:
        q = q.limit(limit)
    with eng.connect() as c:
        rows = c.execute(q).mappings().all()
    out = []
    for r in rows:
        at = r["at"]
        at = at.replace(tzinfo=UTC) if at.tzinfo is None else at
        out.append(
            {
                "run_id": r["run_id"],
                "at": at.isoformat(),
                "check": r["check_name"],
                "subject": r["subject"],
                "status": r["status"],
                "detail": r["detail"],
                "metrics": json.loads(r["metrics"]),
                "evidence": json.loads(r["evidence"]),
            }
        )
    return out


def latest_per_subject(db_url: str) -> list[dict[str, Any]]:
    """For every (check, subject), its newest row (what the exporter serves)."""
    import sqlalchemy as sa

    eng, t = _engine(db_url)
    newest = sa.select(sa.func.max(t.c.id)).group_by(t.c.check_name, t.c.subject).scalar_subquery()
    q = sa.select(t).where(t.c.id.in_(newest))
    with eng.connect() as c:
        rows = c.execute(q).mappings().all()
    return [
        {
            "check": r["check_name"],
            "subject": r["subject"],
            "status": r["status"],
            "at": (r["at"].replace(tzinfo=UTC) if r["at"].tzinfo is None else r["at"]),
            "metrics": json.loads(r["metrics"]),
            "evidence": json.loads(r["evidence"]),
        }
        for r in rows
    ]


# --- MLflow -----------------------------------------------------------------------------------
def log_run(ctx: MonitorContext, mr: MonitorRun) -> str:
    """One MLflow run in the ``monitoring`` experiment: per-check params (status counts) and
    metrics, the rows as JSON, the Evidently report as HTML."""
    from training.train import _mlflow, ensure_experiment

    mlflow = _mlflow(ctx.settings)
    exp = ensure_experiment(ctx.settings, EXPERIMENT)
    with mlflow.start_run(experiment_id=exp, run_name=f"monitor-{mr.at:%Y%m%dT%H%M}") as run:
        mlflow.set_tags({"monitor.run_id": mr.run_id, "monitor.worst": mr.worst})
        params: dict[str, Any] = {"at": mr.at.isoformat()}
        metrics: dict[str, float] = {}
        for name in mr.durations_s:
            rows = [r for r in mr.results if r.check == name]
            worst = max((r.level for r in rows), default=0)
            params[f"{name}.rows"] = len(rows)
            params[f"{name}.worst"] = next(
                (r.status for r in rows if r.level == worst and r.status != "skipped"),
                rows[0].status if rows else "ok",
            )
            metrics[f"{name}.duration_s"] = mr.durations_s[name]
            for st in ("ok", "warn", "breach", "skipped"):
                metrics[f"{name}.{st}"] = float(sum(r.status == st for r in rows))
        for r in mr.results:
            for k, v in r.metrics.items():
                key = _metric_key(f"{r.check}.{r.subject}.{k}")
                if isinstance(v, int | float) and v == v:
                    metrics[key] = float(v)
        mlflow.log_params(params)
        mlflow.log_metrics(metrics)
        mlflow.log_dict(mr.to_dict(), "results.json")
        for path in {r.evidence.get("report_html") for r in mr.results} - {None}:
            if Path(str(path)).is_file():
                mlflow.log_artifact(str(path), artifact_path="reports")
    return str(run.info.run_id)


def _metric_key(name: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", name)[:250]


# --- Prometheus -------------------------------------------------------------------------------
class MonitorResultsCollector:
    """The newest verdict of every (check, subject) from the results table, on each scrape:

    - ``tx_monitor_check_status{check,subject}``: 0 ok, 1 warn, 2 breach, -1 skipped;
    - ``tx_monitor_last_run_timestamp_seconds{check}`` and without labels: when the newest run judged;
    - ``tx_monitor_freshness_lag_seconds{symbol,timeframe,store}``: market-time lag;
    - ``tx_monitor_drift_share{side}``: share of drifted features / outputs;
    - ``tx_monitor_db_up``: 1 when the table answered.
    """

    def __init__(self, db_url: str) -> None:
        self.db_url = db_url

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        up = GaugeMetricFamily("tx_monitor_db_up", "1 when the monitoring results table answered")
        try:
            rows = latest_per_subject(self.db_url)
        except Exception as exc:
            log.warning("monitoring results unreadable: %s", exc)
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield up
        status = GaugeMetricFamily(
            "tx_monitor_check_status",
            "Newest verdict per check and subject: 0 ok, 1 warn, 2 breach, -1 skipped",
            labels=["check", "subject"],
        )
        last = GaugeMetricFamily(
            "tx_monitor_last_run_timestamp_seconds",
            "When the newest monitoring run judged (UTC epoch seconds)",
        )
        last_check = GaugeMetricFamily(
            "tx_monitor_check_last_run_timestamp_seconds",
            "When each check last judged (UTC epoch seconds)",
            labels=["check"],
        )
        lag = GaugeMetricFamily(
            "tx_monitor_freshness_lag_seconds",
            "Market-time lag of each store behind the market",
            labels=["symbol", "timeframe", "store"],
        )
        share = GaugeMetricFamily(
            "tx_monitor_drift_share",
            "Share of drifted columns (features or outputs) of the champion",
            labels=["side"],
        )
        per_check: dict[str, float] = {}
        for r in rows:
            ts = r["at"].timestamp()
            status.add_metric([r["check"], r["subject"]], STATUS_VALUE[r["status"]])
            per_check[r["check"]] = max(per_check.get(r["check"], 0.0), ts)
            ev, m = r["evidence"], r["metrics"]
            if r["check"] == "freshness" and "lag_seconds" in m:
                lag.add_metric(
                    [ev["symbol"], ev["timeframe"], ev["store"]], float(m["lag_seconds"])
                )
            if r["check"] == "drift" and "drift_share" in m:
                share.add_metric([r["subject"]], float(m["drift_share"]))
        for c, ts in per_check.items():
            last_check.add_metric([c], ts)
        if per_check:
            last.add_metric([], max(per_check.values()))
        yield from (status, last, last_check, lag, share)


def serve_exporter(db_url: str, host: str, port: int) -> Any:
    """Serve :class:`MonitorResultsCollector` on ``http://host:port/metrics`` (daemon thread)."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    registry.register(MonitorResultsCollector(db_url))  # type: ignore[arg-type]
    server, _thread = start_http_server(port, host, registry=registry)
    return server
