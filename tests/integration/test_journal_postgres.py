"""The journal on PostgreSQL: the same contract as SQLite (decisions, write-ahead intents,
state) and the crash/restart scenario end to end, in a database of its own that the test
creates and drops (tx_test_journal on 127.0.0.1:5432)."""

from __future__ import annotations

from typing import Any

import pytest

from engine.config import ExecutionConfig, RiskLimits
from engine.journal import DecisionRecord, DuplicateDecision, Intent, Journal
from engine.loop import Engine
from tests.unit.faults import (
    MONDAY_0800,
    ClockFeatures,
    Crash,
    FaultyTerminal,
    ScriptedModel,
    sim_terminal,
)

pytestmark = pytest.mark.integration


def _rec(bar_close: int, verdict: str = "sent") -> DecisionRecord:
    return DecisionRecord(
        "EURUSD",
        bar_close,
        1.0,
        float(bar_close),
        "3",
        "long",
        0.1,
        verdict,
        None,
        {"orders": []},
        {"results": []},
        10009,
        {"total_ms": 1.2},
        None,
        "ACTIVE",
    )


def test_postgres_journal_when_reopened_then_decisions_intents_and_state_survive(
    pg_url: str,
) -> None:
    j = Journal(pg_url)
    assert j.postgres
    j.record(_rec(100))
    j.record(_rec(400, "refused"))
    with pytest.raises(DuplicateDecision):
        j.record(_rec(100))
    assert j.intent_begin(Intent("tx-A", "EURUSD", 100, "open:buy", {"volume": 0.1}))
    assert not j.intent_begin(Intent("tx-A", "EURUSD", 100, "open:buy", {"volume": 0.1}))
    j.save_state("risk", '{"a": 1}')
    j.save_state("risk", '{"a": 2}')
    j.close()

    j2 = Journal(pg_url)
    assert j2.decided("EURUSD", 100) and j2.decided("EURUSD", 400) and not j2.decided("EURUSD", 700)
    assert j2.counts() == {"sent": 1, "refused": 1} and j2.rows()[0]["latency_ms"] == {
        "total_ms": 1.2
    }
    assert [i.client_id for i in j2.intents("pending")] == ["tx-A"]
    assert j2.load_state("risk") == '{"a": 2}'


def test_engine_on_postgres_when_it_crashes_between_send_and_journal_then_restart_does_not_duplicate(
    pg_url: str,
) -> None:
    now = [MONDAY_0800]
    term = FaultyTerminal(sim_terminal(now), ["crash"])

    def engine() -> Engine:
        return Engine(
            terminal=term,
            features=ClockFeatures(now),
            model=ScriptedModel(1),
            journal=Journal(pg_url),  # type: ignore[arg-type]
            limits=RiskLimits(),
            magic=9,
            clock=lambda: float(now[0]),
            execution=ExecutionConfig(retry_backoff_s=0.0),
            sleep=lambda s: None,
        )

    e = engine()
    with pytest.raises(Crash):
        e.on_bar("EURUSD", now[0])
    e.journal.close()
    e2 = engine()
    assert len(e2.reconcile()["recovered"]) == 1
    rec = e2.on_bar("EURUSD", now[0])  # nothing new is sent; the row shows the earlier order
    assert rec is not None and rec.verdict == "sent"
    assert rec.order_result is not None and rec.order_result["executed_before_restart"]
    assert len(term.sent) == 1 and len(e2.positions()) == 1


def test_engine_settings_when_journal_url_is_postgres_then_the_built_engine_journals_there(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.app import build_engine
    from engine.config import EngineSettings

    monkeypatch.setenv("TX_JOURNAL_URL", pg_url)
    now = [MONDAY_0800]
    e = build_engine(
        EngineSettings(),
        terminal=sim_terminal(now),
        features=ClockFeatures(now),
        model=ScriptedModel(1),
        clock=lambda: float(now[0]),
        sleep=lambda s: None,
    )
    assert e.journal.postgres
    assert e.on_bar("EURUSD", now[0]).verdict == "sent"  # type: ignore[union-attr]
    scope = e.journal.scope
    e.journal.close()
    again = Journal(pg_url, scope)
    assert again.counts() == {"sent": 1} and again.load_state("risk") is not None


def test_tx_engine_run_when_the_journal_dsn_has_a_password_then_output_and_logs_show_it_redacted(
    pg_url: str, tmp_path: object, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import logging
    from pathlib import Path

    from typer.testing import CliRunner

    from feature_repo.pipeline.transforms import TREND_V1_FEATURES
    from tests.unit.test_execution_modes import _bundle
    from titanovax.cli import app

    home = Path(str(tmp_path))
    secret_url = pg_url.replace("postgres@", "postgres:s3cret-pw@")  # trust auth ignores it
    monkeypatch.setenv("TX_HOME", str(home / "home"))
    monkeypatch.setenv("TX_SYMBOLS", "EURUSD")
    monkeypatch.setenv("TX_ENGINE_BACKTEST_JOURNAL", secret_url)
    monkeypatch.setenv("TX_JOURNAL_URL", secret_url)
    monkeypatch.setenv("TX_ENGINE_BUNDLE_DIR", str(_bundle(home / "b", list(TREND_V1_FEATURES))))
    caplog.set_level(logging.DEBUG)
    res = CliRunner().invoke(
        app,
        [
            "engine",
            "run",
            "--mode",
            "backtest",
            "--start",
            "2026-01-12T08:00",
            "--end",
            "2026-01-12T09:00",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "s3cret-pw" not in res.output and "s3cret-pw" not in caplog.text
    assert "postgres:***@" in res.output


def test_engine_on_postgres_when_it_sends_an_order_then_the_intent_was_committed_before_order_send(
    pg_url: str,
) -> None:
    import psycopg

    now = [MONDAY_0800]
    seen: list[list[tuple[str, str]]] = []

    class Peeking(FaultyTerminal):
        def order_send(self, request: dict[str, Any]) -> Any:
            with psycopg.connect(pg_url) as other:
                seen.append(
                    [
                        (str(c), str(s))
                        for c, s in other.execute("SELECT client_id, status FROM intents")
                    ]
                )
            return super().order_send(request)

    e = Engine(
        terminal=Peeking(sim_terminal(now), []),
        features=ClockFeatures(now),
        model=ScriptedModel(1),
        journal=Journal(pg_url),
        limits=RiskLimits(),
        magic=9,
        clock=lambda: float(now[0]),
        execution=ExecutionConfig(retry_backoff_s=0.0),
        sleep=lambda s: None,
    )

    rec = e.on_bar("EURUSD", now[0])

    assert rec is not None and rec.verdict == "sent"
    cid = rec.order_result["results"][0]["client_id"]  # type: ignore[index]
    assert seen == [[(cid, "pending")]]
    assert e.journal.intent(cid).status == "done"  # type: ignore[union-attr]
    assert not e.journal.in_transaction


def test_engine_on_postgres_when_a_bar_flips_then_both_intents_are_committed_synchronously_before_the_first_send(
    pg_url: str,
) -> None:
    import psycopg

    now = [MONDAY_0800]
    seen: list[set[tuple[str, str]]] = []
    syncs: list[int] = []
    settings: list[str] = []

    class Peeking(FaultyTerminal):
        def order_send(self, request: dict[str, Any]) -> Any:
            with psycopg.connect(pg_url) as other:
                rows = other.execute("SELECT client_id, status FROM intents").fetchall()
            seen.append({(str(c), str(s)) for c, s in rows})
            syncs.append(e.journal.sync_commits)
            settings.append(e.journal._db.execute("SHOW synchronous_commit").fetchone()[0])
            return super().order_send(request)

    model = ScriptedModel(1)
    e = Engine(
        terminal=Peeking(sim_terminal(now), []),
        features=ClockFeatures(now),
        model=model,
        journal=Journal(pg_url),
        limits=RiskLimits(),
        magic=11,
        clock=lambda: float(now[0]),
        execution=ExecutionConfig(retry_backoff_s=0.0),
        sleep=lambda s: None,
    )
    e.on_bar("EURUSD", now[0])  # opens the long position
    now[0] += 300
    model.position = -1
    for xs in (seen, syncs, settings):
        xs.clear()
    sync0, relaxed0 = e.journal.sync_commits, e.journal.relaxed_commits

    rec = e.on_bar("EURUSD", now[0])  # close the long, open the short: two order_sends

    assert rec is not None and rec.verdict == "sent"
    close_id, open_id = (r["client_id"] for r in rec.order_result["results"])  # type: ignore[index]
    # both intents committed by one synchronous commit before the first send
    assert {(close_id, "pending"), (open_id, "pending")} <= seen[0]
    assert (open_id, "pending") in seen[1]
    assert syncs == [sync0 + 1, sync0 + 1]
    assert settings == ["on", "on"]  # the session never relaxes; only the bar's last commit
    assert e.journal.sync_commits == sync0 + 1
    assert e.journal.relaxed_commits == relaxed0 + 1  # (SET LOCAL synchronous_commit = off)
    assert Journal(pg_url, e.journal.scope).decision("EURUSD", now[0]) is not None


def test_postgres_journal_when_a_bar_is_recorded_twice_inside_a_transaction_then_the_rest_commits(
    pg_url: str,
) -> None:
    j = Journal(pg_url, "1:2:paper")
    j.record(_rec(300))
    j.begin()
    j.save_state("risk", "{}")

    with pytest.raises(DuplicateDecision):
        j.record(_rec(300))
    j.commit()

    assert Journal(pg_url, "1:2:paper").load_state("risk") == "{}"
