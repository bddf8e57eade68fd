"""Failover of the smart order router with real processes: two ``tx mt5 serve-sim`` terminals
(each its own process, port, login and spread) behind one :class:`engine.router.OrderRouter`,
orders flowing, and venue A lost in the middle. The figures of ``docs/execution-router.md``.

Two faults:

* ``sigkill``: A (the cheaper venue) dies by SIGKILL at a moment chosen by a timer thread while
  orders flow. Orders move to B; the failover time is from the kill to the first order filled
  at B. A's deals are read by a checker connection of its own every few milliseconds until it
  dies, so the count of executions per client id covers both terminals (an order A filled in
  the last milliseconds before the kill, which the checker had no time to read, counts from the
  router's record of the fill; an order in flight at the kill is *in doubt*: the router never
  sends it to B, which the count checks too).
* ``after_send``: A is frozen (SIGSTOP) right after an ``order_send`` reached it and executed
  — the answer is dropped the way a link lost mid-call drops it (``None`` with an IPC error) —
  so that order is in doubt. Orders of other symbols move to B; A is thawed (SIGCONT) later,
  and the router must look the in-doubt id up at A *before* anything else is sent there. Both
  terminals live to the end, so the count reads their whole deal histories.

    .venv/bin/python -m titanovax.router_faults [--mode sigkill|after_send|both] [--orders 60]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from titanovax.faults import MONDAY, SimBridge

MAGIC = 20260101
SYMBOLS = ("EURUSD", "GBPUSD", "USDJPY", "XAUUSD")
LOGIN_A, LOGIN_B = 61_000_001, 62_000_002


@dataclass
class FailoverResult:
    """What one failover run did (times in seconds)."""

    mode: str
    orders: int
    by_venue: dict[str, int]  # orders done (or recovered) per venue
    failover_s: float | None  # the fault -> the first order filled at B
    first_order_after_s: float | None  # latency of the first order sent after the fault
    executed_ids: int  # client ids with a deal on either terminal
    duplicates: int  # client ids executed more than once across both terminals
    in_doubt: list[str]  # client ids the router held (never sent elsewhere)
    in_doubt_on_b: int  # of those, executed at B (must be 0)
    refused: int  # orders refused (held symbol, no venue)
    resolved: list[dict[str, Any]] = field(default_factory=list)  # in-doubt ids looked up
    detail: dict[str, Any] = field(default_factory=dict)


class _StopAfterSend:
    """A's terminal as the router holds it, with one fault: after the ``arm``-th
    ``order_send`` reached A (and executed there), A is frozen (SIGSTOP) and the answer is
    dropped the way :class:`~engine.mt5.resilient.ResilientTerminal` drops one lost mid-call:
    ``None`` and an IPC ``last_error``. Every other call is A's own."""

    def __init__(self, inner: Any, pid: int, arm: int) -> None:
        self.inner, self.pid, self.arm = inner, pid, arm
        self.sends = 0
        self.fired_at: float | None = None
        self.fired_id: str | None = None
        self._lost = False

    def order_send(self, request: Any) -> Any:
        res = self.inner.order_send(request)
        self.sends += 1
        if self.sends == self.arm and self.fired_at is None:
            os.kill(self.pid, signal.SIGSTOP)
            self.fired_at = time.perf_counter()
            self.fired_id = str(request.get("comment"))
            self._lost = True
            self.inner.shutdown()  # the link is gone: the next call reconnects
            return None
        self._lost = False
        return res

    def last_error(self) -> tuple[int, str]:
        if self._lost:
            from engine.mt5 import protocol as mt5

            return (mt5.RES_E_INTERNAL_FAIL_RECEIVE, "answer lost: terminal frozen after send")
        err: tuple[int, str] = self.inner.last_error()
        return err

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _deals(term: Any) -> list[Any]:
    got = term.history_deals_get(MONDAY - 7 * 86_400, MONDAY + 2 * 86_400)
    return [d for d in got or () if int(d.magic) == MAGIC]


def failover_scenario(
    workdir: Path,
    *,
    mode: str = "sigkill",
    orders: int = 60,
    pace_s: float = 0.03,
    fault_after: int = 15,
    thaw_after: int = 15,
    seed: int = 2026,
) -> FailoverResult:
    """Run ``orders`` orders through the router over two serve-sim processes with ``mode``'s
    fault on A after about ``fault_after`` orders (``after_send``: A thawed ``thaw_after``
    orders later, and orders go on until A answered, its order in doubt was looked up and it
    took an order again); see the module docstring."""
    import random

    from engine.config import ExecutionConfig
    from engine.journal import Journal
    from engine.mt5 import protocol as mt5
    from engine.router import OrderRouter, open_venues, parse_venues

    if mode not in ("sigkill", "after_send"):
        raise ValueError(f"unknown mode {mode!r}: sigkill or after_send")
    rng = random.Random(seed)
    a = SimBridge(workdir / "a", args=["--login", str(LOGIN_A)]).start(MONDAY)
    b = SimBridge(workdir / "b", args=["--login", str(LOGIN_B), "--spread-add", "3"]).start(MONDAY)
    try:
        venues = parse_venues(
            json.dumps(
                [
                    {
                        "name": "a",
                        "kind": "bridge",
                        "address": f"127.0.0.1:{a.port}",
                        "login": LOGIN_A,
                        "timeout_s": 1.0,
                        "cooldown_s": 0.5,
                    },
                    {
                        "name": "b",
                        "kind": "bridge",
                        "address": f"127.0.0.1:{b.port}",
                        "login": LOGIN_B,
                        "timeout_s": 1.0,
                        "cooldown_s": 0.5,
                    },
                ]
            )
        )
        journal = Journal(workdir / "journal.sqlite")
        router = OrderRouter(
            open_venues(venues),
            journal,
            ExecutionConfig(retry_backoff_s=0.05),
            magic=MAGIC,
        ).bind(login=LOGIN_A)
        va = router.by_name["a"]
        stopper: _StopAfterSend | None = None
        if mode == "after_send":
            assert a.proc is not None
            stopper = _StopAfterSend(va.terminal.terminal, a.proc.pid, fault_after)
            va.terminal.terminal = stopper
        check_a, check_b = a.connect(), b.connect()
        seen_a: dict[int, Any] = {}
        stop = threading.Event()

        def watch_a() -> None:  # A's deals until it dies (sigkill) or the run ends
            while not stop.is_set():
                try:
                    for d in _deals(check_a):
                        seen_a[int(d.ticket)] = d
                except Exception:
                    if mode == "sigkill":
                        return
                time.sleep(0.005)

        watcher = threading.Thread(target=watch_a, daemon=True)
        watcher.start()
        killed_at: list[float] = []
        log: list[dict[str, Any]] = []
        kill_timer: threading.Timer | None = None

        def kill() -> None:
            assert a.proc is not None
            os.kill(a.proc.pid, signal.SIGKILL)
            killed_at.append(time.perf_counter())

        thawed = False
        for i in range(orders + 400):
            if i >= orders and (
                mode == "sigkill" or (thawed and not router.in_doubt and log[-1]["venue"] == "a")
            ):
                break  # after_send: on until A answered, was checked and took an order again
            sym = SYMBOLS[i % len(SYMBOLS)]
            if mode == "sigkill" and i == fault_after:
                # a moment inside the order stream, not aligned with any order
                kill_timer = threading.Timer(rng.uniform(0.0, 0.03), kill)
                kill_timer.start()
            t0 = time.perf_counter()
            out = router.execute(
                sym,
                MONDAY + i * 300,
                "open:buy" if i % 2 == 0 else "open:sell",
                order_type=mt5.ORDER_TYPE_BUY if i % 2 == 0 else mt5.ORDER_TYPE_SELL,
                volume=0.01,
                now_utc=float(MONDAY),
            )
            t1 = time.perf_counter()
            routes = journal.routes(out.client_id)
            venue = routes[-1]["venue"] if routes else None
            log.append(
                {
                    "i": i,
                    "symbol": sym,
                    "cid": out.client_id,
                    "status": out.status,
                    "venue": venue,
                    "t0": t0,
                    "t1": t1,
                    "detail": out.detail,
                }
            )
            if stopper is not None and stopper.fired_at is not None and not thawed:
                n_after = sum(1 for x in log if x["t0"] >= stopper.fired_at)
                if n_after >= thaw_after:
                    assert a.proc is not None
                    os.kill(a.proc.pid, signal.SIGCONT)
                    thawed = True
            time.sleep(pace_s)
        if kill_timer is not None:
            kill_timer.join()
        stop.set()
        watcher.join(5)
        fault_at = killed_at[0] if killed_at else (stopper.fired_at if stopper else None)
        deals_b = _deals(check_b)
        deals_a = list(seen_a.values()) if mode == "sigkill" else _deals(check_a)
        per_id: collections.Counter[str] = collections.Counter(
            str(d.comment) for d in (*deals_a, *deals_b) if d.entry == mt5.DEAL_ENTRY_IN
        )
        ok = [x for x in log if x["status"] in ("done", "recovered")]
        # an order A filled right before its SIGKILL, before the watcher read it: A's history
        # died with it, so the router's own record of that fill stands for A's deal
        unseen_a = [x["cid"] for x in ok if x["venue"] == "a" and per_id[x["cid"]] == 0]
        per_id.update(unseen_a if mode == "sigkill" else [])
        on_b_after = [x for x in ok if x["venue"] == "b" and fault_at and x["t1"] > fault_at]
        after = [x for x in log if fault_at and x["t0"] >= fault_at]
        doubt = sorted({r["client_id"] for r in journal.routes() if r["status"] == "in_doubt"})
        b_ids = {str(d.comment) for d in deals_b}
        return FailoverResult(
            mode=mode,
            orders=len(log),
            by_venue=dict(collections.Counter(str(x["venue"]) for x in ok)),
            failover_s=(on_b_after[0]["t1"] - fault_at) if on_b_after and fault_at else None,
            first_order_after_s=(after[0]["t1"] - after[0]["t0"]) if after else None,
            executed_ids=len(per_id),
            duplicates=sum(1 for n in per_id.values() if n > 1),
            in_doubt=doubt,
            in_doubt_on_b=sum(1 for c in doubt if c in b_ids),
            refused=sum(1 for x in log if x["status"] == "failed"),
            resolved=[r for r in journal.routes() if "answers again" in r["reason"]],
            detail={
                "fault_at_order": next((x["i"] for x in after), None),
                "fired_id": stopper.fired_id if stopper else None,
                "ok_ids_without_deal": sum(1 for x in ok if per_id[x["cid"]] == 0),
                "filled_at_a_unseen": len(unseen_a),
                "log": [{k: v for k, v in x.items() if k not in ("t0", "t1")} for x in log],
            },
        )
    finally:
        if a.proc is not None and a.proc.poll() is None:
            os.kill(a.proc.pid, signal.SIGCONT)
        a.stop()
        b.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--mode", default="both", choices=("sigkill", "after_send", "both"))
    ap.add_argument("--orders", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=1)
    ns = ap.parse_args()
    modes = ("sigkill", "after_send") if ns.mode == "both" else (ns.mode,)
    with tempfile.TemporaryDirectory(prefix="tx-router-faults-") as tmp:
        for mode in modes:
            for k in range(ns.repeats):
                r = failover_scenario(
                    Path(tmp) / f"{mode}-{k}", mode=mode, orders=ns.orders, seed=2026 + k
                )
                d = asdict(r)
                d.pop("detail")
                print(json.dumps(d, default=str))


if __name__ == "__main__":
    main()
