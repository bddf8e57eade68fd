"""The native adapter (engine.mt5.native) and reconnects (engine.mt5.resilient).

The official ``MetaTrader5`` module exists only for Windows. Here it is stood in for by
``engine.mt5.simserver.sim_module``: a module object with the official surface (its own named
tuple classes, the official constants) over a SimulatedTerminal, injected as
``sys.modules["MetaTrader5"]``. A link failure is what the real module does: calls answer
``None`` with a ``RES_E_INTERNAL_FAIL_*`` code in ``last_error()``.
"""

from __future__ import annotations

import sys
import types
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from engine.mt5 import protocol as P
from engine.mt5.gateway import open_terminal
from engine.mt5.native import NativeTerminal
from engine.mt5.resilient import Backoff, ResilientTerminal
from engine.mt5.sim import SimulatedTerminal, SyntheticFeed
from engine.mt5.simserver import sim_module

pytestmark = pytest.mark.unit

END = int(datetime(2025, 3, 6, 12, tzinfo=UTC).timestamp())  # a Thursday
OFF = 2 * 3600


def _sim() -> SimulatedTerminal:
    return SimulatedTerminal(SyntheticFeed(seed=3, symbols=["EURUSD", "USDJPY"], end_utc=END))


def _deal(**kw: Any) -> dict[str, Any]:
    req = {
        "action": P.TRADE_ACTION_DEAL,
        "symbol": "EURUSD",
        "volume": 0.1,
        "type": P.ORDER_TYPE_BUY,
        "type_filling": P.ORDER_FILLING_FOK,
        "magic": 9,
        "comment": "t1",
    }
    req.update(kw)
    return req


class Link:
    """The official module with a link that can drop: while ``down``, every call answers
    ``None``/``False`` and ``last_error()`` is an IPC failure, as the real module does."""

    def __init__(self, sim: SimulatedTerminal) -> None:
        self.inner = sim_module(sim)
        self.down = False
        self.calls: list[str] = []
        self.module = types.ModuleType("MetaTrader5")
        for name, value in vars(self.inner).items():
            if callable(value) and not isinstance(value, type) and not name.startswith("_"):
                setattr(self.module, name, self._wrap(name, value))
            else:
                setattr(self.module, name, value)

    def _wrap(self, name: str, fn: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            if name == "last_error" and self.down:
                return (P.RES_E_INTERNAL_FAIL_RECEIVE, "IPC recv failed")
            if self.down and name not in ("shutdown", "last_error"):
                return False if name in ("initialize", "symbol_select") else None
            return fn(*args, **kwargs)

        return call


@pytest.fixture
def link(monkeypatch: pytest.MonkeyPatch) -> Link:
    lk = Link(_sim())
    monkeypatch.setitem(sys.modules, "MetaTrader5", lk.module)
    return lk


def test_native_adapter_when_over_the_module_then_answers_as_the_terminal_behind_it(
    link: Link,
) -> None:
    ref = _sim()
    ref.initialize()
    term = NativeTerminal.connect(login=1)
    assert term.account_info() == ref.account_info()
    info = term.symbol_info("EURUSD")
    assert info == ref.symbol_info("EURUSD") and type(info) is P.SymbolInfo
    assert type(term.symbol_info_tick("EURUSD")) is P.Tick
    frm, to = END + OFF - 86_400, END + OFF
    got = term.copy_rates_range("EURUSD", P.TIMEFRAME_M5, frm, to)
    want = ref.copy_rates_range("EURUSD", P.TIMEFRAME_M5, frm, to)
    assert got is not None and want is not None and got.dtype == P.RATES_DTYPE
    np.testing.assert_array_equal(got, want)
    got_pos = term.copy_rates_from_pos("USDJPY", P.TIMEFRAME_H1, 1, 24)
    np.testing.assert_array_equal(got_pos, ref.copy_rates_from_pos("USDJPY", P.TIMEFRAME_H1, 1, 24))
    res = term.order_send(
        _deal(volume=np.float64(0.2), magic=np.int64(9))
    )  # numpy values made plain
    assert res is not None and res.retcode == P.TRADE_RETCODE_DONE
    assert type(res) is P.OrderSendResult and type(res.request) is P.TradeRequest
    assert res == ref.order_send(_deal(volume=0.2))
    assert term.positions_get(symbol="EURUSD") == ref.positions_get(symbol="EURUSD")
    assert term.history_deals_get(0, 2**31) == ref.history_deals_get(0, 2**31)
    chk = term.order_check(_deal(volume=1000.0))
    assert chk is not None and chk.retcode == P.TRADE_RETCODE_INVALID_VOLUME
    assert term.symbol_info("NOPE") is None and term.last_error()[0] == P.RES_E_NOT_FOUND


def test_native_adapter_when_request_has_unknown_field_then_type_error_before_sending(
    link: Link,
) -> None:
    term = NativeTerminal.connect()
    with pytest.raises(TypeError, match="stop_loss"):
        term.order_send(_deal(stop_loss=1.0))
    assert "order_send" not in link.calls


def test_backoff_when_attempts_grow_then_delays_double_up_to_the_cap_within_jitter() -> None:
    high = Backoff(base_delay=0.5, max_delay=4.0, jitter=0.2, rand=lambda: 1.0)
    low = Backoff(base_delay=0.5, max_delay=4.0, jitter=0.2, rand=lambda: 0.0)
    assert [round(high.delay(k), 6) for k in range(6)] == [0.6, 1.2, 2.4, 4.8, 4.8, 4.8]
    assert [round(low.delay(k), 6) for k in range(6)] == [0.4, 0.8, 1.6, 3.2, 3.2, 3.2]
    with pytest.raises(ValueError):
        Backoff(base_delay=2.0, max_delay=1.0)


def test_resilient_when_ipc_link_drops_then_reconnects_with_backoff_and_answers(link: Link) -> None:
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        if len(slept) == 2:
            link.down = False  # the terminal comes back during the second wait

    term = open_terminal("native", login=5, sleep=sleep, backoff=Backoff(0.1, 1.0, jitter=0.0))
    assert isinstance(term, ResilientTerminal) and term.account_info() is not None
    link.down = True
    info = term.account_info()
    assert info is not None and info.login == term.account_info().login  # type: ignore[union-attr]
    assert slept == [0.1, 0.2]
    assert term.reconnects == 1 and link.calls.count("shutdown") >= 1
    assert term.last_error() == (P.RES_S_OK, "Success")


def test_resilient_when_link_stays_down_then_connection_error_carries_last_error(
    link: Link,
) -> None:
    slept: list[float] = []
    term = open_terminal(
        "native", sleep=slept.append, reconnect_attempts=4, backoff=Backoff(1.0, 2.0, jitter=0.0)
    )
    link.down = True
    with pytest.raises(P.TerminalConnectionError) as err:
        term.copy_rates_from_pos("EURUSD", P.TIMEFRAME_M5, 0, 10)
    assert err.value.last_error == (P.RES_E_INTERNAL_FAIL_RECEIVE, "IPC recv failed")
    assert err.value.is_connection_error and term.last_error()[0] == P.RES_E_INTERNAL_FAIL_RECEIVE
    assert slept == [1.0, 2.0, 2.0]  # 4 attempts, 3 waits, capped at max_delay


def test_resilient_when_link_fails_during_order_send_then_order_is_not_resent(link: Link) -> None:
    term = open_terminal("native", sleep=lambda s: None)
    assert isinstance(term, ResilientTerminal)
    link.down = True
    assert term.order_send(_deal()) is None
    assert term.last_error()[0] == P.RES_E_INTERNAL_FAIL_RECEIVE
    assert link.calls.count("order_send") == 1
    link.down = False
    assert term.positions_get() == ()  # next call reconnects; nothing was opened
    assert term.reconnects == 1


def test_resilient_when_strict_then_every_failed_call_raises_terminal_error_with_last_error(
    link: Link,
) -> None:
    term = open_terminal("native", strict=True)
    with pytest.raises(P.TerminalError) as err:
        term.symbol_info("NOPE")
    assert err.value.call == "symbol_info" and err.value.last_error[0] == P.RES_E_NOT_FOUND
    assert not err.value.is_connection_error
    with pytest.raises(P.TerminalError) as err2:
        term.copy_rates_from_pos("EURUSD", 12345, 0, 1)
    assert err2.value.last_error[0] == P.RES_E_INVALID_PARAMS
    lenient = open_terminal("native")
    assert lenient.symbol_info("NOPE") is None and lenient.last_error()[0] == P.RES_E_NOT_FOUND


def test_native_without_module_then_runtime_error_names_the_platform(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "MetaTrader5", None)
    with pytest.raises(RuntimeError, match=sys.platform):
        NativeTerminal()


def test_resilient_when_asked_for_other_calls_then_forwards_those_the_terminal_has(
    link: Link,
) -> None:
    term = open_terminal("native")
    assert term.positions_total() == 0  # type: ignore[attr-defined]
    assert term.orders_get() == ()  # type: ignore[attr-defined]  # the stand-in has no pending orders
    assert getattr(term, "time_current", None) is None  # a simulator-only call is not invented
    with pytest.raises(AttributeError):
        term.copy_ticks_range  # type: ignore[attr-defined]  # noqa: B018
