"""Continuous reconciliation: the terminal's view of this engine against the journal's.

The start-up reconciliation (:meth:`engine.loop.Engine.reconcile`) resolves intents a crash
left open. This module keeps checking while the engine runs, the way NautilusTrader's
execution engine reconciles its cache against the venue: every
``TX_ENGINE_RECONCILE_INTERVAL_S`` seconds (default 10) it reads the terminal's positions and
deals of this engine's magic and the journal's intents, and names every disagreement:

=====================  =============================================================
``unknown_position``   an open position of this magic whose comment is no client order
                       id the journal wrote (opened behind the engine's back) and that
                       was not adopted at start or acknowledged by an operator
``missing_position``   a position the journal opened (a done/recovered ``open:`` intent,
                       not closed by a done ``close:``/``flatten:`` intent) that is not
                       open at the terminal and has no closing deal (it vanished)
``unknown_deal``       a deal of this magic that no journaled intent, no stop (SL/TP/
                       stop-out) and no flagged/adopted position explains (a trade opened
                       and closed between two passes)
``pending_intent``     an intent still ``pending`` while no decision is in flight: it is
                       resolved at once against the broker, as at start (an event, never
                       held open)
=====================  =============================================================

**What it does about them.** Each newly seen mismatch is counted
(``tx_engine_reconcile_mismatches_total{kind}``), logged and journaled as an ``audit`` row;
``tx_engine_reconcile_open_mismatches`` is the number still open. While any is open, an ACTIVE
engine is REDUCING with reason ``reconcile_mismatch`` (only orders towards flat); when the
last one goes (the stray position was closed, ...) the engine returns to the state it was in
before, and that is audited too. A HALTED or otherwise REDUCING engine keeps its stricter
state (the mismatches are still journaled and counted). An operator ``resume`` acknowledges
the open mismatches (their positions are adopted, as at start) and lifts the reduction.

**Off the decision path.** The pass runs in its own daemon thread. With a bridge terminal it
reads positions and deals over a link of its own (a second bridge connection) without the
decision lock, so a hung terminal call never blocks a decision or a kill; then it takes the
decision lock with a short timeout to read the journal and act, so a bar in flight is never
interrupted (the pass is skipped, ``tx_engine_reconcile_skipped_total``, and tried at the next
tick). A native terminal (one ``MetaTrader5`` module per process) is read under the lock. A
terminal link error (timeout, EOF, a stopped bridge) is counted
(``tx_engine_reconcile_errors_total``) and logged once per outage; the thread keeps going.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from engine.journal import Intent
from engine.mt5 import protocol as mt5

log = logging.getLogger(__name__)

KINDS = ("unknown_position", "missing_position", "unknown_deal", "pending_intent")
BROKER_CLOSE_REASONS = frozenset({mt5.DEAL_REASON_SL, mt5.DEAL_REASON_TP, 6})  # 6: stop out (SO)
DONE_INTENT = frozenset({"done", "recovered"})


@dataclass(frozen=True)
class Mismatch:
    """One disagreement between the terminal and the journal (``key`` is stable across passes)."""

    kind: str
    key: str
    detail: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form (status, audit detail)."""
        return {"kind": self.kind, "key": self.key, **self.detail}


def _position_ticket(it: Intent) -> int | None:
    """The position an ``open:`` intent opened, from its journaled result (the order ticket
    of a market order is the position's ticket; a recovered one names the position or order)."""
    res = it.result or {}
    for r in reversed(res.get("results") or []):
        if not isinstance(r, dict):
            continue
        for k in ("ticket", "order"):
            v = r.get(k)
            if isinstance(v, int) and v > 0:
                return v
    return None


def compare(
    *,
    positions: Iterable[Any],
    deals: Iterable[Any],
    intents: Iterable[Intent],
    magic: int,
    known_tickets: set[int],
    since_wall: float,
    flagged: set[int] | frozenset[int] = frozenset(),
    older_ids: set[str] | frozenset[str] = frozenset(),
) -> list[Mismatch]:
    """The mismatches between the terminal (``positions``, ``deals``) and the journal
    (``intents``) for ``magic``. ``known_tickets``: positions adopted at start or acknowledged
    by an operator; ``flagged``: positions already reported as unknown (their deals are part
    of that mismatch, not new ones); ``older_ids``: client ids of journaled intents older than
    the ``intents`` window (a position held for weeks is still the engine's). Intents updated after
    ``since_wall`` (the terminal snapshot's wall time) are ignored for ``missing_position``:
    their order may have reached the broker after the snapshot."""
    mine = [p for p in positions if int(p.magic) == magic]
    intents = list(intents)
    ids = {it.client_id for it in intents} | set(older_ids)
    open_tickets = {int(p.ticket) for p in mine}
    out: list[Mismatch] = []
    for p in mine:
        if p.comment not in ids and int(p.ticket) not in known_tickets:
            out.append(
                Mismatch(
                    "unknown_position",
                    f"position:{int(p.ticket)}",
                    {
                        "ticket": int(p.ticket),
                        "symbol": p.symbol,
                        "side": "buy" if p.type == mt5.POSITION_TYPE_BUY else "sell",
                        "volume": float(p.volume),
                        "comment": p.comment,
                    },
                )
            )
    deals = list(deals)
    closed_by_deal = {int(d.position_id) for d in deals if d.entry == mt5.DEAL_ENTRY_OUT}
    opened: dict[int, Intent] = {}
    closed_by_engine: set[int] = set()
    for it in intents:
        if it.status not in DONE_INTENT:
            continue
        if it.intent.startswith("open:"):
            t = _position_ticket(it)
            if t is not None and it.updated_at <= since_wall:
                opened[t] = it
        elif it.intent.startswith(("close:", "flatten:")):
            tail = it.intent.split(":", 1)[1]
            if tail.isdigit():
                closed_by_engine.add(int(tail))
    engine_tickets = set(opened)
    for t, it in opened.items():
        if t in open_tickets or t in closed_by_engine or t in closed_by_deal:
            continue
        out.append(
            Mismatch(
                "missing_position",
                f"position:{t}",
                {"ticket": t, "symbol": it.symbol, "client_id": it.client_id},
            )
        )
    explained = known_tickets | engine_tickets | open_tickets | set(flagged)
    for d in deals:
        if int(d.magic) != magic and int(d.position_id) not in engine_tickets:
            continue
        if d.comment in ids or int(d.position_id) in explained:
            continue
        if int(d.reason) in BROKER_CLOSE_REASONS:
            continue
        out.append(
            Mismatch(
                "unknown_deal",
                f"deal:{int(d.ticket)}",
                {
                    "deal": int(d.ticket),
                    "position": int(d.position_id),
                    "symbol": d.symbol,
                    "volume": float(d.volume),
                    "comment": d.comment,
                },
            )
        )
    return out


class ReconcileLoop:
    """Runs :meth:`engine.loop.Engine.reconcile_pass` every ``interval_s`` in a daemon thread."""

    def __init__(
        self,
        engine: Any,
        interval_s: float,
        lock_wait_s: float = 1.0,
        terminal: Any = None,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("the reconcile interval must be > 0 seconds")
        self.engine = engine
        self.terminal = terminal  # a link of its own (bridge), else the engine's under the lock
        self.interval_s = float(interval_s)
        self.lock_wait_s = min(lock_wait_s, self.interval_s)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="tx-engine-reconcile", daemon=True)

    def start(self) -> ReconcileLoop:
        """Start the thread."""
        self.thread.start()
        log.info("continuous reconciliation every %.3g s", self.interval_s)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread (waits for a pass in flight, up to ``timeout``)."""
        self._stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.engine.reconcile_pass(lock_wait_s=self.lock_wait_s, terminal=self.terminal)
            except Exception:  # never let the thread die: the next tick tries again
                log.exception("reconciliation pass failed")
                time.sleep(0)


def start_reconcile(engine: Any, es: Any, *, own_link: bool) -> ReconcileLoop | None:
    """Start continuous reconciliation from the engine settings ``es`` (``None`` when
    ``TX_ENGINE_RECONCILE_INTERVAL_S`` is 0). ``own_link``: open a bridge connection of its
    own, so a pass never waits behind a decision (a live bridge terminal); otherwise passes
    read the engine's terminal under the decision lock."""
    if es.reconcile_interval_s <= 0:
        return None
    terminal = None
    if own_link:
        terminal = es.open_terminal("bridge")
    return ReconcileLoop(engine, es.reconcile_interval_s, terminal=terminal).start()
