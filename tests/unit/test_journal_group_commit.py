"""The journal's group commit: a bar is one transaction, the intent is committed (visible to
another connection) before ``order_send``, a bar without orders commits once, the risk state
is written once per commit point, and a rolled-back bar is not taken as decided."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from engine.journal import DecisionRecord, Journal
from engine.loop import Engine
from tests.unit.faults import MONDAY_0800, make_engine, sim_terminal

pytestmark = pytest.mark.unit


class _PeekingTerminal:
    """The simulator; on every ``order_send`` a second connection reads the intents table,
    which shows only what the journal has committed."""

    def __init__(self, inner: Any, db: Path) -> None:
        self.inner = inner
        self.db = db
        self.seen_at_send: list[list[tuple[str, str]]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def order_send(self, request: dict[str, Any]) -> Any:
        with sqlite3.connect(self.db) as other:
            rows = other.execute("SELECT client_id, status FROM intents").fetchall()
        self.seen_at_send.append([(str(c), str(s)) for c, s in rows])
        return self.inner.order_send(request)


def _statements(journal: Journal) -> list[str]:
    out: list[str] = []
    journal._db.set_trace_callback(out.append)
    return out


def _world(tmp_path: Path) -> tuple[list[int], _PeekingTerminal, Engine]:
    now = [MONDAY_0800]
    term = _PeekingTerminal(sim_terminal(now), tmp_path / "j.sqlite")
    return now, term, make_engine(tmp_path, now, terminal=term)


def test_order_when_sent_then_its_intent_was_committed_before_order_send(tmp_path: Path) -> None:
    now, term, e = _world(tmp_path)

    rec = e.on_bar("EURUSD", now[0])

    assert rec is not None and rec.verdict == "sent"
    cid = rec.order_result["results"][0]["client_id"]  # type: ignore[index]
    assert term.seen_at_send == [[(cid, "pending")]]
    assert e.journal.intent(cid).status == "done"  # type: ignore[union-attr]


def test_bar_with_an_order_when_decided_then_two_commits_one_synchronous_and_risk_written_once_each(
    tmp_path: Path,
) -> None:
    now, _, e = _world(tmp_path)
    stmts = _statements(e.journal)

    e.on_bar("EURUSD", now[0])

    commits = [i for i, s in enumerate(stmts) if s == "COMMIT"]
    relax = [i for i, s in enumerate(stmts) if s == "PRAGMA synchronous=NORMAL"]
    assert len(commits) == 2
    assert len(relax) == 1 and commits[0] < relax[0] < commits[1]  # only the 2nd is relaxed
    risk_writes = [s for s in stmts if "INSERT INTO engine_state" in s and "'risk'" in s]
    assert 1 <= len(risk_writes) <= 2
    assert stmts[-1] == "PRAGMA synchronous=FULL"


def test_bar_without_orders_when_decided_then_one_synchronous_commit_and_no_select(
    tmp_path: Path,
) -> None:
    now, _, e = _world(tmp_path)
    e.on_bar("EURUSD", now[0])  # opens the long position
    now[0] += 300
    stmts = _statements(e.journal)

    rec = e.on_bar("EURUSD", now[0])  # the model still wants long: hold

    assert rec is not None and rec.verdict == "hold"
    assert stmts.count("COMMIT") == 1
    assert not any(s.startswith("PRAGMA synchronous") for s in stmts)
    assert not any(s.startswith("SELECT") for s in stmts)  # decided(), bar intents: memory


def test_journal_when_a_bar_transaction_is_rolled_back_then_nothing_of_it_is_kept(
    tmp_path: Path,
) -> None:
    j = Journal(tmp_path / "j.sqlite", "1:2:paper")
    assert not j.decided("EURUSD", 300)
    j.begin()
    j.record(
        DecisionRecord(
            "EURUSD", 300, 0.0, None, None, "none", None, "hold", None, None, None, None, {}
        )
    )
    j.save_state("risk", lambda: '{"x": 1}')
    assert j.decided("EURUSD", 300) and j.load_state("risk") == '{"x": 1}'

    j.rollback()

    assert not j.decided("EURUSD", 300) and j.load_state("risk") is None
    assert Journal(tmp_path / "j.sqlite", "1:2:paper").rows() == []


def test_journal_when_state_is_saved_many_times_in_a_transaction_then_one_upsert_with_the_last_value(
    tmp_path: Path,
) -> None:
    j = Journal(tmp_path / "j.sqlite", "1:2:paper")
    stmts = _statements(j)
    j.begin()
    for i in range(5):
        j.save_state("risk", str(i))

    j.commit()

    assert sum("INSERT INTO engine_state" in s for s in stmts) == 1
    assert Journal(tmp_path / "j.sqlite", "1:2:paper").load_state("risk") == "4"


@pytest.mark.parametrize(("durable", "level"), [(True, 2), (False, 0)])
def test_journal_when_opened_durable_or_not_then_sqlite_syncs_full_or_off(
    tmp_path: Path, durable: bool, level: int
) -> None:
    j = Journal(tmp_path / "j.sqlite", durable=durable)

    assert j._db.execute("PRAGMA synchronous").fetchone()[0] == level
