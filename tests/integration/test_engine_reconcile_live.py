"""Continuous reconciliation in real processes: ``python -m engine`` on an
``engine.mt5.simserver`` bridge with ``TX_ENGINE_RECONCILE_INTERVAL_S=1``. A second client
opens a position with the engine's magic directly on the simulated terminal (over the
bridge, not through the engine): the engine reports the mismatch (status, metrics, audit) and
goes REDUCING; the position closed, it returns to ACTIVE. The detection latency is measured
and printed. Then the bridge process is frozen (SIGSTOP) for a few seconds: the link errors
are counted, the engine keeps running and reconciles again after SIGCONT."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from engine.mt5 import protocol as mt5

pytestmark = [pytest.mark.integration, pytest.mark.faults]

ROOT = Path(__file__).resolve().parents[2]
END = int(datetime(2025, 3, 6, 12, tzinfo=UTC).timestamp())  # a Thursday: market open
TOKEN = "reconcile-live-token"
MAGIC = 4242
DETECT_WITHIN_S = 5.0  # interval 1 s: a pass, plus the lock wait, plus a slow shared machine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> Any:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        body = r.read()
    return json.loads(body) if r.headers.get_content_type() == "application/json" else body.decode()


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.split(" ")[0] == name:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def _send(term: Any, *, position: int | None = None, volume: float = 0.3) -> int:
    tick = term.symbol_info_tick("EURUSD")
    req: dict[str, Any] = {
        "action": mt5.TRADE_ACTION_DEAL,
        "symbol": "EURUSD",
        "volume": volume,
        "type": mt5.ORDER_TYPE_BUY if position is None else mt5.ORDER_TYPE_SELL,
        "price": tick.ask if position is None else tick.bid,
        "deviation": 20,
        "magic": MAGIC,
        "comment": "manual" if position is None else "manual close",
        "type_filling": mt5.ORDER_FILLING_IOC,
    }
    if position is not None:
        req["position"] = position
    res = term.order_send(req)
    assert res is not None and res.retcode == mt5.TRADE_RETCODE_DONE, res
    return int(res.order)


def _wait(pred: Any, timeout: float, what: str, engine: subprocess.Popen[str]) -> float:
    t0 = time.monotonic()
    while True:
        assert engine.poll() is None, f"engine exited: {engine.stderr.read()[-3000:]}"  # type: ignore[union-attr]
        try:
            if pred():
                return time.monotonic() - t0
        except (OSError, urllib.error.URLError):
            pass
        assert time.monotonic() - t0 < timeout, f"{what} not within {timeout} s"
        time.sleep(0.02)


def test_engine_process_when_a_position_is_opened_behind_its_back_then_reducing_within_seconds(
    tmp_path: Path, redis_url: str
) -> None:
    from engine.mt5.gateway import open_terminal

    bridge_port, control_port = _free_port(), _free_port()
    bridge = subprocess.Popen(
        [
            *(sys.executable, "-m", "engine.mt5.simserver", "--port", str(bridge_port)),
            *("--seed", "3", "--symbols", "EURUSD", "--end-utc", str(END)),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    engine = None
    stopped = False
    try:
        assert bridge.stdout is not None
        assert bridge.stdout.readline().startswith("READY")
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("TX_")},
            "TX_HOME": str(tmp_path),
            "TX_MT5_MODE": "bridge",
            "TX_MT5_PORT": str(bridge_port),
            "TX_REDIS_URL": redis_url,
            "TX_SERVING_URL": f"http://127.0.0.1:{_free_port()}",  # nothing listens
            "TX_SYMBOLS": "EURUSD",
            "TX_ENGINE_MAGIC": str(MAGIC),
            "TX_ENGINE_TOKEN": TOKEN,
            "TX_ENGINE_CONTROL_PORT": str(control_port),
            "TX_ENGINE_RECONCILE_INTERVAL_S": "1",
            "TX_ENGINE_TERMINAL_TIMEOUT_S": "1",
            "TX_ENGINE_TERMINAL_ATTEMPTS": "1",
        }
        engine = subprocess.Popen(
            [sys.executable, "-m", "engine", "--features", "ret_1,ret_5"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(tmp_path / "engine.log", "w"),  # noqa: SIM115
            text=True,
        )
        base = f"http://127.0.0.1:{control_port}"
        _wait(lambda: _get(f"{base}/api/status")["reconcile"]["passes"] >= 1, 60, "a pass", engine)
        assert _get(f"{base}/api/status")["trading_state"] == "ACTIVE"

        hand = open_terminal("bridge", port=bridge_port)  # another client of the terminal
        latencies = []
        for _ in range(3):
            ticket = _send(hand)
            t_open = time.monotonic()
            _wait(
                lambda: _get(f"{base}/api/status")["trading_state"] == "REDUCING",
                DETECT_WITHIN_S,
                "REDUCING after the stray position",
                engine,
            )
            latencies.append(time.monotonic() - t_open)
            st = _get(f"{base}/api/status")
            assert st["state_reason"] == "reconcile_mismatch"
            [m] = st["reconcile"]["open_mismatches"]
            assert m["kind"] == "unknown_position" and m["ticket"] == ticket
            metrics = _get(f"{base}/metrics")
            assert _metric(metrics, "tx_engine_reconcile_open_mismatches") == 1.0

            _send(hand, position=ticket)  # closed by hand: the mismatch is gone
            _wait(
                lambda: _get(f"{base}/api/status")["trading_state"] == "ACTIVE",
                DETECT_WITHIN_S,
                "ACTIVE again after the stray position closed",
                engine,
            )
        metrics = _get(f"{base}/metrics")
        assert (
            _metric(metrics, 'tx_engine_reconcile_mismatches_total{kind="unknown_position"}') == 3.0
        )
        assert _metric(metrics, "tx_engine_reconcile_open_mismatches") == 0.0
        audit = _get(f"{base}/api/audit?limit=10")
        assert [r["action"] for r in audit[:2]] == ["reconcile_resolved", "reconcile_mismatch"]
        assert audit[1]["detail"]["new"][0]["kind"] == "unknown_position"
        print(
            "reconcile detection latency (interval 1 s): "
            + ", ".join(f"{x:.2f}" for x in latencies)
            + f" s; max {max(latencies):.2f} s"
        )
        assert max(latencies) < DETECT_WITHIN_S

        # the terminal link freezes: errors are counted, the engine lives on
        errors_before = _metric(_get(f"{base}/metrics"), "tx_engine_reconcile_errors_total")
        bridge.send_signal(signal.SIGSTOP)
        stopped = True
        time.sleep(4.0)
        frozen = _get(f"{base}/api/status")["reconcile"]
        assert frozen["link_down"] is True and frozen["errors"] >= 1, frozen
        assert engine.poll() is None
        assert _get(f"{base}/healthz") == {"ok": True}
        bridge.send_signal(signal.SIGCONT)
        stopped = False
        t_cont = time.monotonic()
        _wait(
            lambda: (
                not _get(f"{base}/api/status")["reconcile"]["link_down"]
                and _get(f"{base}/api/status")["reconcile"]["last_pass_at"] > time.time() - 2
            ),
            30,
            "a reconciliation pass after SIGCONT",
            engine,
        )
        errors = _metric(_get(f"{base}/metrics"), "tx_engine_reconcile_errors_total")
        print(
            f"bridge frozen 4 s: {errors - errors_before:.0f} link error(s) counted; "
            f"reconciling again {time.monotonic() - t_cont:.2f} s after SIGCONT"
        )
        assert errors > errors_before
        ticket = _send(hand)  # and it still detects
        _wait(
            lambda: _get(f"{base}/api/status")["trading_state"] == "REDUCING",
            DETECT_WITHIN_S,
            "REDUCING after the link came back",
            engine,
        )
        assert engine.poll() is None
    finally:
        if stopped:
            bridge.send_signal(signal.SIGCONT)
        for p in (engine, bridge):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(timeout=10)
