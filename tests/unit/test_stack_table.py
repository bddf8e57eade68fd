"""The `tx stack` service table and the Airflow helpers the DAGs use, without starting them."""

from __future__ import annotations

import json
import subprocess
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar
from urllib.parse import urlparse

import pytest
from typer.testing import CliRunner

from titanovax.stack import (
    PORTS,
    StackContext,
    StackSettings,
    airflow_connections,
    load_secrets,
    services,
)

pytestmark = pytest.mark.unit


def _ctx(tmp_path: Path, **stack: object) -> StackContext:
    return StackContext(
        home=tmp_path, stack=StackSettings(**stack), secrets=load_secrets(tmp_path / "stack")
    )


def test_stack_table_when_built_then_every_service_has_a_command_that_exists_and_a_health_check(
    tmp_path: Path,
) -> None:
    from airflow.cli.cli_parser import get_parser
    from mlflow.cli import cli as mlflow_cli

    from titanovax.cli import app

    table = services(_ctx(tmp_path))

    names = [s.name for s in table]
    assert len(set(names)) == len(names)
    assert {
        "airflow-api-server",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
        "airflow-celery-worker",
        "mlflow",
        "serving",
        "pusher",
        "engine",
        "airflow-exporter",
        "monitor-exporter",
        "prometheus",
        "alertmanager",
    } <= set(names)
    runner = CliRunner()
    parser = get_parser()
    for svc in table:
        exe = Path(svc.argv[0])
        assert exe.is_file() and exe.stat().st_mode & 0o111, svc
        assert svc.health.url or svc.health.probe, svc
        if exe.name == "tx":  # the subcommand and its options exist
            res = runner.invoke(app, [*svc.argv[1:], "--help"])
            assert res.exit_code == 0, (svc.name, res.output)
        elif exe.name == "airflow":  # argparse exits on an unknown command or option
            args = parser.parse_args(svc.argv[1:])
            assert callable(args.func), svc
        elif exe.name == "mlflow":
            ctx = mlflow_cli.make_context("mlflow", list(svc.argv[1:]), resilient_parsing=True)
            assert ctx.protected_args == ["server"] or ctx.invoked_subcommand == "server", svc
        elif exe.name in ("prometheus", "prometheus-alertmanager"):  # every flag is one it has
            helptext = subprocess.run(
                [str(exe), "--help"], capture_output=True, text=True, timeout=30
            )
            for arg in svc.argv[1:]:
                assert arg.split("=")[0] in helptext.stdout + helptext.stderr, (svc.name, arg)
        else:
            pytest.fail(f"{svc.name}: unknown program {exe}")


def test_stack_table_when_port_base_moves_then_every_port_moves_and_none_collide(
    tmp_path: Path,
) -> None:
    table = services(_ctx(tmp_path, port_base=41000))

    ports = [urlparse(s.url).port for s in table if s.url]
    assert all(41000 < p < 41100 for p in ports), ports
    assert len(set(PORTS.values())) == len(PORTS)
    env = next(s for s in table if s.name == "airflow-scheduler").env
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:41080/execution/"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith("/tx_stack_airflow")
    assert env["AIRFLOW__CELERY__BROKER_URL"] == "redis://127.0.0.1:6379/11"


def test_stack_secrets_when_loaded_twice_then_kept_and_private(tmp_path: Path) -> None:
    first = load_secrets(tmp_path)
    second = load_secrets(tmp_path)

    assert first == second and len(first["serving_token"]) >= 24
    assert (tmp_path / "secrets.json").stat().st_mode & 0o777 == 0o600


def test_airflow_connections_when_resolved_then_become_the_tx_settings(tmp_path: Path) -> None:
    from airflow.sdk import Connection

    from titanovax.airflow_tasks import resolve_airflow_config

    ctx = _ctx(tmp_path, redis_db=7, db_prefix="tx_t")
    conns = {cid: Connection(conn_id=cid, **spec) for cid, spec in airflow_connections(ctx).items()}
    variables = {"tx_serving_url": "http://127.0.0.1:28030"}

    def get_connection(cid: str) -> Connection:
        return conns[cid]

    out = resolve_airflow_config(get_connection, variables.get)

    assert out == {
        "TX_REDIS_URL": "redis://127.0.0.1:6379/7",
        "TX_OPTUNA_STORAGE": "postgresql+psycopg://postgres@127.0.0.1:5432/tx_t_optuna",
        "TX_MLFLOW_TRACKING_URI": "http://127.0.0.1:28050",
        "TX_SERVING_URL": "http://127.0.0.1:28030",
    }


def test_airflow_config_when_nothing_is_defined_then_the_tx_settings_stay(tmp_path: Path) -> None:
    from titanovax.airflow_tasks import resolve_airflow_config

    def missing(cid: str) -> None:
        raise LookupError(cid)  # what Connection.get does for an unknown id (AirflowNotFound)

    assert resolve_airflow_config(missing, lambda key: None) == {}


@pytest.mark.parametrize(
    ("last", "due"),
    [(None, True), (timedelta(hours=2), False), (timedelta(hours=7), True)],
)
def test_training_due_when_last_version_is_recent_then_waits_for_the_minimum_interval(
    last: timedelta | None, due: bool
) -> None:
    from titanovax.airflow_tasks import training_due

    now = datetime(2026, 12, 5, tzinfo=UTC)
    ok, reason = training_due(None if last is None else now - last, now, timedelta(hours=6))

    assert ok is due and reason


class _Receiver(BaseHTTPRequestHandler):
    bodies: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        n = int(self.headers["Content-Length"])
        type(self).bodies.append(json.loads(self.rfile.read(n)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return


def test_failure_notifier_when_a_task_fails_then_posts_an_alertmanager_style_alert(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from titanovax.airflow_tasks import notify_task_failure

    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv(
        "TX_DAG_FAILURE_WEBHOOK_URL", f"http://127.0.0.1:{server.server_address[1]}/alert"
    )
    ti = SimpleNamespace(dag_id="market_data", task_id="validate", run_id="r1", try_number=1)
    try:
        msg = notify_task_failure({"ti": ti, "exception": ValueError("day quarantined")})
    finally:
        server.shutdown()

    assert msg == "webhook HTTP 200"
    (body,) = _Receiver.bodies
    alert = body["alerts"][0]
    assert body["version"] == "4" and alert["status"] == "firing"
    assert alert["labels"]["dag_id"] == "market_data" and alert["labels"]["task_id"] == "validate"
    assert "day quarantined" in alert["annotations"]["description"]


def test_failure_notifier_when_the_webhook_is_down_then_logs_and_does_not_raise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from titanovax.airflow_tasks import notify_task_failure
    from titanovax.redis_local import free_port

    monkeypatch.setenv("TX_DAG_FAILURE_WEBHOOK_URL", f"http://127.0.0.1:{free_port()}/alert")
    ti = SimpleNamespace(dag_id="d", task_id="t", run_id="r", try_number=1)

    assert notify_task_failure({"ti": ti}).startswith("webhook not reachable")


def _port_base_free() -> int:
    from titanovax.stack import _port_free

    for base in range(30000, 60000, 100):
        if all(_port_free(base + off) for off in PORTS.values()):
            return base
    raise RuntimeError("no free port range")


def test_stack_up_when_a_port_is_taken_then_refuses_naming_it_and_starts_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    from titanovax.cli import app

    base = _port_base_free()
    monkeypatch.setenv("TX_HOME", str(tmp_path))
    monkeypatch.setenv("TX_STACK_PORT_BASE", str(base))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", base + PORTS["api"]))
        taken.listen()

        res = CliRunner().invoke(app, ["stack", "up"])

    assert res.exit_code == 1
    assert f"airflow-api-server :{base + PORTS['api']}" in res.output
    assert "TX_STACK_PORT_BASE" in res.output
    assert not (tmp_path / "stack" / "circusd.pid").exists()


def test_stack_down_and_status_when_nothing_runs_then_say_so_and_touch_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from titanovax.cli import app

    monkeypatch.setenv("TX_HOME", str(tmp_path))
    runner = CliRunner()

    down = runner.invoke(app, ["stack", "down"])
    status = runner.invoke(app, ["stack", "status", "--json"])

    assert down.exit_code == 0 and "no stack running" in down.output
    rows = json.loads(status.output)
    assert {r["state"] for r in rows} == {"down"} and len(rows) == len(services(_ctx(tmp_path)))


def test_training_due_when_no_minimum_interval_then_always_due_even_for_a_newer_version() -> None:
    from titanovax.airflow_tasks import training_due

    now = datetime(2026, 12, 5, tzinfo=UTC)  # a version registered after the run was queued

    assert training_due(now + timedelta(minutes=3), now, timedelta(0))[0] is True
