"""A frozen terminal in real processes: the engine of the fault suite (``python -m
titanovax.faults engine``: bars paced at ~0.1 s, ``TX_ENGINE_TERMINAL_TIMEOUT_S`` = 1 s, two tries
per call) trades over a ``tx mt5 serve-sim`` bridge, then the bridge process is frozen with
SIGSTOP for several deadlines.

A frozen bridge still accepts TCP connections (the kernel's backlog) but never answers, so
every call, every reconnect handshake and even rpyc's goodbye on close wait their full
timeout. What must hold: each bar during the freeze is refused ``terminal_unavailable`` (its
row journaled, ``tx_engine_refusals_total`` counted) within about one deadline — not two tries
of a call plus a reconnect plus a goodbye — so the decision lock is free again after each bar;
``POST /api/kill`` acknowledges fast during the freeze and an operator read that takes the
decision lock (``GET /api/audit``) gets it; after SIGCONT the engine trades again.
The per-bar durations, the kill latency and the recovery are measured and printed."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from titanovax.faults import (
    TOKEN,
    EngineProc,
    SimBridge,
    _metric,
    engine_args,
    free_port,
    write_bundle,
)
from titanovax.redis_local import LocalRedis

pytestmark = [pytest.mark.integration, pytest.mark.faults]

DEADLINE_S = 1.0  # TX_ENGINE_TERMINAL_TIMEOUT_S of the engine under test
PACE_S = 0.1  # the harness waits this long between bars
FREEZE_S = 5.0  # several deadlines
SLACK_S = 0.75  # the bar's own work (features, model, journal) on a shared 2-core machine
REASON = "terminal_unavailable"


def test_engine_when_the_bridge_freezes_then_each_bar_is_refused_within_the_deadline_and_kill_acks(
    tmp_path: Path,
) -> None:
    from engine.journal import Journal

    auth = {"Authorization": f"Bearer {TOKEN}"}
    with contextlib.ExitStack() as stack:
        sim = stack.enter_context(SimBridge(tmp_path / "sim"))
        redis = stack.enter_context(LocalRedis())
        stack.callback(lambda: sim.proc and os.kill(sim.proc.pid, signal.SIGCONT))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        target = str(tmp_path / "journal.sqlite")
        args = engine_args(
            sim,
            target,
            880_001,
            redis.url,
            write_bundle(tmp_path / "bundle"),
            control_port=port,
            pace=PACE_S,
            terminal_timeout=DEADLINE_S,
        )
        eng = EngineProc(args, tmp_path).start()
        stack.callback(eng.stop)
        eng.wait_ready(120)
        assert eng.wait_for(lambda b: b[2] == "sent", 60), eng.log_tail()
        assert sim.proc is not None
        refusals_before = _metric(url, "tx_engine_refusals_total", f'reason="{REASON}"')

        # the freeze: the bridge accepts connections and never answers
        t_stop = time.time()
        os.kill(sim.proc.pid, signal.SIGSTOP)
        time.sleep(FREEZE_S / 2)
        t0 = time.perf_counter()
        answer = httpx.post(url + "/api/kill", json={"flatten": False}, headers=auth, timeout=10)
        kill_s = time.perf_counter() - t0
        # an operator read that takes the decision lock (waits at most 2 s, else 503 busy)
        t0 = time.perf_counter()
        audit = httpx.get(url + "/api/audit?limit=5", headers=auth, timeout=10)
        audit_s = time.perf_counter() - t0
        time.sleep(max(0.0, FREEZE_S - (time.time() - t_stop)))
        t_cont = time.time()
        os.kill(sim.proc.pid, signal.SIGCONT)

        frozen = [b for b in eng.bars if t_stop < b[1] <= t_cont]
        # a bar starts PACE_S after the previous one ended (the first: at the freeze, at worst)
        durations, prev_end = [], t_stop
        for b in eng.bars:
            if t_stop < b[1] <= t_cont:
                durations.append(b[1] - max(prev_end, t_stop))
            prev_end = b[1] + PACE_S
        print(
            f"bridge frozen {FREEZE_S:.0f} s (deadline {DEADLINE_S:.0f} s, 2 tries per call): "
            f"{len(frozen)} bars refused in " + ", ".join(f"{d:.2f}" for d in durations) + " s; "
            f"max {max(durations, default=0):.2f} s; kill acked in {kill_s * 1e3:.0f} ms; "
            f"audit (decision lock) in {audit_s * 1e3:.0f} ms"
        )
        assert answer.status_code == 200 and answer.json()["killed"] is True, answer.text
        assert kill_s < 1.0
        assert audit.status_code == 200, audit.text  # the lock is free between bars
        assert audit.json()[0]["action"] == "kill"
        assert frozen, eng.log_tail()
        assert max(durations) <= DEADLINE_S + SLACK_S, durations  # old code: 2-3 deadlines
        assert len(frozen) >= 3, (frozen, eng.log_tail())
        assert {(b[2], b[3]) for b in frozen} == {("refused", REASON)}, frozen
        assert not [s for s in eng.sends if t_stop < s[0] < t_cont]  # fail closed
        refusals = _metric(url, "tx_engine_refusals_total", f'reason="{REASON}"')
        assert refusals - refusals_before >= len(frozen)

        # the bridge is back: resume, and the engine trades again
        r = httpx.post(url + "/api/resume", headers=auth, timeout=10)
        assert r.status_code == 200, r.text
        t_res = time.time()
        sent = eng.wait_for(lambda b: b[1] > t_res and b[2] == "sent", 30)
        assert sent is not None, (eng.bars[-5:], eng.log_tail())
        print(f"trading again {sent[1] - t_cont:.2f} s after SIGCONT")
        eng.stop()

        j = Journal(target, eng.scope)
        try:
            rows = {int(r["bar_close"]): r for r in j.rows()}
        finally:
            j.close()
        for close, _, _, _ in frozen:  # every refused bar has its journaled row
            assert rows[close]["reason_code"] == REASON, rows[close]
