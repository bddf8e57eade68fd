"""MT5 gateway call latency: the simulated terminal in-process vs the bridge adapter
(``BridgeTerminal``: one rpyc round trip, plain values) vs mt5linux 1.0.11's own client methods
(rpyc proxies of the server's named tuples: one round trip per field read), all against the same
simulated terminal served as an mt5linux bridge (``python -m engine.mt5.simserver``) on
localhost, measured interleaved in one run. Every answer is read in full (all fields, all bars),
as a caller would.

    .venv/bin/python bench/mt5_bridge.py [--n 300]
"""

from __future__ import annotations

import sys
from pathlib import Path

# the project root goes before bench/ on the path: a bench script's name must never shadow a
# package of the project
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import logging
import socket
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
END = int(datetime(2025, 3, 6, 12, tzinfo=UTC).timestamp())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _read_all(value: Any) -> Any:
    """Touch every field / bar, as a caller reading the answer would."""
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        return float(np.asarray(value["close"]).sum())
    return [getattr(value, f) for f in value._fields]


def _time(fn: Callable[[], Any], n: int) -> np.ndarray:
    out = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter()
        _read_all(fn())
        out[i] = time.perf_counter() - t0
    return out * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=300, help="calls per path and call")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from mt5linux import MetaTrader5

    from engine.mt5 import protocol as P
    from engine.mt5.bridge import BridgeTerminal
    from engine.mt5.sim import SimulatedTerminal, SyntheticFeed

    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "engine.mt5.simserver",
            "--port",
            str(port),
            "--seed",
            "3",
            "--symbols",
            "EURUSD,USDJPY",
            "--end-utc",
            str(END),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().startswith("READY")
        local = SimulatedTerminal(SyntheticFeed(seed=3, symbols=["EURUSD", "USDJPY"], end_utc=END))
        local.initialize()
        bridge = BridgeTerminal.connect("127.0.0.1", port)
        raw = MetaTrader5(host="127.0.0.1", port=port)
        raw.initialize()
        m5 = P.TIMEFRAME_M5
        calls: dict[str, dict[str, Callable[[], Any]]] = {
            "account_info": {
                "sim in-process": local.account_info,
                "BridgeTerminal": bridge.account_info,
                "mt5linux client": raw.account_info,
            },
            "symbol_info_tick": {
                "sim in-process": lambda: local.symbol_info_tick("EURUSD"),
                "BridgeTerminal": lambda: bridge.symbol_info_tick("EURUSD"),
                "mt5linux client": lambda: raw.symbol_info_tick("EURUSD"),
            },
            "copy_rates_from_pos(1000 M5)": {
                "sim in-process": lambda: local.copy_rates_from_pos("EURUSD", m5, 1, 1000),
                "BridgeTerminal": lambda: bridge.copy_rates_from_pos("EURUSD", m5, 1, 1000),
                "mt5linux client": lambda: raw.copy_rates_from_pos("EURUSD", m5, 1, 1000),
            },
        }
        print(
            f"MT5 gateway call latency, {args.n} calls each, interleaved; bridge on localhost (us)"
        )
        for call, paths in calls.items():
            for fn in paths.values():  # warm up
                _read_all(fn())
            samples: dict[str, list[np.ndarray]] = {k: [] for k in paths}
            chunk = max(1, args.n // 10)
            for _ in range(10):
                for name, fn in paths.items():
                    samples[name].append(_time(fn, chunk))
            res = {k: np.concatenate(v) for k, v in samples.items()}
            base = np.percentile(res["BridgeTerminal"], 50)
            print(f"\n{call}")
            for name, us in res.items():
                p50, p99 = np.percentile(us, 50), np.percentile(us, 99)
                print(
                    f"  {name:<18} p50 {p50:9.1f}  p99 {p99:9.1f}   p50 / BridgeTerminal {p50 / base:6.2f}x"
                )
        bridge.shutdown()
    finally:
        proc.kill()
        proc.wait(timeout=10)


if __name__ == "__main__":
    main()
