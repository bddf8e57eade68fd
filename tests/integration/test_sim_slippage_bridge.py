"""The slippage process behind the bridge: ``python -m engine.mt5.simserver`` started with
``TX_SIM_SLIPPAGE_*`` slips and requotes over the real mt5linux client, and the engine's order
path journals the fill with the venue ``bridge:<login>``."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from engine.config import ExecutionConfig
from engine.execution import OrderExecutor
from engine.journal import Journal
from engine.mt5 import protocol as P
from engine.mt5.bridge import BridgeTerminal
from engine.mt5.resilient import ResilientTerminal

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
END = int(datetime(2025, 3, 5, 12, tzinfo=UTC).timestamp())  # a Wednesday, noon UTC


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def port() -> Iterator[int]:
    p = _free_port()
    env = {
        **os.environ,
        "TX_SIM_SLIPPAGE_ENABLED": "true",
        "TX_SIM_SLIPPAGE_BASE_POINTS": "30",
        "TX_SIM_SLIPPAGE_NOISE_SIGMA": "0",
        "TX_SIM_SLIPPAGE_SPREAD_K": "0",
        "TX_SIM_SLIPPAGE_VOL_K": "0",
        "TX_SIM_SLIPPAGE_IMPACT_POINTS": "0",
    }
    cmd = [sys.executable, "-m", "engine.mt5.simserver", "--port", str(p)]
    cmd += ["--seed", "3", "--symbols", "EURUSD", "--end-utc", str(END)]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("READY"), f"bridge server did not start: {line!r}"
        yield p
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_simserver_when_slippage_is_configured_then_bridge_orders_slip_requote_and_journal(
    port: int, tmp_path: Path
) -> None:
    term = ResilientTerminal(
        lambda: BridgeTerminal.connect("127.0.0.1", port, login=77), name="mt5-bridge"
    )
    term.ensure_connected()
    tick = term.symbol_info_tick("EURUSD")
    req = {
        "action": P.TRADE_ACTION_DEAL,
        "symbol": "EURUSD",
        "volume": 0.1,
        "type": P.ORDER_TYPE_BUY,
        "price": tick.ask,
        "deviation": 10,
        "type_filling": P.ORDER_FILLING_FOK,
    }
    # a 30-point draw against a 10-point deviation: requoted over the bridge
    r = term.order_send(req)
    assert r.retcode == P.TRADE_RETCODE_REQUOTE and r.deal == 0
    # the engine's order path with a wide deviation: filled 30 points above the ask, journaled
    login = int(term.account_info().login)
    journal = Journal(tmp_path / "j.db", scope=f"{login}:5:paper")
    ex = OrderExecutor(
        term,
        journal,
        ExecutionConfig(deviation_points=50),
        magic=5,
        login=login,
        timeframe=P.TIMEFRAME_M5,
    )
    out = ex.execute(
        "EURUSD", END, "open:buy", order_type=P.ORDER_TYPE_BUY, volume=0.1, now_utc=END
    )
    assert out.status == "done"
    [f] = journal.fills()
    assert f.venue == f"bridge:{login}" and f.side == "buy" and f.hour_utc == 12
    assert f.slippage_points == pytest.approx(30.0) and f.filled_price > f.requested_price
    assert f.spread_points is not None and f.spread_points > 0
    assert f.volatility is not None and f.volatility > 0
