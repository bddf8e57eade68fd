"""The bridge adapter (engine.mt5.bridge) against a real mt5linux-style server.

The server is what ``python -m mt5linux`` runs next to a terminal — an rpyc classic server —
in a subprocess whose ``import MetaTrader5`` is the simulated terminal dressed as the official
module (``python -m engine.mt5.simserver``). The client is the real ``mt5linux`` 1.0.11 client.
Reconnects are tested by killing and restarting that process.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.mt5 import protocol as P
from engine.mt5.bridge import BridgeTerminal
from engine.mt5.gateway import open_terminal
from engine.mt5.resilient import Backoff, ResilientTerminal
from engine.mt5.sim import SimulatedTerminal, SyntheticFeed

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
END = int(datetime(2025, 3, 6, 12, tzinfo=UTC).timestamp())  # a Thursday
OFF = 2 * 3600
SYMBOLS = "EURUSD,USDJPY"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class BridgeServer:
    """``python -m engine.mt5.simserver`` in a subprocess, restartable on the same port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        cmd = [
            sys.executable,
            "-m",
            "engine.mt5.simserver",
            "--port",
            str(self.port),
            "--seed",
            "3",
            "--symbols",
            SYMBOLS,
            "--end-utc",
            str(END),
        ]
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # blocks until the server listens
        assert line.startswith("READY"), f"bridge server did not start: {line!r}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture
def server() -> Iterator[BridgeServer]:
    srv = BridgeServer(_free_port())
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def _reference() -> SimulatedTerminal:
    ref = SimulatedTerminal(SyntheticFeed(seed=3, symbols=SYMBOLS.split(","), end_utc=END))
    ref.initialize()
    return ref


def _deal(**kw: Any) -> dict[str, Any]:
    req = {
        "action": P.TRADE_ACTION_DEAL,
        "symbol": "EURUSD",
        "volume": 0.1,
        "type": P.ORDER_TYPE_BUY,
        "type_filling": P.ORDER_FILLING_FOK,
        "magic": 9,
        "comment": "it's",
    }
    req.update(kw)
    return req


def test_bridge_when_connected_then_every_call_answers_as_the_terminal_behind_it(
    server: BridgeServer,
) -> None:
    ref = _reference()
    term = BridgeTerminal.connect("127.0.0.1", server.port, login=77, password="pw", server="Sim")
    assert isinstance(term, P.Terminal)
    acc = term.account_info()
    assert acc == ref.account_info() and type(acc) is P.AccountInfo
    info = term.symbol_info("EURUSD")
    assert info == ref.symbol_info("EURUSD") and type(info) is P.SymbolInfo
    assert term.symbol_info_tick("USDJPY") == ref.symbol_info_tick("USDJPY")
    frm, to = END + OFF - 2 * 86_400, END + OFF
    got = term.copy_rates_range("EURUSD", P.TIMEFRAME_M5, frm, to)
    assert got is not None and got.dtype == P.RATES_DTYPE and len(got) > 400
    np.testing.assert_array_equal(got, ref.copy_rates_range("EURUSD", P.TIMEFRAME_M5, frm, to))
    # a naive datetime is a server wall clock, as for the simulated terminal
    naive = datetime.fromtimestamp(frm, UTC).replace(tzinfo=None)
    np.testing.assert_array_equal(term.copy_rates_range("EURUSD", P.TIMEFRAME_M5, naive, to), got)
    np.testing.assert_array_equal(
        term.copy_rates_from_pos("USDJPY", P.TIMEFRAME_H1, 0, 50),
        ref.copy_rates_from_pos("USDJPY", P.TIMEFRAME_H1, 0, 50),
    )
    res = term.order_send(_deal(volume=np.float64(0.3)))
    assert res == ref.order_send(_deal(volume=0.3))
    assert (
        res is not None
        and res.retcode == P.TRADE_RETCODE_DONE
        and type(res.request) is P.TradeRequest
    )
    assert res.request.comment == "it's"  # quotes survive the trip
    assert term.positions_get(symbol="EURUSD") == ref.positions_get(symbol="EURUSD")
    assert term.positions_get(ticket=res.order) == ref.positions_get(ticket=res.order)
    assert term.history_deals_get(0, 2**31) == ref.history_deals_get(0, 2**31)
    assert term.history_deals_get(position=res.order) == ref.history_deals_get(position=res.order)
    assert term.orders_get() == () and term.terminal_info() == ref.terminal_info()
    chk = term.order_check(_deal(type_filling=P.ORDER_FILLING_RETURN))
    assert chk is not None and chk.retcode == P.TRADE_RETCODE_INVALID_FILL
    assert term.symbol_info("NOPE") is None and ref.symbol_info("NOPE") is None
    assert term.last_error() == ref.last_error() and term.last_error()[0] == P.RES_E_NOT_FOUND
    assert term.copy_rates_from_pos("EURUSD", 999, 0, 1) is None
    assert term.last_error()[0] == P.RES_E_INVALID_PARAMS
    term.shutdown()


def test_bridge_when_server_restarts_then_resilient_terminal_reconnects_after_backoff(
    server: BridgeServer,
) -> None:
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        if len(slept) == 2:
            server.start()  # the bridge comes back during the second wait

    term = open_terminal(
        "bridge",
        host="127.0.0.1",
        port=server.port,
        sleep=sleep,
        backoff=Backoff(0.05, 1.0, jitter=0.0),
        reconnect_attempts=5,
    )
    assert isinstance(term, ResilientTerminal)
    before = term.copy_rates_from_pos("EURUSD", P.TIMEFRAME_M5, 1, 10)
    server.stop()
    after = term.copy_rates_from_pos("EURUSD", P.TIMEFRAME_M5, 1, 10)
    np.testing.assert_array_equal(after, before)
    assert slept == [0.05, 0.1]  # failed call, failed connect (refused), then connected
    assert term.reconnects == 1 and term.last_error() == (P.RES_S_OK, "Success")


def test_bridge_when_server_stays_down_then_connection_error_names_the_link(
    server: BridgeServer,
) -> None:
    slept: list[float] = []
    term = open_terminal(
        "bridge",
        host="127.0.0.1",
        port=server.port,
        sleep=slept.append,
        backoff=Backoff(0.5, 1.0, jitter=0.0),
        reconnect_attempts=3,
    )
    server.stop()
    with pytest.raises(P.TerminalConnectionError) as err:
        term.account_info()
    code, message = err.value.last_error
    assert code == P.RES_E_INTERNAL_FAIL_CONNECT and f"127.0.0.1:{server.port}" in message
    assert slept == [0.5, 1.0]
    with pytest.raises(P.TerminalConnectionError):
        open_terminal(
            "bridge", host="127.0.0.1", port=server.port, sleep=slept.append, reconnect_attempts=2
        )


def test_bridge_when_link_dies_before_order_send_then_order_is_not_resent(
    server: BridgeServer,
) -> None:
    term = open_terminal("bridge", host="127.0.0.1", port=server.port, sleep=lambda s: None)
    assert isinstance(term, ResilientTerminal)
    server.stop()
    assert term.order_send(_deal()) is None
    assert term.last_error()[0] == P.RES_E_INTERNAL_FAIL_CONNECT
    server.start()
    assert term.positions_get() == ()  # reconnected; the order never reached the new server
    assert term.reconnects == 1


def test_bridge_when_the_password_looks_like_code_then_it_travels_as_data(
    server: BridgeServer,
) -> None:
    nasty = "x'); import os; os._exit(3); ('"
    term = BridgeTerminal.connect("127.0.0.1", server.port, login=77, password=nasty)
    assert term.account_info() is not None  # the server is alive: nothing was evaluated
    assert server.proc is not None and server.proc.poll() is None


def test_bridge_when_the_server_is_stopped_then_connect_gives_up_within_its_deadline(
    server: BridgeServer,
) -> None:
    import os
    import signal
    import time

    from engine.mt5.protocol import TerminalConnectionError

    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)  # accepts TCP (backlog) but never answers
    try:
        t0 = time.monotonic()
        with pytest.raises(TerminalConnectionError):
            BridgeTerminal("127.0.0.1", server.port, timeout_s=1.0)
        assert time.monotonic() - t0 < 10  # mt5linux alone waits rpyc's 30 s handshake
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)


def test_resilient_bridge_when_the_server_freezes_then_each_call_fails_within_one_deadline(
    server: BridgeServer,
) -> None:
    """A frozen server (SIGSTOP) times out every call, every reconnect handshake and would
    time out rpyc's goodbye on close: a call with two tries still fails within one deadline
    (a timed-out link is not tried again within the call), the next call reconnects within
    its deadline, and the link is back after SIGCONT."""
    import os
    import signal
    import time

    from engine.mt5.protocol import TerminalConnectionError
    from engine.mt5.resilient import timed_out

    assert server.proc is not None
    term = open_terminal(
        "bridge", port=server.port, bridge_timeout_s=1.0, reconnect_attempts=2, strict=True
    )
    assert term.account_info() is not None
    os.kill(server.proc.pid, signal.SIGSTOP)
    took = []
    try:
        for _ in range(3):  # the call on the open link, then two reconnects
            t0 = time.monotonic()
            with pytest.raises(TerminalConnectionError) as err:
                term.account_info()
            took.append(time.monotonic() - t0)
            assert err.value.last_error[0] == P.RES_E_INTERNAL_FAIL_CONNECT
            assert "TimeoutError" in err.value.last_error[1]
            assert timed_out(err.value)
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    assert max(took) < 1.5, took  # old: the first call 3 deadlines, later ones 2
    assert term.account_info() is not None  # reconnected
    term.shutdown()


def test_bridge_when_a_broken_link_is_closed_then_it_does_not_wait_on_the_server(
    server: BridgeServer,
) -> None:
    import os
    import signal
    import time

    from engine.mt5.protocol import TerminalConnectionError

    assert server.proc is not None
    term = BridgeTerminal("127.0.0.1", server.port, timeout_s=1.0)
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        with pytest.raises(TerminalConnectionError):
            term.account_info()
        t0 = time.monotonic()
        term.close()  # rpyc's close is a sync request: it would wait the deadline
        assert time.monotonic() - t0 < 0.2
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)


def test_bridge_when_nothing_answers_the_tcp_connect_then_it_gives_up_within_its_deadline() -> None:
    """A full accept queue drops SYNs (as a blackholed host does): rpyc's own connect tries 6
    times with a 3 s timeout each; the bridge tries once, within its deadline."""
    import time

    from engine.mt5.protocol import TerminalConnectionError

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)  # never accepted: the queue fills with the first connections
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            fillers.append(s)
        time.sleep(0.2)
        t0 = time.monotonic()
        with pytest.raises(TerminalConnectionError):
            BridgeTerminal("127.0.0.1", port, timeout_s=0.5)
        took = time.monotonic() - t0
    finally:
        for s in fillers:
            s.close()
        listener.close()
    assert took < 1.5, took


def test_bridge_when_the_server_stalls_in_the_middle_of_an_answer_then_the_link_breaks_in_time() -> (
    None
):
    """A peer that starts a frame and stops (a bridge frozen half-way through a large answer):
    rpyc reads a started frame to its end and retries socket timeouts forever; the bridge gives
    up after its deadline. The peer is a raw socket that answers the first request with a frame
    header announcing 1000 bytes, sends 5 of them, and holds the connection for 8 s."""
    import struct
    import threading
    import time

    from engine.mt5.protocol import TerminalConnectionError
    from engine.mt5.resilient import timed_out

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]

    def stall() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)  # the client's first request (the handshake's)
            conn.sendall(struct.pack("!LB", 1000, 0) + b"12345")
            time.sleep(8.0)

    peer = threading.Thread(target=stall, daemon=True)
    peer.start()
    try:
        t0 = time.monotonic()
        with pytest.raises(TerminalConnectionError) as err:
            BridgeTerminal("127.0.0.1", port, timeout_s=0.5)
        took = time.monotonic() - t0
    finally:
        listener.close()
    assert took < 2.0, took  # old: until the peer let go (8 s)
    assert timed_out(err.value), err.value
