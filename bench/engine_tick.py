"""Tick-to-decision with a durable on-disk journal, the model in-process.

Runs engines side by side on the same synthetic bars (four symbols, M5), each with its own
simulated terminal and the same small XGBoost → ONNX bundle called per bar (the live path,
no precomputed predictions), and differing only in the journal:

* ``memory``: SQLite ``:memory:`` (the peer: no disk at all);
* ``disk-relaxed``: SQLite on disk, ``durable=False`` (never waits for the disk; a backtest's
  choice);
* ``disk-durable``: SQLite on disk, WAL, group commit (one synchronous commit per bar; for a
  bar with orders the one before ``order_send``);
* ``postgres``: with ``--postgres ADMIN_URL``, a durable PostgreSQL journal in a scratch
  database created and dropped by the bench (``synchronous_commit`` on, group commit).

The engines are stepped bar by bar in turn (engine A decides a bar, then B, then C), so the
machine's load falls on all of them alike. Per journal it prints tick-to-decision p50/p99
(the engine's ``total_ms``: features → model → risk → orders, including the write-ahead
commit before each ``order_send``, taken before the decision row is written), split into bars
with and without orders, and the engine's own part of it (``total_ms`` minus ``broker_ms``, the
time inside ``order_send``: the simulated broker's execution here, a network round trip to the
broker on a real terminal); for bars with orders also ``send_ms``, from the bar's start to its
first ``order_send`` (the intent durable: the moment the decision leaves the engine; what
follows is the broker's execution, simulated here, and its bookkeeping), the whole ``on_bar`` (until the bar's commit returned: the decision
row is in the journal) and its CPU time (the thread's: what the bar costs without the waits
for the disk and for the other processes of a loaded machine), and the disk's own
``fdatasync`` latency next to the journals before and after the run.

``--fsyncs`` (needs ``strace``) re-runs the durable journal alone in a child process under
``strace -f -c -e trace=fsync,fdatasync`` and prints the fsync count per bar (strace slows
every system call, so the latencies above are measured without it).

    .venv/bin/python bench/engine_tick.py [--days 3] [--fsyncs] [--dir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as `python bench/engine_tick.py`
sys.path.insert(0, str(ROOT / "bench"))

START = 1_768_204_800  # 2026-01-12 00:00 UTC, a Monday (as bench/engine_loop.py)
SYMBOLS = ["EURUSD", "GBPUSD", "USDJPY", "XAUUSD"]
JOURNALS = ("memory", "disk-relaxed", "disk-durable")


def _engine(world: Any, bundle: Path, journal: Any) -> Any:
    from engine.config import RiskLimits
    from engine.loop import Engine
    from engine.serving_client import OnnxModel

    return Engine(
        terminal=world.terminal,
        features=world.features,
        model=OnnxModel.from_dir(bundle),
        journal=journal,
        limits=RiskLimits(daily_loss_limit=0.5, max_drawdown=0.9, max_consecutive_losses=0),
        lots=0.1,
        magic=4242,
        clock=lambda: float(world.now[0]),
        sleep=lambda s: None,
    )


def _journal(kind: str, folder: Path, pg_url: str | None = None) -> Any:
    from engine.journal import Journal

    if kind == "memory":
        return Journal(":memory:")
    if kind == "postgres":
        assert pg_url is not None
        return Journal(pg_url)
    return Journal(folder / f"{kind}.sqlite", durable=kind == "disk-durable")


def run(
    kinds: list[str],
    days: int,
    symbols: list[str],
    bundle: Path,
    folder: Path,
    pg_url: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Step one engine per journal kind through the same bars, in turn; per kind the
    tick-to-decision and on_bar samples (ms), split by bars with and without orders."""
    from titanovax.engine_world import backtest_world
    from titanovax.settings import PlatformSettings

    names = list(json.loads((bundle / "manifest.json").read_text())["features"])
    s = PlatformSettings(symbols=symbols, home=folder / "home")
    worlds = {k: backtest_world(s, START, START + days * 86_400, names) for k in kinds}
    engines = {k: _engine(worlds[k], bundle, _journal(k, folder, pg_url)) for k in kinds}
    out: dict[str, dict[str, Any]] = {
        k: {
            "tick_order": [],
            "tick_none": [],
            "own_order": [],
            "broker": [],
            "send": [],
            "on_bar": [],
            "cpu_order": [],
            "cpu_none": [],
            "verdicts": {},
        }
        for k in kinds
    }
    c0 = {k: (e.journal.sync_commits, e.journal.relaxed_commits) for k, e in engines.items()}
    gc.freeze()  # as Engine.run_live does after start-up
    closes = worlds[kinds[0]].closes
    for close in closes:
        for k in kinds:
            worlds[k].set_time(close)
            e, o = engines[k], out[k]
            for sym in symbols:
                t, c = time.perf_counter(), time.thread_time()
                rec = e.on_bar(sym, close)
                dt = (time.perf_counter() - t) * 1e3
                dc = (time.thread_time() - c) * 1e3
                if rec is None:
                    continue
                o["on_bar"].append(dt)
                sent = rec.order_request is not None
                o["tick_order" if sent else "tick_none"].append(rec.latency_ms["total_ms"])
                if sent:  # the broker's execution (inside order_send) taken out
                    broker = rec.latency_ms.get("broker_ms", 0.0)
                    o["broker"].append(broker)
                    o["own_order"].append(rec.latency_ms["total_ms"] - broker)
                if "send_ms" in rec.latency_ms:
                    o["send"].append(rec.latency_ms["send_ms"])
                o["cpu_order" if sent else "cpu_none"].append(dc)
                o["verdicts"][rec.verdict] = o["verdicts"].get(rec.verdict, 0) + 1
    for k in kinds:
        j = engines[k].journal
        out[k]["sync_commits"] = j.sync_commits - c0[k][0]
        out[k]["relaxed_commits"] = j.relaxed_commits - c0[k][1]
        j.close()
    return out


def disk_probe(folder: Path, n: int = 200) -> tuple[float, float]:
    """The disk's own flush latency next to the journals: ``fdatasync`` after overwriting one
    4 KiB page of a preallocated file (the WAL's steady state), ``n`` times; (p50, p99) ms."""
    path = folder / "probe.bin"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"\0" * 4096 * 64)
        os.fsync(fd)
        v = []
        for i in range(n):
            os.pwrite(fd, os.urandom(4096), (i % 64) * 4096)
            t = time.perf_counter()
            os.fdatasync(fd)
            v.append((time.perf_counter() - t) * 1e3)
    finally:
        os.close(fd)
        path.unlink()
    return _p(v, 50), _p(v, 99)


def _p(v: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(v), q)) if v else float("nan")


def report(out: dict[str, dict[str, Any]]) -> None:
    print(f"\n  {'journal':<14}{'measure':<34}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'n':>7}")
    for k, o in out.items():
        tick = o["tick_order"] + o["tick_none"]
        for name, v in (
            ("tick-to-decision, all bars", tick),
            ("  bars with orders", o["tick_order"]),
            ("  bars without orders", o["tick_none"]),
            ("  to the first order_send (send_ms)", o["send"]),
            ("  inside order_send (broker_ms)", o["broker"]),
            ("engine's own: minus broker_ms, all", o["own_order"] + o["tick_none"]),
            ("  bars with orders", o["own_order"]),
            ("tick-to-send or, no order, -decision", o["send"] + o["tick_none"]),
            ("on_bar incl. the bar's commit", o["on_bar"]),
            ("  its CPU time, bars with orders", o["cpu_order"]),
            ("  its CPU time, bars without orders", o["cpu_none"]),
        ):
            print(
                f"  {k:<14}{name:<34}{_p(v, 50):>9.3f}{_p(v, 99):>9.3f}"
                f"{max(v, default=float('nan')):>9.3f}{len(v):>7}"
            )
        n = len(o["on_bar"])
        print(
            f"  {k:<14}verdicts {o['verdicts']}; commits per bar: "
            f"{o['sync_commits'] / n:.3f} synchronous, {o['relaxed_commits'] / n:.3f} relaxed"
            + (" (no disk: nothing to flush)" if k == "memory" else "")
        )


def count_fsyncs(args: argparse.Namespace, bundle: Path, folder: Path) -> None:
    """The durable journal alone, in a child under ``strace -c``: fsync + fdatasync per bar."""
    if shutil.which("strace") is None:
        print("\nfsyncs per bar: strace not found, not counted")
        return
    summary = folder / "strace.txt"
    result = folder / "child.json"
    cmd = [
        "strace",
        "-f",
        "-c",
        "-e",
        "trace=fsync,fdatasync,sync_file_range,msync",
        "-o",
        str(summary),
        sys.executable,
        __file__,
        "--child",
        str(result),
        "--days",
        str(args.days),
        "--symbols",
        ",".join(args.symbols),
        "--bundle",
        str(bundle),
        "--dir",
        str(folder / "child"),
    ]
    subprocess.run(cmd, check=True)
    calls: dict[str, int] = {}
    for line in summary.read_text().splitlines():
        parts = line.split()
        if parts and parts[-1] in ("fsync", "fdatasync", "sync_file_range", "msync"):
            calls[parts[-1]] = int(parts[3])  # % time, seconds, usecs/call, calls, [errors]
    o = json.loads(result.read_text())
    bars, traded = o["bars"], o["traded"]
    total = sum(calls.values())
    print(
        f"\nfsyncs (strace, durable journal alone, whole process incl. setup): {calls or 'none'}"
        f"\n  {total} over {bars} bars ({traded} with orders): {total / bars:.3f} per bar"
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--days", type=int, default=3, help="span in days (3: 3,456 bars)")
    ap.add_argument("--symbols", default=",".join(SYMBOLS), help="comma-separated symbols")
    ap.add_argument("--bundle", type=Path, default=None, help="model.onnx + manifest.json")
    ap.add_argument(
        "--dir", type=Path, default=None, help="folder of the on-disk journals (default: a temp)"
    )
    ap.add_argument("--fsyncs", action="store_true", help="also count fsyncs per bar (strace)")
    ap.add_argument(
        "--postgres",
        default=None,
        metavar="ADMIN_URL",
        help="also a durable PostgreSQL journal, in a scratch database made through this "
        "admin URL (e.g. postgresql://postgres@127.0.0.1:5432/postgres)",
    )
    ap.add_argument(
        "--journals",
        default=",".join(JOURNALS),
        help="journal kinds stepped in turn (each engine added slows the others: caches, "
        f"memory; e.g. memory,disk-durable for the durable one beside its peer alone), of {JOURNALS}",
    )
    ap.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.symbols = [s.strip().upper() for s in args.symbols.split(",") if s.strip()]
    logging.basicConfig(level=logging.ERROR)

    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp_s:
        tmp = Path(tmp_s)
        if args.child is not None:  # under strace: the durable journal only
            o = run(["disk-durable"], args.days, args.symbols, args.bundle, tmp)["disk-durable"]
            args.child.write_text(
                json.dumps({"bars": len(o["on_bar"]), "traded": len(o["tick_order"])})
            )
            return
        from feature_repo.pipeline.transforms import TREND_V1_FEATURES

        if args.bundle is None:
            from engine_loop import make_bundle  # the same small bundle as the loop bench

            args.bundle = make_bundle(tmp / "bundle", list(TREND_V1_FEATURES), args.symbols)
        fs = os.statvfs(tmp)
        print(
            f"journals in {tmp} ({fs.f_bsize}-byte blocks), {args.days} days x "
            f"{len(args.symbols)} symbols, load average before {os.getloadavg()}"
        )
        before = disk_probe(tmp)
        t0 = time.perf_counter()
        with contextlib.ExitStack() as stack:
            pg_url = None
            if args.postgres:
                from titanovax.faults import postgres_database

                pg_url = stack.enter_context(
                    postgres_database(args.postgres, f"tx_bench_tick_{os.getpid()}")
                )
            kinds = [k for k in args.journals.split(",") if k] + (["postgres"] if pg_url else [])
            unknown = sorted(set(kinds) - set(JOURNALS) - {"postgres"})
            if unknown:
                ap.error(f"--journals: unknown kind(s) {unknown}; choose from {JOURNALS}")
            out = run(kinds, args.days, args.symbols, args.bundle, tmp, pg_url)
        print(
            f"{time.perf_counter() - t0:.1f} s, load average after {os.getloadavg()}"
            " (engines stepped in turn, bar by bar)"
        )
        after = disk_probe(tmp)
        print(
            "the disk's own fdatasync (4 KiB overwrite) p50/p99 ms: "
            f"before {before[0]:.3f}/{before[1]:.3f}, after {after[0]:.3f}/{after[1]:.3f}"
        )
        report(out)
        if args.fsyncs:
            count_fsyncs(args, args.bundle, tmp)


if __name__ == "__main__":
    main()
