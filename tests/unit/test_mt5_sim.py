"""The simulated terminal (engine.mt5.sim) and the gateway (engine.mt5.gateway)."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.mt5 import protocol as P
from engine.mt5.exports import read_export
from engine.mt5.gateway import open_terminal
from engine.mt5.sim import BarFeed, ExportFeed, SimulatedTerminal, SyntheticFeed
from engine.mt5.synthetic import ORIGIN_UTC, SYMBOLS

pytestmark = pytest.mark.unit

DAY = 86_400
OFF = 2 * 3600
THURSDAY = ORIGIN_UTC + 10 * DAY + 13 * 3600 + 7 * 60  # 2024-01-11 13:07 UTC
SATURDAY = ORIGIN_UTC + 12 * DAY + 12 * 3600  # 2024-01-13 12:00 UTC


class Clock:
    """A settable UTC clock."""

    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


@pytest.fixture(scope="module")
def feed() -> SyntheticFeed:
    return SyntheticFeed(seed=7)


@pytest.fixture
def clock() -> Clock:
    return Clock(THURSDAY)


@pytest.fixture
def term(feed: SyntheticFeed, clock: Clock) -> SimulatedTerminal:
    t = SimulatedTerminal(feed, clock=clock)
    assert t.initialize()
    return t


def _deal(
    symbol: str = "EURUSD", volume: float = 0.1, side: int = P.ORDER_TYPE_BUY, **kw: Any
) -> dict[str, Any]:
    req: dict[str, Any] = {
        "action": P.TRADE_ACTION_DEAL,
        "symbol": symbol,
        "volume": volume,
        "type": side,
        "type_filling": P.ORDER_FILLING_IOC,
        "deviation": 10,
        "magic": 42,
        "comment": "test",
    }
    req.update(kw)
    return req


# --- session and errors -------------------------------------------------------------------


def test_not_initialized_then_calls_fail_with_no_ipc(feed: SyntheticFeed, clock: Clock) -> None:
    t = SimulatedTerminal(feed, clock=clock)
    assert isinstance(t, P.Terminal)
    assert t.account_info() is None
    assert t.last_error()[0] == P.RES_E_NO_IPC
    assert t.initialize() and t.last_error() == (P.RES_S_OK, "Success")
    assert t.account_info() is not None
    t.shutdown()
    assert t.copy_rates_from_pos("EURUSD", P.TIMEFRAME_M5, 0, 1) is None


def test_unknown_symbol_then_none_and_not_found(term: SimulatedTerminal) -> None:
    assert term.copy_rates_range("EURCHF", P.TIMEFRAME_H1, 0, 2**31) is None
    assert term.last_error()[0] == P.RES_E_NOT_FOUND
    assert term.symbol_info_tick("EURCHF") is None
    assert term.last_error()[0] == P.RES_E_NOT_FOUND
    assert term.symbol_info("EURCHF") is None
    assert term.symbol_select("EURCHF") is False


def test_bad_timeframe_or_arguments_then_none_and_invalid_params(term: SimulatedTerminal) -> None:
    assert term.copy_rates_from_pos("EURUSD", 7, 0, 10) is None
    assert term.last_error()[0] == P.RES_E_INVALID_PARAMS
    assert term.copy_rates_range("EURUSD", P.TIMEFRAME_H1, "yesterday", 0) is None  # type: ignore[arg-type]
    assert term.last_error()[0] == P.RES_E_INVALID_PARAMS
    assert term.copy_rates_from_pos("EURUSD", P.TIMEFRAME_H1, 0, 0) is None
    assert term.last_error()[0] == P.RES_E_INVALID_PARAMS


# --- bars and ticks -----------------------------------------------------------------------


def test_copy_rates_range_then_forming_bar_visible_and_nothing_after_now(
    term: SimulatedTerminal, clock: Clock
) -> None:
    now_server = clock.now + OFF
    r = term.copy_rates_range("EURUSD", P.TIMEFRAME_M5, now_server - 3600, now_server + 7 * DAY)
    assert r is not None and r.dtype == P.RATES_DTYPE
    assert r["time"][-1] == now_server - now_server % 300  # the forming bar
    assert np.all(r["time"] <= now_server)
    assert np.all(np.diff(r["time"]) == 300)
    h1 = term.copy_rates_range("EURUSD", P.TIMEFRAME_H1, now_server - DAY, now_server)
    assert h1 is not None and h1["time"][-1] == now_server - now_server % 3600


def test_copy_rates_range_then_inclusive_at_both_ends_in_server_time(
    term: SimulatedTerminal,
) -> None:
    a = ORIGIN_UTC + 9 * DAY + OFF + 10 * 3600  # server 2024-01-10 12:00
    r = term.copy_rates_range("EURUSD", P.TIMEFRAME_H1, a, a + 3 * 3600)
    assert r is not None
    assert r["time"].tolist() == [a, a + 3600, a + 7200, a + 10800]
    # an aware UTC datetime carries the server wall clock, as with the official module
    d = term.copy_rates_range(
        "EURUSD",
        P.TIMEFRAME_H1,
        datetime(2024, 1, 10, 12, tzinfo=UTC),
        datetime(2024, 1, 10, 15),
    )
    assert d is not None
    np.testing.assert_array_equal(d, r)


def test_copy_rates_from_pos_then_oldest_first_counted_from_forming_bar(
    term: SimulatedTerminal, clock: Clock
) -> None:
    r0 = term.copy_rates_from_pos("EURUSD", P.TIMEFRAME_M5, 0, 50)
    r1 = term.copy_rates_from_pos("EURUSD", P.TIMEFRAME_M5, 1, 50)
    assert r0 is not None and r1 is not None
    assert len(r0) == 50 and np.all(np.diff(r0["time"]) > 0)
    now_server = clock.now + OFF
    assert r0["time"][-1] == now_server - now_server % 300
    np.testing.assert_array_equal(r1[1:], r0[:-1])
    # across a weekend: 600 H1 bars reach back several weeks, still contiguous in order
    h = term.copy_rates_from_pos("USDJPY", P.TIMEFRAME_H1, 0, 200)
    assert h is not None and len(h) == 200 and np.all(np.diff(h["time"]) > 0)
    rng = term.copy_rates_range("USDJPY", P.TIMEFRAME_H1, int(h["time"][0]), int(h["time"][-1]))
    np.testing.assert_array_equal(rng, h)
    # more than the history holds: what there is
    allbars = term.copy_rates_from_pos("USDJPY", P.TIMEFRAME_D1, 0, 1000)
    assert allbars is not None and 0 < len(allbars) < 20


def test_tick_then_last_closed_bar_not_the_forming_one(
    term: SimulatedTerminal, clock: Clock
) -> None:
    bars = term.copy_rates_from_pos("EURUSD", P.TIMEFRAME_M5, 0, 2)
    tick = term.symbol_info_tick("EURUSD")
    assert bars is not None and tick is not None
    closed, forming = bars[0], bars[1]
    assert tick.bid == closed["close"]
    assert tick.ask == round(closed["close"] + closed["spread"] * 1e-5, 5)
    assert tick.time == closed["time"] + 300 == forming["time"]
    assert tick.time <= clock.now + OFF
    info = term.symbol_info("EURUSD")
    assert info is not None and (info.bid, info.ask, info.digits) == (tick.bid, tick.ask, 5)


def test_weekend_clock_then_tick_is_friday_close(term: SimulatedTerminal, clock: Clock) -> None:
    clock.now = SATURDAY
    tick = term.symbol_info_tick("EURUSD")
    last = term.copy_rates_from_pos("EURUSD", P.TIMEFRAME_M5, 0, 1)
    assert tick is not None and last is not None
    assert last["time"][0] - OFF == ORIGIN_UTC + 11 * DAY + 21 * 3600 + 55 * 60  # Fri 21:55 UTC
    assert tick.bid == last["close"][0]


def test_no_clock_then_all_history_visible() -> None:
    end = ORIGIN_UTC + 12 * DAY  # Saturday 00:00 UTC
    t = SimulatedTerminal(SyntheticFeed(seed=7, symbols=["EURUSD"], end_utc=end))
    t.initialize()
    r = t.copy_rates_range("EURUSD", P.TIMEFRAME_M5, 0, 2**40)
    assert r is not None and r["time"][0] == ORIGIN_UTC + OFF
    assert r["time"][-1] == ORIGIN_UTC + 11 * DAY + 21 * 3600 + 55 * 60 + OFF  # Fri 21:55 UTC
    tick = t.symbol_info_tick("EURUSD")
    assert tick is not None and tick.bid == r["close"][-1]
    assert t.time_current() is None
    res = t.order_send(_deal())
    assert res is not None and res.retcode == P.TRADE_RETCODE_DONE


# --- orders -------------------------------------------------------------------------------


def test_market_buy_then_done_at_ask_with_tickets_and_request_echoed(
    term: SimulatedTerminal,
) -> None:
    tick = term.symbol_info_tick("EURUSD")
    res = term.order_send(_deal(volume=0.5))
    assert res is not None and tick is not None
    assert res.retcode == P.TRADE_RETCODE_DONE
    assert (res.price, res.bid, res.ask, res.volume) == (tick.ask, tick.bid, tick.ask, 0.5)
    assert res.request.symbol == "EURUSD" and res.request.magic == 42 and res.request.volume == 0.5
    assert res.request_id == 1
    res2 = term.order_send(_deal(side=P.ORDER_TYPE_SELL))
    assert res2 is not None and res2.retcode == P.TRADE_RETCODE_DONE
    assert res2.price == tick.bid
    assert res2.order > res.order and res2.deal > res.deal and res2.request_id == 2
    positions = term.positions_get()
    assert positions is not None and [p.ticket for p in positions] == [res.order, res2.order]
    assert positions[0].type == P.POSITION_TYPE_BUY and positions[1].type == P.POSITION_TYPE_SELL


def test_slippage_then_fill_moves_against_the_trader(feed: SyntheticFeed, clock: Clock) -> None:
    t = SimulatedTerminal(feed, clock=clock, slippage_points=3)
    t.initialize()
    tick = t.symbol_info_tick("USDJPY")
    buy, sell = t.order_send(_deal("USDJPY")), t.order_send(_deal("USDJPY", side=P.ORDER_TYPE_SELL))
    assert tick is not None and buy is not None and sell is not None
    assert buy.price == round(tick.ask + 0.003, 3)
    assert sell.price == round(tick.bid - 0.003, 3)


@pytest.mark.parametrize("volume", [0.0, 0.001, 100.01, 0.015, 1000.0])
def test_bad_volume_then_invalid_volume(term: SimulatedTerminal, volume: float) -> None:
    res = term.order_send(_deal(volume=volume))
    assert res is not None and res.retcode == P.TRADE_RETCODE_INVALID_VOLUME
    assert res.deal == 0 and res.order == 0
    assert term.positions_get() == ()


def test_unsupported_filling_then_invalid_fill(feed: SyntheticFeed, clock: Clock) -> None:
    t = SimulatedTerminal(feed, clock=clock, filling_mode=P.SYMBOL_FILLING_IOC)
    t.initialize()
    fok = t.order_send(_deal(type_filling=P.ORDER_FILLING_FOK))
    default = t.order_send({k: v for k, v in _deal().items() if k != "type_filling"})  # FOK = 0
    ret = t.order_send(_deal(type_filling=P.ORDER_FILLING_RETURN))
    ioc = t.order_send(_deal(type_filling=P.ORDER_FILLING_IOC))
    assert [r.retcode for r in (fok, default, ret, ioc) if r is not None] == [
        P.TRADE_RETCODE_INVALID_FILL,
        P.TRADE_RETCODE_INVALID_FILL,
        P.TRADE_RETCODE_INVALID_FILL,
        P.TRADE_RETCODE_DONE,
    ]


def test_weekend_then_market_closed(term: SimulatedTerminal, clock: Clock) -> None:
    clock.now = SATURDAY
    res = term.order_send(_deal())
    assert res is not None and res.retcode == P.TRADE_RETCODE_MARKET_CLOSED
    check = term.order_check(_deal())
    assert check is not None and check.retcode == P.TRADE_RETCODE_MARKET_CLOSED
    clock.now = ORIGIN_UTC + 13 * DAY + 22 * 3600 + 60  # Sunday 22:01 UTC: open again
    res = term.order_send(_deal())
    assert res is not None and res.retcode == P.TRADE_RETCODE_DONE


def test_too_large_order_then_no_money(term: SimulatedTerminal) -> None:
    # 10 lots of EURUSD at 1:100 needs ~11,000 USD of margin; the account has 10,000
    res = term.order_send(_deal(volume=10.0))
    assert res is not None and res.retcode == P.TRADE_RETCODE_NO_MONEY
    check = term.order_check(_deal(volume=10.0))
    assert check is not None and check.retcode == P.TRADE_RETCODE_NO_MONEY
    # USDJPY margin is converted from JPY: 9 lots need 9,000 USD, not 9,000 * 150
    ok = term.order_check(_deal("USDJPY", volume=9.0))
    assert ok is not None and ok.retcode == 0
    assert ok.margin == pytest.approx(9_000.0, rel=2e-3)


@pytest.mark.parametrize(
    "patch",
    [
        {"action": 5},
        {"action": None},
        {"symbol": "EURCHF"},
        {"type": 4},
        {"deviation": -1},
        {"magic": "42"},
        {"comment": "x" * 32},
        {"price": -1.0},
        {"type_fill": 1},
    ],
    ids=lambda p: next(iter(p)),
)
def test_invalid_request_then_invalid(term: SimulatedTerminal, patch: dict[str, Any]) -> None:
    res = term.order_send(_deal(**patch))
    assert res is not None and res.retcode == P.TRADE_RETCODE_INVALID
    assert term.positions_get() == ()


def test_not_a_dict_then_none_and_invalid_params(term: SimulatedTerminal) -> None:
    assert term.order_send(["EURUSD"]) is None  # type: ignore[arg-type]
    assert term.last_error()[0] == P.RES_E_INVALID_PARAMS


def test_buy_then_close_later_realises_pnl_into_balance(
    term: SimulatedTerminal, clock: Clock
) -> None:
    spec = SYMBOLS["EURUSD"]
    opened = term.order_send(_deal(volume=1.0))
    assert opened is not None and opened.retcode == P.TRADE_RETCODE_DONE
    clock.now += 5 * 3600
    tick = term.symbol_info_tick("EURUSD")
    assert tick is not None
    closed = term.order_send(_deal(volume=1.0, side=P.ORDER_TYPE_SELL, position=opened.order))
    assert closed is not None and closed.retcode == P.TRADE_RETCODE_DONE
    assert closed.price == tick.bid
    expected = round((tick.bid - opened.price) * 1.0 * spec.contract_size, 2)
    assert expected != 0
    acc = term.account_info()
    assert acc is not None and acc.balance == pytest.approx(10_000.0 + expected)
    assert acc.equity == acc.balance and acc.margin == 0.0
    assert term.positions_get() == ()
    deals = term.history_deals_get(0, 2**40)
    assert deals is not None and [d.entry for d in deals] == [P.DEAL_ENTRY_IN, P.DEAL_ENTRY_OUT]
    assert [d.position_id for d in deals] == [opened.order, opened.order]
    assert deals[1].profit == pytest.approx(expected) and deals[1].type == P.DEAL_TYPE_SELL
    assert deals[0].time == THURSDAY + OFF and deals[1].time == clock.now + OFF
    only_in = term.history_deals_get(THURSDAY + OFF, THURSDAY + OFF)
    assert only_in is not None and len(only_in) == 1
    assert term.history_deals_get(position=opened.order) == deals


def test_partial_close_then_position_reduced(term: SimulatedTerminal) -> None:
    opened = term.order_send(_deal(volume=0.3, side=P.ORDER_TYPE_SELL))
    assert opened is not None
    part = term.order_send(_deal(volume=0.1, position=opened.order))
    assert part is not None and part.retcode == P.TRADE_RETCODE_DONE
    pos = term.positions_get(ticket=opened.order)
    assert pos is not None and pos[0].volume == pytest.approx(0.2)
    too_much = term.order_send(_deal(volume=0.5, position=opened.order))
    assert too_much is not None and too_much.retcode == P.TRADE_RETCODE_INVALID_VOLUME
    same_side = term.order_send(_deal(volume=0.1, side=P.ORDER_TYPE_SELL, position=opened.order))
    assert same_side is not None and same_side.retcode == P.TRADE_RETCODE_INVALID
    missing = term.order_send(_deal(volume=0.1, position=999))
    assert missing is not None and missing.retcode == P.TRADE_RETCODE_POSITION_CLOSED


def test_open_positions_then_equity_is_balance_plus_floating(
    term: SimulatedTerminal, clock: Clock
) -> None:
    term.order_send(_deal(volume=1.0))
    term.order_send(_deal("XAUUSD", volume=0.5, side=P.ORDER_TYPE_SELL))
    term.order_send(_deal("USDJPY", volume=0.2))
    clock.now += 2 * 3600
    positions = term.positions_get()
    acc = term.account_info()
    assert positions is not None and acc is not None and len(positions) == 3
    floating = sum(p.profit for p in positions)
    assert acc.profit == pytest.approx(floating, abs=0.02)
    assert acc.equity == pytest.approx(acc.balance + acc.profit, abs=0.01)
    assert acc.margin_free == pytest.approx(acc.equity - acc.margin, abs=0.01)
    assert acc.margin_level == pytest.approx(acc.equity / acc.margin * 100, rel=1e-3)
    xau = term.positions_get(symbol="XAUUSD")
    tick = term.symbol_info_tick("XAUUSD")
    assert xau is not None and tick is not None and len(xau) == 1
    assert xau[0].price_current == tick.ask  # a short is valued at the ask
    assert xau[0].profit == pytest.approx((xau[0].price_open - tick.ask) * 0.5 * 100, abs=0.01)
    assert acc.currency == "USD" and acc.leverage == 100 and acc.server == "TitanovaX-Sim"
    assert all(isinstance(v, int | float | str | bool) for v in acc)


def test_order_check_ok_then_retcode_zero_and_no_side_effects(term: SimulatedTerminal) -> None:
    check = term.order_check(_deal(volume=1.0))
    assert check is not None and check.retcode == 0
    price = check.request.price  # echoed request
    assert price == 0.0
    assert check.margin == pytest.approx(1.0 * 100_000 * 1.1 / 100, rel=0.1)
    assert check.margin_free == pytest.approx(check.equity - check.margin, abs=0.01)
    assert term.positions_get() == () and term.history_deals_get(0, 2**40) == ()


def test_stops_then_position_closed_when_touched(term: SimulatedTerminal, clock: Clock) -> None:
    tick = term.symbol_info_tick("EURUSD")
    assert tick is not None
    bad = term.order_send(_deal(sl=tick.bid + 0.001))
    assert bad is not None and bad.retcode == P.TRADE_RETCODE_INVALID_STOPS
    sl, tp = round(tick.bid - 0.0010, 5), round(tick.bid + 0.0010, 5)
    res = term.order_send(_deal(volume=1.0, sl=sl, tp=tp))
    assert res is not None and res.retcode == P.TRADE_RETCODE_DONE
    clock.now += DAY
    assert term.positions_get() == ()
    deals = term.history_deals_get(position=res.order)
    assert deals is not None and len(deals) == 2
    out = deals[1]
    assert out.reason in (P.DEAL_REASON_SL, P.DEAL_REASON_TP)
    level = sl if out.reason == P.DEAL_REASON_SL else tp
    assert out.price == level or (out.reason == P.DEAL_REASON_SL and out.price < sl)
    assert THURSDAY + OFF <= out.time <= clock.now + OFF
    acc = term.account_info()
    assert acc is not None and acc.balance == pytest.approx(10_000 + out.profit)


def test_sltp_action_then_stops_modified(term: SimulatedTerminal) -> None:
    res = term.order_send(_deal())
    tick = term.symbol_info_tick("EURUSD")
    assert res is not None and tick is not None
    sl = round(tick.bid - 0.005, 5)
    mod = term.order_send(
        {"action": P.TRADE_ACTION_SLTP, "symbol": "EURUSD", "position": res.order, "sl": sl}
    )
    assert mod is not None and mod.retcode == P.TRADE_RETCODE_DONE
    pos = term.positions_get(ticket=res.order)
    assert pos is not None and pos[0].sl == sl


def test_same_calls_then_same_results(feed: SyntheticFeed) -> None:
    def run() -> list[Any]:
        clk = Clock(THURSDAY)
        t = SimulatedTerminal(feed, clock=clk)
        t.initialize()
        out: list[Any] = [t.order_send(_deal(volume=0.2))]
        clk.now += 7200
        out.append(t.order_send(_deal(volume=0.2, side=P.ORDER_TYPE_SELL, position=out[0].order)))
        out.append(t.account_info())
        return out

    assert run() == run()


# --- export feed --------------------------------------------------------------------------


def _export_dir(tmp_path: Path) -> Path:
    rows = ["time,open,high,low,close,tick_volume,spread,real_volume"]
    t0 = 1_736_157_600  # 2025-01-06 10:00 server time
    price = 1.03
    for k in range(48):  # four hours of M5
        o = round(price, 5)
        price += 0.0001 * ((k % 5) - 2)
        c = round(price, 5)
        rows.append(
            f"{t0 + 300 * k},{o},{max(o, c) + 0.0002:.5f},{min(o, c) - 0.0002:.5f},{c},100,15,0"
        )
    (tmp_path / "EURUSD_M5__unit.csv").write_text("\n".join(rows) + "\n")
    return tmp_path


def test_export_feed_then_bars_ticks_and_aggregation(tmp_path: Path) -> None:
    folder = _export_dir(tmp_path)
    feed = ExportFeed(folder, server_utc_offset_hours=2)
    assert isinstance(feed, BarFeed) and feed.symbols() == ["EURUSD"]
    assert feed.base_timeframe("EURUSD") == "M5"
    t0 = 1_736_157_600
    assert feed.span_utc("EURUSD") == (t0 - OFF, t0 + 48 * 300 - OFF)
    clock = Clock(t0 - OFF + 3600 + 30)  # 30 s into the 11:00 server bar
    term = SimulatedTerminal(feed, clock=clock)
    term.initialize()
    h1 = term.copy_rates_from_pos("EURUSD", P.TIMEFRAME_H1, 0, 10)
    assert h1 is not None and h1["time"].tolist() == [t0, t0 + 3600]
    m5 = read_export(folder / "EURUSD_M5__unit.csv").rates
    tick = term.symbol_info_tick("EURUSD")
    assert tick is not None and tick.bid == m5["close"][11] and tick.time == t0 + 3600
    res = term.order_send(_deal())
    assert res is not None and res.retcode == P.TRADE_RETCODE_DONE
    clock.now = t0 - OFF + 5 * 3600  # after the last bar: no bar now
    res = term.order_send(_deal())
    assert res is not None and res.retcode == P.TRADE_RETCODE_MARKET_CLOSED
    listed = ExportFeed([read_export(folder / "EURUSD_M5__unit.csv")])
    assert listed.rates("EURUSD", "M15", 0, 2**40).shape == (16,)


# --- gateway ------------------------------------------------------------------------------


def test_gateway_sim_then_initialized_terminal(tmp_path: Path) -> None:
    term = open_terminal("sim", clock=lambda: THURSDAY, login=7, server="Paper")
    assert isinstance(term, SimulatedTerminal) and isinstance(term, P.Terminal)
    acc = term.account_info()
    assert acc is not None and (acc.login, acc.server) == (7, "Paper")
    from_folder = open_terminal("sim", sim_feed=_export_dir(tmp_path))
    assert from_folder.symbol_info_tick("EURUSD") is not None


def test_gateway_native_without_package_then_runtime_error_naming_platform(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "MetaTrader5", None)  # makes the import fail
    with pytest.raises(RuntimeError, match=sys.platform):
        open_terminal("native")


def test_gateway_native_then_credentials_reach_initialize_and_auth_failure_raised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from engine.mt5.resilient import ResilientTerminal
    from engine.mt5.simserver import sim_module

    calls: list[tuple[Any, ...]] = []
    fake = sim_module(SimulatedTerminal(SyntheticFeed(end_utc=THURSDAY)))
    real_init = fake.initialize
    fake.ok = True  # type: ignore[attr-defined]

    def initialize(*args: Any, **kwargs: Any) -> bool:
        calls.append((args, kwargs))
        real_init()
        return bool(fake.ok)  # type: ignore[attr-defined]

    fake.initialize = initialize  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "MetaTrader5", fake)
    term = open_terminal(
        "native", path="C:/mt5/terminal64.exe", login=123, password="pw", server="Demo"
    )
    assert isinstance(term, ResilientTerminal) and isinstance(term, P.Terminal)
    assert calls == [
        (("C:/mt5/terminal64.exe",), {"login": 123, "password": "pw", "server": "Demo"})
    ]
    assert term.symbol_info_tick("EURUSD") is not None
    fake.ok = False  # type: ignore[attr-defined]
    fake.last_error = lambda: (-6, "Terminal: Authorization failed")  # type: ignore[attr-defined]
    slept: list[float] = []
    with pytest.raises(P.TerminalError) as err:
        open_terminal("native", sleep=slept.append)
    assert err.value.last_error == (-6, "Terminal: Authorization failed")
    assert slept == []  # an authorization failure is not retried


def test_gateway_bridge_without_mt5linux_then_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mt5linux", None)
    with pytest.raises(RuntimeError, match="mt5linux"):
        open_terminal("bridge")


def test_gateway_unknown_mode_then_value_error() -> None:
    with pytest.raises(ValueError, match="unknown terminal mode"):
        open_terminal("paper")
