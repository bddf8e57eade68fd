"""Alerts reach a person: real Prometheus and Alertmanager (Debian binaries) with the rendered
configuration and the project's own rules, the notifier (`tx notify serve`) forwarding through
apprise's json:// to a local receiver standing in for Telegram. Faults are induced on real
processes: a running `tx features stream` pusher is SIGKILLed, a running engine is halted
through its control API."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from engine.config import RiskLimits
from engine.control import ControlServer
from engine.journal import Journal
from engine.loop import Engine
from tests.e2e.observe_procs import (
    TX,
    Receiver,
    alertmanager,
    firing,
    process,
    prometheus,
    require_binaries,
    target_health,
    wait_for,
)
from tests.unit.faults import MONDAY_0800, ClockFeatures, ScriptedModel, closes, sim_terminal
from titanovax.observe import (
    RULES_DIR,
    ScrapeTarget,
    render_alertmanager_config,
    render_prometheus_config,
)
from titanovax.redis_local import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.observe, pytest.mark.slow]

ENGINE_TOKEN = "alerts-e2e-engine-token"


@dataclass
class Stack:
    prom: str
    am: str
    receiver: Receiver
    pusher: Any
    engine: Engine
    engine_url: str


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Stack]:
    require_binaries()
    tmp = tmp_path_factory.mktemp("alerts")
    receiver = Receiver()
    notify_port, pusher_port, prom_port, am_port = (free_port() for _ in range(4))
    base = redis_url.rsplit("/", 1)[0]

    # the engine: the real loop on the simulated terminal, control API with /metrics
    now = [MONDAY_0800]
    engine = Engine(
        terminal=sim_terminal(now),
        features=ClockFeatures(now),
        model=ScriptedModel(1),
        journal=Journal(tmp / "journal.sqlite"),
        limits=RiskLimits(),
        magic=91,
        clock=lambda: float(now[0]),
        sleep=lambda s: None,
    )
    engine.replay(closes(n=3), ["EURUSD"], lambda t: now.__setitem__(0, t))
    control = ControlServer(engine, token=ENGINE_TOKEN, port=0).start()
    token_file = tmp / "engine_token"
    token_file.write_text(ENGINE_TOKEN)

    targets = [
        ScrapeTarget("pusher", [f"127.0.0.1:{pusher_port}"]),
        ScrapeTarget("engine", [control.url.removeprefix("http://")], bearer_token_file=token_file),
    ]
    prom_cfg = render_prometheus_config(
        targets,
        RULES_DIR,
        tmp / "prom",
        alertmanagers=[f"127.0.0.1:{am_port}"],
        scrape_interval="1s",
        evaluation_interval="1s",
        for_override="2s",
    )
    am_cfg = render_alertmanager_config(
        f"http://127.0.0.1:{notify_port}/alertmanager",
        tmp / "am",
        group_wait="1s",
        group_interval="1s",
        repeat_interval="1h",
    )
    notify_env = {
        "TX_NOTIFY_URLS": f"json://127.0.0.1:{receiver.port}/telegram",
        "TX_NOTIFY_PORT": str(notify_port),
    }
    pusher_env = {
        "TX_HOME": str(tmp / "home"),
        "TX_REDIS_URL": f"{base}/12",
        "TX_SYMBOLS": "EURUSD",
        "TX_PUSHER_METRICS_PORT": str(pusher_port),
    }
    try:
        with (
            process([TX, "notify", "serve"], tmp / "notifier.log", notify_env),
            process([TX, "features", "stream"], tmp / "pusher.log", pusher_env) as pusher,
            alertmanager(am_cfg, am_port, tmp) as am,
        ):
            # every target answers before Prometheus starts: no alert fires from start-up
            for url, what in (
                (f"http://127.0.0.1:{notify_port}/healthz", "notifier"),
                (f"http://127.0.0.1:{pusher_port}/metrics", "pusher /metrics"),
            ):
                wait_for(lambda u=url: httpx.get(u).status_code == 200, 120, what)
            with prometheus(prom_cfg, prom_port, tmp) as prom:
                yield Stack(prom, am, receiver, pusher, engine, control.url)
    finally:
        control.stop()
        receiver.close()


def test_pusher_when_killed_then_prometheus_fires_and_the_receiver_gets_the_message(
    stack: Stack,
) -> None:
    # Arrange: the pusher is scraped and healthy
    wait_for(lambda: target_health(stack.prom, "pusher")() == "up", 120, "pusher scraped up")
    assert not firing(stack.prom, "TxPusherDown")()

    # Act: kill -9 the running pusher
    os.killpg(stack.pusher.pid, signal.SIGKILL)
    stack.pusher.wait(10)

    # Assert: the rule fires in Prometheus, Alertmanager holds it, the person is told
    alerts = wait_for(firing(stack.prom, "TxPusherDown"), 60, "TxPusherDown firing")
    assert alerts[0]["labels"]["severity"] == "critical"
    am_alerts = wait_for(
        lambda: [
            a
            for a in httpx.get(f"{stack.am}/api/v2/alerts").json()
            if a["labels"]["alertname"] == "TxPusherDown"
        ],
        30,
        "TxPusherDown in Alertmanager",
    )
    assert am_alerts[0]["status"]["state"] == "active"
    msg = stack.receiver.wait_message("TxPusherDown", 60)
    assert msg["path"] == "/telegram"
    assert msg["title"].startswith("[FIRING") and "(critical)" in msg["title"]
    assert "Feature pusher 127.0.0.1:" in msg["message"] and "is down" in msg["message"]
    assert "runbook: docs/runbook.md#txpusherdown" in msg["message"]


def test_engine_when_halted_through_its_control_api_then_the_halt_alert_reaches_the_receiver(
    stack: Stack,
) -> None:
    # Arrange: the engine is scraped, ACTIVE
    wait_for(lambda: target_health(stack.prom, "engine")() == "up", 60, "engine scraped up")
    assert not firing(stack.prom, "TxEngineHalted")()

    # Act: the operator's kill switch
    r = httpx.post(
        f"{stack.engine_url}/api/kill",
        headers={"Authorization": f"Bearer {ENGINE_TOKEN}"},
        json={},
    )
    assert r.status_code == 200 and r.json()["state"] == "HALTED"

    # Assert
    alerts = wait_for(firing(stack.prom, "TxEngineHalted"), 60, "TxEngineHalted firing")
    assert alerts[0]["annotations"]["summary"].endswith("is HALTED: it sends no orders")
    msg = stack.receiver.wait_message("TxEngineHalted", 60)
    assert "HALTED for over a minute" in msg["message"]
    assert "runbook: docs/runbook.md#txenginehalted" in msg["message"]
