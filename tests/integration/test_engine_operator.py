"""The operator audit through the doors an operator uses: the real control HTTP API of a real
engine on the simulated terminal (kill/flatten, resume, reload, the new reduce; typed bodies,
``X-TX-Actor``), ``GET /api/audit``, and the installed ``tx engine history`` reading the
journal (SQLite and PostgreSQL) or the running engine's API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from engine.config import RiskLimits
from engine.control import ControlServer
from engine.journal import Journal
from engine.loop import Engine
from tests.unit.faults import MONDAY_0800, ClockFeatures, ScriptedModel, closes, sim_terminal

pytestmark = pytest.mark.integration

TOKEN = "operator-audit-token"
TX = Path(sys.executable).with_name("tx")
MAGIC = 77


def _engine(journal_target: str) -> Engine:
    now = [MONDAY_0800]
    engine = Engine(
        terminal=sim_terminal(now),
        features=ClockFeatures(now),
        model=ScriptedModel(1),
        journal=Journal(journal_target),
        limits=RiskLimits(),
        magic=MAGIC,
        clock=lambda: float(now[0]),
        sleep=lambda s: None,
        reload_hook=lambda: {"reloaded": True, "model_version": "7"},
        mode="paper",
    )
    engine.replay(closes(n=3), ["EURUSD", "GBPUSD"], lambda t: now.__setitem__(0, t))
    return engine


@pytest.fixture()
def running(tmp_path: Path) -> Iterator[tuple[Engine, str, Path]]:
    path = tmp_path / "journal.sqlite"
    engine = _engine(str(path))
    server = ControlServer(engine, token=TOKEN, port=0).start()
    try:
        yield engine, server.url, path
    finally:
        server.stop()


def _h(actor: str | None = None) -> dict[str, str]:
    h = {"Authorization": f"Bearer {TOKEN}"}
    if actor is not None:
        h["X-TX-Actor"] = actor
    return h


def _tx(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TX_")}
    return subprocess.run(
        [str(TX), *args], env=base | env, capture_output=True, text=True, timeout=120
    )


def _act(url: str) -> None:
    """The five audited operator actions, through the HTTP API."""
    r = httpx.post(
        f"{url}/api/reduce", headers=_h("monitor"), json={"reason": "drift breach on EURUSD"}
    )
    assert r.status_code == 200, r.text
    st = r.json()  # the same JSON as GET /api/status
    assert st["trading_state"] == "REDUCING" and st["state_reason"] == "monitor_reduce"
    assert st["state_detail"] == "drift breach on EURUSD" and "decisions" in st
    r = httpx.post(f"{url}/api/kill", headers=_h("alice"), json={"flatten": True, "reason": "news"})
    assert r.status_code == 200 and len(r.json()["flattened"]) == 2
    r = httpx.post(f"{url}/api/resume", headers=_h("alice"), json={"reason": "calm"})
    assert r.json() == {"state": "ACTIVE"}
    r = httpx.post(f"{url}/api/reload", headers=_h(), json={})
    assert r.json()["reloaded"] is True


def test_control_api_when_operators_act_then_every_action_is_an_audit_row_newest_first(
    running: tuple[Engine, str, Path],
) -> None:
    engine, url, _ = running

    _act(url)
    rows = httpx.get(f"{url}/api/audit?limit=10", headers=_h()).json()

    assert [(r["action"], r["actor"], r["reason"]) for r in rows] == [
        ("reload", "operator", None),
        ("resume", "alice", "calm"),
        ("flatten", "alice", "news"),
        ("reduce", "monitor", "drift breach on EURUSD"),
    ]
    flatten = rows[2]["detail"]
    assert flatten["before"]["state"] == "REDUCING" and flatten["after"]["state"] == "HALTED"
    assert sorted(f["symbol"] for f in flatten["flattened"]) == ["EURUSD", "GBPUSD"]
    assert rows[1]["detail"]["after"] == {"state": "ACTIVE", "reason": "", "detail": ""}
    assert [r["id"] for r in rows] == sorted((r["id"] for r in rows), reverse=True)
    assert len(httpx.get(f"{url}/api/audit?limit=2", headers=_h()).json()) == 2
    assert engine.positions() == ()


@pytest.mark.parametrize(
    ("path", "body", "headers", "field"),
    [
        ("/api/reduce", {"reason": 5}, {}, "reason must be a JSON str"),
        ("/api/reduce", {"why": "x"}, {}, "unknown field 'why'"),
        ("/api/reduce", {"reason": "x" * 501}, {}, "reason must be at most 500 characters"),
        ("/api/kill", {"flatten": "yes"}, {}, "flatten must be a JSON bool"),
        ("/api/resume", {"reason": None}, {}, "reason must be a JSON str"),
        ("/api/reduce", {}, {"X-TX-Actor": "bad\tactor"}, "X-TX-Actor must be 1-64 printable"),
        ("/api/reduce", {}, {"X-TX-Actor": "a" * 65}, "X-TX-Actor must be 1-64 printable"),
    ],
)
def test_control_api_when_a_body_or_actor_is_wrong_then_400_naming_it_and_nothing_audited(
    running: tuple[Engine, str, Path],
    path: str,
    body: dict[str, object],
    headers: dict[str, str],
    field: str,
) -> None:
    engine, url, _ = running

    r = httpx.post(f"{url}{path}", headers=_h() | headers, json=body)

    assert r.status_code == 400 and field in r.json()["error"], r.text
    assert engine.journal.audit_rows() == []
    assert engine.status()["trading_state"] == "ACTIVE"


def test_control_api_when_audit_limit_is_bad_or_no_token_then_400_or_401(
    running: tuple[Engine, str, Path],
) -> None:
    _, url, _ = running
    assert httpx.get(f"{url}/api/audit?limit=0", headers=_h()).status_code == 400
    assert "limit must be" in httpx.get(f"{url}/api/audit?limit=x", headers=_h()).text
    assert httpx.get(f"{url}/api/audit").status_code == 401
    assert httpx.post(f"{url}/api/reduce", json={}).status_code == 401


def test_tx_engine_history_when_run_then_prints_the_audit_from_the_journal_and_the_api(
    running: tuple[Engine, str, Path], tmp_path: Path
) -> None:
    engine, url, path = running
    _act(url)
    env = {
        "TX_HOME": str(tmp_path / "home"),
        "TX_JOURNAL_PATH": str(path),
        "TX_ENGINE_MAGIC": str(MAGIC),
        "TX_ENGINE_MODE": "paper",
    }

    text = _tx("engine", "history", "--limit", "3", env=env)
    as_json = _tx("engine", "history", "--json", env=env)
    api = _tx("engine", "history", "--api", url, "--json", env=env | {"TX_ENGINE_TOKEN": TOKEN})

    assert text.returncode == 0, text.stderr
    lines = text.stdout.strip().splitlines()
    assert len(lines) == 3
    assert lines[0].split()[1] == "reload" and "by operator" in lines[0]
    assert "resume" in lines[1] and "HALTED -> ACTIVE" in lines[1] and "reason: calm" in lines[1]
    assert "flatten" in lines[2] and "flattened 2 position(s)" in lines[2]
    assert "REDUCING -> HALTED" in lines[2] and "by alice" in lines[2]
    rows = json.loads(as_json.stdout)
    assert [r["action"] for r in rows] == ["reload", "resume", "flatten", "reduce"]
    assert rows[0]["scope"] == engine.journal.scope
    assert [r["action"] for r in json.loads(api.stdout)] == [r["action"] for r in rows]


def test_tx_engine_history_when_misused_then_one_line_saying_what_to_do(tmp_path: Path) -> None:
    env = {"TX_HOME": str(tmp_path / "home"), "TX_JOURNAL_PATH": str(tmp_path / "none.sqlite")}

    missing = _tx("engine", "history", env=env)
    bad_limit = _tx("engine", "history", "--limit", "0", env=env)
    no_token = _tx("engine", "history", "--api", "http://127.0.0.1:9", env=env)
    helped = _tx("engine", "history", "--help", env=env)

    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert "no engine journal at" in missing.stderr and "TX_JOURNAL_PATH" in missing.stderr
    assert not (tmp_path / "none.sqlite").exists()  # reading never creates a journal
    assert bad_limit.returncode == 2 and "--limit" in bad_limit.stderr
    assert no_token.returncode == 2 and "TX_ENGINE_TOKEN" in no_token.stderr
    assert helped.returncode == 0 and "--json" in helped.stdout and "--limit" in helped.stdout


def test_audit_when_the_journal_is_postgresql_then_rows_are_written_scoped_and_listed(
    pg_url: str, tmp_path: Path
) -> None:
    engine = _engine(pg_url)
    server = ControlServer(engine, token=TOKEN, port=0).start()
    try:
        _act(server.url)
    finally:
        server.stop()
    other = Journal(pg_url, "1:2:live")
    assert other.audit_rows() == []  # another scope sees nothing

    out = _tx(
        "engine",
        "history",
        "--json",
        env={
            "TX_HOME": str(tmp_path),
            "TX_JOURNAL_URL": pg_url,
            "TX_ENGINE_MAGIC": str(MAGIC),
            "TX_ENGINE_MODE": "paper",
        },
    )

    assert out.returncode == 0, out.stderr
    assert [r["action"] for r in json.loads(out.stdout)] == [
        "reload",
        "resume",
        "flatten",
        "reduce",
    ]
    engine.journal.close()
    other.close()
