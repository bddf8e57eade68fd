"""What the DAGs hand to Airflow besides their tasks: the feature asset, the Connections and
Variables that override ``TX_*`` settings, the failure notifier, and the training interval.

DAG files stay wiring (STYLE.md rule 1): they import this light module (no pandas, feast or
mlflow) and pass its functions to Airflow as ``pre_execute`` and ``on_failure_callback``.

Connections and Variables come first, the ``TX_*`` environment is the fallback:

=====================  ===========================  =================================
Airflow object          ``TX_*`` setting it sets      URI it becomes
=====================  ===========================  =================================
Connection tx_redis     TX_REDIS_URL                  redis://host:port/<extra.db|schema>
Connection tx_postgres  TX_OPTUNA_STORAGE             postgresql+psycopg://…/schema
Connection tx_mlflow    TX_MLFLOW_TRACKING_URI        http://host:port
Variable tx_serving_url TX_SERVING_URL                as written
=====================  ===========================  =================================
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

log = logging.getLogger(__name__)

#: The feature asset: ``market_data``'s ``materialize`` updates it, ``train_and_promote``
#: is scheduled on it.
FEATURES_ASSET_NAME = "tx_trend_features"
FEATURES_ASSET_URI = "titanovax://features/trend_features"

#: Experiment configs the ``experiment`` Param offers (a path to another YAML is accepted too).
EXPERIMENTS = ("trend_v1", "trend_v2", "real_exports_v1")


def _redis_uri(c: Any) -> str:
    db = (c.extra_dejson or {}).get("db", c.schema or 0)
    auth = f":{c.password}@" if c.password else ""
    return f"redis://{auth}{c.host or '127.0.0.1'}:{c.port or 6379}/{int(db or 0)}"


def _postgres_uri(c: Any) -> str:
    auth = c.login or "postgres"
    if c.password:
        auth += f":{c.password}"
    return f"postgresql+psycopg://{auth}@{c.host or '127.0.0.1'}:{c.port or 5432}/{c.schema or 'postgres'}"


def _http_uri(c: Any) -> str:
    host = c.host or "127.0.0.1"
    if "://" in host:
        return host.rstrip("/")
    return f"http://{host}:{c.port or 80}"


#: connection id → (TX_* variable, how the Connection becomes its value)
CONNECTIONS: dict[str, tuple[str, Callable[[Any], str]]] = {
    "tx_redis": ("TX_REDIS_URL", _redis_uri),
    "tx_postgres": ("TX_OPTUNA_STORAGE", _postgres_uri),
    "tx_mlflow": ("TX_MLFLOW_TRACKING_URI", _http_uri),
}
#: variable key → TX_* variable
VARIABLES: dict[str, str] = {
    "tx_serving_url": "TX_SERVING_URL",
    "tx_train_min_interval_hours": "TX_TRAIN_MIN_INTERVAL_HOURS",
}


def resolve_airflow_config(
    get_connection: Callable[[str], Any], get_variable: Callable[[str], str | None]
) -> dict[str, str]:
    """The ``TX_*`` values that Airflow Connections and Variables define (missing ones are
    left out, so the environment's ``TX_*`` settings stay in force)."""
    out: dict[str, str] = {}
    for conn_id, (env, to_uri) in CONNECTIONS.items():
        try:
            conn = get_connection(conn_id)
        except Exception:  # AirflowNotFoundException: not defined, keep the TX_* fallback
            continue
        if conn is not None:
            out[env] = to_uri(conn)
    for key, env in VARIABLES.items():
        try:
            value = get_variable(key)
        except Exception:
            value = None
        if value not in (None, ""):
            out[env] = str(value)
    return out


def apply_airflow_config(context: Mapping[str, Any] | None = None) -> dict[str, str]:
    """``pre_execute`` hook of every task: Connections/Variables → ``os.environ`` (TX_*).

    Each task runs in its own process under the scheduler, so the settings it reads next
    (``PlatformSettings()``) see them; returns what was set."""
    from airflow.sdk import Connection, Variable

    values = resolve_airflow_config(Connection.get, lambda k: Variable.get(k, default=None))
    os.environ.update(values)
    if values:
        log.info("settings from Airflow Connections/Variables: %s", sorted(values))
    return values


# --- failure notifier -------------------------------------------------------------------------


def failure_alert(context: Mapping[str, Any], now: datetime | None = None) -> dict[str, Any]:
    """An Alertmanager-style webhook payload (version 4) for a failed task, so the same
    receiver that takes Alertmanager's alerts (the apprise notifier) takes this one."""
    ti = context.get("ti") or context.get("task_instance")
    dag_id = str(getattr(ti, "dag_id", None) or context.get("dag_id") or "")
    task_id = str(getattr(ti, "task_id", None) or "")
    run_id = str(getattr(ti, "run_id", None) or context.get("run_id") or "")
    try_number = getattr(ti, "try_number", None)
    exc = context.get("exception")
    now = now or datetime.now(UTC)
    labels = {
        "alertname": "AirflowTaskFailed",
        "severity": "critical",
        "service": "airflow",
        "dag_id": dag_id,
        "task_id": task_id,
    }
    annotations = {
        "summary": f"Airflow task {dag_id}.{task_id} failed (run {run_id})",
        "description": f"try {try_number}: {type(exc).__name__ + ': ' if exc else ''}{exc or 'no exception recorded'}"[
            :2000
        ],
        "runbook_url": "docs/stack.md#when-a-dag-fails",
    }
    alert = {
        "status": "firing",
        "labels": labels,
        "annotations": annotations,
        "startsAt": now.isoformat(),
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "",
        "fingerprint": f"{dag_id}.{task_id}.{run_id}",
    }
    return {
        "version": "4",
        "status": "firing",
        "receiver": "airflow",
        "groupKey": f"airflow:{dag_id}",
        "groupLabels": {"alertname": labels["alertname"]},
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": "",
        "alerts": [alert],
    }


def notify_task_failure(context: Mapping[str, Any]) -> str:
    """``on_failure_callback``: log the failure and POST :func:`failure_alert` to
    ``TX_DAG_FAILURE_WEBHOOK_URL`` (unset: logged only). Never raises: a callback that fails
    would hide the task's own error."""
    payload = failure_alert(context)
    summary = payload["commonAnnotations"]["summary"]
    log.error("%s: %s", summary, payload["commonAnnotations"]["description"])
    from titanovax.settings import PlatformSettings

    url = (PlatformSettings().dag_failure_webhook_url or "").strip()
    if not url:
        return "logged (TX_DAG_FAILURE_WEBHOOK_URL not set)"
    import httpx

    try:
        r = httpx.post(
            url,
            content=json.dumps(payload),
            timeout=10.0,
            headers={"Content-Type": "application/json"},
        )
    except httpx.HTTPError as exc:
        log.warning("failure webhook %s not reachable: %s", url, exc)
        return f"webhook not reachable: {exc}"
    log.info("failure webhook %s: HTTP %s", url, r.status_code)
    return f"webhook HTTP {r.status_code}"


# --- training cadence -------------------------------------------------------------------------


def training_due(
    last_trained: datetime | None, now: datetime, min_interval: timedelta
) -> tuple[bool, str]:
    """Whether a feature update may start a training run: not within ``min_interval`` of
    the last one that registered a model. Returns (due, reason)."""
    if last_trained is None:
        return True, "no model version registered yet"
    if min_interval <= timedelta(0):
        return True, "no minimum interval between trainings"
    elapsed = now - last_trained
    if elapsed < min_interval:
        return False, (
            f"the last model version was registered {elapsed} ago, under the minimum interval "
            f"{min_interval} (TX_TRAIN_MIN_INTERVAL_HOURS / Variable tx_train_min_interval_hours)"
        )
    return True, f"the last model version was registered {elapsed} ago"


def min_training_interval() -> timedelta:
    from titanovax.settings import PlatformSettings

    return timedelta(hours=PlatformSettings().train_min_interval_hours)


def last_registered_at(tracking_uri: str, model_name: str) -> datetime | None:
    """When the newest version of ``model_name`` was registered (None: never). The registry,
    not Airflow's run history, says when training last produced a model: a run that the
    minimum interval skipped is a successful run too."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri, tracking_uri)
    try:
        versions = client.search_model_versions(
            f"name='{model_name}'", max_results=1, order_by=["creation_timestamp DESC"]
        )
    except MlflowException:
        return None
    if not versions:
        return None
    return datetime.fromtimestamp(versions[0].creation_timestamp / 1000, UTC)


def skip_unless_training_due(run_after: datetime) -> str:
    """Raise ``AirflowSkipException`` (the run's later tasks are skipped too) when the newest
    registered model version is younger than the minimum interval at ``run_after``."""
    from titanovax.settings import PlatformSettings, utc

    s = PlatformSettings()
    due, reason = training_due(
        last_registered_at(s.tracking_uri, s.model_name), utc(run_after), min_training_interval()
    )
    if not due:
        from airflow.sdk.exceptions import AirflowSkipException

        raise AirflowSkipException(reason)
    log.info("training due: %s", reason)
    return reason


def run_as_of(data_interval_end: datetime | None) -> datetime:
    """The "as of" time of a training run: its data interval's end on the weekly schedule;
    for a run triggered by the feature asset (no data interval in Airflow 3), the end of the
    newest ``market_data`` interval that triggered it, else the event's own time."""
    from titanovax.settings import utc

    if data_interval_end is not None:
        return utc(data_interval_end)
    from airflow.sdk import get_current_context

    ctx = get_current_context()
    ends: list[datetime] = []
    for events in (ctx.get("triggering_asset_events") or {}).values():
        for event in events:
            source = getattr(event, "source_dag_run", None)
            end = getattr(source, "data_interval_end", None) if source is not None else None
            # an event from outside a DAG run (the monitoring actions, an operator) carries
            # only its time: train as of the newest bar ingested by then, on an open market
            ends.append(end or data_as_of(utc(event.timestamp)))
    if ends:
        return utc(max(ends))
    return utc(ctx["dag_run"].run_after)


def data_as_of(at: datetime, symbols: list[str] | None = None) -> datetime:
    """The "as of" of a retraining asked for at ``at`` from outside a DAG run: the last moment
    the market traded (:func:`last_market_time`), but never past the newest bar the lake holds
    then. Just after Sunday's open the market trades again while the lake ends on Friday: a
    test window ending "now" would hold no bar, so the run trains as of Friday's last bar."""
    from titanovax.settings import PlatformSettings
    from training.monitor.freshness import lake_newest

    s = PlatformSettings()
    syms = symbols or list(s.symbols)
    market = last_market_time(at, syms)
    newest = [t for t in (lake_newest(s.lake_dir, sym, s.timeframe, at) for sym in syms) if t]
    if not newest:
        return market  # nothing ingested yet: the dataset step says so itself
    return min(market, max(newest))


def last_market_time(at: datetime, symbols: list[str] | None = None) -> datetime:
    """``at``, or when every one of ``symbols`` (default the platform's) is closed then, the
    start of the closed window it lies in (Friday's close for a weekend, the day's close for a
    holiday): a retraining asked for on Sunday trains as of Friday's close, not on a test
    window the market never traded."""
    from feature_repo.pipeline.calendar import calendar_for
    from titanovax.settings import PlatformSettings

    syms = symbols or list(PlatformSettings().symbols)
    t = int(at.timestamp())
    best = None
    for sym in syms:
        cal = calendar_for(sym, tolerance=timedelta(0))
        s = t
        for _ in range(16):  # adjacent windows (weekend then a holiday) are merged, so few
            inside = [int(a) for a, b in cal.closed_windows(s - 14 * 86_400, s + 1) if a <= s < b]
            if not inside:
                break
            s = min(inside)
        best = s if best is None else max(best, s)  # the newest moment any symbol traded
    return datetime.fromtimestamp(best if best is not None else t, UTC)
