"""The journal's group commit: a bar is one transaction, its intents are committed (visible
to another connection) and flushed to disk before any ``order_send`` — a flip's two intents by
one synchronous commit before the first send, an intent written after the bar's commit point
by one of its own —, a bar without orders commits once, the risk state is written once per
commit point, and a rolled-back bar is not taken as decided."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from engine.journal import DecisionRecord, Journal, JournalUnavailable
from engine.loop import Engine
from tests.unit.faults import (
    MONDAY_0800,
    Crash,
    FaultyTerminal,
    ScriptedModel,
    make_engine,
    sim_terminal,
)

pytestmark = pytest.mark.unit


class _PeekingTerminal:
    """The simulator; on every ``order_send`` a second connection reads the intents table,
    which shows only what the journal has committed, and the journal's count of synchronous
    commit points (WAL flushes) is noted."""

    def __init__(self, inner: Any, db: Path) -> None:
        self.inner = inner
        self.db = db
        self.journal: Journal | None = None
        self.seen_at_send: list[list[tuple[str, str]]] = []
        self.syncs_at_send: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def order_send(self, request: dict[str, Any]) -> Any:
        with sqlite3.connect(self.db) as other:
            rows = other.execute("SELECT client_id, status FROM intents").fetchall()
        self.seen_at_send.append([(str(c), str(s)) for c, s in rows])
        if self.journal is not None:
            self.syncs_at_send.append(self.journal.sync_commits)
        return self.inner.order_send(request)


def _statements(journal: Journal) -> list[str]:
    out: list[str] = []
    journal._db.set_trace_callback(out.append)
    return out


def _world(tmp_path: Path) -> tuple[list[int], _PeekingTerminal, Engine]:
    now = [MONDAY_0800]
    term = _PeekingTerminal(sim_terminal(now), tmp_path / "j.sqlite")
    e = make_engine(tmp_path, now, terminal=term, model=ScriptedModel(1))
    term.journal = e.journal
    return now, term, e


def test_order_when_sent_then_its_intent_was_committed_before_order_send(tmp_path: Path) -> None:
    now, term, e = _world(tmp_path)

    rec = e.on_bar("EURUSD", now[0])

    assert rec is not None and rec.verdict == "sent"
    cid = rec.order_result["results"][0]["client_id"]  # type: ignore[index]
    assert term.seen_at_send == [[(cid, "pending")]]
    assert e.journal.intent(cid).status == "done"  # type: ignore[union-attr]


def test_bar_with_an_order_when_decided_then_exactly_one_synchronous_commit_before_order_send(
    tmp_path: Path,
) -> None:
    now, term, e = _world(tmp_path)
    e.reconcile()  # the start's own writes (outside any bar) before counting
    stmts = _statements(e.journal)
    sync0, relaxed0 = e.journal.sync_commits, e.journal.relaxed_commits

    rec = e.on_bar("EURUSD", now[0])

    assert rec is not None and rec.verdict == "sent"
    cid = rec.order_result["results"][0]["client_id"]  # type: ignore[index]
    assert term.seen_at_send == [[(cid, "pending")]]  # committed before the send
    assert term.syncs_at_send == [sync0 + 1]  # exactly one synchronous commit before it
    assert e.journal.sync_commits == sync0 + 1  # and none after it:
    assert e.journal.relaxed_commits == relaxed0 + 1  # the result and the row commit relaxed
    assert stmts.count("COMMIT") == 2
    assert not any(s.startswith("PRAGMA") for s in stmts)
    risk_writes = [s for s in stmts if "INSERT INTO engine_state" in s and "'risk'" in s]
    assert 1 <= len(risk_writes) <= 2


def _flip(
    tmp_path: Path, now: list[int] | None = None, terminal: Any = None
) -> tuple[list[int], _PeekingTerminal, Engine]:
    """An engine long one position, its model now short: the next bar closes, then opens
    (``terminal``: on the clock ``now``)."""
    now = now if now is not None else [MONDAY_0800]
    term = _PeekingTerminal(terminal or sim_terminal(now), tmp_path / "j.sqlite")
    e = make_engine(tmp_path, now, terminal=term, model=ScriptedModel(1))
    term.journal = e.journal
    e.on_bar("EURUSD", now[0])  # opens the long position
    now[0] += 300
    e.model.position = -1  # type: ignore[attr-defined]
    term.seen_at_send.clear()
    term.syncs_at_send.clear()
    return now, term, e


def test_flip_when_a_bar_sends_two_orders_then_both_intents_are_flushed_by_one_synchronous_commit_before_the_first_send(
    tmp_path: Path,
) -> None:
    now, term, e = _flip(tmp_path)
    sync0 = e.journal.sync_commits

    rec = e.on_bar("EURUSD", now[0])  # close the long, open the short: two order_sends

    assert rec is not None and rec.verdict == "sent"
    close_id, open_id = (r["client_id"] for r in rec.order_result["results"])  # type: ignore[index]
    assert len(term.seen_at_send) == 2
    # both intents committed before the first send, the close's outcome before the second
    assert {(close_id, "pending"), (open_id, "pending")} <= set(term.seen_at_send[0])
    assert (open_id, "pending") in term.seen_at_send[1]
    assert term.syncs_at_send == [sync0 + 1, sync0 + 1]  # one flush, before the first send
    assert e.journal.sync_commits == sync0 + 1
    assert e.journal.intent(close_id).status == "done"  # type: ignore[union-attr]
    assert e.journal.intent(open_id).status == "done"  # type: ignore[union-attr]


def test_flip_when_the_close_is_refused_then_the_prepared_open_is_ended_failed_and_never_sent(
    tmp_path: Path,
) -> None:
    now = [MONDAY_0800]
    broker = FaultyTerminal(sim_terminal(now))
    _, _, e = _flip(tmp_path, now, broker)
    broker.script.append(10018)  # the close: market closed (final, no retry)
    before = len(broker.sent)

    rec = e.on_bar("EURUSD", now[0])

    assert rec is not None and rec.verdict == "error"
    assert [r.get("position") for r in broker.sent[before:]] != [None]  # only the close went out
    assert len(broker.sent) == before + 1
    opens = [it for it in e.journal.intents() if it.intent == "open:sell"]
    assert len(opens) == 1 and opens[0].status == "failed"
    assert opens[0].result is not None and "not sent" in opens[0].result["detail"]
    assert not any(d.comment == opens[0].client_id for d in broker.history_deals_get(0, 2**31))


def test_journal_when_an_intent_is_written_after_the_bars_commit_point_then_the_next_checkpoint_flushes_it(
    tmp_path: Path,
) -> None:
    from engine.journal import Intent

    j = Journal(tmp_path / "j.sqlite")
    s0 = j.sync_commits
    j.begin()
    j.intent_begin(Intent("a", "EURUSD", 1, "open:buy", {}))
    j.checkpoint()  # the bar's commit point: a flush
    assert j.sync_commits == s0 + 1
    j.intent_end("a", "done", {"results": []}, 10009)
    j.save_state("risk", "{}")
    j.checkpoint()  # only results and state since: they ride with the bar's last commit
    assert j.sync_commits == s0 + 1
    j.intent_begin(Intent("b", "EURUSD", 1, "close:1", {}))
    j.checkpoint()  # a new intent (the router writes each at its send): flushed before it
    assert j.sync_commits == s0 + 2
    j.commit()
    assert j.sync_commits == s0 + 2 and j.intent("b") is not None


def test_flip_when_the_engine_dies_after_the_first_flush_then_the_restart_sends_each_order_once(
    tmp_path: Path,
) -> None:
    now = [MONDAY_0800]
    broker = FaultyTerminal(sim_terminal(now))
    _, _, e = _flip(tmp_path, now, broker)
    broker.script.append("crash")  # the close executes, then the process dies
    with pytest.raises(Crash):
        e.on_bar("EURUSD", now[0])
    e.journal.close()

    e2 = make_engine(tmp_path, now, terminal=broker, model=ScriptedModel(-1))
    e2.reconcile()
    rec = e2.on_bar("EURUSD", now[0])

    assert rec is not None and rec.verdict == "sent"
    deals = [d for d in broker.history_deals_get(0, 2**31) if d.magic == e2.magic]
    per_id: dict[str, int] = {}
    for d in deals:
        per_id[d.comment] = per_id.get(d.comment, 0) + 1
    assert all(n == 1 for n in per_id.values()), per_id  # no client id executed twice
    net = sum(p.volume if p.type == 0 else -p.volume for p in broker.positions_get() or ())
    assert net == pytest.approx(-0.1)  # flipped exactly once


def test_order_when_the_wal_cannot_be_flushed_then_it_is_not_sent(tmp_path: Path) -> None:
    now, term, e = _world(tmp_path)
    e.journal._wal = str(tmp_path / "missing" / "j.sqlite-wal")  # fdatasync fails

    rec = e.on_bar("EURUSD", now[0])

    assert term.seen_at_send == []
    assert rec is not None and rec.verdict != "sent"
    assert not e.journal_up


def test_journal_when_a_synchronous_commit_point_fails_to_flush_then_journal_unavailable(
    tmp_path: Path,
) -> None:
    j = Journal(tmp_path / "j.sqlite", "1:2:paper")
    j._wal = str(tmp_path / "missing" / "j.sqlite-wal")
    j.begin()
    j.save_state("risk", "{}")

    with pytest.raises(JournalUnavailable, match="flushing"):
        j.checkpoint()


def test_bar_without_orders_when_decided_then_one_synchronous_commit_and_no_select(
    tmp_path: Path,
) -> None:
    now, _, e = _world(tmp_path)
    e.on_bar("EURUSD", now[0])  # opens the long position
    now[0] += 300
    stmts = _statements(e.journal)
    sync0, relaxed0 = e.journal.sync_commits, e.journal.relaxed_commits

    rec = e.on_bar("EURUSD", now[0])  # the model still wants long: hold

    assert rec is not None and rec.verdict == "hold"
    assert stmts.count("COMMIT") == 1
    assert (e.journal.sync_commits, e.journal.relaxed_commits) == (sync0 + 1, relaxed0)
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


@pytest.mark.parametrize(("durable", "level", "flushes"), [(True, 1, True), (False, 0, False)])
def test_journal_when_opened_durable_or_not_then_sqlite_flushes_the_wal_itself_or_never(
    tmp_path: Path, durable: bool, level: int, flushes: bool
) -> None:
    j = Journal(tmp_path / "j.sqlite", durable=durable)
    sync0 = j.sync_commits

    j.save_state("risk", "{}")  # outside a transaction: its own commit

    assert j._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert j._db.execute("PRAGMA synchronous").fetchone()[0] == level  # NORMAL or OFF
    assert (j._wal is not None) is flushes
    assert j.sync_commits == sync0 + int(flushes)


def test_journal_when_opened_by_a_relative_path_through_a_symlink_then_it_flushes_the_real_wal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    monkeypatch.chdir(tmp_path)
    j = Journal(Path("link") / "j.sqlite", "1:2:paper")
    monkeypatch.chdir(tmp_path / "real")  # the process moves on; the journal keeps flushing
    sync0 = j.sync_commits

    j.save_state("risk", "{}")

    assert j._wal is not None and Path(j._wal).exists()
    assert Path(j._wal).resolve() == (tmp_path / "real" / "j.sqlite-wal").resolve()
    assert j.sync_commits == sync0 + 1


def test_power_failure_when_the_bars_relaxed_commit_is_lost_then_restart_recovers_the_order_and_sends_nothing(
    tmp_path: Path,
) -> None:
    """A power failure loses what was not flushed: here everything after the synchronous
    commit point before ``order_send``. The journal's files are copied at the send (the state
    on disk then, at most), the bar completes (its relaxed commit), and the engine restarts on
    the copy with the same broker."""
    import shutil

    now = [MONDAY_0800]
    disk = tmp_path / "at_send"
    disk.mkdir()

    class Snapshotting(_PeekingTerminal):
        def order_send(self, request: dict[str, Any]) -> Any:
            for name in ("j.sqlite", "j.sqlite-wal"):
                shutil.copy(tmp_path / name, disk / name)
            return super().order_send(request)

    term = Snapshotting(FaultyTerminal(sim_terminal(now)), tmp_path / "j.sqlite")
    e = make_engine(tmp_path, now, terminal=term, model=ScriptedModel(1))
    rec = e.on_bar("EURUSD", now[0])
    assert rec is not None and rec.verdict == "sent"
    cid = rec.order_result["results"][0]["client_id"]  # type: ignore[index]
    e.journal.close()

    e2 = make_engine(disk, now, terminal=term, model=ScriptedModel(1))  # the journal as on disk
    assert e2.journal.intent(cid).status == "pending"  # type: ignore[union-attr]
    assert not e2.journal.decided("EURUSD", now[0])  # the row was in the lost commit
    report = e2.reconcile()
    rec2 = e2.on_bar("EURUSD", now[0])

    assert report["recovered"] == [cid]
    assert rec2 is not None and rec2.verdict == "sent"
    assert rec2.order_result is not None and rec2.order_result["executed_before_restart"]
    assert len(term.inner.sent) == 1 and len(e2.positions("EURUSD")) == 1


def _state_row(db: Path) -> tuple[str, float] | None:
    with sqlite3.connect(db) as other:
        row = other.execute(
            "SELECT value, updated_at FROM engine_state WHERE key='risk'"
        ).fetchone()
    return None if row is None else (str(row[0]), float(row[1]))


def test_journal_when_the_state_is_saved_unchanged_then_it_is_not_written_again(
    tmp_path: Path,
) -> None:
    j = Journal(tmp_path / "j.sqlite", "1:2:paper")
    j.begin()
    j.save_state("risk", lambda: '{"equity": 1}')
    j.commit()
    first = _state_row(tmp_path / "j.sqlite")
    stmts = _statements(j)

    for _ in range(3):  # bars whose risk state did not change
        j.begin()
        j.save_state("risk", lambda: '{"equity": 1}')
        j.commit()
    j.save_state("risk", '{"equity": 1}')  # outside a transaction too

    assert not any("engine_state" in s for s in stmts)
    assert _state_row(tmp_path / "j.sqlite") == first
    j.begin()
    j.save_state("risk", lambda: '{"equity": 2}')
    j.commit()
    assert sum("INSERT INTO engine_state" in s for s in stmts) == 1
    assert Journal(tmp_path / "j.sqlite", "1:2:paper").load_state("risk") == '{"equity": 2}'


def test_journal_when_the_commit_of_a_new_state_fails_then_the_next_bar_writes_that_state(
    tmp_path: Path,
) -> None:
    j = Journal(tmp_path / "j.sqlite", "1:2:paper")
    j.save_state("risk", '{"equity": 1}')
    j.begin()
    j.save_state("risk", lambda: '{"equity": 2}')
    real = j._db
    j._db = _Failing(real, "COMMIT")
    with pytest.raises(JournalUnavailable):
        j.commit()  # the state was upserted, then the bar rolled back
    j._db = real

    j.begin()
    j.save_state("risk", lambda: '{"equity": 2}')
    j.commit()

    assert Journal(tmp_path / "j.sqlite", "1:2:paper").load_state("risk") == '{"equity": 2}'


def test_journal_when_the_scope_changes_then_an_equal_state_is_written_in_the_new_scope(
    tmp_path: Path,
) -> None:
    j = Journal(tmp_path / "j.sqlite", "1:2:paper")
    j.save_state("risk", '{"equity": 1}')

    j.set_scope("1:2:live")
    j.save_state("risk", '{"equity": 1}')

    assert Journal(tmp_path / "j.sqlite", "1:2:live").load_state("risk") == '{"equity": 1}'


def test_journal_when_a_write_fails_then_the_next_save_writes_the_state_again(
    tmp_path: Path,
) -> None:
    j = Journal(tmp_path / "j.sqlite", "1:2:paper")
    j.save_state("risk", '{"equity": 1}')
    with sqlite3.connect(tmp_path / "j.sqlite") as other:  # the row lost behind its back
        other.execute("DELETE FROM engine_state")
    real = j._db
    j._db = _Failing(real, "")
    with pytest.raises(JournalUnavailable):
        j.save_state("other", "x")
    j._db = real

    j.save_state("risk", '{"equity": 1}')

    assert Journal(tmp_path / "j.sqlite", "1:2:paper").load_state("risk") == '{"equity": 1}'


class _Failing:
    """A connection whose statements starting with ``prefix`` fail like a full disk."""

    def __init__(self, inner: Any, prefix: str) -> None:
        self.inner, self.prefix = inner, prefix

    def execute(self, sql: str, *a: Any) -> Any:
        if sql.startswith(self.prefix):
            raise sqlite3.OperationalError("database or disk is full")
        return self.inner.execute(sql, *a)
