"""The notifier: Alertmanager's webhook JSON in, one readable message out through apprise to
every configured URL (a local receiver stands in for Telegram); bad input gets a clear answer;
a target that refuses makes Alertmanager retry (502); `notify()` never raises in a callback."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from typer.testing import CliRunner

from tests.e2e.observe_procs import Receiver
from titanovax.notify import (
    Notifier,
    NotifierServer,
    NotifySettings,
    dag_failure_callback,
    format_alertmanager,
    notify,
)
from titanovax.redis_local import free_port

pytestmark = [pytest.mark.integration, pytest.mark.observe]

PAYLOAD = {
    "version": "4",
    "status": "firing",
    "receiver": "notifier",
    "commonLabels": {"alertname": "TxEngineHalted", "severity": "critical"},
    "alerts": [
        {
            "status": "firing",
            "labels": {
                "alertname": "TxEngineHalted",
                "severity": "critical",
                "instance": "engine:8765",
                "job": "engine",
            },
            "annotations": {
                "summary": "Engine engine:8765 is HALTED: it sends no orders",
                "description": "Read the reason in the console.",
                "runbook_url": "docs/runbook.md#txenginehalted",
            },
            "startsAt": "2026-12-06T03:00:00Z",
        }
    ],
}


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture()
def server(receiver: Receiver) -> Iterator[str]:
    srv = NotifierServer(Notifier(f"json://127.0.0.1:{receiver.port}/telegram"), port=0).start()
    yield srv.url
    srv.stop()


def test_format_when_alertmanager_payload_then_title_names_alert_and_body_says_where_and_what() -> (
    None
):
    title, body = format_alertmanager(PAYLOAD)

    assert title == "[FIRING] TxEngineHalted (critical)"
    assert "instance=engine:8765, job=engine" in body
    assert "is HALTED: it sends no orders" in body
    assert "since 2026-12-06T03:00:00Z" in body
    assert "runbook: docs/runbook.md#txenginehalted" in body


def test_webhook_when_alertmanager_posts_then_the_receiver_gets_one_message(
    server: str, receiver: Receiver
) -> None:
    r = httpx.post(f"{server}/alertmanager", json=PAYLOAD)

    assert r.status_code == 200 and r.json()["delivered"] is True
    msg = receiver.wait_message("TxEngineHalted", 10)
    assert msg["path"] == "/telegram" and msg["type"] == "failure"
    assert msg["title"] == "[FIRING] TxEngineHalted (critical)"


def test_webhook_when_body_is_not_json_then_400_and_nothing_sent(
    server: str, receiver: Receiver
) -> None:
    r = httpx.post(f"{server}/alertmanager", content=b"not json")

    assert r.status_code == 400 and "not Alertmanager webhook JSON" in r.json()["error"]
    assert receiver.got.empty()


def test_webhook_when_the_target_refuses_then_502_so_alertmanager_retries() -> None:
    dead = free_port()  # nothing listens there
    srv = NotifierServer(Notifier(f"json://127.0.0.1:{dead}/x"), port=0).start()
    try:
        r = httpx.post(f"{srv.url}/alertmanager", json=PAYLOAD, timeout=30)
    finally:
        srv.stop()

    assert r.status_code == 502 and r.json()["delivered"] is False


def test_notify_when_configured_then_every_url_receives_it(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = Receiver()
    try:
        monkeypatch.setenv(
            "TX_NOTIFY_URLS",
            f"json://127.0.0.1:{receiver.port}/a, json://127.0.0.1:{other.port}/b",
        )
        assert notify("market_data failed", "task ingest: boom") is True
        assert receiver.wait_message("boom", 10)["path"] == "/a"
        assert other.wait_message("boom", 10)["path"] == "/b"
    finally:
        other.close()


def test_notify_when_not_configured_then_returns_false_without_raising(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TX_NOTIFY_URLS", raising=False)
    assert notify("x", "y") is False


def test_dag_failure_callback_when_a_task_fails_then_names_dag_task_run_and_error(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    class TI:
        dag_id, task_id = "market_data", "validate"

    monkeypatch.setenv("TX_NOTIFY_URLS", f"json://127.0.0.1:{receiver.port}/tg")
    dag_failure_callback(
        {"task_instance": TI(), "run_id": "scheduled__2026-12-04", "exception": ValueError("gap")}
    )

    msg = receiver.wait_message("market_data.validate", 10)
    assert "run scheduled__2026-12-04" in msg["message"] and "ValueError: gap" in msg["message"]


def test_notify_serve_when_urls_missing_then_exit_2_with_the_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from titanovax.cli import app

    monkeypatch.delenv("TX_NOTIFY_URLS", raising=False)
    res = CliRunner().invoke(app, ["notify", "serve"])

    assert res.exit_code == 2 and "TX_NOTIFY_URLS is not set" in res.output


def test_env_example_when_read_then_documents_the_notifier_settings() -> None:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / ".env.example").read_text()
    for name in NotifySettings.model_fields:
        assert f"TX_NOTIFY_{name.upper()}=" in text
