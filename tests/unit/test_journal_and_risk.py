"""Journal (SQLite back end: decisions, write-ahead intents, state) and the basic risk checks.
The Postgres back end runs the same scenarios in tests/integration/test_journal_postgres.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.journal import DecisionRecord, DuplicateDecision, Intent, Journal

pytestmark = pytest.mark.unit


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
    )


def test_journal_when_reopened_after_a_restart_then_entries_survive_and_bars_are_known(
    tmp_path: Path,
) -> None:
    j = Journal(tmp_path / "j.sqlite")
    j.record(_rec(100))
    j.record(_rec(400, "refused"))
    j.close()
    j2 = Journal(tmp_path / "j.sqlite")
    assert j2.decided("EURUSD", 100) and j2.decided("EURUSD", 400) and not j2.decided("EURUSD", 700)
    assert j2.counts() == {"sent": 1, "refused": 1}
    assert j2.rows()[0]["latency_ms"] == {"total_ms": 1.2}


def test_journal_when_the_same_bar_is_recorded_twice_then_it_is_refused(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.sqlite")
    j.record(_rec(100))
    with pytest.raises(DuplicateDecision):
        j.record(_rec(100))


def test_journal_when_an_intent_is_begun_twice_then_the_second_is_refused_and_the_outcome_kept(
    tmp_path: Path,
) -> None:
    j = Journal(tmp_path / "j.sqlite")
    assert j.intent_begin(Intent("tx-A", "EURUSD", 100, "open:buy", {"volume": 0.1}))
    assert not j.intent_begin(Intent("tx-A", "EURUSD", 100, "open:buy", {"volume": 0.1}))
    assert [i.client_id for i in j.intents("pending")] == ["tx-A"]
    j.intent_end("tx-A", "done", {"results": [{"retcode": 10009}]}, 10009)
    j.close()
    it = Journal(tmp_path / "j.sqlite").intent("tx-A")
    assert (
        it is not None
        and it.status == "done"
        and it.retcode == 10009
        and it.request == {"volume": 0.1}
    )


def test_journal_when_state_is_saved_twice_then_the_last_value_survives_a_restart(
    tmp_path: Path,
) -> None:
    j = Journal(tmp_path / "j.sqlite")
    j.save_state("risk", '{"a": 1}')
    j.save_state("risk", '{"a": 2}')
    j.close()
    assert Journal(tmp_path / "j.sqlite").load_state("risk") == '{"a": 2}'
    assert Journal(tmp_path / "j.sqlite").load_state("nothing") is None


def test_journal_when_opened_on_a_walking_skeleton_file_then_it_adds_the_new_columns(
    tmp_path: Path,
) -> None:
    import sqlite3

    db = sqlite3.connect(tmp_path / "old.sqlite")
    db.execute(
        "CREATE TABLE decisions (symbol TEXT NOT NULL, bar_close INTEGER NOT NULL, decided_at REAL NOT NULL, feature_time REAL,"
        " model_version TEXT, decision TEXT NOT NULL, target_lots REAL, verdict TEXT NOT NULL, reason TEXT, order_request TEXT,"
        " order_result TEXT, retcode INTEGER, latency_ms TEXT NOT NULL, PRIMARY KEY (symbol, bar_close))"
    )
    db.commit()
    db.close()
    j = Journal(tmp_path / "old.sqlite")
    j.record(_rec(100, "refused"))
    assert j.rows()[0]["reason_code"] is None and j.decided("EURUSD", 100)


def test_settings_when_symbols_are_comma_separated_in_env_then_parsed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from engine.config import EngineSettings
    from titanovax.settings import PlatformSettings

    monkeypatch.setenv("TX_SYMBOLS", "eurusd, XAUUSD")
    assert PlatformSettings().symbols == ["EURUSD", "XAUUSD"]
    assert EngineSettings().symbols == ["EURUSD", "XAUUSD"]
