"""The whole engine process fails over between two venues (marker ``faults``).

``python -m engine`` — the engine image's command (``infra/compose.yaml``), the entry point an
operator runs live — with ``TX_ENGINE_VENUES`` naming two ``tx mt5 serve-sim`` processes: A
(login 61000001) and B (login 62000002, every spread 3 points wider, so A is the cheaper
venue and takes the orders). The engine trades four symbols with a tiny real ONNX bundle
(``TX_ENGINE_SERVING_FALLBACK=onnx``; serving does not answer) whose features the test pushes
to a private Redis in Feast's format before each bar: per symbol the target cycles long, flat,
short, flat, phase-shifted, so every bar moves every symbol's target and half the symbols
are flat at any bar's end. Both terminals read one clock file the test moves bar by bar (M5 closes
at a fast pace); the engine's own clock is the wall clock, so the replay starts at the next
open-market M5 close at or after now (ticks and features are "from the future" by at most a
few hours: ages are negative, which no rule refuses).

Mid-run, at a random moment inside a bar's decisions (0-60 ms after the bar's first symbol
was journaled, while the other symbols' orders go out), A is SIGKILLed. Checked:

* before the kill every order was routed to A; after it, orders fill at B, and the journal's
  ``routes`` rows show why (A ``down`` in the ranking, or ``left after a: link error``);
* **no client order id executed twice across both venues**. What can be read: B's deals, all
  of them, over B's own bridge API at the end; A's deals over a checker connection of its
  own every 5 ms until A dies (the sim keeps its state in memory only, so A's history dies
  with it), completed by the journal's ``done`` routes at A (a fill in A's last milliseconds
  that the checker had no time to read). An order in flight at the kill is ``in_doubt`` in
  the journal and must have no deal at B. Each client id counts its deals (entries and exits
  alike: every order, opening or closing, has its own client id in the deal's comment);
* symbols flat at the kill trade on at B; a symbol whose position is at A (unreachable; the
  journal's ``done`` routes at A say which), or whose order was in flight there, opens nothing
  at B: its decisions hold or end ``terminal_unavailable`` (a position can only be closed
  where it is, and an order filled at A after A's positions were last read is not in what
  the engine last saw of A: that symbol waits for A too);
* the engine process stays up, ACTIVE (the continuous reconciliation runs every 2 s), and
  decides every bar of every symbol after the kill;
* the operator's kill (``POST /api/kill``) answers after the failover: state HALTED, the
  following bars refused ``kill_switch``, no route row and no deal at B after it.

The time from the kill to the first ``done`` route at B (the journal's ``at``, the wall clock
of both processes) is printed. Ports: free ones, or from ``TX_TEST_PORTS=lo-hi`` when set.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.faults]

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "engine-venue-failover-token-0123456789"
MAGIC = 20261207
LOGIN_A, LOGIN_B = 61_000_001, 62_000_002
SYMBOLS = ["EURUSD", "GBPUSD", "USDJPY", "XAUUSD"]
PROJECT, VIEW = "tx_enginefo", "fo_fv"
STEP = 300  # M5
OFFSET_H = 2  # the sims' and the engine's broker offset
CYCLE = [(1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, 1.0)]  # long, flat, short, flat
BARS_BEFORE, BARS_AFTER, BARS_KILLED = 6, 8, 2


# --- the world -------------------------------------------------------------------------------
def _ports(n: int) -> list[int]:
    """``n`` free loopback ports (from ``TX_TEST_PORTS=lo-hi`` when set)."""
    span = os.environ.get("TX_TEST_PORTS", "")
    cands = list(range(int(span.split("-")[0]), int(span.split("-")[1]) + 1)) if span else [0] * n
    random.shuffle(cands)
    out: list[int] = []
    for p in cands:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                continue
            port = int(s.getsockname()[1])
        if port not in out:
            out.append(port)
        if len(out) == n:
            return out
    raise RuntimeError(f"no {n} free ports in {span or 'the ephemeral range'}")


def _bundle(d: Path) -> Path:
    """A real ONNX classifier over ``[f0, f1]``: ``softmax([f0, f1] @ W)``; ``f0 = +-1`` long
    or short, ``f1 = 1`` flat."""
    from titanovax.faults import bundle_manifest, tiny_onnx

    w = np.array([[-4.0, 0.0, 4.0], [0.0, 4.0, 0.0]], dtype=np.float32)
    data = tiny_onnx(w, "tx_enginefo_model").SerializeToString()
    d.mkdir(parents=True, exist_ok=True)
    (d / "model.onnx").write_bytes(data)
    manifest = bundle_manifest(data) | {  # the fault harness's manifest, for this view
        "model_name": "tx_enginefo_model",
        "model_version": "enginefo-1",
        "feature_service": "fo_v1",
        "feature_view": VIEW,
        "symbols": SYMBOLS,
    }
    (d / "manifest.json").write_text(json.dumps(manifest))
    return d


def _first_close(now: float) -> int | None:
    """The first M5 close at or after ``now`` with the synthetic market open (weekdays
    01:00-21:00 UTC); ``None`` when that is more than 36 h ahead (the engine looks client ids
    up in deals up to 2 days past its clock)."""
    t = (int(now) // STEP + 1) * STEP
    while t - now < 36 * 3600:
        tm = time.gmtime(t)
        if tm.tm_wday < 5 and 1 <= tm.tm_hour < 20:
            return t
        t += STEP
    return None


class _Sim:
    """``tx mt5 serve-sim`` on ``port``, its clock the shared ``clock`` file."""

    def __init__(self, port: int, clock: Path, log: Path, *args: str) -> None:
        cmd = [sys.executable, "-m", "titanovax.cli", "mt5", "serve-sim", "--port", str(port)]
        self.port = port
        self.proc = subprocess.Popen(
            [*cmd, "--clock-file", str(clock), *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=open(log, "w"),  # noqa: SIM115  # the process owns it
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("READY"), f"serve-sim did not start: {line!r}"

    def connect(self, timeout_s: float = 5.0) -> Any:
        from engine.mt5.bridge import BridgeTerminal

        return BridgeTerminal.connect("127.0.0.1", self.port, timeout_s=timeout_s)

    def warm(self) -> None:
        """Have the terminal build its synthetic history once (seconds for a date far from
        the market's origin), so the engine's first reads meet its 1 s venue deadline."""
        from engine.mt5 import TIMEFRAMES

        term = self.connect(120.0)
        for sym in SYMBOLS:
            assert term.copy_rates_from_pos(sym, TIMEFRAMES["M5"], 1, 30) is not None
            assert term.symbol_info_tick(sym) is not None
        term.shutdown()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def _api(base: str, path: str, body: dict[str, Any] | None = None) -> Any:
    req = urllib.request.Request(
        base + path,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        method="GET" if body is None else "POST",
    )
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


def _rows(db: Path, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute(sql, args)]
    except sqlite3.OperationalError:  # the engine has not created its tables yet
        return []
    finally:
        con.close()


def _deals(term: Any, lo: int, hi: int) -> list[Any]:
    return [d for d in term.history_deals_get(lo, hi) or () if int(d.magic) == MAGIC]


# --- the test --------------------------------------------------------------------------------
def test_engine_process_when_its_cheaper_venue_is_sigkilled_mid_run_then_fills_at_b_once(
    tmp_path: Path,
) -> None:
    from engine.online_format import encode_double, encode_timestamp, entity_key, field_hash
    from titanovax.redis_local import LocalRedis

    c0 = _first_close(time.time())
    if c0 is None:
        pytest.skip("the synthetic market is closed for more than 36 h from now (weekend)")
    rng = random.Random()
    p_a, p_b, p_redis, p_ctl = _ports(4)
    clock = tmp_path / "clock"
    clock.write_text(str(c0))
    journal = tmp_path / "journal.sqlite"
    bundle = _bundle(tmp_path / "bundle")
    base = f"http://127.0.0.1:{p_ctl}"
    sims: list[_Sim] = []
    stop_watch = threading.Event()
    with contextlib.ExitStack() as stack:
        srv = stack.enter_context(LocalRedis(port=p_redis))
        import redis

        r = redis.Redis.from_url(srv.url)

        def push(close: int, k: int) -> None:
            for i, sym in enumerate(SYMBOLS):
                f0, f1 = CYCLE[(k + i) % len(CYCLE)]
                r.hset(
                    entity_key("symbol", sym, PROJECT),
                    mapping={
                        field_hash(VIEW, "f0"): encode_double(f0),
                        field_hash(VIEW, "f1"): encode_double(f1),
                        f"_ts:{VIEW}".encode(): encode_timestamp(int(close)),
                    },
                )

        def set_clock(t: int) -> None:
            tmp = clock.with_suffix(".tmp")
            tmp.write_text(str(int(t)))
            os.replace(tmp, clock)

        stack.callback(lambda: [s.stop() for s in sims])
        sims.append(_Sim(p_a, clock, tmp_path / "a.log", "--login", str(LOGIN_A)))
        sims.append(
            _Sim(p_b, clock, tmp_path / "b.log", "--login", str(LOGIN_B), "--spread-add", "3")
        )
        sim_a, sim_b = sims
        with ThreadPoolExecutor(2) as pool:  # both at once; a failure raises here
            list(pool.map(_Sim.warm, sims))
        venues = [
            {"name": n, "kind": "bridge", "address": f"127.0.0.1:{p}", "login": login}
            | {"timeout_s": 1.0, "cooldown_s": 0.5}
            for n, p, login in (("a", p_a, LOGIN_A), ("b", p_b, LOGIN_B))
        ]
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("TX_")},
            "PYTHONPATH": str(ROOT),
            "TX_HOME": str(tmp_path / "home"),
            "TX_ENGINE_MODE": "live",
            "TX_MT5_MODE": "bridge",
            "TX_ENGINE_VENUES": json.dumps(venues),
            "TX_JOURNAL_PATH": str(journal),
            "TX_REDIS_URL": srv.url,
            "TX_FEAST_PROJECT": PROJECT,
            "TX_FEATURE_VIEW": VIEW,
            "TX_SYMBOLS": ",".join(SYMBOLS),
            "TX_SERVING_URL": f"http://127.0.0.1:{_ports(1)[0]}",  # nothing listens
            "TX_ENGINE_SERVING_FALLBACK": "onnx",
            "TX_ENGINE_BUNDLE_DIR": str(bundle),
            "TX_ENGINE_BUNDLE_SHA256": hashlib.sha256(
                (bundle / "model.onnx").read_bytes()
            ).hexdigest(),
            "TX_ENGINE_MAGIC": str(MAGIC),
            "TX_ENGINE_LOTS": "0.1",
            "TX_ENGINE_STOP_ATR_MULT": "0",
            "TX_RISK_MAX_ORDERS_PER_MINUTE": "0",
            "TX_RISK_MAX_CONSECUTIVE_LOSSES": "0",
            "TX_RISK_MAX_SPREAD_POINTS": "0",
            "TX_RISK_DAILY_LOSS_LIMIT": "0.5",
            "TX_RISK_MAX_DRAWDOWN": "0.9",
            "TX_ENGINE_TOKEN": TOKEN,
            "TX_ENGINE_CONTROL_PORT": str(p_ctl),
            "TX_ENGINE_RECONCILE_INTERVAL_S": "2",
        }
        push(c0, 0)
        engine = subprocess.Popen(
            [sys.executable, "-m", "engine"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(tmp_path / "engine.log", "w"),  # noqa: SIM115
            text=True,
        )

        def _stop_engine() -> None:
            if engine.poll() is None:
                engine.kill()
            engine.wait(10)

        stack.callback(_stop_engine)

        def alive() -> None:
            assert engine.poll() is None, (
                f"engine exited {engine.returncode}: "
                + (tmp_path / "engine.log").read_text()[-3000:]
            )

        def decided(close: int) -> list[dict[str, Any]]:
            return _rows(journal, "SELECT * FROM decisions WHERE bar_close=?", (close,))

        def wait_bar(close: int, timeout_s: float = 20.0) -> list[dict[str, Any]]:
            t_end = time.monotonic() + timeout_s
            while True:
                alive()
                rows = decided(close)
                if len(rows) == len(SYMBOLS):
                    return rows
                assert time.monotonic() < t_end, (
                    f"bar {close}: {len(rows)} of {len(SYMBOLS)} decided in {timeout_s} s\n"
                    + (tmp_path / "engine.log").read_text()[-3000:]
                )
                time.sleep(0.02)

        t_start = time.monotonic()
        wait_bar(c0, 60.0)  # the engine's start: imports, venues, reconcile, first bar

        check_a = sim_a.connect()
        lo, hi = c0 - 86_400, c0 + 3 * 86_400
        seen_a: dict[int, Any] = {}

        def watch_a() -> None:  # A's deals, every 5 ms, until it dies
            while not stop_watch.is_set():
                try:
                    for d in _deals(check_a, lo, hi):
                        seen_a[int(d.ticket)] = d
                except Exception:
                    return
                time.sleep(0.005)

        watcher = threading.Thread(target=watch_a, daemon=True)
        watcher.start()
        stack.callback(stop_watch.set)

        k = 0
        closes = [c0]
        for k in range(1, BARS_BEFORE):
            c = c0 + k * STEP
            push(c, k)
            set_clock(c)
            wait_bar(c)
            closes.append(c)
        # the kill: a random moment inside the next bar's decisions (after the first
        # symbol's decision is journaled, while the others' orders are on their way)
        k = BARS_BEFORE
        c_kill = c0 + k * STEP
        push(c_kill, k)
        set_clock(c_kill)
        t_end = time.monotonic() + 10
        while not decided(c_kill):
            alive()
            assert time.monotonic() < t_end, "the kill bar was never decided"
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.06))
        os.kill(sim_a.proc.pid, signal.SIGKILL)
        t_kill = time.time()
        sim_a.proc.wait(5)
        watcher.join(5)
        wait_bar(c_kill)
        closes.append(c_kill)
        for k in range(BARS_BEFORE + 1, BARS_BEFORE + 1 + BARS_AFTER):
            c = c0 + k * STEP
            push(c, k)
            set_clock(c)
            wait_bar(c)
            closes.append(c)
        alive()

        # the operator's kill, after the failover
        status = _api(base, "/api/status")
        killed = _api(base, "/api/kill", {"flatten": False, "reason": "failover test"})
        t_killed = time.time()
        status_killed = _api(base, "/api/status")
        check_b = sim_b.connect()
        deals_b_at_kill = len(_deals(check_b, lo, hi))
        after_kill = []
        for k in range(BARS_BEFORE + 1 + BARS_AFTER, BARS_BEFORE + 1 + BARS_AFTER + BARS_KILLED):
            c = c0 + k * STEP
            push(c, k)
            set_clock(c)
            after_kill += wait_bar(c)
        alive()
        runtime = time.monotonic() - t_start

        deals_b = _deals(check_b, lo, hi)
        routes = _rows(journal, "SELECT * FROM routes ORDER BY at, client_id, attempt")
        decisions = _rows(journal, "SELECT * FROM decisions ORDER BY bar_close, symbol")

    by_cid: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for x in routes:
        by_cid[x["client_id"]].append(x)
    before = [x for x in routes if x["at"] < t_kill]
    after = [x for x in routes if x["at"] >= t_kill]

    # 1. before the kill: A, the cheaper venue, took every order
    done_before = [x for x in before if x["status"] == "done"]
    assert len(done_before) >= (BARS_BEFORE - 1) * len(SYMBOLS)
    assert {x["venue"] for x in done_before} == {"a"}
    assert all(
        x["reason"].startswith("cheapest healthy venue: ")
        for x in before
        if x["venue"] == "a" and x["status"] == "chosen" and "@" not in x["intent"]
    )

    # 2. after the kill: fills at B, and the failover in the routes table with its reason
    done_b = [x for x in after if x["status"] == "done" and x["venue"] == "b"]
    assert len(done_b) >= BARS_AFTER, [(x["venue"], x["status"], x["reason"]) for x in after]
    assert not [x for x in after if x["status"] == "done" and x["venue"] == "a"]
    first_b = done_b[0]
    chosen_b = [
        x for x in by_cid[first_b["client_id"]] if x["venue"] == "b" and x["status"] == "chosen"
    ]
    assert chosen_b, by_cid[first_b["client_id"]]
    table = json.loads(chosen_b[0]["ranking"] or "[]")
    ranking_a = [e for e in table if e.get("venue") == "a"]
    assert "after a: link error" in chosen_b[0]["reason"] or (
        ranking_a and "down" in ranking_a[0]
    ), chosen_b[0]
    failover_s = first_b["at"] - t_kill
    first_try_s = after[0]["at"] - t_kill  # the engine's first order attempt after the kill

    # 3. no client id executed twice across both venues: B's deals, A's deals its checker
    # read, and a fill at A the checker had no time to read counted from the journal's route
    per_id: collections.Counter[str] = collections.Counter(str(d.comment) for d in deals_b)
    per_id.update(str(d.comment) for d in seen_a.values())
    seen_a_ids = {str(d.comment) for d in seen_a.values()}
    done_at_a = {x["client_id"] for x in routes if x["venue"] == "a" and x["status"] == "done"}
    unseen_a = sorted(done_at_a - seen_a_ids)
    per_id.update(unseen_a)
    dups = {c: n for c, n in per_id.items() if n > 1}
    assert dups == {}
    ids_b = {str(d.comment) for d in deals_b}
    in_doubt = sorted({x["client_id"] for x in routes if x["status"] == "in_doubt"})
    assert not set(in_doubt) & ids_b  # an order in doubt at A never went to B
    assert len(in_doubt) <= 1  # at most the one order in flight at the kill
    done_ids = {x["client_id"] for x in routes if x["status"] in ("done", "recovered")}
    assert all(per_id[c] == 1 for c in done_ids)  # every order said done has its one deal
    assert set(per_id) <= done_ids | set(in_doubt)  # no deal the journal does not know
    assert all(int(d.magic) == MAGIC for d in deals_b)

    # 4. symbols flat at the kill trade on at B; a symbol whose position is at A (by the
    # journal's done routes there) or whose order there is in doubt opens nothing at B: its
    # exposure at A stands. Every symbol either trades at B or waits for A (a position can
    # only be closed where it is), with terminal_unavailable
    at_a: collections.Counter[str] = collections.Counter()
    for x in routes:
        if x["venue"] == "a" and x["status"] == "done":
            at_a[x["symbol"]] += 1 if x["intent"].startswith("open:") else -1
    held = {sym for sym, n in at_a.items() if n > 0} | {by_cid[c][0]["symbol"] for c in in_doubt}
    b_symbols = {x["symbol"] for x in done_b}
    b_opened = {x["symbol"] for x in done_b if x["intent"].startswith("open:")}
    assert b_symbols and not b_opened & held, (b_opened, held)
    post = [d for d in decisions if c_kill < d["bar_close"] <= closes[-1]]
    assert len(post) == BARS_AFTER * len(SYMBOLS)  # every bar of every symbol decided
    stuck = [d for d in post if d["verdict"] not in ("sent", "hold")]
    assert {d["reason_code"] for d in stuck} <= {"terminal_unavailable"}, stuck
    stuck_symbols = {d["symbol"] for d in stuck}
    assert held <= stuck_symbols and not stuck_symbols & b_symbols
    assert stuck_symbols | b_symbols == set(SYMBOLS)

    # 5. the operator's kill after the failover
    assert killed.get("killed") is True, killed
    assert status_killed["trading_state"] == "HALTED", status_killed
    assert len(after_kill) == BARS_KILLED * len(SYMBOLS)
    assert all(d["verdict"] == "refused" for d in after_kill), after_kill
    assert {d["reason_code"] for d in after_kill} == {"kill_switch"}, after_kill
    assert not [x for x in routes if x["at"] > t_killed]
    assert len(deals_b) == deals_b_at_kill
    # the failover left the engine trading: no reconciliation mismatch out of A's last
    # snapshot (it once went REDUCING here, and opened nothing at B any more)
    assert status["trading_state"] == "ACTIVE", status
    venues_status = {v["venue"]: v for v in status.get("venues", [])}
    assert venues_status["a"]["up"] is False and venues_status["b"]["up"] is True

    print(
        f"engine-process failover: kill -> first fill at B {failover_s:.3f} s (journal; "
        f"kill -> the engine's first order attempt {first_try_s:.3f} s); "
        f"orders at A before {len(done_before)}, at B after {len(done_b)} "
        f"({sorted(b_symbols)}); waiting for A {sorted(stuck_symbols)} "
        f"({len(stuck)} decisions terminal_unavailable); deals A seen {len(seen_a)}, B {len(deals_b)}; "
        f"duplicates {len(dups)}; run {runtime:.1f} s"
    )
    assert failover_s < 5.0
