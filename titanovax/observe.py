"""Observability wiring: Prometheus and Alertmanager configurations rendered for given target
addresses (``tx stack`` and the end-to-end tests run the Debian binaries with them), and the
Airflow DAG-run exporter (``tx observe airflow-exporter``).

The rules themselves live in ``infra/prometheus/rules/*.yml`` (deployment files, read here as
data, never imported); the compose setup uses ``infra/prometheus/prometheus.yml`` and
``infra/alertmanager/alertmanager.yml``, which carry the same jobs and routes for the
containers' addresses.

Why an exporter of our own for Airflow: Airflow publishes its scheduler metrics over StatsD or
OpenTelemetry (OTLP push). Prometheus scrapes neither; the bridge is ``statsd_exporter``,
which the compose file runs from its official image but which Debian does not package, and
Prometheus 2.42 has no OTLP receiver. The alert a person needs ("the latest run of a DAG
failed") and the freshness panels need DAG-run states, which live in Airflow's metadata
database, so :class:`AirflowRunsCollector` reads them there (SQLite or PostgreSQL, one
``GROUP BY`` per scrape) and ``prometheus_client`` serves them.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from titanovax.settings import PROJECT_ROOT

log = logging.getLogger(__name__)

RULES_DIR = PROJECT_ROOT / "infra" / "prometheus" / "rules"
#: label on rules that only make sense while the FX market trades (muted on weekends)
MARKET_HOURS_LABEL = "market_hours"


#: prefix of the recording rules that hold alert thresholds (infra/prometheus/rules/heal.yml)
THRESHOLD_PREFIX = "tx:alert_threshold:"


class AlertThresholds(BaseSettings):
    """Thresholds of the heartbeat and degradation alerts (``TX_ALERT_*``, documented in
    ``.env.example``). Prometheus rules cannot read the environment, so each is a recording
    rule ``tx:alert_threshold:<name>`` with the default in ``rules/heal.yml`` and the alert
    compares against it; :func:`render_prometheus_config` writes these values in."""

    model_config = SettingsConfigDict(env_prefix="TX_ALERT_", env_file=None, extra="ignore")

    serving_silent_seconds: float = Field(
        default=900.0, gt=0, description="TxServingSilent: seconds without a request to serving."
    )
    engine_decision_p99_seconds: float = Field(
        default=0.5, gt=0, description="TxEngineDecisionLatencyP99: tick-to-decision p99 (30 min)."
    )
    engine_refusal_ratio: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="TxEngineRefusalRate: share of decisions refused for a fault (30 min).",
    )
    engine_fallback_ratio: float = Field(
        default=0.2,
        gt=0,
        le=1,
        description="TxEngineFallbackRate: share of predictions from the in-process fallback.",
    )

    def records(self) -> dict[str, float]:
        """``{recording rule name: value}``."""
        return {THRESHOLD_PREFIX + k: float(v) for k, v in self.model_dump().items()}


def _set_thresholds(rules: dict[str, Any], values: dict[str, float]) -> dict[str, Any]:
    for group in rules.get("groups", []):
        for rule in group.get("rules", []):
            if rule.get("record") in values:
                rule["expr"] = f"vector({values[rule['record']]!r})"
    return rules


@dataclass(frozen=True)
class ScrapeTarget:
    """One Prometheus job: ``job`` name, ``host:port`` addresses, metrics path, and the file
    holding a bearer token when the endpoint needs one (the engine's control API)."""

    job: str
    addresses: Sequence[str]
    metrics_path: str = "/metrics"
    bearer_token_file: Path | None = None
    labels: dict[str, str] = field(default_factory=dict)


def _scrape_config(t: ScrapeTarget) -> dict[str, Any]:
    sc: dict[str, Any] = {
        "job_name": t.job,
        "metrics_path": t.metrics_path,
        "static_configs": [
            {"targets": list(t.addresses), **({"labels": dict(t.labels)} if t.labels else {})}
        ],
    }
    if t.bearer_token_file is not None:
        sc["authorization"] = {"type": "Bearer", "credentials_file": str(t.bearer_token_file)}
    return sc


def _shorten_for(rules: dict[str, Any], for_override: str) -> dict[str, Any]:
    for group in rules.get("groups", []):
        for rule in group.get("rules", []):
            if "alert" in rule:
                rule["for"] = for_override
    return rules


def render_prometheus_config(
    targets: Iterable[ScrapeTarget],
    rules_dir: Path,
    out: Path,
    *,
    alertmanagers: Sequence[str] = (),
    scrape_interval: str = "15s",
    evaluation_interval: str = "15s",
    for_override: str | None = None,
    thresholds: AlertThresholds | None = None,
) -> Path:
    """Write ``out/prometheus.yml`` scraping ``targets``, evaluating the rules of
    ``rules_dir/*.yml`` (copied to ``out/rules/``) and sending alerts to ``alertmanagers``
    (``host:port``). ``for_override`` replaces every alert's ``for:`` (tests and demos that
    cannot wait minutes; expressions, labels and annotations stay the rules' own);
    ``thresholds`` replaces the values of the ``tx:alert_threshold:*`` recording rules."""
    out.mkdir(parents=True, exist_ok=True)
    rules_out = out / "rules"
    if rules_out.exists():
        shutil.rmtree(rules_out)
    rules_out.mkdir()
    files = sorted(Path(rules_dir).glob("*.yml"))
    if not files:
        raise FileNotFoundError(f"no alert rules (*.yml) in {rules_dir}")
    for f in files:
        if for_override is None and thresholds is None:
            shutil.copy(f, rules_out / f.name)
            continue
        data = yaml.safe_load(f.read_text())
        if for_override is not None:
            data = _shorten_for(data, for_override)
        if thresholds is not None:
            data = _set_thresholds(data, thresholds.records())
        (rules_out / f.name).write_text(yaml.safe_dump(data, sort_keys=False))
    config: dict[str, Any] = {
        "global": {
            "scrape_interval": scrape_interval,
            "evaluation_interval": evaluation_interval,
        },
        "rule_files": [str(rules_out / "*.yml")],
        "scrape_configs": [_scrape_config(t) for t in targets],
    }
    if alertmanagers:
        config["alerting"] = {
            "alertmanagers": [{"static_configs": [{"targets": list(alertmanagers)}]}]
        }
    path = out / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def alertmanager_config(
    webhook_url: str,
    *,
    group_wait: str = "30s",
    group_interval: str = "5m",
    repeat_interval: str = "4h",
) -> dict[str, Any]:
    """Alertmanager's configuration: every alert to the notifier's webhook, grouped by alert
    and instance; alerts labelled ``market_hours="true"`` (no decision, stale features) are
    muted while the FX market is closed (Friday 21:00 to Sunday 22:00 UTC); a critical alert
    of an instance inhibits its warnings."""
    receiver = {
        "name": "notifier",
        "webhook_configs": [{"url": webhook_url, "send_resolved": True}],
    }
    timing = {
        "group_wait": group_wait,
        "group_interval": group_interval,
        "repeat_interval": repeat_interval,
    }
    return {
        "route": {
            "receiver": "notifier",
            "group_by": ["alertname", "job", "instance"],
            **timing,
            "routes": [
                {
                    "receiver": "notifier",
                    "matchers": [f'{MARKET_HOURS_LABEL}="true"'],
                    "mute_time_intervals": ["fx-market-closed"],
                }
            ],
        },
        "receivers": [receiver],
        "inhibit_rules": [
            {
                "source_matchers": ['severity="critical"'],
                "target_matchers": ['severity="warning"'],
                "equal": ["job", "instance"],
            }
        ],
        "time_intervals": [
            {
                "name": "fx-market-closed",
                "time_intervals": [
                    {
                        "weekdays": ["friday"],
                        "times": [{"start_time": "21:00", "end_time": "24:00"}],
                    },
                    {"weekdays": ["saturday"]},
                    {
                        "weekdays": ["sunday"],
                        "times": [{"start_time": "00:00", "end_time": "22:00"}],
                    },
                ],
            }
        ],
    }


def render_alertmanager_config(webhook_url: str, out: Path, **timing: str) -> Path:
    """Write ``out/alertmanager.yml`` (see :func:`alertmanager_config`; ``timing`` may set
    ``group_wait``, ``group_interval``, ``repeat_interval``)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "alertmanager.yml"
    path.write_text(yaml.safe_dump(alertmanager_config(webhook_url, **timing), sort_keys=False))
    return path


# --- the Airflow DAG-run exporter ------------------------------------------------------------

_FINISHED = ("success", "failed")


def _epoch(v: Any) -> float | None:
    if v is None:
        return None
    if isinstance(v, str):
        v = datetime.fromisoformat(v)
    if isinstance(v, datetime):
        return (v if v.tzinfo else v.replace(tzinfo=UTC)).timestamp()
    return None


class AirflowRunsCollector:
    """DAG-run series from Airflow's metadata database, read on each scrape:

    - ``tx_airflow_dag_runs_total{dag_id, state}``: runs per state (a counter as long as
      nobody deletes runs);
    - ``tx_airflow_dag_last_run_state{dag_id, state}``: 1 for the state of the latest finished
      run (success | failed), 0 for the other;
    - ``tx_airflow_dag_last_success_timestamp_seconds{dag_id}``: end of the latest success;
    - ``tx_airflow_db_up``: 1 when the database answered this scrape.
    """

    def __init__(self, db_url: str) -> None:
        import sqlalchemy as sa

        self.engine = sa.create_engine(db_url, pool_pre_ping=True)

    def _query(self) -> tuple[list[Any], list[Any], list[Any]]:
        import sqlalchemy as sa

        with self.engine.connect() as c:
            counts = c.execute(
                sa.text("SELECT dag_id, state, COUNT(*) FROM dag_run GROUP BY dag_id, state")
            ).all()
            latest = c.execute(
                sa.text(
                    "SELECT d.dag_id, d.state FROM dag_run d WHERE d.id = ("
                    " SELECT x.id FROM dag_run x WHERE x.dag_id = d.dag_id"
                    " AND x.state IN ('success', 'failed')"
                    " ORDER BY x.run_after DESC, x.id DESC LIMIT 1)"
                )
            ).all()
            success = c.execute(
                sa.text(
                    "SELECT dag_id, MAX(end_date) FROM dag_run WHERE state = 'success'"
                    " GROUP BY dag_id"
                )
            ).all()
        return list(counts), list(latest), list(success)

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        up = GaugeMetricFamily("tx_airflow_db_up", "1 when Airflow's metadata DB answered")
        try:
            counts, latest, success = self._query()
        except Exception as exc:  # the DB is down or not migrated: say so, keep serving
            log.warning("airflow metadata DB unreadable: %s", exc)
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield up
        runs = CounterMetricFamily(
            "tx_airflow_dag_runs", "DAG runs by state", labels=["dag_id", "state"]
        )
        for dag_id, state, n in counts:
            runs.add_metric([str(dag_id), str(state)], float(n))
        yield runs
        last = GaugeMetricFamily(
            "tx_airflow_dag_last_run_state",
            "1 for the state of the latest finished run of each DAG",
            labels=["dag_id", "state"],
        )
        for dag_id, state in latest:
            for s in _FINISHED:
                last.add_metric([str(dag_id), s], 1.0 if state == s else 0.0)
        yield last
        ok = GaugeMetricFamily(
            "tx_airflow_dag_last_success_timestamp_seconds",
            "End (UTC epoch seconds) of the latest successful run of each DAG",
            labels=["dag_id"],
        )
        for dag_id, end in success:
            ts = _epoch(end)
            if ts is not None:
                ok.add_metric([str(dag_id)], ts)
        yield ok


def serve_airflow_exporter(db_url: str, host: str, port: int) -> Any:
    """Serve the collector on ``http://host:port/metrics`` in a daemon thread; returns the
    server (``.shutdown()`` stops it)."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    registry.register(AirflowRunsCollector(db_url))  # type: ignore[arg-type]
    server, _thread = start_http_server(port, host, registry=registry)
    return server


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for logs)."""
    return re.sub(r"://([^:/@]+):[^@]+@", r"://\1:***@", url)


# --- CLI ------------------------------------------------------------------------------------
observe_app = typer.Typer(
    help="Observability: the Airflow DAG-run exporter for Prometheus.", no_args_is_help=True
)


@observe_app.command("airflow-exporter")
def airflow_exporter(
    db_url: Annotated[
        str,
        typer.Option(
            envvar="AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
            help="Airflow's metadata DB (SQLAlchemy URL); default: Airflow's own setting",
        ),
    ],
    port: Annotated[int, typer.Option(envvar="TX_AIRFLOW_EXPORTER_PORT")] = 9112,
    host: Annotated[str, typer.Option(envvar="TX_AIRFLOW_EXPORTER_HOST")] = "127.0.0.1",
) -> None:
    """Serve Airflow's DAG-run states on /metrics (for the DAG-run-failed alert and the
    freshness dashboards); Ctrl-C stops."""
    import threading

    server = serve_airflow_exporter(db_url, host, port)
    typer.echo(f"airflow exporter on http://{host}:{port}/metrics ({redact_url(db_url)})")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        typer.echo("stopped")
    finally:
        server.shutdown()
