"""``tx stack``: the distributed topology as real local processes on one machine.

Airflow (api-server, scheduler, dag-processor, triggerer, one Celery worker; CeleryExecutor)
on the machine's PostgreSQL, the MLflow tracking server (PostgreSQL backend store, artifacts
under ``TX_HOME``), BentoML serving, the streaming feature pusher and the engine in paper
mode, supervised by circus (the process manager BentoML already ships). Each service is one
row of :func:`services`: name, command, environment, health check. The compose file of
``infra/`` runs the same commands; a test checks that every command exists.

State lives under ``$TX_HOME/stack/``: ``spec.json`` (the table as started), ``circusd.pid``,
``secrets.json`` (generated tokens, mode 600), ``logs/<service>.log``.

Restarts: circus respawns a service that exits and never gives up (circus 0.18 stops its
whole arbiter when one watcher is left with no process). The backoff is ours
(:mod:`titanovax.restart_backoff`, before every start): a service that started 3 times
within 60 s waits 10 s, then 20, 40, 60 s before the next start. Circus's flapping plugin
still runs and logs "flapping detected", but its hold-back is a cast the arbiter refuses
while it is respawning (docs/operations-heal.md has the measured behaviour). ``up(only=[...])``
(``tx stack up --only engine,pusher``) starts a chosen subset under the same supervisor.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlparse

import typer
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from titanovax.settings import PROJECT_ROOT, PlatformSettings

log = logging.getLogger(__name__)

VENV_BIN = Path(sys.executable).parent


class StackSettings(BaseSettings):
    """Where ``tx stack`` puts its services (documented in ``.env.example``)."""

    model_config = SettingsConfigDict(env_prefix="TX_STACK_", env_file=None, extra="ignore")

    port_base: int = Field(
        default=28000,
        ge=1024,
        le=65000,
        description="Ports are this plus a fixed offset: api-server +80, MLflow +50, serving "
        "+30, engine control +65, scheduler health +74, worker logs +93, triggerer logs +94, "
        "Prometheus +90, Alertmanager +91, notifier +95, pusher metrics +8, Airflow exporter +12.",
    )
    postgres_url: str = Field(
        default="postgresql://postgres@127.0.0.1:5432",
        description="PostgreSQL server (no database): the stack creates its own databases.",
    )
    db_prefix: str = Field(
        default="tx_stack",
        pattern=r"^[a-z_][a-z0-9_]*$",
        description="Database names: <prefix>_airflow, _mlflow, _celery, _journal, _optuna.",
    )
    redis_url: str = Field(
        default="redis://127.0.0.1:6379",
        description="Redis server (no db): online store on TX_STACK_REDIS_DB, Celery broker on the next db.",
    )
    redis_db: int = Field(default=10, ge=0, le=14, description="Redis db of the online store.")
    celery_broker_url: str | None = Field(
        default=None,
        description="Celery broker; default the Redis db after TX_STACK_REDIS_DB "
        "(e.g. amqp://guest:guest@127.0.0.1:5672// for RabbitMQ).",
    )
    worker_concurrency: int = Field(default=2, ge=1, description="Celery worker slots.")
    up_timeout_s: float = Field(
        default=300.0, description="How long `tx stack up` waits for every health check."
    )
    scrape_interval: str = Field(
        default="15s",
        pattern=r"^[0-9]+[smh]$",
        description="Prometheus' scrape and rule evaluation interval (e.g. 15s).",
    )
    alert_for: str | None = Field(
        default=None,
        pattern=r"^[0-9]+[smh]$",
        description="Replaces every alert rule's `for:` (e.g. 5s for a test that cannot wait "
        "minutes); unset: the rules' own.",
    )
    alert_group_wait: str = Field(
        default="30s",
        pattern=r"^[0-9]+[smh]$",
        description="Alertmanager's group_wait (and group_interval when shorter than 5m).",
    )

    def port(self, offset: int) -> int:
        return self.port_base + offset


# --- the service table ------------------------------------------------------------------------

PORTS = {
    "pusher_metrics": 8,
    "airflow_exporter": 12,
    "monitor_exporter": 13,
    "serving": 30,
    "mlflow": 50,
    "engine": 65,
    "scheduler_health": 74,
    "api": 80,
    "worker_log": 93,
    "triggerer_log": 94,
    "prometheus": 90,
    "alertmanager": 91,
    "notifier": 95,
}


@dataclass(frozen=True)
class Health:
    """How to tell a service is up: an HTTP GET answering 200 (optionally a JSON field equal
    to a value), or a named probe of :data:`PROBES`."""

    url: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    json_field: str | None = None  # dotted path into the JSON answer
    expect: str | None = None
    probe: str | None = None


@dataclass(frozen=True)
class Service:
    name: str
    argv: list[str]  # argv[0]: an executable of the venv; `tx` subcommands are checked too
    env: dict[str, str]
    health: Health
    url: str | None = None  # what `up` prints
    graceful_timeout_s: float = 20.0
    after: tuple[str, ...] = ()  # started once these services are healthy


@dataclass(frozen=True)
class StackContext:
    """Everything the table is computed from (so tests can build it without starting it)."""

    home: Path
    stack: StackSettings
    secrets: dict[str, str]

    @property
    def state_dir(self) -> Path:
        return self.home / "stack"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    def db_url(self, name: str, driver: str = "postgresql+psycopg") -> str:
        u = urlparse(self.stack.postgres_url)
        auth = u.username or "postgres"
        if u.password:
            auth += f":{u.password}"
        return f"{driver}://{auth}@{u.hostname or '127.0.0.1'}:{u.port or 5432}/{self.stack.db_prefix}_{name}"

    @property
    def online_redis_url(self) -> str:
        return f"{self.stack.redis_url.rstrip('/')}/{self.stack.redis_db}"

    @property
    def broker_url(self) -> str:
        return (
            self.stack.celery_broker_url
            or f"{self.stack.redis_url.rstrip('/')}/{self.stack.redis_db + 1}"
        )

    def url(self, key: str) -> str:
        return f"http://127.0.0.1:{self.stack.port(PORTS[key])}"


DATABASES = ("airflow", "mlflow", "celery", "journal", "optuna", "monitoring")


def platform_env(ctx: StackContext) -> dict[str, str]:
    """The environment every service of the stack shares: the caller's ``TX_*`` settings
    (symbols, timeframe, risk limits, …) under the stack's own locations and tokens."""
    inherited = {
        k: v
        for k, v in os.environ.items()
        # PYTHONPATH: a stack started from a checkout runs that checkout's code (a git
        # worktree next to the venv's editable install), in every service and DAG task
        if k.startswith("TX_") or k in ("HOME", "LANG", "LC_ALL", "TZ", "USER", "PYTHONPATH")
    }
    return (
        inherited
        | {
            "TX_HOME": str(ctx.home),
            "TX_REDIS_URL": ctx.online_redis_url,
            "TX_MLFLOW_TRACKING_URI": ctx.url("mlflow"),
            "TX_OPTUNA_STORAGE": ctx.db_url("optuna"),
            "TX_SERVING_URL": ctx.url("serving"),
            "TX_SERVING_TOKEN": ctx.secrets["serving_token"],
            "TX_ENGINE_TOKEN": ctx.secrets["engine_token"],
            "TX_JOURNAL_URL": ctx.db_url("journal", "postgresql"),
            "TX_MONITOR_DB_URL": ctx.db_url("monitoring"),
            # the backups DAG dumps MLflow's backend store (the tracking URI is the server)
            "TX_BACKUP_MLFLOW_BACKEND_URI": ctx.db_url("mlflow", "postgresql"),
            # the monitoring DAG's actions reach the engine and Airflow's REST API
            "TX_MONITOR_ACTION_ENGINE_URL": ctx.url("engine"),
            "TX_MONITOR_ACTION_AIRFLOW_URL": ctx.url("api"),
            "BENTOML_HOME": str(ctx.home / "bentoml"),
            "BENTOML_DO_NOT_TRACK": "True",
            "DO_NOT_TRACK": "1",
            "PYTHONUNBUFFERED": "1",
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        }
        | (
            # failed DAG tasks reach a person through the same notifier as the alerts
            {"TX_DAG_FAILURE_WEBHOOK_URL": f"{ctx.url('notifier')}/alertmanager"}
            if os.environ.get("TX_NOTIFY_URLS") and not os.environ.get("TX_DAG_FAILURE_WEBHOOK_URL")
            else {}
        )
    )


def airflow_stack_env(ctx: StackContext) -> dict[str, str]:
    """Airflow's configuration for the stack (one block shared by its five services)."""
    api = ctx.url("api")
    return {
        "AIRFLOW_HOME": str(ctx.state_dir / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api}/execution/",
        "AIRFLOW__CORE__FERNET_KEY": ctx.secrets["fernet_key"],
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": ctx.db_url("airflow"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": ctx.db_url("airflow"),
        "AIRFLOW__CELERY__BROKER_URL": ctx.broker_url,
        "AIRFLOW__CELERY__RESULT_BACKEND": ctx.db_url("celery", "db+postgresql+psycopg"),
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(ctx.stack.worker_concurrency),
        "AIRFLOW__API__PORT": str(ctx.stack.port(PORTS["api"])),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__BASE_URL": api,
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API__SECRET_KEY": ctx.secrets["api_secret_key"],
        "AIRFLOW__API_AUTH__JWT_SECRET": ctx.secrets["jwt_secret"],
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "True",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": "127.0.0.1",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(
            ctx.stack.port(PORTS["scheduler_health"])
        ),
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(ctx.stack.port(PORTS["worker_log"])),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(ctx.stack.port(PORTS["triggerer_log"])),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "60",
    }


def services(ctx: StackContext) -> list[Service]:
    """The stack, one row per supervised process, in start order."""
    base = platform_env(ctx)
    af = {**base, **airflow_stack_env(ctx)}
    airflow = str(VENV_BIN / "airflow")
    tx = str(VENV_BIN / "tx")
    api = ctx.url("api")
    monitor = f"{api}/api/v2/monitor/health"
    s = ctx.stack
    return [
        Service(
            "mlflow",
            [
                str(VENV_BIN / "mlflow"),
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(s.port(PORTS["mlflow"])),
                "--backend-store-uri",
                ctx.db_url("mlflow"),
                "--artifacts-destination",
                str(ctx.home / "mlartifacts"),
                "--workers",
                "1",
            ],
            base,
            Health(url=f"{ctx.url('mlflow')}/health"),
            url=ctx.url("mlflow"),
        ),
        Service(
            "airflow-api-server",
            [airflow, "api-server", "--port", str(s.port(PORTS["api"]))],
            af,
            Health(url=monitor, json_field="metadatabase.status", expect="healthy"),
            url=api,
        ),
        Service(
            "airflow-scheduler",
            [airflow, "scheduler"],
            af,
            Health(url=f"http://127.0.0.1:{s.port(PORTS['scheduler_health'])}/health"),
            after=("airflow-api-server",),  # tasks call the execution API from the start
        ),
        Service(
            "airflow-dag-processor",
            [airflow, "dag-processor"],
            af,
            Health(url=monitor, json_field="dag_processor.status", expect="healthy"),
            after=("airflow-api-server",),
        ),
        Service(
            "airflow-triggerer",
            [airflow, "triggerer"],
            af,
            Health(url=monitor, json_field="triggerer.status", expect="healthy"),
            after=("airflow-api-server",),
        ),
        Service(
            "airflow-celery-worker",
            [airflow, "celery", "worker", "--concurrency", str(s.worker_concurrency)],
            af,
            Health(probe="celery_ping"),
            graceful_timeout_s=30.0,
            after=("airflow-api-server",),
        ),
        Service(
            "serving",
            [tx, "serve", "--wait-for-champion", "--port", str(s.port(PORTS["serving"]))],
            base,
            Health(probe="serving"),
            url=f"{ctx.url('serving')}/v1/predict",
        ),
        Service(
            "pusher",
            [
                tx,
                "features",
                "stream",
                "--metrics-port",
                str(s.port(PORTS["pusher_metrics"])),
            ],
            base,
            Health(probe="online_features"),
        ),
        Service(
            "engine",
            [tx, "engine", "run", "--mode", "paper"],
            {
                **base,
                "TX_ENGINE_MODE": "paper",
                "TX_ENGINE_CONTROL_PORT": str(s.port(PORTS["engine"])),
            },
            Health(
                url=f"{ctx.url('engine')}/api/status",
                headers={"Authorization": f"Bearer {ctx.secrets['engine_token']}"},
            ),
            url=f"{ctx.url('engine')}/",
        ),
        *observe_services(ctx, base, af),
    ]


def observe_services(ctx: StackContext, base: dict[str, str], af: dict[str, str]) -> list[Service]:
    """Prometheus (config rendered by :func:`render_observe_configs`), Alertmanager, the
    Airflow DAG-run exporter and, when ``TX_NOTIFY_URLS`` names where alerts go, the apprise
    notifier that Alertmanager's webhook reaches."""
    s = ctx.stack
    obs = ctx.state_dir / "observe"
    rows = [
        Service(
            "airflow-exporter",
            [
                str(VENV_BIN / "tx"),
                "observe",
                "airflow-exporter",
                "--port",
                str(s.port(PORTS["airflow_exporter"])),
            ],
            af,
            Health(url=f"{ctx.url('airflow_exporter')}/metrics"),
        ),
        Service(  # the monitoring verdicts (results table) for Prometheus
            "monitor-exporter",
            [
                str(VENV_BIN / "tx"),
                "monitor",
                "exporter",
                "--port",
                str(s.port(PORTS["monitor_exporter"])),
            ],
            base,
            Health(url=f"{ctx.url('monitor_exporter')}/metrics"),
        ),
        Service(
            "prometheus",
            [
                PROMETHEUS,
                f"--config.file={obs / 'prometheus' / 'prometheus.yml'}",
                f"--storage.tsdb.path={obs / 'prometheus-data'}",
                f"--web.listen-address=127.0.0.1:{s.port(PORTS['prometheus'])}",
            ],
            base,
            Health(url=f"{ctx.url('prometheus')}/-/ready"),
            url=ctx.url("prometheus"),
        ),
        Service(
            "alertmanager",
            [
                ALERTMANAGER,
                f"--config.file={obs / 'alertmanager' / 'alertmanager.yml'}",
                f"--storage.path={obs / 'alertmanager-data'}",
                f"--web.listen-address=127.0.0.1:{s.port(PORTS['alertmanager'])}",
                "--cluster.listen-address=",  # one instance: no gossip port
            ],
            base,
            Health(url=f"{ctx.url('alertmanager')}/-/ready"),
            url=ctx.url("alertmanager"),
        ),
    ]
    if os.environ.get("TX_NOTIFY_URLS"):
        rows.append(
            Service(
                "notifier",
                [
                    str(VENV_BIN / "tx"),
                    "notify",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(s.port(PORTS["notifier"])),
                ],
                base,
                Health(url=f"{ctx.url('notifier')}/healthz"),
            )
        )
    return rows


PROMETHEUS = "/usr/bin/prometheus"
ALERTMANAGER = "/usr/bin/prometheus-alertmanager"


def render_observe_configs(ctx: StackContext) -> None:
    """Write the stack's Prometheus configuration (engine, serving, pusher, Airflow exporter,
    itself and Alertmanager; the rules of ``infra/prometheus/rules``) and Alertmanager's
    (every alert to the notifier's webhook), with the tokens in files of mode 600."""
    from titanovax.observe import (
        AlertThresholds,
        ScrapeTarget,
        render_alertmanager_config,
        render_prometheus_config,
    )

    obs = ctx.state_dir / "observe"
    obs.mkdir(parents=True, exist_ok=True)
    tokens = {}
    for name in ("engine_token", "serving_token"):
        f = obs / name
        f.write_text(ctx.secrets[name])
        f.chmod(0o600)
        tokens[name] = f

    def addr(key: str) -> str:
        return f"127.0.0.1:{ctx.stack.port(PORTS[key])}"

    targets = [
        ScrapeTarget("engine", [addr("engine")], bearer_token_file=tokens["engine_token"]),
        ScrapeTarget("serving", [addr("serving")], bearer_token_file=tokens["serving_token"]),
        ScrapeTarget("pusher", [addr("pusher_metrics")]),
        ScrapeTarget("airflow", [addr("airflow_exporter")]),
        ScrapeTarget("monitor", [addr("monitor_exporter")]),
        ScrapeTarget("prometheus", [addr("prometheus")]),
        ScrapeTarget("alertmanager", [addr("alertmanager")]),
    ]
    render_prometheus_config(
        targets,
        PROJECT_ROOT / "infra" / "prometheus" / "rules",
        obs / "prometheus",
        alertmanagers=[addr("alertmanager")],
        thresholds=AlertThresholds(),  # TX_ALERT_*
        scrape_interval=ctx.stack.scrape_interval,
        evaluation_interval=ctx.stack.scrape_interval,
        for_override=ctx.stack.alert_for,
    )
    wait = ctx.stack.alert_group_wait
    render_alertmanager_config(
        f"{ctx.url('notifier')}/alertmanager",
        obs / "alertmanager",
        group_wait=wait,
        group_interval=wait if wait != "30s" else "5m",
    )


# --- health checks ----------------------------------------------------------------------------


def _http_check(h: Health) -> str | None:
    """None when healthy, else what is wrong (one line)."""
    import httpx

    assert h.url is not None
    try:
        r = httpx.get(h.url, headers=h.headers, timeout=3.0)
    except httpx.HTTPError as exc:
        return f"{h.url}: {type(exc).__name__}"
    if h.json_field is None:
        return None if r.status_code == 200 else f"{h.url}: HTTP {r.status_code}"
    try:
        value: Any = r.json()
        for part in h.json_field.split("."):
            value = (value or {}).get(part)
    except (ValueError, AttributeError):
        return f"{h.url}: not JSON"
    return None if str(value) == h.expect else f"{h.json_field}={value}"


def _probe_celery(ctx: StackContext) -> str | None:
    from celery import Celery

    app = Celery(broker=ctx.broker_url)
    try:
        answers = app.control.ping(timeout=1.0)
    except Exception as exc:  # broker down: report, keep polling
        return f"broker {ctx.broker_url}: {exc}"
    finally:
        app.close()
    return None if answers else "no Celery worker answered ping"


def _probe_serving(ctx: StackContext) -> str | None:
    """Ready (``/readyz`` 200), or alive and waiting because no champion is registered yet
    (then ``up`` reports it instead of waiting for a model that only training can make)."""
    err = _http_check(
        Health(
            url=f"{ctx.url('serving')}/readyz",
            headers={"Authorization": f"Bearer {ctx.secrets['serving_token']}"},
        )
    )
    if err is None:
        return None
    if champion_registered(ctx) is False:  # MLflow answered: no champion yet
        return WAITING_FOR_CHAMPION
    return err


WAITING_FOR_CHAMPION = "waiting for a champion (no model promoted yet)"


def champion_registered(ctx: StackContext) -> bool | None:
    """Whether the registry has a ``champion``; None when MLflow does not answer."""
    import httpx

    s = PlatformSettings()
    try:
        r = httpx.get(
            f"{ctx.url('mlflow')}/api/2.0/mlflow/registered-models/alias",
            params={"name": s.model_name, "alias": "champion"},
            timeout=3.0,
        )
    except httpx.HTTPError:
        return None
    if r.status_code >= 500:
        return None
    return r.status_code == 200


def _probe_online(ctx: StackContext) -> str | None:
    """The pusher wrote a row for every symbol into the online store (Feast's format)."""
    import redis

    from engine.features import FeatureUnavailable, OnlineFeatureReader
    from feature_repo.pipeline.store import FEATURE_VIEW
    from feature_repo.pipeline.transforms import TREND_V1_FEATURES

    s = PlatformSettings()
    client = redis.Redis.from_url(ctx.online_redis_url)
    reader = OnlineFeatureReader(
        client, project=s.feast_project, feature_view=FEATURE_VIEW, features=list(TREND_V1_FEATURES)
    )
    try:
        for sym in s.symbols:
            reader.read(sym)
    except FeatureUnavailable as exc:
        return str(exc)
    except redis.RedisError as exc:
        return f"redis: {exc}"
    finally:
        client.close()
    return None


PROBES: dict[str, Callable[[StackContext], str | None]] = {
    "celery_ping": _probe_celery,
    "serving": _probe_serving,
    "online_features": _probe_online,
}


def check(ctx: StackContext, svc: Service) -> str | None:
    if svc.health.probe:
        return PROBES[svc.health.probe](ctx)
    return _http_check(svc.health)


# --- state: secrets, pid, spec ----------------------------------------------------------------


def load_secrets(state_dir: Path) -> dict[str, str]:
    """Tokens and keys of this stack: TX_SERVING_TOKEN / TX_ENGINE_TOKEN when set, else
    generated once and kept in ``secrets.json`` (mode 600) so restarts keep them."""
    path = state_dir / "secrets.json"
    stored: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    from cryptography.fernet import Fernet

    wanted = {
        "serving_token": lambda: secrets.token_urlsafe(24),
        "engine_token": lambda: secrets.token_urlsafe(24),
        "jwt_secret": lambda: secrets.token_urlsafe(32),
        "api_secret_key": lambda: secrets.token_urlsafe(32),
        "fernet_key": lambda: Fernet.generate_key().decode(),
    }
    changed = False
    for key, make in wanted.items():
        if key not in stored:
            stored[key] = make()
            changed = True
    if changed:
        state_dir.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600, exist_ok=True)
        path.chmod(0o600)
        path.write_text(json.dumps(stored, indent=2))
    out = dict(stored)
    for key, env in (("serving_token", "TX_SERVING_TOKEN"), ("engine_token", "TX_ENGINE_TOKEN")):
        if os.environ.get(env):
            out[key] = os.environ[env]
    return out


def context(home: Path | None = None) -> StackContext:
    home = (home or PlatformSettings().home).resolve()
    return StackContext(home=home, stack=StackSettings(), secrets=load_secrets(home / "stack"))


def _pid_alive(pid: int) -> bool:
    import psutil

    try:
        p = psutil.Process(pid)
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def supervisor_pid(ctx: StackContext) -> int | None:
    path = ctx.state_dir / "circusd.pid"
    if not path.exists():
        return None
    pid, _, created = path.read_text().strip().partition(" ")
    import psutil

    try:
        p = psutil.Process(int(pid))
        if created and abs(p.create_time() - float(created)) > 1.0:
            return None  # the pid was reused by another process
    except (psutil.Error, ValueError):
        return None
    return int(pid) if _pid_alive(int(pid)) else None


def _endpoint(ctx: StackContext, name: str) -> str:
    return f"ipc://{ctx.state_dir / name}"


def _client(ctx: StackContext) -> Any:
    from circus.client import CircusClient

    return CircusClient(endpoint=_endpoint(ctx, "circus.ctl"), timeout=10)


def _call(ctx: StackContext, command: str, **props: Any) -> dict[str, Any]:
    client = _client(ctx)
    try:
        return dict(client.call({"command": command, "properties": props}))
    finally:
        client.stop()


# --- the supervisor process -------------------------------------------------------------------


def watcher_config(ctx: StackContext, svc: Service, table: list[Service]) -> dict[str, Any]:
    """circus's watcher for ``svc``. Every start goes through the restart backoff
    (:mod:`titanovax.restart_backoff`: a crash loop waits 10, 20, 40, 60 s before the next
    start), then execs the service (same pid). A service with ``after`` then starts as a
    small waiter that execs the service's command once those services answer their health
    URL."""
    logfile = str(ctx.log_dir / f"{svc.name}.log")
    stream = {"class": "FileStream", "filename": logfile}
    argv = svc.argv
    if svc.after:
        urls = [s.health.url for s in table if s.name in svc.after and s.health.url]
        argv = [sys.executable, "-m", "titanovax.stack", "--after", *urls, "--", *svc.argv]
    starts = ctx.state_dir / "restarts" / f"{svc.name}.json"
    argv = [sys.executable, "-m", "titanovax.restart_backoff", str(starts), "--", *argv]
    return {
        "name": svc.name,
        "cmd": shlex.join(argv),
        "env": svc.env,
        "copy_env": False,
        "working_dir": str(PROJECT_ROOT),
        "stdout_stream": dict(stream),
        "stderr_stream": dict(stream),
        "stop_children": True,
        "graceful_timeout": svc.graceful_timeout_s,
        "max_retry": -1,  # circus 0.18 stops the whole arbiter when a watcher gives up
        "respawn": True,
    }


def supervise(spec_path: Path) -> None:
    """Run circus's arbiter in the foreground for the spec that ``up`` wrote."""
    from circus import get_arbiter

    spec = json.loads(spec_path.read_text())
    arbiter = get_arbiter(
        spec["watchers"],
        controller=spec["controller"],
        pubsub_endpoint=spec["pubsub"],
        multicast_endpoint="",  # no cluster discovery (it would open a UDP socket)
        check_delay=1.0,
        plugins=[
            {
                "use": "circus.plugins.flapping.Flapping",
                "attempts": 3,
                "window": 60,
                "retry_in": 10,
                "max_retry": -1,  # keep trying: a watcher that gives up stops circus 0.18
                # circus closes a plugin's stdout/stderr unless told otherwise; the plugin's
                # sockets then reuse fds 1 and 2 and its first log line (the one announcing
                # the flapping) lands on a socket: the stop never happens. Inherit circusd.log.
                "close_child_stdout": False,
                "close_child_stderr": False,
            }
        ],
    )
    arbiter.start()


# --- up / status / logs / down ----------------------------------------------------------------


class StackError(RuntimeError):
    """A stack operation could not complete; the message says what to do next."""


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ensure_databases(ctx: StackContext) -> None:
    import psycopg

    admin = ctx.db_url("x", "postgresql").rsplit("/", 1)[0] + "/postgres"
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            have = {r[0] for r in conn.execute("SELECT datname FROM pg_database")}
            for name in DATABASES:
                db = f"{ctx.stack.db_prefix}_{name}"
                if db not in have:
                    conn.execute(f'CREATE DATABASE "{db}"')
    except psycopg.OperationalError as exc:
        raise StackError(
            f"PostgreSQL at {ctx.stack.postgres_url} not reachable ({exc}); start it or set TX_STACK_POSTGRES_URL"
        ) from exc


def _run_once(ctx: StackContext, marker: str, argv: list[str], env: Mapping[str, str]) -> bool:
    """Run a setup command unless its marker (keyed on the command) is there."""
    key = json.dumps(argv)
    path = ctx.state_dir / f".{marker}"
    if path.exists() and path.read_text() == key:
        return False
    proc = subprocess.run(
        argv,
        env=dict(env),
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if proc.returncode != 0:
        raise StackError(
            f"{' '.join(argv[:3])} failed (exit {proc.returncode}):\n{proc.stdout[-1500:]}\n{proc.stderr[-2500:]}"
        )
    path.write_text(key)
    return True


def airflow_connections(ctx: StackContext) -> dict[str, dict[str, Any]]:
    """The Connections the DAG tasks read (titanovax.airflow_tasks), as Airflow's import
    file wants them."""
    r = urlparse(ctx.online_redis_url)
    p = urlparse(ctx.db_url("optuna"))
    m = urlparse(ctx.url("mlflow"))
    return {
        "tx_redis": {
            "conn_type": "redis",
            "host": r.hostname,
            "port": r.port,
            "extra": json.dumps({"db": ctx.stack.redis_db}),
        },
        "tx_postgres": {
            "conn_type": "postgres",
            "host": p.hostname,
            "port": p.port,
            "login": p.username,
            "password": p.password or "",
            "schema": p.path.strip("/"),
        },
        "tx_mlflow": {"conn_type": "http", "host": m.hostname, "port": m.port},
    }


def check_celery_provider() -> None:
    """The Celery provider 3.26 imports ``celery.backends.database.retry``, which celery 5.7
    removed: the scheduler and the worker would crash-loop. Say so before starting them."""
    import celery
    import celery.backends.database as celery_db

    if not hasattr(celery_db, "retry"):
        raise StackError(
            f"celery {celery.__version__} does not work with apache-airflow-providers-celery "
            "(it imports celery.backends.database.retry, removed in celery 5.7): install "
            "celery<5.7, e.g. `uv pip install 'celery==5.6.3'`"
        )


def _prepare(ctx: StackContext, say: Callable[[str], None]) -> None:
    """Databases, Airflow's migration, its Connections and Variable, and the Feast repo,
    once each. Feast and Airflow do not depend on each other: they run side by side (each
    step is a process that spends seconds importing on a small machine)."""
    from concurrent.futures import ThreadPoolExecutor

    check_celery_provider()
    ctx.log_dir.mkdir(parents=True, exist_ok=True)
    render_observe_configs(ctx)
    (ctx.home / "mlartifacts").mkdir(parents=True, exist_ok=True)
    _ensure_databases(ctx)
    af = {**os.environ, **platform_env(ctx), **airflow_stack_env(ctx)}
    airflow = str(VENV_BIN / "airflow")
    conns = ctx.state_dir / "airflow-connections.json"
    conns.write_text(json.dumps(airflow_connections(ctx), indent=2))
    conns.chmod(0o600)
    variables = ctx.state_dir / "airflow-variables.json"
    variables.write_text(json.dumps({"tx_serving_url": ctx.url("serving")}, indent=2))
    env = {**os.environ, **platform_env(ctx)}

    def feast() -> None:
        if _run_once(ctx, "feast-applied", [str(VENV_BIN / "tx"), "features", "apply"], env):
            say("feast: repo applied (online store on " + ctx.online_redis_url + ")")

    def airflow_db() -> None:
        if _run_once(ctx, "airflow-migrated", [airflow, "db", "migrate"], af):
            say("airflow: metadata database migrated")
        with ThreadPoolExecutor(2) as pool:
            c = pool.submit(
                _run_once,
                ctx,
                "airflow-connections",
                [airflow, "connections", "import", str(conns)],
                af,
            )
            v = pool.submit(
                _run_once,
                ctx,
                "airflow-variables",
                [airflow, "variables", "import", str(variables)],
                af,
            )
            if c.result():
                say("airflow: connections tx_redis, tx_postgres, tx_mlflow")
            if v.result():
                say("airflow: variable tx_serving_url")

    with ThreadPoolExecutor(2) as pool:
        for f in [pool.submit(feast), pool.submit(airflow_db)]:
            f.result()


def check_ports(ctx: StackContext, table: list[Service]) -> None:
    """Refuse to start when a port of the stack is taken, naming it."""
    busy = [
        (svc.name, port)
        for svc, port in ((svc, urlparse(svc.url).port if svc.url else None) for svc in table)
        if port and not _port_free(port)
    ]
    extra = [
        ("scheduler health", ctx.stack.port(PORTS["scheduler_health"])),
        ("worker log server", ctx.stack.port(PORTS["worker_log"])),
        ("triggerer log server", ctx.stack.port(PORTS["triggerer_log"])),
    ]
    busy += [(n, p) for n, p in extra if not _port_free(p)]
    if busy:
        names = ", ".join(f"{n} :{p}" for n, p in busy)
        raise StackError(
            f"ports in use: {names}; pick another range with TX_STACK_PORT_BASE (now {ctx.stack.port_base})"
        )


def _start_supervisor(ctx: StackContext, table: list[Service]) -> int:
    import shutil

    shutil.rmtree(ctx.state_dir / "restarts", ignore_errors=True)  # a new supervisor: no history
    spec = {
        "controller": _endpoint(ctx, "circus.ctl"),
        "pubsub": _endpoint(ctx, "circus.pub"),
        "watchers": [watcher_config(ctx, svc, table) for svc in table],
        "services": [asdict(svc) for svc in table],
    }
    spec_path = ctx.state_dir / "spec.json"
    spec_path.write_text(json.dumps(spec, indent=2))
    spec_path.chmod(0o600)  # it holds the tokens
    with (ctx.log_dir / "circusd.log").open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "titanovax.stack", str(spec_path)],
            cwd=PROJECT_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    import psutil

    created = psutil.Process(proc.pid).create_time()
    (ctx.state_dir / "circusd.pid").write_text(f"{proc.pid} {created}")
    return proc.pid


def watcher_status(ctx: StackContext) -> dict[str, str]:
    try:
        return dict(_call(ctx, "status").get("statuses", {}))
    except Exception:
        return {}


def _log_tail(ctx: StackContext, name: str, n: int = 30) -> str:
    path = ctx.log_dir / f"{name}.log"
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def wait_healthy(
    ctx: StackContext, table: list[Service], timeout_s: float, say: Callable[[str], None]
) -> dict[str, str | None]:
    """Poll every health check until all pass (serving may be waiting for a champion);
    raise when one service stops (flapping gave up) or the time is up."""
    start = time.monotonic()
    pending = {svc.name: svc for svc in table}
    result: dict[str, str | None] = {}
    seen_active: set[str] = set()
    while pending:
        if supervisor_pid(ctx) is None:
            raise StackError("the supervisor exited:\n" + _log_tail(ctx, "circusd"))
        statuses = watcher_status(ctx)
        seen_active |= {n for n, st in statuses.items() if st == "active"}
        for name, svc in list(pending.items()):
            # a watcher is "stopped" until the arbiter starts it; after that, stopped means
            # the flapping plugin gave up on it
            if statuses.get(name) == "stopped" and name in seen_active:
                raise StackError(
                    f"{name} keeps exiting; circus gave up. Its log ({ctx.log_dir / (name + '.log')}):\n"
                    + _log_tail(ctx, name)
                )
            err = check(ctx, svc)
            if err is None or err == WAITING_FOR_CHAMPION:
                result[name] = err
                del pending[name]
                say(
                    f"  {name:<22} {'healthy' if err is None else err} ({time.monotonic() - start:.0f} s)"
                )
        if not pending:
            break
        if time.monotonic() - start > timeout_s:
            lines = [f"{n}: {check(ctx, s)}" for n, s in pending.items()]
            raise StackError(
                f"not healthy after {timeout_s:.0f} s (TX_STACK_UP_TIMEOUT_S):\n  "
                + "\n  ".join(lines)
                + "\nlogs: tx stack logs <service>"
            )
        time.sleep(1.0)
    return result


def select(table: list[Service], only: list[str] | None) -> list[Service]:
    """The rows of ``table`` named in ``only`` (table order); all of them when ``only`` is
    None. An unknown name is an error naming it and the choices."""
    if only is None:
        return table
    names = [s.name for s in table]
    unknown = [n for n in only if n not in names]
    if unknown or not only:
        raise StackError(
            f"unknown service {', '.join(map(repr, unknown)) or '(none given)'} for --only; "
            f"choose from: {', '.join(names)}"
        )
    return [s for s in table if s.name in only]


#: services that read the Feast repo's online store layout (``tx features apply`` first)
_NEEDS_FEAST = {"pusher", "engine", "serving"}


def _prepare_subset(ctx: StackContext, table: list[Service], say: Callable[[str], None]) -> None:
    """What a chosen subset needs of :func:`_prepare`: the databases (the engine's journal,
    MLflow's backend), the observability configs, the Feast repo when a feature reader or
    writer runs; Airflow's migration only when an Airflow service is chosen."""
    names = {s.name for s in table}
    if any(n.startswith("airflow") for n in names):
        _prepare(ctx, say)
        return
    ctx.log_dir.mkdir(parents=True, exist_ok=True)
    render_observe_configs(ctx)
    (ctx.home / "mlartifacts").mkdir(parents=True, exist_ok=True)
    _ensure_databases(ctx)
    if names & _NEEDS_FEAST:
        env = {**os.environ, **platform_env(ctx)}
        if _run_once(ctx, "feast-applied", [str(VENV_BIN / "tx"), "features", "apply"], env):
            say("feast: repo applied (online store on " + ctx.online_redis_url + ")")


def running_services(ctx: StackContext) -> list[str] | None:
    """Names of the services the running supervisor was started with (None: not running)."""
    if supervisor_pid(ctx) is None:
        return None
    try:
        spec = json.loads((ctx.state_dir / "spec.json").read_text())
    except (OSError, ValueError):
        return None
    return [s["name"] for s in spec.get("services", [])]


def up(
    ctx: StackContext, say: Callable[[str], None] = print, only: list[str] | None = None
) -> dict[str, Any]:
    """Start the stack (or what of it is not running) and wait until every service is
    healthy. Idempotent: a running stack is checked, not started twice. ``only`` starts a
    chosen subset of the table under the same supervisor (e.g. ``["engine", "pusher"]``
    for the self-healing tests); the full stack is ``only=None``."""
    t0 = time.monotonic()
    table = select(services(ctx), only)
    pid = supervisor_pid(ctx)
    if pid is None:
        check_ports(ctx, table)
        if only is None:
            _prepare(ctx, say)
        else:
            _prepare_subset(ctx, table, say)
        pid = _start_supervisor(ctx, table)
        say(f"supervisor (circus) pid {pid}; waiting for health checks")
        _wait_controller(ctx, 30.0)
    else:
        running = json.loads((ctx.state_dir / "spec.json").read_text())["services"]
        if [s["argv"] for s in running] != [s.argv for s in table]:
            raise StackError(
                "a stack with other settings is running under this TX_HOME: `tx stack down` first"
            )
        for name, st in watcher_status(ctx).items():
            if st != "active":
                _call(ctx, "start", name=name)
        say(f"already running (supervisor pid {pid}); checking health")
    health = wait_healthy(ctx, table, ctx.stack.up_timeout_s, say)
    took = time.monotonic() - t0
    return {
        "supervisor_pid": pid,
        "seconds": round(took, 1),
        "health": health,
        "urls": {svc.name: svc.url for svc in table if svc.url},
    }


def _wait_controller(ctx: StackContext, timeout_s: float) -> None:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if supervisor_pid(ctx) is None:
            raise StackError("the supervisor exited:\n" + _log_tail(ctx, "circusd"))
        with contextlib.suppress(Exception):
            _call(ctx, "status")
            return
        time.sleep(0.3)
    raise StackError("the supervisor does not answer:\n" + _log_tail(ctx, "circusd"))


def status(ctx: StackContext) -> list[dict[str, Any]]:
    """One row per service: supervisor state, pids, health."""
    table = services(ctx)
    if supervisor_pid(ctx) is None:
        return [{"service": svc.name, "state": "down", "pids": [], "health": "-"} for svc in table]
    started = running_services(ctx)
    if started is not None:  # a subset (`up --only`): report what runs
        table = [svc for svc in table if svc.name in started]
    statuses = watcher_status(ctx)
    rows = []
    for svc in table:
        try:
            pids = list(_call(ctx, "list", name=svc.name).get("pids", []))
        except Exception:
            pids = []
        err = check(ctx, svc)
        rows.append(
            {
                "service": svc.name,
                "state": statuses.get(svc.name, "unknown"),
                "pids": pids,
                "health": "healthy" if err is None else err,
                "url": svc.url,
            }
        )
    return rows


def descendants(pid: int) -> list[Any]:
    import psutil

    try:
        return list(psutil.Process(pid).children(recursive=True))
    except psutil.Error:
        return []


def down(ctx: StackContext, timeout_s: float = 90.0) -> dict[str, Any]:
    """Stop what ``up`` started: circus stops every service (SIGTERM to the process and its
    children, SIGKILL after the grace time), then exits; any process of the stack still
    alive after that (a child that escaped into its own session) is killed. Returns the pids
    that were stopped."""
    import psutil

    pid = supervisor_pid(ctx)
    if pid is None:
        return {"stopped": [], "note": "no stack running under " + str(ctx.home)}
    procs = [psutil.Process(pid), *descendants(pid)]
    with contextlib.suppress(Exception):
        _call(ctx, "quit", waiting=True)
    _gone, alive = psutil.wait_procs(procs, timeout=timeout_s)
    for p in alive:  # only processes that were part of this stack
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=10)
    (ctx.state_dir / "circusd.pid").unlink(missing_ok=True)
    return {"stopped": sorted(p.pid for p in procs), "killed": sorted(p.pid for p in alive)}


# --- CLI --------------------------------------------------------------------------------------

stack_app = typer.Typer(
    help="The distributed stack as local supervised processes: Airflow (CeleryExecutor), "
    "MLflow, serving, pusher, engine (paper).",
    no_args_is_help=True,
)


def _fail(exc: Exception) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(1) from exc


@stack_app.command("up")
def up_cmd(
    only: Annotated[
        str | None,
        typer.Option(
            "--only",
            help="Comma-separated services to start (e.g. engine,pusher); default: all. "
            "`tx stack status` lists the names.",
        ),
    ] = None,
) -> None:
    """Start every service (idempotent), wait for each health check, print the URLs."""
    chosen = [n.strip() for n in only.split(",") if n.strip()] if only is not None else None
    try:
        out = up(context(), say=typer.echo, only=chosen)
    except StackError as exc:
        _fail(exc)
        return
    typer.echo(f"stack healthy in {out['seconds']} s")
    for name, url in out["urls"].items():
        typer.echo(f"  {name:<22} {url}")
    typer.echo(f"tokens: {context().state_dir / 'secrets.json'}; logs: tx stack logs <service>")


@stack_app.command("status")
def status_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Each service: supervisor state, pids and health."""
    rows = status(context())
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        pids = ",".join(map(str, r["pids"])) or "-"
        typer.echo(f"{r['service']:<22} {r['state']:<8} pids {pids:<14} {r['health']}")


@stack_app.command("logs")
def logs_cmd(
    service: Annotated[str | None, typer.Argument(help="One service; default: all")] = None,
    lines: Annotated[int, typer.Option("-n", help="Lines from the end")] = 40,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing")] = False,
) -> None:
    """Tail a service's log (or every log) under $TX_HOME/stack/logs."""
    ctx = context()
    names = [s.name for s in services(ctx)] + ["circusd"]
    if service is not None and service not in names:
        _fail(StackError(f"unknown service {service!r}; one of: {', '.join(names)}"))
    paths = [ctx.log_dir / f"{n}.log" for n in ([service] if service else names)]
    argv = ["tail", "-n", str(lines), *(["-F"] if follow else []), *map(str, paths)]
    with contextlib.suppress(KeyboardInterrupt):
        subprocess.run(argv, check=False)


@stack_app.command("down")
def down_cmd() -> None:
    """Stop every process the stack started, and nothing else."""
    out = down(context())
    if not out["stopped"]:
        typer.echo(out["note"])
        return
    typer.echo(
        f"stopped {len(out['stopped'])} processes"
        + (f" ({len(out['killed'])} killed)" if out["killed"] else "")
    )


def wait_then_exec(args: list[str]) -> None:
    """``--after URL… -- ARGV…``: poll each URL until it answers 200, then exec ARGV."""
    import httpx

    split = args.index("--")
    urls, argv = args[1:split], args[split + 1 :]
    for url in urls:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=3.0).status_code == 200:
                    break
            time.sleep(1.0)
    os.execv(argv[0], argv)


if __name__ == "__main__":
    if sys.argv[1] == "--after":
        wait_then_exec(sys.argv[1:])
    else:
        supervise(Path(sys.argv[1]))
