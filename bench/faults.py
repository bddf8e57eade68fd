"""Fault bench of the engine: SIGKILL trials and outages with real processes, the figures of
``docs/failure-behaviour.md``.

1. SIGKILL trials (default 200: 120 on SQLite, 80 on PostgreSQL): the engine process dies by
   SIGKILL at an injected point (after the intent write, before/after ``order_send``, after
   the intent end, after the decision row) or at a random moment, then restarts; the broker
   (``tx mt5 serve-sim``, its own process) and the journal are compared: duplicate orders,
   lost rows, inconsistent intents, positions versus journal.
2. Outages: Redis stopped (SIGSTOP) and killed, serving (BentoML) stopped and killed, the
   bridge stopped, the journal's disk full. Per fault: bars refused and their reason code, the
   metric, recovery time after the dependency returns, kill latency under the fault, and the
   same kill on the healthy engine in the same run (the peer).

    .venv/bin/python bench/faults.py [--sqlite 120] [--postgres 80] [--faults all]
        [--out bench-faults.json] [--markdown table.md]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# run as `python bench/faults.py`: the repository root goes on the path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WHAT = {
    "redis_stopped": "feature read times out (TX_ENGINE_REDIS_TIMEOUT_S): bar refused "
    "`features_unavailable`, no order",
    "redis_killed": "connection refused at once: bar refused `features_unavailable`, no order",
    "serving_stopped": "serving call times out (TX_SERVING_TIMEOUT_S): bar refused "
    "`serving_unavailable` (fail_closed), no order",
    "serving_killed": "connection refused: bar refused `serving_unavailable`, no order",
    "bridge_stopped": "terminal call times out (TX_ENGINE_TERMINAL_TIMEOUT_S): bar refused "
    "`terminal_unavailable`, no order; reconciles before trading again",
    "disk_full": "journal write fails: bar refused `journal_unavailable`, no order, rows kept "
    "in memory, `tx_engine_journal_up 0`; rows flushed and terminal reconciled when it writes",
}


def _pct(xs: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.array(xs), q)) if xs else float("nan")


def run_trials(n_sqlite: int, n_pg: int, root: Path) -> dict[str, Any]:
    from titanovax.faults import sigkill_trials

    out: dict[str, Any] = {}
    for backend, n in (("sqlite", n_sqlite), ("postgres", n_pg)):
        if n <= 0:
            continue
        t0 = time.perf_counter()

        def show(r: Any, backend: str = backend) -> None:
            c = r.check
            mark = "ok" if c.ok else f"FAIL {c.detail}"
            print(f"  {backend} trial {r.trial:3d} {r.how:18s} killed={r.killed!s:5s} {mark}")

        res = sigkill_trials(
            n, backend=backend, workdir=root / f"trials-{backend}", seed=2026, on_trial=show
        )
        out[backend] = {
            "trials": len(res),
            "killed": sum(r.killed for r in res),
            "by_point": {
                p: sum(r.how.startswith(p) for r in res)
                for p in (
                    "intent_begin",
                    "before_send",
                    "order_send",
                    "intent_end",
                    "record",
                    "random",
                )
            },
            "duplicates": sum(r.check.duplicates for r in res),
            "lost_rows": sum(r.check.lost_rows for r in res),
            "inconsistent_intents": sum(r.check.inconsistent_intents for r in res),
            "position_mismatch": sum(r.check.position_mismatch for r in res),
            "restart_failed": sum(r.check.restart_failed for r in res),
            "orders": sum(r.check.orders for r in res),
            "rows": sum(r.check.rows for r in res),
            "failures": [(r.trial, r.how, r.check.detail) for r in res if not r.check.ok],
            "seconds": round(time.perf_counter() - t0, 1),
        }
    return out


def run_outages(faults: list[str], root: Path, repeats: int) -> dict[str, Any]:
    from titanovax.faults import outage_scenario

    out: dict[str, Any] = {}
    for fault in faults:
        runs = []
        for k in range(repeats):
            print(f"  outage {fault} run {k + 1}/{repeats} ...", flush=True)
            r = outage_scenario(fault, root / f"{fault}-{k}")
            runs.append(dataclasses.asdict(r))
            print(
                f"    rows {r.outage_rows} ({r.reason}), kill {r.kill_latency_s * 1e3:.0f} ms "
                f"(healthy {r.detail['healthy_kill_latency_s'] * 1e3:.0f} ms), recovery "
                f"{r.recovery_s if r.recovery_s is None else round(r.recovery_s, 2)} s, "
                f"sends after kill {r.sends_after_kill}",
                flush=True,
            )
        kills = [x["kill_latency_s"] for x in runs]
        healthy = [x["detail"]["healthy_kill_latency_s"] for x in runs]
        rec = [x["recovery_s"] for x in runs if x["recovery_s"] is not None]
        out[fault] = {
            "reason": runs[0]["reason"],
            "outage_rows": sum(x["outage_rows"] for x in runs),
            "metric": runs[-1]["metric"],
            "kill_ms_p50": _pct(kills, 50) * 1e3,
            "kill_ms_max": max(kills) * 1e3,
            "healthy_kill_ms_p50": _pct(healthy, 50) * 1e3,
            "recovery_s_p50": _pct(rec, 50) if rec else None,
            "recovery_s_max": max(rec) if rec else None,
            "sends_after_kill": sum(x["sends_after_kill"] for x in runs),
            "sends_in_outage": sum(x["detail"]["sends_in_outage"] for x in runs),
            "rows_missing": sum(x["rows_missing"] for x in runs),
            "order_in_flight": sum(bool(x["kill_answer"].get("order_in_flight")) for x in runs),
            "runs": runs,
        }
    return out


def markdown(trials: dict[str, Any], outages: dict[str, Any]) -> str:
    lines = []
    if trials:
        lines += [
            "| SIGKILL trials | trials | died by SIGKILL | duplicate orders | lost rows "
            "| inconsistent intents | positions ≠ journal | orders at the broker | rows |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for b, t in trials.items():
            lines.append(
                f"| {b} | {t['trials']} | {t['killed']} | {t['duplicates']} | {t['lost_rows']} "
                f"| {t['inconsistent_intents']} | {t['position_mismatch']} | {t['orders']} "
                f"| {t['rows']} |"
            )
        lines.append("")
    if outages:
        lines += [
            "| fault | what the engine does | bars refused (reason) | orders during the outage "
            "| kill latency under the fault (healthy) | orders sent after the kill ack "
            "| recovery after the dependency returns |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for f, o in outages.items():
            rec = "—" if o["recovery_s_p50"] is None else f"{o['recovery_s_p50']:.2f} s"
            lines.append(
                f"| {f.replace('_', ' ')} | {WHAT[f]} | {o['outage_rows']} (`{o['reason']}`) "
                f"| {o['sends_in_outage']} | {o['kill_ms_p50']:.0f} ms "
                f"({o['healthy_kill_ms_p50']:.0f} ms) | {o['sends_after_kill']} | {rec} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--sqlite", type=int, default=120, help="SIGKILL trials on SQLite")
    ap.add_argument("--postgres", type=int, default=80, help="SIGKILL trials on PostgreSQL")
    ap.add_argument("--faults", default="all", help="comma-separated outages, all, or none")
    ap.add_argument("--repeats", type=int, default=1, help="runs per outage")
    ap.add_argument("--out", default="", help="write the figures as JSON here")
    ap.add_argument("--markdown", default="", help="write the tables as Markdown here")
    ns = ap.parse_args()
    from titanovax.faults import FAULTS

    faults = (
        list(FAULTS)
        if ns.faults == "all"
        else []
        if ns.faults == "none"
        else [f for f in ns.faults.split(",") if f]
    )
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tx-bench-faults-") as tmp:
        root = Path(tmp)
        print(f"SIGKILL trials: {ns.sqlite} on SQLite, {ns.postgres} on PostgreSQL", flush=True)
        trials = run_trials(ns.sqlite, ns.postgres, root)
        print(f"outages: {faults}", flush=True)
        outages = run_outages(faults, root, ns.repeats)
    table = markdown(trials, outages)
    print()
    print(table)
    for b, t in trials.items():
        print(
            f"{b}: {t['trials']} trials ({t['killed']} died by SIGKILL; points {t['by_point']}): "
            f"duplicates {t['duplicates']}, lost rows {t['lost_rows']}, inconsistent intents "
            f"{t['inconsistent_intents']}, positions vs journal mismatches "
            f"{t['position_mismatch']}, restarts that failed {t['restart_failed']}, "
            f"in {t['seconds']} s"
        )
    print(f"total {time.perf_counter() - t0:.0f} s")
    if ns.out:
        Path(ns.out).write_text(
            json.dumps({"trials": trials, "outages": outages}, indent=1, default=str)
        )
    if ns.markdown:
        Path(ns.markdown).write_text(table)


if __name__ == "__main__":
    main()
