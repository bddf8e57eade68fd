"""Monitor actions against real components: the engine's control server over the real loop on
the simulated terminal (POST /api/reduce with its token), the apprise notifier delivering to a
local receiver standing in for Telegram, the audit table in SQLite, and the cool-down. An
unreachable engine or Airflow is recorded and notified, and never raises."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from engine.config import RiskLimits
from engine.control import ControlServer
from engine.journal import Journal
from engine.loop import Engine
from tests.e2e.observe_procs import Receiver
from tests.unit.faults import MONDAY_0800, ClockFeatures, ScriptedModel, closes, sim_terminal
from titanovax.monitor_actions import AuditStore, MonitorActionSettings, apply
from titanovax.redis_local import free_port
from training.monitor.result import CheckResult

pytestmark = pytest.mark.integration

TOKEN = "monitor-actions-token"
T0 = datetime(2026, 12, 6, 10, 0, tzinfo=UTC)


def breach(
    check: str = "drift", subject: str = "tx_trend@v3", status: str = "breach"
) -> CheckResult:
    return CheckResult(
        check=check,
        subject=subject,
        status=status,  # type: ignore[arg-type]
        detail="share of drifted features 0.62 > 0.30",
        at=T0,
        metrics={"drift_share": 0.62},
    )


@pytest.fixture()
def engine_url(tmp_path: Path) -> Iterator[str]:
    now = [MONDAY_0800]
    engine = Engine(
        terminal=sim_terminal(now),
        features=ClockFeatures(now),
        model=ScriptedModel(1),
        journal=Journal(tmp_path / "journal.sqlite"),
        limits=RiskLimits(),
        magic=93,
        clock=lambda: float(now[0]),
        sleep=lambda s: None,
    )
    engine.replay(closes(n=3), ["EURUSD"], lambda t: now.__setitem__(0, t))
    server = ControlServer(engine, token=TOKEN, port=0).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture()
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    r = Receiver()
    monkeypatch.setenv("TX_NOTIFY_URLS", f"json://127.0.0.1:{r.port}/telegram")
    yield r
    r.close()


def settings(tmp_path: Path, engine_url: str, **kw: object) -> MonitorActionSettings:
    base: dict[str, object] = {
        "engine_url": engine_url,
        "engine_token": TOKEN,
        "retrain": False,
        "db_url": f"sqlite:///{tmp_path / 'monitor.sqlite'}",
        "cooldown_hours": 6,
        "timeout_s": 3,
    }
    return MonitorActionSettings(**(base | kw))  # type: ignore[arg-type]


def status(url: str) -> dict[str, object]:
    r = httpx.get(f"{url}/api/status", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_apply_when_drift_breaches_then_engine_reduces_through_control_api_person_told_and_row_audited(
    tmp_path: Path, engine_url: str, receiver: Receiver
) -> None:
    s = settings(tmp_path, engine_url)
    assert status(engine_url)["trading_state"] == "ACTIVE"

    out = apply(None, [breach(), breach("freshness", "EURUSD/M5/online")], settings=s, now=T0)

    assert [(o["action"], o["status"]) for o in out] == [("reduce", "done")], out
    st = status(engine_url)
    assert (st["trading_state"], st["state_reason"]) == ("REDUCING", "monitor_reduce")
    # the engine's own audit trail names the monitor and the breach
    audit = httpx.get(f"{engine_url}/api/audit", headers={"Authorization": f"Bearer {TOKEN}"})
    newest = audit.json()[0]
    assert (newest["actor"], newest["action"]) == ("monitor", "reduce")
    assert "drift tx_trend@v3" in newest["reason"]
    msg = receiver.wait_message("REDUCING", 10)
    assert msg["path"] == "/telegram" and "drift tx_trend@v3" in msg["message"]
    rows = AuditStore(str(s.db_url.get_secret_value())).rows()  # type: ignore[union-attr]
    assert [(r["action"], r["check_name"], r["status"], r["notified"]) for r in rows] == [
        ("reduce", "drift", "done", True)
    ]
    assert rows[0]["at"] == T0.isoformat()
    assert rows[0]["evidence"]["engine_state"] == "REDUCING"


def test_apply_when_the_same_breach_repeats_within_the_cooldown_then_nothing_is_called_again(
    tmp_path: Path, engine_url: str, receiver: Receiver
) -> None:
    s = settings(tmp_path, engine_url, cooldown_hours=6)
    assert apply(None, [breach()], settings=s, now=T0)[0]["status"] == "done"
    receiver.wait_message("REDUCING", 10)
    # the operator resumes; the next hourly run sees the same breach
    r = httpx.post(
        f"{engine_url}/api/resume", headers={"Authorization": f"Bearer {TOKEN}"}, json={}
    )
    assert r.json()["state"] == "ACTIVE"

    again = apply(None, [breach()], settings=s, now=T0 + timedelta(hours=1))
    other = apply(
        None, [breach("live_vs_expected", "tx_trend@v3")], settings=s, now=T0 + timedelta(hours=1)
    )

    assert [o["status"] for o in again] == ["cooldown"]
    assert [o["status"] for o in other] == ["done"]  # another breach is not cooling down
    assert status(engine_url)["trading_state"] == "REDUCING"
    # after the cool-down the same breach acts again
    httpx.post(f"{engine_url}/api/resume", headers={"Authorization": f"Bearer {TOKEN}"}, json={})
    later = apply(None, [breach()], settings=s, now=T0 + timedelta(hours=6, minutes=1))
    assert [o["status"] for o in later] == ["done"]
    rows = AuditStore(str(s.db_url.get_secret_value())).rows()  # type: ignore[union-attr]
    assert [(r["check_name"], r["status"]) for r in rows][::-1] == [
        ("drift", "done"),
        ("drift", "cooldown"),
        ("live_vs_expected", "done"),
        ("drift", "done"),
    ]


def test_apply_when_engine_is_unreachable_then_failure_recorded_notified_and_retried_next_run(
    tmp_path: Path, receiver: Receiver
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    s = settings(tmp_path, dead)

    out = apply(None, [breach()], settings=s, now=T0)

    assert out[0]["action"] == "reduce" and out[0]["status"] == "failed"
    assert "unreachable" in out[0]["detail"]
    msg = receiver.wait_message("could not set the engine to REDUCING", 10)
    assert "unreachable" in msg["message"]
    # a failure starts no cool-down: the next run tries again
    again = apply(None, [breach()], settings=s, now=T0 + timedelta(minutes=5))
    assert again[0]["status"] == "failed"
    rows = AuditStore(str(s.db_url.get_secret_value())).rows()  # type: ignore[union-attr]
    assert [r["status"] for r in rows] == ["failed", "failed"]


def test_apply_when_token_is_wrong_then_401_recorded_as_failed(
    tmp_path: Path, engine_url: str, receiver: Receiver
) -> None:
    s = settings(tmp_path, engine_url, engine_token="not-the-token")

    out = apply(None, [breach()], settings=s, now=T0)

    assert out[0]["status"] == "failed" and "HTTP 401" in out[0]["detail"]
    assert status(engine_url)["trading_state"] == "ACTIVE"


def test_apply_when_airflow_is_unreachable_then_retrain_failure_recorded_and_reduce_still_done(
    tmp_path: Path, engine_url: str, receiver: Receiver
) -> None:
    s = settings(tmp_path, engine_url, retrain=True, airflow_url=f"http://127.0.0.1:{free_port()}")

    out = apply(None, [breach()], settings=s, now=T0)

    assert {o["action"]: o["status"] for o in out} == {"reduce": "done", "retrain": "failed"}
    assert "Airflow at" in out[1]["detail"]
    receiver.wait_message("could not request retraining", 10)
    assert status(engine_url)["trading_state"] == "REDUCING"


def test_apply_when_no_acted_breach_then_nothing_happens(
    tmp_path: Path, engine_url: str, receiver: Receiver
) -> None:
    s = settings(tmp_path, engine_url)
    results = [
        breach(status="warn"),
        breach(status="skipped"),
        breach("freshness", "EURUSD/M5/online"),
    ]

    assert apply(None, results, settings=s, now=T0) == []
    assert status(engine_url)["trading_state"] == "ACTIVE"
    assert receiver.got.empty()


def test_apply_when_the_audit_store_is_unusable_then_the_action_still_runs_and_nothing_raises(
    tmp_path: Path, engine_url: str, receiver: Receiver
) -> None:
    s = settings(tmp_path, engine_url, db_url="postgresql+psycopg://nobody@127.0.0.1:1/none")

    out = apply(None, [breach()], settings=s, now=T0)

    assert out[0]["status"] == "done"
    receiver.wait_message("audit store unavailable", 10)


def test_settings_when_checks_list_is_bad_then_the_error_names_the_field(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TX_MONITOR_ACTION_CHECKS", "drift, live vs expected!")
    with pytest.raises(ValueError, match="checks"):
        MonitorActionSettings()
    monkeypatch.setenv("TX_MONITOR_ACTION_CHECKS", "drift,live_vs_expected")
    assert MonitorActionSettings().checks == ["drift", "live_vs_expected"]
    # apply with bad settings does not raise: it says so
    monkeypatch.setenv("TX_MONITOR_ACTION_CHECKS", "a b!")
    out = apply(None, [breach()], notify=lambda t, b: False)
    assert out[0]["status"] == "failed" and "checks" in out[0]["detail"]


def test_monitor_run_when_a_check_breaches_then_the_default_hook_acts_and_audits_next_to_the_results(
    tmp_path: Path, engine_url: str, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    from titanovax import monitor
    from titanovax.settings import PlatformSettings

    monkeypatch.setenv("TX_ENGINE_TOKEN", TOKEN)
    monkeypatch.setenv("TX_MONITOR_ACTION_ENGINE_URL", engine_url)
    monkeypatch.setenv("TX_MONITOR_ACTION_RETRAIN", "false")
    # the runner's wiring is under test, not the drift statistics: a check that breaches
    monkeypatch.setitem(monitor.CHECKS, "drift", lambda ctx: [breach(subject="features")])
    ctx = monitor.MonitorContext(settings=PlatformSettings(home=tmp_path), now=T0)

    mr = monitor.run(ctx, only=["drift"], log_mlflow=False)

    assert [(a["action"], a["status"]) for a in mr.actions] == [("reduce", "done")]
    assert status(engine_url)["trading_state"] == "REDUCING"
    db = ctx.settings.monitor_db
    assert monitor.query_results(db, check="drift")[0]["status"] == "breach"
    rows = AuditStore(db).rows()
    assert [(r["action"], r["subject"], r["status"]) for r in rows] == [
        ("reduce", "features", "done")
    ]
