"""The simulated terminal's incremental state (base-bar windows, the deal index, the per-instant
memo) gives exactly the answers of the reference path that reads the feed and scans the deals
on every call (``SimulatedTerminal(..., indexed=False)``), and reads the feed once per window
instead of once per call."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.mt5 import protocol as P
from engine.mt5.exports import Export
from engine.mt5.sim import BarFeed, ExportFeed, SimulatedTerminal, SyntheticFeed
from engine.mt5.synthetic import ORIGIN_UTC, synthetic_rates
from engine.mt5.synthetic import SYMBOLS as SPECS

pytestmark = pytest.mark.unit

DAY = 86_400
OFF = 2 * 3600
SYMBOLS = ["EURUSD", "GBPUSD", "USDJPY", "XAUUSD"]
START = ORIGIN_UTC + 9 * DAY + 8 * 3600  # Wednesday 2024-01-10 08:00 UTC


class Clock:
    """A settable UTC clock."""

    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def utc(self) -> float:
        return float(self.now)

    def set(self, t: int) -> None:
        self.now = int(t)


def _feed(kind: str) -> BarFeed:
    """The synthetic market, or MT5 exports (M5 only: other timeframes are aggregated) of
    the same bars over the script's months."""
    if kind == "synthetic":
        return SyntheticFeed(seed=7, symbols=SYMBOLS)
    return ExportFeed(
        [
            Export(
                s,
                "M5",
                synthetic_rates(s, "M5", START - 30 * DAY, START + 90 * DAY),
                Path(f"{s}_M5.csv"),
                digits=SPECS[s].digits,
            )
            for s in SYMBOLS
        ]
    )


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (
            isinstance(a, np.ndarray)
            and isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and a.tobytes() == b.tobytes()
        )
    return bool(a == b)


class Pair:
    """The reference and the indexed terminal, driven by one clock reading each, compared on
    every answer and every ``last_error()``."""

    def __init__(self, now: int, feed: str = "synthetic", **kw: Any) -> None:
        self.ref_clock, self.new_clock = Clock(now), Clock(now)
        self.ref = SimulatedTerminal(_feed(feed), clock=self.ref_clock, indexed=False, **kw)
        self.new = SimulatedTerminal(_feed(feed), clock=self.new_clock, **kw)
        assert self.ref.initialize() and self.new.initialize()
        self.calls = 0

    def set_time(self, t: int) -> None:
        self.ref_clock.now = self.new_clock.now = t

    def call(self, name: str, *args: Any, **kw: Any) -> Any:
        a = getattr(self.ref, name)(*args, **kw)
        b = getattr(self.new, name)(*args, **kw)
        self.calls += 1
        assert _same(a, b), f"{name}{args}{kw}: reference {a!r} != indexed {b!r}"
        assert self.ref.last_error() == self.new.last_error(), name
        return a

    def check_all(self) -> None:
        """Every query the engine makes (and a few more), on every symbol."""
        now_srv = self.ref_clock.now + OFF
        self.call("time_current")
        self.call("account_info")
        self.call("positions_total")
        positions = self.call("positions_get")
        for p in positions[:3]:
            self.call("positions_get", ticket=p.ticket)
            self.call("history_deals_get", position=p.ticket)
        for s in SYMBOLS:
            self.call("positions_get", symbol=s)
            self.call("symbol_info", s)
            self.call("symbol_info_tick", s)
            self.call("copy_rates_from_pos", s, P.TIMEFRAME_M5, 0, 3)
            self.call("copy_rates_from_pos", s, P.TIMEFRAME_M5, 1, 15)
            self.call("copy_rates_from_pos", s, P.TIMEFRAME_H1, 1, 5)
            self.call("copy_rates_from", s, P.TIMEFRAME_M5, now_srv - 3600, 10)
        for lo, hi in (
            (now_srv - 2 * DAY, now_srv + 2 * DAY),
            (0, now_srv + DAY),
            (now_srv - 3600, now_srv),
            (now_srv - 600, now_srv - 300),
        ):
            self.call("history_deals_get", lo, hi)
        deals = self.ref.history_deals_get(0, now_srv + DAY) or ()
        for d in deals[-3:]:
            self.call("history_deals_get", ticket=d.order)


def _order(rng: random.Random, pair: Pair) -> dict[str, Any]:
    """A random request: open (some with stops close enough to be hit), close, partial close,
    stops change, or an invalid one."""
    sym = rng.choice(SYMBOLS)
    tick = pair.ref.symbol_info_tick(sym)
    info = pair.ref.symbol_info(sym)
    positions = pair.ref.positions_get() or ()
    kind = rng.choice(
        ["open", "open_stops", "open_stops", "close", "close", "partial", "sltp", "invalid"]
    )
    base = {
        "action": P.TRADE_ACTION_DEAL,
        "symbol": sym,
        "type_filling": P.ORDER_FILLING_IOC,
        "deviation": 10,
        "magic": 7,
        "comment": f"c{rng.randrange(1000)}",
    }
    side = rng.choice([P.ORDER_TYPE_BUY, P.ORDER_TYPE_SELL])
    if kind in ("open", "open_stops") or not positions:
        req = {**base, "type": side, "volume": rng.choice([0.01, 0.05, 0.1, 0.3])}
        if kind == "open_stops" and tick is not None and info is not None:
            d = rng.randint(5, 60) * info.point
            sign = 1 if side == P.ORDER_TYPE_BUY else -1
            ref = tick.bid if side == P.ORDER_TYPE_BUY else tick.ask
            req["sl"] = round(ref - sign * d, info.digits)
            req["tp"] = round(ref + sign * 1.5 * d, info.digits)
        return req
    p = rng.choice(positions)
    close = P.ORDER_TYPE_SELL if p.type == P.POSITION_TYPE_BUY else P.ORDER_TYPE_BUY
    if kind == "close":
        return {**base, "symbol": p.symbol, "type": close, "volume": p.volume, "position": p.ticket}
    if kind == "partial":
        vol = round(max(0.01, round(p.volume / 2, 2)), 2)
        return {**base, "symbol": p.symbol, "type": close, "volume": vol, "position": p.ticket}
    if kind == "sltp":
        pt = pair.ref.symbol_info(p.symbol).point  # type: ignore[union-attr]
        sign = 1 if p.type == P.POSITION_TYPE_BUY else -1
        d = rng.randint(5, 80) * pt
        return {
            "action": P.TRADE_ACTION_SLTP,
            "symbol": p.symbol,
            "position": p.ticket,
            "sl": round(p.price_current - sign * d, 5) if rng.random() < 0.7 else 0.0,
            "tp": round(p.price_current + sign * d, 5) if rng.random() < 0.5 else 0.0,
        }
    return {**base, "type": side, "volume": 0.015}  # not a multiple of the volume step


@pytest.mark.parametrize("feed", ["synthetic", "exports"])
def test_scripted_session_when_indexed_then_every_answer_equals_the_reference(feed: str) -> None:
    # Arrange: two terminals on the same market and clock, a seeded script of clock moves
    # (bar steps, hours, a weekend, a step back) and orders (opens with stops that get hit,
    # closes, partial closes, stop changes, invalid requests)
    rng = random.Random(20260106)
    pair = Pair(START, feed, balance=100_000.0)
    now = START
    steps = [300] * 12 + [60, 7 * 60, 3600, 6 * 3600, 2 * DAY, -600]
    # Act / Assert: after every move and every order, every answer is identical
    for _ in range(400):
        now += rng.choice(steps)
        pair.set_time(now)
        for _ in range(rng.choice([0, 0, 1, 1, 2])):
            req = _order(rng, pair)
            if rng.random() < 0.15:
                pair.call("order_check", req)
            pair.call("order_send", req)
        pair.check_all()
    deals = pair.ref.history_deals_get(0, now + OFF + DAY)
    assert deals is not None and len(deals) > 80  # the script traded, and stops filled
    assert {d.reason for d in deals} >= {P.DEAL_REASON_EXPERT, P.DEAL_REASON_SL, P.DEAL_REASON_TP}
    assert pair.calls > 10_000


def test_session_without_clock_when_indexed_then_answers_equal_the_reference() -> None:
    # Arrange: clock-less terminals (they stand at the end of the feed's history)
    end = START + 20 * DAY
    ref = SimulatedTerminal(SyntheticFeed(seed=3, symbols=SYMBOLS, end_utc=end), indexed=False)
    new = SimulatedTerminal(SyntheticFeed(seed=3, symbols=SYMBOLS, end_utc=end))
    assert ref.initialize() and new.initialize()
    req = {
        "action": P.TRADE_ACTION_DEAL,
        "symbol": "USDJPY",
        "volume": 0.2,
        "type": P.ORDER_TYPE_SELL,
        "type_filling": P.ORDER_FILLING_FOK,
    }
    # Act / Assert
    for t in (ref, new):
        assert t.order_send(req).retcode == P.TRADE_RETCODE_DONE  # type: ignore[union-attr]
    assert ref.account_info() == new.account_info()
    assert ref.positions_get() == new.positions_get()
    for s in SYMBOLS:
        assert ref.symbol_info_tick(s) == new.symbol_info_tick(s)
        assert _same(
            ref.copy_rates_from_pos(s, P.TIMEFRAME_M5, 1, 20),
            new.copy_rates_from_pos(s, P.TIMEFRAME_M5, 1, 20),
        )


class CountingFeed(SyntheticFeed):
    """The synthetic feed, counting how many times its bars are read."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.reads = 0

    def rates(self, symbol: str, timeframe: str, start_utc: int, end_utc: int) -> np.ndarray:
        self.reads += 1
        return super().rates(symbol, timeframe, start_utc, end_utc)


def test_clock_advancing_bar_by_bar_when_indexed_then_the_feed_is_read_once_per_window() -> None:
    # Arrange: four weeks of M5 bar closes, the calls the engine makes on each bar
    feed = CountingFeed(seed=7, symbols=SYMBOLS)
    clock = Clock(START)
    term = SimulatedTerminal(feed, clock=clock)
    assert term.initialize()
    bars = 4 * 7 * 288
    # Act
    for i in range(bars):
        clock.now = START + 300 * i
        term.account_info()
        for s in SYMBOLS:
            term.symbol_info_tick(s)
            term.copy_rates_from_pos(s, P.TIMEFRAME_M5, 1, 15)
        term.history_deals_get(clock.now + OFF - 2 * DAY, clock.now + OFF + 2 * DAY)
    # Assert: a window of base bars per symbol per week, not a read per call
    assert feed.reads <= len(SYMBOLS) * 6
    assert bars * len(SYMBOLS) * 2 > 100 * feed.reads


def test_engine_backtest_when_terminal_indexed_then_journal_equals_the_reference_terminal(
    tmp_path: Path,
) -> None:
    # Arrange: the engine (ATR stops on, so SL fills happen) on both terminals, one model
    from engine.backtest import ArrayFeatureSource, bar_closes, run_backtest
    from engine.config import RiskLimits, SizingConfig
    from engine.journal import Journal
    from engine.loop import Engine
    from engine.serving_client import OnnxModel
    from tests.unit.engine_bundles import linear_bundle, synthetic_features

    start, end = START, START + DAY
    names, tables = synthetic_features(["EURUSD", "USDJPY"], start, end)
    model = OnnxModel.from_dir(linear_bundle(tmp_path / "bundle", names))
    journals = []
    for indexed in (False, True):
        clock = Clock(end)
        term = SimulatedTerminal(
            SyntheticFeed(seed=7, symbols=SYMBOLS), clock=clock, indexed=indexed
        )
        assert term.initialize()
        closes = bar_closes(term, ["EURUSD", "USDJPY"], P.TIMEFRAME_M5, start, end, 2)
        engine = Engine(
            terminal=term,
            features=ArrayFeatureSource(names, tables, clock=clock.utc),
            model=model,
            journal=Journal(":memory:"),
            limits=RiskLimits(max_consecutive_losses=0, daily_loss_limit=0.5, max_drawdown=0.9),
            sizing=SizingConfig(fixed_lots=0.1, stop_atr_mult=1.0, take_profit_atr_mult=1.5),
            magic=11,
            clock=clock.utc,
            sleep=lambda s: None,
        )
        # Act
        run_backtest(engine, closes, ["EURUSD", "USDJPY"], clock.set)
        rows = [{k: v for k, v in r.items() if k != "latency_ms"} for r in engine.journal.rows()]
        deals = term.history_deals_get(0, end + OFF + DAY) or ()
        journals.append((rows, deals, term.account_info()))
    # Assert
    (ref_rows, ref_deals, ref_acct), (new_rows, new_deals, new_acct) = journals
    assert len(ref_rows) == 2 * len(closes) and new_rows == ref_rows
    assert new_deals == ref_deals and new_acct == ref_acct
    assert any(d.reason == P.DEAL_REASON_SL for d in ref_deals)  # stops filled on the way
