"""Continuous reconciliation and the operator audit, on the real engine over the real simulated
terminal: a position opened or vanished behind the engine's back is a mismatch that reduces
trading until it is gone (then the state before returns), every step is an audit row, a
terminal link error is counted and survived, and the pass never runs inside a decision."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from engine.journal import Intent, Journal
from engine.loop import Engine
from engine.mt5 import protocol as mt5
from engine.reconcile import ReconcileLoop, compare
from engine.risk import TradingState
from tests.unit.faults import MONDAY_0800, closes, make_engine

pytestmark = pytest.mark.unit

MAGIC = 42


def _traded(tmp_path: Path) -> tuple[Engine, list[int]]:
    """An engine that decided three bars long on EURUSD and GBPUSD (two positions, known)."""
    now = [MONDAY_0800]
    e = make_engine(tmp_path, now, magic=MAGIC)
    e.replay(closes(n=3), ["EURUSD", "GBPUSD"], lambda t: now.__setitem__(0, t))
    assert len(e.positions()) == 2
    return e, now


def _stray(e: Engine, *, side: int = mt5.ORDER_TYPE_SELL, comment: str = "by hand") -> int:
    """A position opened directly on the terminal with the engine's magic (not by the engine)."""
    tick = e.terminal.symbol_info_tick("EURUSD")
    res = e.terminal.order_send(
        {
            "action": mt5.TRADE_ACTION_DEAL,
            "symbol": "EURUSD",
            "volume": 0.2,
            "type": side,
            "price": tick.bid if side == mt5.ORDER_TYPE_SELL else tick.ask,
            "deviation": 20,
            "magic": MAGIC,
            "comment": comment,
            "type_filling": mt5.ORDER_FILLING_IOC,
        }
    )
    assert res is not None and res.retcode == mt5.TRADE_RETCODE_DONE, res
    return int(res.order)


def _close(e: Engine, ticket: int) -> None:
    p = next(p for p in e.terminal.positions_get() if p.ticket == ticket)
    tick = e.terminal.symbol_info_tick(p.symbol)
    buy = p.type == mt5.POSITION_TYPE_SELL
    res = e.terminal.order_send(
        {
            "action": mt5.TRADE_ACTION_DEAL,
            "symbol": p.symbol,
            "volume": p.volume,
            "type": mt5.ORDER_TYPE_BUY if buy else mt5.ORDER_TYPE_SELL,
            "price": tick.ask if buy else tick.bid,
            "position": ticket,
            "deviation": 20,
            "magic": MAGIC,
            "comment": "closed by hand",
            "type_filling": mt5.ORDER_FILLING_IOC,
        }
    )
    assert res is not None and res.retcode == mt5.TRADE_RETCODE_DONE, res


def _metric(e: Engine, name: str) -> float:
    for line in e.metrics.render().decode().splitlines():
        if line.split(" ")[0] == name:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not exported")


def test_reconcile_when_terminal_and_journal_agree_then_no_mismatch_and_state_unchanged(
    tmp_path: Path,
) -> None:
    e, _ = _traded(tmp_path)

    out = e.reconcile_pass()

    assert out == {"open": [], "new": []}
    assert e.risk.state.trading_state is TradingState.ACTIVE
    assert e.journal.audit_rows() == []
    assert _metric(e, "tx_engine_reconcile_open_mismatches") == 0


def test_reconcile_when_a_position_is_opened_behind_the_engine_then_reducing_until_it_is_closed(
    tmp_path: Path,
) -> None:
    e, _ = _traded(tmp_path)
    ticket = _stray(e)

    out = e.reconcile_pass()

    assert out is not None and [m["kind"] for m in out["new"]] == ["unknown_position"]
    assert out["new"][0]["ticket"] == ticket and out["new"][0]["comment"] == "by hand"
    st = e.status()
    assert st["trading_state"] == "REDUCING" and st["state_reason"] == "reconcile_mismatch"
    assert st["reconcile"]["open_mismatches"][0]["key"] == f"position:{ticket}"
    assert (
        'tx_engine_reconcile_mismatches_total{kind="unknown_position"} 1.0'
        in e.metrics.render().decode()
    )
    assert _metric(e, "tx_engine_reconcile_open_mismatches") == 1
    # a second pass sees the same mismatch: not counted again, no second audit row
    e.reconcile_pass()
    assert len(e.journal.audit_rows()) == 1
    row = e.journal.audit_rows()[0]
    assert row["action"] == "reconcile_mismatch" and row["actor"] == "reconcile"
    assert row["detail"]["before"]["state"] == "ACTIVE"
    assert row["detail"]["after"]["state"] == "REDUCING"

    _close(e, ticket)  # the stray position goes (its closing deal is explained by it)
    out = e.reconcile_pass()

    assert out == {"open": [], "new": []}
    assert e.risk.state.trading_state is TradingState.ACTIVE
    rows = e.journal.audit_rows()
    assert rows[0]["action"] == "reconcile_resolved"
    assert rows[0]["detail"]["after"]["state"] == "ACTIVE"
    assert rows[0]["detail"]["resolved"][0]["ticket"] == ticket
    assert _metric(e, "tx_engine_reconcile_open_mismatches") == 0


def test_reconcile_when_a_known_position_vanishes_without_a_deal_then_missing_position(
    tmp_path: Path,
) -> None:
    e, _ = _traded(tmp_path)
    gone = e.positions()[0]
    e.terminal._positions.pop(int(gone.ticket))  # the broker lost it: no closing deal
    e.terminal._changed()

    out = e.reconcile_pass()

    assert out is not None and [m["kind"] for m in out["new"]] == ["missing_position"]
    assert out["new"][0]["ticket"] == int(gone.ticket) and out["new"][0]["client_id"]
    assert e.risk.state.state_reason == "reconcile_mismatch"


def test_reconcile_when_the_engine_closes_its_own_position_then_no_mismatch(
    tmp_path: Path,
) -> None:
    e, _ = _traded(tmp_path)
    e.kill(flatten=True, detail="test flatten")
    assert e.positions() == ()

    out = e.reconcile_pass()

    assert out == {"open": [], "new": []}


def test_reconcile_when_a_trade_opens_and_closes_between_passes_then_unknown_deal_until_resume(
    tmp_path: Path,
) -> None:
    e, _ = _traded(tmp_path)
    t = _stray(e, side=mt5.ORDER_TYPE_BUY)
    _close(e, t)

    out = e.reconcile_pass()

    assert out is not None
    assert sorted(m["kind"] for m in out["new"]) == ["unknown_deal", "unknown_deal"]
    assert e.risk.state.trading_state is TradingState.REDUCING

    e.resume(actor="alice", reason="checked: a manual test trade")
    assert e.risk.state.trading_state is TradingState.ACTIVE
    row = e.journal.audit_rows()[0]
    assert row["action"] == "resume" and row["actor"] == "alice"
    assert len(row["detail"]["acknowledged_mismatches"]) == 2
    assert e.reconcile_pass() == {"open": [], "new": []}  # acknowledged: not raised again
    assert e.risk.state.trading_state is TradingState.ACTIVE


def test_reconcile_when_the_engine_is_halted_then_the_mismatch_is_journaled_but_it_stays_halted(
    tmp_path: Path,
) -> None:
    e, _ = _traded(tmp_path)
    e.kill(detail="test kill")
    _stray(e)

    out = e.reconcile_pass()

    assert out is not None and out["new"]
    assert e.risk.state.trading_state is TradingState.HALTED
    assert e.journal.audit_rows()[0]["action"] == "reconcile_mismatch"


def test_reconcile_when_the_engine_restarts_with_an_open_mismatch_then_it_is_not_adopted(
    tmp_path: Path,
) -> None:
    e, now = _traded(tmp_path)
    _stray(e)
    e.reconcile_pass()
    term = e.terminal

    again = make_engine(tmp_path, now, terminal=term, magic=MAGIC)
    report = again.reconcile()
    out = again.reconcile_pass()

    assert report["unknown_positions"]  # seen at start ...
    assert out is not None and out["open"] and not out["new"]  # ... but still a mismatch
    assert again.risk.state.state_reason == "reconcile_mismatch"


def test_reconcile_when_a_stray_position_exists_at_start_then_it_is_adopted(
    tmp_path: Path,
) -> None:
    e, now = _traded(tmp_path)
    _stray(e)  # before this engine ever ran its continuous reconciliation

    again = make_engine(tmp_path, now, terminal=e.terminal, magic=MAGIC)
    again.reconcile()

    assert again.reconcile_pass() == {"open": [], "new": []}
    assert again.risk.state.trading_state is TradingState.ACTIVE


class _LinkDown:
    """The terminal whose link fails on every position/deal read while ``down``."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.down = False

    def positions_get(self, *a: Any, **kw: Any) -> Any:
        if self.down:
            raise EOFError("connection closed by peer")
        return self.inner.positions_get(*a, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_reconcile_when_the_terminal_link_fails_then_counted_not_fatal_and_no_state_change(
    tmp_path: Path,
) -> None:
    now = [MONDAY_0800]
    e = make_engine(tmp_path, now, magic=MAGIC)
    link = _LinkDown(e.terminal)
    e.terminal = link
    e.executor.terminal = link
    e.replay(closes(n=2), ["EURUSD"], lambda t: now.__setitem__(0, t))
    link.down = True

    outs = [e.reconcile_pass() for _ in range(3)]

    assert all(o is not None and "EOFError" in o["error"] for o in outs)
    assert _metric(e, "tx_engine_reconcile_errors_total") == 3
    assert e.risk.state.trading_state is TradingState.ACTIVE
    assert e.status()["reconcile"]["link_down"] is True
    link.down = False
    assert e.reconcile_pass() == {"open": [], "new": []}
    assert e.status()["reconcile"]["link_down"] is False


def test_reconcile_when_a_decision_holds_the_lock_then_the_pass_is_skipped(tmp_path: Path) -> None:
    e, _ = _traded(tmp_path)
    _stray(e)
    held, release = threading.Event(), threading.Event()

    def decision() -> None:
        with e.lock:
            held.set()
            release.wait(5)

    t = threading.Thread(target=decision)
    t.start()
    held.wait(5)
    try:
        assert e.reconcile_pass(lock_wait_s=0.05) is None
        assert e.risk.state.trading_state is TradingState.ACTIVE
    finally:
        release.set()
        t.join()
    assert e.reconcile_pass() is not None
    assert e.risk.state.trading_state is TradingState.REDUCING


def test_reconcile_loop_when_started_then_it_detects_within_its_interval_and_stops(
    tmp_path: Path,
) -> None:
    e, _ = _traded(tmp_path)
    loop = ReconcileLoop(e, 0.05).start()
    try:
        _stray(e)
        for _ in range(100):
            if e.risk.state.trading_state is TradingState.REDUCING:
                break
            threading.Event().wait(0.02)
        assert e.risk.state.state_reason == "reconcile_mismatch"
    finally:
        loop.stop()
    assert not loop.thread.is_alive()
    with pytest.raises(ValueError, match="> 0"):
        ReconcileLoop(e, 0)


def test_compare_when_a_position_was_closed_by_its_stop_then_no_mismatch() -> None:
    opened = Intent(
        "tx-A", "EURUSD", 1, "open:buy", {}, "done", {"results": [{"order": 7}]}, 10009, 0.0, 0.0
    )
    deal = mt5.TradeDeal(
        *(99, 8, 0, 0, mt5.DEAL_TYPE_SELL, mt5.DEAL_ENTRY_OUT, MAGIC, 7, mt5.DEAL_REASON_SL),
        *(0.1, 1.1, 0.0, 0.0, -5.0, 0.0, "EURUSD", "[sl 1.1]", ""),
    )

    assert (
        compare(
            positions=[],
            deals=[deal],
            intents=[opened],
            magic=MAGIC,
            known_tickets=set(),
            since_wall=1.0,
        )
        == []
    )
    # the same position gone without any deal: it vanished
    missing = compare(
        positions=[], deals=[], intents=[opened], magic=MAGIC, known_tickets=set(), since_wall=1.0
    )
    assert [m.kind for m in missing] == ["missing_position"]


def test_audit_when_operator_actions_run_then_each_is_a_row_with_state_before_and_after(
    tmp_path: Path,
) -> None:
    e, _ = _traded(tmp_path)
    e.reload_hook = lambda: {"reloaded": True}

    e.reduce(actor="monitor", reason="drift breach")
    e.kill(flatten=True, actor="bob", reason="news")
    e.resume(actor="bob", reason="calm again")
    e.reload(actor="carol")

    rows = e.journal.audit_rows()
    assert [r["action"] for r in rows] == ["reload", "resume", "flatten", "reduce"]
    reduce, flatten, resume = rows[3], rows[2], rows[1]
    assert reduce["actor"] == "monitor" and reduce["reason"] == "drift breach"
    assert reduce["detail"]["before"]["state"] == "ACTIVE"
    assert reduce["detail"]["after"] == {
        "state": "REDUCING",
        "reason": "monitor_reduce",
        "detail": "drift breach",
    }
    assert flatten["detail"]["before"]["state"] == "REDUCING"
    assert flatten["detail"]["after"]["state"] == "HALTED"
    assert {f["symbol"] for f in flatten["detail"]["flattened"]} == {"EURUSD", "GBPUSD"}
    assert all(f["status"] == "done" for f in flatten["detail"]["flattened"])
    assert resume["detail"]["after"]["state"] == "ACTIVE"
    assert rows[0]["actor"] == "carol" and rows[0]["detail"]["result"] == {"reloaded": True}
    assert all(r["at"].endswith("+00:00") for r in rows)  # UTC
    assert e.journal.audit_rows(limit=1)[0]["action"] == "reload"


def test_audit_when_the_engine_is_halted_then_reduce_keeps_it_halted(tmp_path: Path) -> None:
    e, _ = _traded(tmp_path)
    e.kill()

    st = e.reduce(reason="monitor")

    assert st["trading_state"] == "HALTED"
    assert e.journal.audit_rows()[0]["detail"]["after"]["state"] == "HALTED"


def test_audit_when_an_older_journal_without_the_table_is_opened_then_it_is_added(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE engine_state (scope TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,"
        " updated_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (scope, key))"
    )
    db.execute("INSERT INTO engine_state VALUES ('1:2:paper', 'x', '\"kept\"', 0)")
    db.commit()
    db.close()

    j = Journal(path, "1:2:paper")
    j.audit("kill", actor="ops", reason="why", detail={"before": {"state": "ACTIVE"}})

    assert j.load_state("x") == '"kept"'
    [row] = j.audit_rows()
    assert (row["action"], row["actor"], row["reason"]) == ("kill", "ops", "why")
    j.set_scope("1:2:live")
    assert j.audit_rows() == []  # scoped like the other tables
