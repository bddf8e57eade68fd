"""A simulated MT5 terminal over a bar feed: the embedded default for demos, paper trading,
backtests and tests.

:class:`SimulatedTerminal` implements :class:`~engine.mt5.protocol.Terminal` with the
official module's semantics where they matter to TitanovaX:

* **Time.** ``clock()`` returns the current UTC epoch seconds; the terminal speaks broker
  server time (UTC + a fixed ``server_utc_offset_hours``). Without a clock all history is
  visible and "now" is the end of the feed's history (the market counts as open there, so
  paper orders fill at the last close).
* **Bars.** ``copy_rates_range`` takes datetimes or ints as *server* time, like the
  terminal, inclusive at both ends, and returns only bars whose open time is <= now; the
  still-forming bar is returned (with its final values: the simulator does not build bars
  tick by tick, so consumers must ignore it as they should with a real terminal).
  ``copy_rates_from_pos`` counts back from the forming bar (pos 0), oldest first. A datetime
  without tzinfo is read as a server wall clock (the real module would apply the local time
  zone; don't rely on that in either).
* **Prices.** The tick is the close of the last *closed* bar of the feed's base timeframe:
  ``bid = close``, ``ask = bid + spread * point`` of that bar, ``time`` = its close time
  (server). No lookahead into the forming bar.
* **Trading.** A retail *hedging* USD account with market execution. ``order_send`` handles
  ``TRADE_ACTION_DEAL`` (open, or close/partially close a position given by ``position``)
  and ``TRADE_ACTION_SLTP``; fills are at ask (buy) / bid (sell) moved against the trader by
  ``slippage_points``, plus, with a ``slippage`` process (:mod:`engine.mt5.slippage`), a
  state-dependent random draw (spread, volatility, size, hour) that answers 10004 REQUOTE when
  it exceeds the request's ``deviation``; without one, ``price`` and ``deviation`` are
  validated but, as in market execution, not used for the fill. Positions with ``sl``/``tp`` are closed when a closed
  base bar touches them (checked lazily at each call), starting with the bar that was
  forming at entry (SL first when both are touched in one bar; a gap fills at the bar's
  open; the deal is stamped with the bar's open time, or the entry time if later). Retcodes: 10009 done, 10013 invalid
  request, 10014 invalid volume, 10016 invalid stops, 10018 market closed (no bar at the
  current time), 10019 no money, 10030 unsupported filling, 10036 position closed/not
  found; ``order_check`` returns 0 when a request would pass. Profit and margin
  (``volume * contract * price / leverage``) are converted to USD through the feed's
  ``USDxxx``/``xxxUSD`` rates at the current tick (1:1 with a warning when it has none).
  No commission or swap.
* **Errors.** Failing calls return ``None`` and set ``last_error()`` to
  ``(RES_E_NOT_FOUND, …)`` for an unknown symbol, ``(RES_E_INVALID_PARAMS, …)`` for a bad
  argument, ``(RES_E_NO_IPC, …)`` before ``initialize()``.

Everything is deterministic and single-threaded: the same feed, clock readings and calls
give the same tickets, prices and balances.

**Cost per call.** A backtest asks for quotes, the account, positions and deals on every bar,
so these answer from state kept incrementally rather than from the whole history: per symbol
a window of base bars around the clock (refetched when the clock leaves it; a quote is two
binary searches in it), the open positions, and the deals indexed by time, order and position
(a time range is a binary search plus the deals in it). Answers derived from the clock and the
account (the account, positions, symbol infos, ticks) are memoised for the current clock
reading until the account changes. The cost of a call therefore does not grow with the length
of the run. ``SimulatedTerminal(..., indexed=False)`` answers every call from the feed and the
deal list directly, as the reference the indexed answers are tested against
(``tests/unit/test_mt5_sim_indexed.py``); both give identical results.
"""

from __future__ import annotations

import calendar
import logging
import math
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from operator import attrgetter
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

from engine.mt5.exports import Export, parse_column_source, read_export, scan_exports
from engine.mt5.protocol import (
    ACCOUNT_MARGIN_MODE_RETAIL_HEDGING,
    ACCOUNT_STOPOUT_MODE_PERCENT,
    ACCOUNT_TRADE_MODE_DEMO,
    DEAL_ENTRY_IN,
    DEAL_ENTRY_OUT,
    DEAL_REASON_EXPERT,
    DEAL_REASON_SL,
    DEAL_REASON_TP,
    ORDER_FILLING_FOK,
    ORDER_FILLING_IOC,
    ORDER_FILLING_RETURN,
    ORDER_TYPE_BUY,
    ORDER_TYPE_SELL,
    POSITION_REASON_EXPERT,
    RATES_DTYPE,
    RES_E_FAIL,
    RES_E_INVALID_PARAMS,
    RES_E_NO_IPC,
    RES_E_NOT_FOUND,
    RES_S_OK,
    SYMBOL_CALC_MODE_FOREX,
    SYMBOL_FILLING_FOK,
    SYMBOL_FILLING_IOC,
    SYMBOL_TRADE_EXECUTION_MARKET,
    SYMBOL_TRADE_MODE_FULL,
    TICK_FLAG_ASK,
    TICK_FLAG_BID,
    TIMEFRAMES,
    TRADE_ACTION_DEAL,
    TRADE_ACTION_SLTP,
    TRADE_RETCODE_DONE,
    TRADE_RETCODE_INVALID,
    TRADE_RETCODE_INVALID_FILL,
    TRADE_RETCODE_INVALID_STOPS,
    TRADE_RETCODE_INVALID_VOLUME,
    TRADE_RETCODE_MARKET_CLOSED,
    TRADE_RETCODE_NO_MONEY,
    TRADE_RETCODE_POSITION_CLOSED,
    TRADE_RETCODE_REQUOTE,
    AccountInfo,
    OrderCheckResult,
    OrderSendResult,
    SymbolInfo,
    TerminalInfo,
    Tick,
    TradeDeal,
    TradeOrder,
    TradePosition,
    TradeRequest,
    timeframe_seconds,
)
from engine.mt5.slippage import SlippageProcess
from engine.mt5.synthetic import (
    ORIGIN_UTC,
    SYMBOLS,
    SymbolSpec,
    SyntheticMarket,
    aggregate_rates,
    symbol_spec,
)
from engine.sizing import return_volatility

__all__ = ["BarFeed", "ExportFeed", "SimulatedTerminal", "SyntheticFeed"]

logger = logging.getLogger(__name__)

DEFAULT_SYNTHETIC_END_UTC = 1_767_225_600
"""2026-01-01 00:00 UTC: where a clock-less terminal over a :class:`SyntheticFeed` stands."""

_TF_NAMES: dict[int, str] = {v: k for k, v in TIMEFRAMES.items()}
_LOOKBACK = 14 * 86_400  # how far back to look for the last closed bar before widening
_AHEAD = 7 * 86_400  # how far past the clock a base-bar window reaches (refetched beyond)
_COMMENT_MAX = 31
_REQUEST_FIELDS = frozenset(TradeRequest._fields)


# --- feeds ------------------------------------------------------------------------------------


@runtime_checkable
class BarFeed(Protocol):
    """Where a :class:`SimulatedTerminal` gets its bars.

    ``rates`` returns :data:`RATES_DTYPE` bars whose open time (UTC) is in
    ``[start_utc, end_utc)``, with ``time`` in server time; it raises ``KeyError`` for an
    unknown symbol or a timeframe it cannot provide. ``base_timeframe`` is the finest
    timeframe, which drives ticks, fills and SL/TP; ``span_utc`` is ``[first bar open, end)``
    of the history (the end is where a clock-less terminal stands). A feed's history is
    immutable: the same range always gives the same bars, whenever it is asked (the terminal
    keeps windows of base bars).
    """

    def symbols(self) -> list[str]: ...
    def spec(self, symbol: str) -> SymbolSpec: ...
    def rates(self, symbol: str, timeframe: str, start_utc: int, end_utc: int) -> np.ndarray: ...
    def base_timeframe(self, symbol: str) -> str: ...
    def span_utc(self, symbol: str) -> tuple[int, int]: ...


class SyntheticFeed:
    """A :class:`BarFeed` over :class:`~engine.mt5.synthetic.SyntheticMarket` (base M5).

    ``end_utc`` bounds the history (``None``: unbounded, so a wall clock can run on; a
    clock-less terminal then stands at :data:`DEFAULT_SYNTHETIC_END_UTC`).
    """

    def __init__(
        self,
        seed: int = 7,
        symbols: Iterable[str] | None = None,
        server_utc_offset_hours: int = 2,
        *,
        end_utc: int | None = None,
    ) -> None:
        names = list(SYMBOLS) if symbols is None else list(symbols)
        unknown = [s for s in names if s not in SYMBOLS]
        if unknown:
            raise KeyError(f"no synthetic market for {unknown}; known: {sorted(SYMBOLS)}")
        self.seed = seed
        self.server_utc_offset_hours = server_utc_offset_hours
        self.end_utc = end_utc
        self._symbols = names
        self._market = SyntheticMarket(seed)

    def symbols(self) -> list[str]:
        return list(self._symbols)

    def spec(self, symbol: str) -> SymbolSpec:
        self._check(symbol)
        return symbol_spec(symbol)

    def rates(self, symbol: str, timeframe: str, start_utc: int, end_utc: int) -> np.ndarray:
        self._check(symbol)
        if timeframe not in TIMEFRAMES:
            raise KeyError(f"unsupported timeframe {timeframe!r}")
        if self.end_utc is not None:
            end_utc = min(end_utc, self.end_utc)
        return self._market.rates(
            symbol,
            timeframe,
            start_utc,
            end_utc,
            server_utc_offset_hours=self.server_utc_offset_hours,
        )

    def base_timeframe(self, symbol: str) -> str:
        return "M5"

    def span_utc(self, symbol: str) -> tuple[int, int]:
        return ORIGIN_UTC, self.end_utc if self.end_utc is not None else DEFAULT_SYNTHETIC_END_UTC

    def _check(self, symbol: str) -> None:
        if symbol not in self._symbols:
            raise KeyError(f"unknown symbol {symbol!r}")


class ExportFeed:
    """A :class:`BarFeed` over MT5 exports (:mod:`engine.mt5.exports`).

    ``exports`` is a list of :class:`Export` or a folder scanned with
    :func:`~engine.mt5.exports.scan_exports` (files are read on first use). Export times are
    server time; ``server_utc_offset_hours`` is the fixed offset used to turn them into UTC
    (real servers often follow DST: pick the offset of the period you replay). A timeframe
    missing for a symbol is aggregated from the finest one that divides it.

    ``column_sources`` says where the values of a column a file lacks come from (``{"spread":
    "constant:12"}`` or ``{"spread": "symbol_info"}``: the symbol's typical spread in the
    simulator's symbol table, what its ``symbol_info().spread`` reports); without one such a
    file is refused (:class:`~engine.mt5.exports.MissingColumnError`).
    """

    def __init__(
        self,
        exports: Iterable[Export] | str | Path,
        server_utc_offset_hours: int = 2,
        column_sources: Mapping[str, str] | None = None,
    ) -> None:
        self.server_utc_offset_hours = server_utc_offset_hours
        self._off = int(server_utc_offset_hours) * 3600
        self.column_sources = dict(column_sources or {})
        for spec in self.column_sources.values():
            parse_column_source(spec)  # refuse a bad spec now, not at the first read
        self._exports: dict[tuple[str, str], Export] = {}
        self._paths: dict[tuple[str, str], Path] = {}
        self._data: dict[tuple[str, str], np.ndarray] = {}
        self._times: dict[tuple[str, str], np.ndarray] = {}
        self._digits: dict[str, int] = {}
        if isinstance(exports, str | Path):
            self._paths = scan_exports(exports)
        else:
            for e in exports:
                self._add(e)
        if not self._paths and not self._data:
            raise ValueError("ExportFeed needs at least one export")

    def _add(self, e: Export) -> None:
        self._data[(e.symbol, e.timeframe)] = e.rates
        self._exports[(e.symbol, e.timeframe)] = e
        self._digits.setdefault(e.symbol, e.digits)

    def _fill(self, symbol: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for col, spec in self.column_sources.items():
            kind, value = parse_column_source(spec)
            if kind == "constant" and value is not None:
                out[col] = value
            elif col == "spread":
                out[col] = symbol_spec(symbol).spread_points
            else:
                raise ValueError(f"{col} source {spec!r}: symbol_info has no {col}; use constant:N")
        return out

    def export(self, symbol: str, timeframe: str) -> Export | None:
        """The parsed export file of ``symbol``/``timeframe`` (with its rejected and repaired
        lines), or ``None`` when that pair has no file of its own (aggregated or unknown)."""
        key = (symbol, timeframe)
        if key not in self._exports and key in self._paths:
            self._load(symbol, timeframe)
        return self._exports.get(key)

    def _available(self, symbol: str) -> list[str]:
        tfs = {tf for (s, tf) in (*self._paths, *self._data) if s == symbol}
        return sorted(tfs, key=timeframe_seconds)

    def _load(self, symbol: str, timeframe: str) -> np.ndarray:
        key = (symbol, timeframe)
        arr = self._data.get(key)
        if arr is not None:
            return arr
        path = self._paths.get(key)
        if path is not None:
            e = read_export(path, symbol, timeframe, fill=self._fill(symbol))
            self._add(e)
            return e.rates
        if timeframe not in TIMEFRAMES:
            raise KeyError(f"unsupported timeframe {timeframe!r}")
        target = timeframe_seconds(timeframe)
        for src in self._available(symbol):
            s = timeframe_seconds(src)
            if s < target and target % s == 0:
                agg = aggregate_rates(self._load(symbol, src), timeframe)
                self._data[key] = agg
                return agg
        raise KeyError(f"no {timeframe} bars for {symbol!r} (have {self._available(symbol)})")

    def symbols(self) -> list[str]:
        return sorted({s for (s, _) in (*self._paths, *self._data)})

    def spec(self, symbol: str) -> SymbolSpec:
        tfs = self._available(symbol)
        if not tfs:
            raise KeyError(f"unknown symbol {symbol!r}")
        if symbol not in self._digits:
            self._load(symbol, tfs[0])
        return symbol_spec(symbol, self._digits.get(symbol))

    def rates(self, symbol: str, timeframe: str, start_utc: int, end_utc: int) -> np.ndarray:
        arr = self._load(symbol, timeframe)
        t = self._times.get((symbol, timeframe))
        if t is None or len(t) != len(arr):  # a contiguous key: O(log n) search, no column copy
            t = self._times[(symbol, timeframe)] = np.ascontiguousarray(arr["time"], np.int64)
        i0 = np.searchsorted(t, start_utc + self._off, "left")
        i1 = np.searchsorted(t, end_utc + self._off, "left")
        return arr[i0:i1].copy()

    def base_timeframe(self, symbol: str) -> str:
        tfs = self._available(symbol)
        if not tfs:
            raise KeyError(f"unknown symbol {symbol!r}")
        return tfs[0]

    def span_utc(self, symbol: str) -> tuple[int, int]:
        tf = self.base_timeframe(symbol)
        arr = self._load(symbol, tf)
        if len(arr) == 0:
            return 0, 0
        return (
            int(arr["time"][0]) - self._off,
            int(arr["time"][-1]) + timeframe_seconds(tf) - self._off,
        )


# --- the terminal -----------------------------------------------------------------------------


class _Window(NamedTuple):
    """Every base bar of one symbol with UTC open time in ``[lo, hi)``. The open times,
    closes and spreads are also kept as Python lists: a quote is then two ``bisect`` calls
    and two list reads (a ``searchsorted`` and a field read of the structured array cost
    several microseconds each, on every quote)."""

    lo: int
    hi: int
    bars: np.ndarray  # RATES_DTYPE, server times
    t: np.ndarray  # UTC open times (int64)
    t_list: list[int]
    close: list[float]
    spread: list[int]


@dataclass
class _Quote:
    """The market of one symbol at one instant."""

    bid: float
    ask: float
    spread: int
    time: int  # server time of the tick (close of the last closed base bar)
    open: bool  # a base bar exists at the current time (trading is possible)
    closed_end_utc: int  # UTC close time of the last closed base bar


@dataclass
class _Position:
    ticket: int
    symbol: str
    type: int
    volume: float
    price_open: float
    time: int
    magic: int
    comment: str
    sl: float
    tp: float
    time_update: int
    check_from_utc: int  # first base bar (UTC open time) not yet checked for SL/TP


class _Reject(Exception):
    def __init__(self, retcode: int, comment: str) -> None:
        super().__init__(comment)
        self.retcode = retcode
        self.comment = comment


@dataclass
class _Plan:
    action: int
    request: TradeRequest
    spec: SymbolSpec
    quote: _Quote
    price: float = 0.0
    margin: float = 0.0
    position: _Position | None = None


class SimulatedTerminal:
    """An MT5 terminal simulated over a :class:`BarFeed` (see the module docstring)."""

    venue_kind = "sim"  # the fills' venue is "sim:<login>"

    def __init__(
        self,
        feed: BarFeed,
        *,
        clock: Callable[[], int] | None = None,
        server_utc_offset_hours: int = 2,
        balance: float = 10_000.0,
        leverage: int = 100,
        slippage_points: int = 0,
        filling_mode: int = SYMBOL_FILLING_FOK | SYMBOL_FILLING_IOC,
        login: int = 50_000_001,
        server: str = "TitanovaX-Sim",
        name: str = "TitanovaX Simulator",
        company: str = "TitanovaX",
        indexed: bool = True,
        slippage: SlippageProcess | None = None,
    ) -> None:
        if leverage < 1:
            raise ValueError("leverage must be >= 1")
        if slippage_points < 0:
            raise ValueError("slippage_points must be >= 0")
        self.feed = feed
        self.clock = clock
        self.server_utc_offset_hours = int(server_utc_offset_hours)
        self.leverage = int(leverage)
        self.slippage_points = int(slippage_points)
        self.slippage = slippage  # state-dependent slippage of fills (engine.mt5.slippage)
        self.filling_mode = int(filling_mode)
        self.login = int(login)
        self.server = server
        self.name = name
        self.company = company
        self._off = self.server_utc_offset_hours * 3600
        self._balance = float(balance)
        self._initialized = False
        self._error: tuple[int, str] = (RES_S_OK, "Success")
        self._selected: set[str] = set()
        self._positions: dict[int, _Position] = {}
        self._deals: list[TradeDeal] = []
        self._next_order = 1_000_001
        self._next_deal = 2_000_001
        self._request_id = 0
        self._quotes: dict[str, _Quote | None] = {}
        self._quotes_at: int | None = None
        self._warned_ccy: set[str] = set()
        # incremental state (see "Cost per call" in the module docstring)
        self.indexed = bool(indexed)
        self._symset: frozenset[str] | None = None
        self._specs: dict[str, SymbolSpec] = {}
        self._bases: dict[str, tuple[str, int]] = {}
        # symbol -> its window of base bars around the clock
        self._windows: dict[str, _Window] = {}
        self._deal_times: list[int] = []  # deal times (server), sorted
        self._deals_by_time: list[TradeDeal] = []  # the deals in that order
        self._deals_in_time_order = True  # every deal so far was later than those before it
        self._with_stops: set[int] = set()  # tickets of open positions with an SL or TP
        self._by_order: dict[int, list[int]] = {}
        self._by_position: dict[int, list[int]] = {}
        self._memo: dict[Any, Any] = {}  # answers for the clock reading _memo_at
        self._memo_at: int | None = None

    # -- session -------------------------------------------------------------------------------

    def initialize(self, *args: Any, **kwargs: Any) -> bool:
        """Connect (always succeeds; path/login/password/server are accepted and ignored)."""
        self._initialized = True
        return self._ok(True)

    def shutdown(self) -> None:
        """Disconnect; the account (balance, positions, deals) is kept."""
        self._initialized = False

    def last_error(self) -> tuple[int, str]:
        return self._error

    def time_current(self) -> int | None:
        """Server time now (epoch seconds), like MQL5 ``TimeCurrent()``; ``None`` without a
        clock."""
        now = self._now_utc()
        return None if now is None else now + self._off

    # -- symbols -------------------------------------------------------------------------------

    def symbols_get(self) -> tuple[str, ...] | None:
        """Names of the symbols the feed provides (the official call returns infos)."""
        if not self._ready():
            return None
        return self._ok(tuple(self.feed.symbols()))

    def symbol_select(self, symbol: str, enable: bool = True) -> bool:
        if not self._ready():
            return False
        if not self._known(symbol):
            return False
        (self._selected.add if enable else self._selected.discard)(symbol)
        self._changed()
        return self._ok(True)

    def symbol_info(self, symbol: str) -> SymbolInfo | None:
        if not self._ready() or not self._known(symbol):
            return None
        hit = self._memo_get(("info", symbol))
        if hit is not None:
            return self._ok(hit)
        spec = self._spec(symbol)
        q = self._quote(symbol)
        tick_value = self._to_usd(spec.contract_size * spec.point, spec.currency_profit)
        return self._ok(
            SymbolInfo(
                name=symbol,
                path=f"Forex\\{symbol}",
                trade_calc_mode=SYMBOL_CALC_MODE_FOREX,
                trade_exemode=SYMBOL_TRADE_EXECUTION_MARKET,
                trade_tick_value_profit=tick_value,
                trade_tick_value_loss=tick_value,
                swap_rollover3days=3,
                margin_hedged=spec.contract_size,
                description=spec.description,
                currency_base=spec.currency_base,
                currency_profit=spec.currency_profit,
                currency_margin=spec.currency_margin,
                digits=spec.digits,
                point=spec.point,
                spread=q.spread if q else spec.spread_points,
                spread_float=True,
                trade_contract_size=spec.contract_size,
                trade_tick_size=spec.point,
                trade_tick_value=tick_value,
                trade_mode=SYMBOL_TRADE_MODE_FULL,
                trade_stops_level=spec.stops_level,
                trade_freeze_level=spec.freeze_level,
                filling_mode=self.filling_mode,
                volume_min=spec.volume_min,
                volume_max=spec.volume_max,
                volume_step=spec.volume_step,
                bid=q.bid if q else 0.0,
                ask=q.ask if q else 0.0,
                time=q.time if q else 0,
                visible=symbol in self._selected,
                select=symbol in self._selected,
            ),
            memo=("info", symbol),
        )

    def symbol_info_tick(self, symbol: str) -> Tick | None:
        if not self._ready() or not self._known(symbol):
            return None
        hit = self._memo_get(("tick", symbol))
        if hit is not None:
            return self._ok(hit)
        q = self._quote(symbol)
        if q is None:
            return self._fail(RES_E_FAIL, f"no tick for {symbol!r} at the current time")
        return self._ok(
            Tick(
                time=q.time,
                bid=q.bid,
                ask=q.ask,
                last=0.0,
                volume=0,
                time_msc=q.time * 1000,
                flags=TICK_FLAG_BID | TICK_FLAG_ASK,
                volume_real=0.0,
            ),
            memo=("tick", symbol),
        )

    # -- bars ----------------------------------------------------------------------------------

    def copy_rates_range(
        self, symbol: str, timeframe: int, date_from: datetime | int, date_to: datetime | int
    ) -> np.ndarray | None:
        """Bars with server open time in ``[date_from, date_to]`` and open time <= now."""
        tf = self._bars_args(symbol, timeframe)
        if tf is None:
            return None
        try:
            start = self._server_seconds(date_from) - self._off
            end = self._server_seconds(date_to) - self._off + 1
        except TypeError as exc:
            return self._fail(RES_E_INVALID_PARAMS, str(exc))
        end = min(end, self._horizon_utc(symbol))
        if end <= start:
            return self._ok(np.empty(0, dtype=RATES_DTYPE))
        return self._rates(symbol, tf, start, end)

    def copy_rates_from_pos(
        self, symbol: str, timeframe: int, start_pos: int, count: int
    ) -> np.ndarray | None:
        """``count`` bars ending ``start_pos`` bars before the current (forming) bar, oldest
        first."""
        tf = self._bars_args(symbol, timeframe)
        if tf is None:
            return None
        if not _is_int(start_pos) or not _is_int(count) or start_pos < 0 or count < 1:
            return self._fail(RES_E_INVALID_PARAMS, "start_pos must be >= 0 and count >= 1")
        return self._last_bars(symbol, tf, self._horizon_utc(symbol), int(start_pos), int(count))

    def copy_rates_from(
        self, symbol: str, timeframe: int, date_from: datetime | int, count: int
    ) -> np.ndarray | None:
        """``count`` bars with server open time <= ``date_from`` (and <= now), oldest first."""
        tf = self._bars_args(symbol, timeframe)
        if tf is None:
            return None
        if not _is_int(count) or count < 1:
            return self._fail(RES_E_INVALID_PARAMS, "count must be >= 1")
        try:
            end = self._server_seconds(date_from) - self._off + 1
        except TypeError as exc:
            return self._fail(RES_E_INVALID_PARAMS, str(exc))
        return self._last_bars(symbol, tf, min(end, self._horizon_utc(symbol)), 0, int(count))

    # -- account and trading -------------------------------------------------------------------

    def account_info(self) -> AccountInfo | None:
        if not self._ready():
            return None
        self._sync()
        hit = self._memo_get(("account",))
        if hit is not None:
            return self._ok(hit)
        profit, margin = self._floating()
        equity = self._balance + profit
        return self._ok(
            AccountInfo(
                login=self.login,
                trade_mode=ACCOUNT_TRADE_MODE_DEMO,
                leverage=self.leverage,
                limit_orders=200,
                margin_so_mode=ACCOUNT_STOPOUT_MODE_PERCENT,
                trade_allowed=True,
                trade_expert=True,
                margin_mode=ACCOUNT_MARGIN_MODE_RETAIL_HEDGING,
                currency_digits=2,
                fifo_close=False,
                balance=round(self._balance, 2),
                credit=0.0,
                profit=round(profit, 2),
                equity=round(equity, 2),
                margin=round(margin, 2),
                margin_free=round(equity - margin, 2),
                margin_level=round(equity / margin * 100.0, 2) if margin > 0 else 0.0,
                margin_so_call=50.0,
                margin_so_so=30.0,
                margin_initial=0.0,
                margin_maintenance=0.0,
                assets=0.0,
                liabilities=0.0,
                commission_blocked=0.0,
                name=self.name,
                server=self.server,
                currency="USD",
                company=self.company,
            ),
            memo=("account",),
        )

    def positions_total(self) -> int | None:
        if not self._ready():
            return None
        self._sync()
        return self._ok(len(self._positions))

    def positions_get(
        self, symbol: str | None = None, ticket: int | None = None
    ) -> tuple[TradePosition, ...] | None:
        if not self._ready():
            return None
        self._sync()
        if self.indexed and (symbol is not None or ticket is not None):
            key = ("positions", symbol, ticket)
            hit = self._memo_get(key)
            if hit is not None:
                return self._ok(hit)
            every = self.positions_get()
            assert every is not None
            return self._ok(
                tuple(
                    p
                    for p in every
                    if (symbol is None or p.symbol == symbol)
                    and (ticket is None or p.ticket == ticket)
                ),
                memo=key,
            )
        hit = self._memo_get(("positions",))
        if hit is not None:
            return self._ok(hit)
        out = []
        for p in self._positions.values():
            if symbol is not None and p.symbol != symbol:
                continue
            if ticket is not None and p.ticket != ticket:
                continue
            price, profit = self._mark(p)
            out.append(
                TradePosition(
                    ticket=p.ticket,
                    time=p.time,
                    time_msc=p.time * 1000,
                    time_update=p.time_update,
                    time_update_msc=p.time_update * 1000,
                    type=p.type,
                    magic=p.magic,
                    identifier=p.ticket,
                    reason=POSITION_REASON_EXPERT,
                    volume=p.volume,
                    price_open=p.price_open,
                    sl=p.sl,
                    tp=p.tp,
                    price_current=price,
                    swap=0.0,
                    profit=round(profit, 2),
                    symbol=p.symbol,
                    comment=p.comment,
                    external_id="",
                )
            )
        return self._ok(
            tuple(out), memo=("positions",) if symbol is None and ticket is None else None
        )

    def orders_get(
        self, symbol: str | None = None, ticket: int | None = None, group: str | None = None
    ) -> tuple[TradeOrder, ...] | None:
        """Active pending orders: always none (market execution only)."""
        if not self._ready():
            return None
        return self._ok(())

    def terminal_info(self) -> TerminalInfo | None:
        """The simulated terminal's state: connected, trading allowed."""
        if not self._ready():
            return None
        return self._ok(
            TerminalInfo(
                community_account=False,
                community_connection=False,
                connected=True,
                dlls_allowed=False,
                trade_allowed=True,
                tradeapi_disabled=False,
                email_enabled=False,
                ftp_enabled=False,
                notifications_enabled=False,
                mqid=False,
                build=0,
                maxbars=100_000,
                codepage=0,
                ping_last=0,
                community_balance=0.0,
                retransmission=0.0,
                company=self.company,
                name=self.name,
                language="English",
                path="",
                data_path="",
                commondata_path="",
            )
        )

    def history_deals_get(
        self,
        date_from: datetime | int | None = None,
        date_to: datetime | int | None = None,
        *,
        ticket: int | None = None,
        position: int | None = None,
    ) -> tuple[TradeDeal, ...] | None:
        """Deals with server time in ``[date_from, date_to]``; or, as the official keywords,
        the deals of one order (``ticket``) or of one ``position``."""
        if not self._ready():
            return None
        self._sync()
        deals = self._deals
        if self.indexed and (ticket is not None or position is not None):
            if ticket is not None:
                idx = self._by_order.get(ticket, [])
            else:
                idx = self._by_position.get(position, []) if position is not None else []
            return self._ok(
                tuple(deals[i] for i in idx if position is None or deals[i].position_id == position)
            )
        if ticket is not None or position is not None:
            deals = [
                d
                for d in deals
                if (ticket is None or d.order == ticket)
                and (position is None or d.position_id == position)
            ]
            return self._ok(tuple(deals))
        if date_from is None or date_to is None:
            return self._fail(
                RES_E_INVALID_PARAMS, "pass date_from and date_to, or ticket/position"
            )
        try:
            lo, hi = self._server_seconds(date_from), self._server_seconds(date_to)
        except TypeError as exc:
            return self._fail(RES_E_INVALID_PARAMS, str(exc))
        if self.indexed:  # binary search on the time index, then ticket order as the scan gives
            times = self._deal_times
            found = self._deals_by_time[bisect_left(times, lo) : bisect_right(times, hi)]
            if not self._deals_in_time_order:
                found.sort(key=_TICKET)
            return self._ok(tuple(found))
        return self._ok(tuple(d for d in deals if lo <= d.time <= hi))

    def order_check(self, request: dict[str, Any]) -> OrderCheckResult | None:
        """Validate ``request`` as ``order_send`` would; ``retcode`` 0 when it would pass."""
        if not self._ready():
            return None
        if not isinstance(request, Mapping):
            return self._fail(RES_E_INVALID_PARAMS, "request must be a dict")
        self._sync()
        profit, margin = self._floating()
        equity = self._balance + profit
        echo = _echo(request)
        try:
            plan = self._plan(request, echo)
        except _Reject as rej:
            return self._ok(
                OrderCheckResult(
                    rej.retcode,
                    round(self._balance, 2),
                    round(equity, 2),
                    round(profit, 2),
                    round(margin, 2),
                    round(equity - margin, 2),
                    round(equity / margin * 100.0, 2) if margin > 0 else 0.0,
                    rej.comment,
                    echo,
                )
            )
        new_margin = margin + plan.margin
        return self._ok(
            OrderCheckResult(
                0,
                round(self._balance, 2),
                round(equity, 2),
                round(profit, 2),
                round(new_margin, 2),
                round(equity - new_margin, 2),
                round(equity / new_margin * 100.0, 2) if new_margin > 0 else 0.0,
                "Done",
                echo,
            )
        )

    def order_send(self, request: dict[str, Any]) -> OrderSendResult | None:
        """Execute a market deal (open or close) or an SL/TP change; see the module docstring."""
        if not self._ready():
            return None
        if not isinstance(request, Mapping):
            return self._fail(RES_E_INVALID_PARAMS, "request must be a dict")
        self._sync()
        self._request_id += 1
        echo = _echo(request)
        try:
            plan = self._plan(request, echo, draw=True)
        except _Reject as rej:
            known = isinstance(echo.symbol, str) and echo.symbol in self._symbols()
            q = self._quote(echo.symbol) if known else None
            logger.info("order rejected %d: %s (%s)", rej.retcode, rej.comment, echo)
            return self._ok(
                OrderSendResult(
                    retcode=rej.retcode,
                    deal=0,
                    order=0,
                    volume=0.0,
                    price=0.0,
                    bid=q.bid if q else 0.0,
                    ask=q.ask if q else 0.0,
                    comment=rej.comment,
                    request_id=self._request_id,
                    retcode_external=0,
                    request=echo,
                )
            )
        if plan.action == TRADE_ACTION_SLTP:
            assert plan.position is not None
            plan.position.sl, plan.position.tp = echo.sl, echo.tp
            plan.position.time_update = self._now_server(plan.quote)
            if echo.sl > 0 or echo.tp > 0:
                self._with_stops.add(plan.position.ticket)
            else:
                self._with_stops.discard(plan.position.ticket)
            self._changed(account_only=True)
            return self._ok(
                OrderSendResult(
                    TRADE_RETCODE_DONE,
                    0,
                    0,
                    0.0,
                    0.0,
                    plan.quote.bid,
                    plan.quote.ask,
                    "Request executed",
                    self._request_id,
                    0,
                    echo,
                )
            )
        order, deal = self._execute(plan)
        return self._ok(
            OrderSendResult(
                retcode=TRADE_RETCODE_DONE,
                deal=deal,
                order=order,
                volume=echo.volume,
                price=plan.price,
                bid=plan.quote.bid,
                ask=plan.quote.ask,
                comment="Request executed",
                request_id=self._request_id,
                retcode_external=0,
                request=echo,
            )
        )

    # -- internals: errors and arguments -------------------------------------------------------

    def _ok(self, value: Any, memo: tuple[Any, ...] | None = None) -> Any:
        self._error = (RES_S_OK, "Success")
        if memo is not None and self.indexed and self._now_utc() == self._memo_at:
            self._memo[memo] = value
        return value

    def _memo_get(self, key: tuple[Any, ...]) -> Any:
        """The answer memoised under ``key`` at the current clock reading, else ``None``."""
        if not self.indexed:
            return None
        now = self._now_utc()
        if now != self._memo_at:
            self._memo.clear()
            self._memo_at = now
        return self._memo.get(key)

    def _changed(self, *, account_only: bool = False) -> None:
        """The account or the symbol selection changed: forget memoised answers. An order, a
        close or a stop change (``account_only``) keeps the symbol infos and ticks: they
        depend on the clock and the selection only, and the engine asks them again for the
        fill and the next symbol's decision at the same clock reading."""
        if account_only:
            self._memo = {k: v for k, v in self._memo.items() if k[0] in _MARKET_MEMO}
        else:
            self._memo.clear()

    def _fail(self, code: int, message: str) -> Any:
        """Record ``(code, message)`` for ``last_error()``; returns ``None``."""
        self._error = (code, message)
        return None

    def _ready(self) -> bool:
        if not self._initialized:
            self._error = (RES_E_NO_IPC, "No IPC connection: call initialize() first")
            return False
        return True

    def _symbols(self) -> frozenset[str]:
        if self._symset is None or not self.indexed:
            self._symset = frozenset(self.feed.symbols())
        return self._symset

    def _spec(self, symbol: str) -> SymbolSpec:
        spec = self._specs.get(symbol)
        if spec is None or not self.indexed:
            spec = self._specs[symbol] = self.feed.spec(symbol)
        return spec

    def _base(self, symbol: str) -> tuple[str, int]:
        """The symbol's base timeframe and its length in seconds."""
        b = self._bases.get(symbol)
        if b is None or not self.indexed:
            name = self.feed.base_timeframe(symbol)
            b = self._bases[symbol] = (name, timeframe_seconds(name))
        return b

    def _window(self, symbol: str, now: int) -> _Window:
        """A window of base bars holding every bar opened in ``[now - s - _LOOKBACK, now]``."""
        s = self._base(symbol)[1]
        w = self._windows.get(symbol)
        if w is None or not (w.lo <= now - s - _LOOKBACK // 2 and now < w.hi):
            lo, hi = now + 1 - s - _LOOKBACK, now + 1 + _AHEAD
            bars = self.feed.rates(symbol, self._base(symbol)[0], lo, hi)
            t = bars["time"].astype(np.int64) - self._off
            w = _Window(
                lo, hi, bars, t, t.tolist(), bars["close"].tolist(), bars["spread"].tolist()
            )
            self._windows[symbol] = w
        return w

    def _base_bars(self, symbol: str, start_utc: int, end_utc: int) -> np.ndarray:
        """Base bars with UTC open time in ``[start_utc, end_utc)``, from the window when it
        holds them (a slice), else from the feed."""
        if self.indexed:
            now = self._now_utc()
            w = self._windows.get(symbol) if now is None else self._window(symbol, now)
            if w is not None and w.lo <= start_utc and end_utc <= w.hi:
                i0, i1 = bisect_left(w.t_list, start_utc), bisect_left(w.t_list, end_utc)
                return w.bars[i0:i1].copy()
        return self.feed.rates(symbol, self._base(symbol)[0], start_utc, end_utc)

    def _known(self, symbol: Any) -> bool:
        if isinstance(symbol, str) and symbol in self._symbols():
            return True
        self._error = (RES_E_NOT_FOUND, f"symbol {symbol!r} not found")
        return False

    def _bars_args(self, symbol: Any, timeframe: Any) -> str | None:
        if not self._ready() or not self._known(symbol):
            return None
        name = _TF_NAMES.get(timeframe) if _is_int(timeframe) else None
        if name is None:
            return self._fail(RES_E_INVALID_PARAMS, f"invalid timeframe {timeframe!r}")
        return name

    @staticmethod
    def _server_seconds(value: Any) -> int:
        if isinstance(value, datetime):
            if value.tzinfo is None:
                return calendar.timegm(value.timetuple())
            return int(value.timestamp())
        if _is_int(value) or (isinstance(value, float) and math.isfinite(value)):
            return int(value)
        raise TypeError(f"expected a datetime or epoch seconds, got {value!r}")

    # -- internals: time and market ------------------------------------------------------------

    def _now_utc(self) -> int | None:
        return None if self.clock is None else int(self.clock())

    def _horizon_utc(self, symbol: str) -> int:
        """Exclusive bound on bar open times (UTC) visible now."""
        now = self._now_utc()
        return self.feed.span_utc(symbol)[1] if now is None else now + 1

    def _now_server(self, quote: _Quote) -> int:
        now = self._now_utc()
        return quote.time if now is None else now + self._off

    def _rates(self, symbol: str, tf: str, start_utc: int, end_utc: int) -> np.ndarray | None:
        try:
            return self._ok(self.feed.rates(symbol, tf, start_utc, end_utc))
        except KeyError as exc:
            return self._fail(RES_E_NOT_FOUND, str(exc.args[0] if exc.args else exc))

    def _last_bars(
        self, symbol: str, tf: str, end_utc: int, pos: int, count: int
    ) -> np.ndarray | None:
        need = pos + count
        now = self._now_utc()
        if self.indexed and now is not None and tf == self._base(symbol)[0]:
            w = self._window(symbol, now)
            i1 = bisect_left(w.t_list, end_utc)
            if end_utc <= w.hi and i1 >= need:  # the window holds the last `need` bars
                return self._ok(w.bars[i1 - need : i1 - pos].copy())
        first = self.feed.span_utc(symbol)[0] - 7 * 86_400
        window = need * timeframe_seconds(tf) * 3 // 2 + 4 * 86_400
        while True:
            lo = max(end_utc - window, first)
            bars = self._rates(symbol, tf, lo, end_utc)
            if bars is None:
                return None
            if len(bars) >= need or lo <= first:
                break
            window *= 2
        n = len(bars)
        return self._ok(bars[max(0, n - need) : max(0, n - pos)].copy())

    def _quote(self, symbol: str) -> _Quote | None:
        now = self._now_utc()
        if now != self._quotes_at:
            self._quotes.clear()
            self._quotes_at = now
        if symbol not in self._quotes:
            q = self._window_quote(symbol, now) if self.indexed and now is not None else None
            self._quotes[symbol] = q if q is not None else self._make_quote(symbol, now)
        return self._quotes[symbol]

    def _window_quote(self, symbol: str, now: int) -> _Quote | None:
        """The quote from the symbol's window (two binary searches), or ``None`` when the
        window holds no closed bar (the feed is then searched as :meth:`_make_quote` does)."""
        s = self._base(symbol)[1]
        w = self._window(symbol, now)
        i_closed = bisect_right(w.t_list, now - s) - 1  # open + s <= now
        if i_closed < 0:
            return None
        forming = bisect_right(w.t_list, now) - 1 > i_closed
        spec = self._spec(symbol)
        bid = w.close[i_closed]
        spread = w.spread[i_closed]
        t_close = w.t_list[i_closed] + self._off + s
        return _Quote(
            bid=bid,
            ask=round(bid + spread * spec.point, spec.digits),
            spread=spread,
            time=t_close,
            open=forming,
            closed_end_utc=t_close - self._off,
        )

    def _make_quote(self, symbol: str, now: int | None) -> _Quote | None:
        base, s = self._base(symbol)
        first, end = self.feed.span_utc(symbol)
        horizon = end if now is None else now + 1
        bars = self.feed.rates(symbol, base, horizon - _LOOKBACK, horizon)
        if len(bars) == 0 or (len(bars) == 1 and now is not None):
            bars = self.feed.rates(symbol, base, first, horizon)
        if len(bars) == 0:
            return None
        forming = now is not None and int(bars["time"][-1]) - self._off + s > now
        closed = bars[:-1] if forming else bars
        if len(closed) == 0:
            return None
        last = closed[-1]
        spec = self._spec(symbol)
        bid = float(last["close"])
        spread = int(last["spread"])
        t_close = int(last["time"]) + s
        return _Quote(
            bid=bid,
            ask=round(bid + spread * spec.point, spec.digits),
            spread=spread,
            time=t_close,
            open=forming or now is None,
            closed_end_utc=t_close - self._off,
        )

    def _to_usd(self, amount: float, ccy: str) -> float:
        if ccy == "USD":
            return amount
        names = self._symbols()
        for sym, invert in ((f"USD{ccy}", True), (f"{ccy}USD", False)):
            if sym in names:
                q = self._quote(sym)
                if q is not None and q.bid > 0:
                    return amount / q.bid if invert else amount * q.bid
        if ccy not in self._warned_ccy:
            self._warned_ccy.add(ccy)
            logger.warning("no USD rate for %s in the feed; converting 1:1", ccy)
        return amount

    def _mark(self, p: _Position) -> tuple[float, float]:
        """Current closing price and floating profit (USD) of a position."""
        q = self._quote(p.symbol)
        if q is None:
            return p.price_open, 0.0
        price = q.bid if p.type == ORDER_TYPE_BUY else q.ask
        return price, self._profit(p, price)

    def _profit(self, p: _Position, price: float, volume: float | None = None) -> float:
        spec = self._spec(p.symbol)
        sign = 1.0 if p.type == ORDER_TYPE_BUY else -1.0
        vol = p.volume if volume is None else volume
        return self._to_usd(
            sign * (price - p.price_open) * vol * spec.contract_size, spec.currency_profit
        )

    def _margin(self, spec: SymbolSpec, volume: float, price: float) -> float:
        return self._to_usd(
            volume * spec.contract_size * price / self.leverage, spec.currency_profit
        )

    def _floating(self) -> tuple[float, float]:
        profit = margin = 0.0
        for p in self._positions.values():
            price, pr = self._mark(p)
            profit += pr
            margin += self._margin(self._spec(p.symbol), p.volume, price)
        return profit, margin

    # -- internals: orders ---------------------------------------------------------------------

    def _plan(self, request: Mapping[str, Any], echo: TradeRequest, draw: bool = False) -> _Plan:
        """Validate a request against the current market; raise :class:`_Reject`. ``draw``
        (``order_send``): draw the fill's slippage from the process, if any."""
        unknown = sorted(set(request) - _REQUEST_FIELDS)
        if unknown:
            raise _Reject(TRADE_RETCODE_INVALID, f"unknown request field(s) {unknown}")
        for key in ("action", "magic", "order", "deviation", "type", "type_filling", "position"):
            v = request.get(key, 0)
            if not _is_int(v) or v < 0:
                raise _Reject(TRADE_RETCODE_INVALID, f"invalid {key} {v!r}")
        for key in ("volume", "price", "sl", "tp", "stoplimit"):
            v = request.get(key, 0.0)
            if not _is_num(v) or v < 0:
                raise _Reject(TRADE_RETCODE_INVALID, f"invalid {key} {v!r}")
        comment = request.get("comment", "")
        if not isinstance(comment, str) or len(comment) > _COMMENT_MAX:
            raise _Reject(
                TRADE_RETCODE_INVALID, f"comment must be a string of <= {_COMMENT_MAX} chars"
            )
        action = request.get("action")
        if action not in (TRADE_ACTION_DEAL, TRADE_ACTION_SLTP):
            raise _Reject(TRADE_RETCODE_INVALID, f"unsupported action {action!r}")
        symbol = request.get("symbol")
        if not isinstance(symbol, str) or symbol not in self._symbols():
            raise _Reject(TRADE_RETCODE_INVALID, f"unknown symbol {symbol!r}")
        spec = self._spec(symbol)
        quote = self._quote(symbol)
        if action == TRADE_ACTION_SLTP:
            target = self._position_for(echo)
            if quote is None or not quote.open:
                raise _Reject(TRADE_RETCODE_MARKET_CLOSED, "Market closed")
            self._check_stops(spec, quote, target.type, echo.sl, echo.tp)
            return _Plan(action, echo, spec, quote, position=target)

        if echo.type not in (ORDER_TYPE_BUY, ORDER_TYPE_SELL):
            raise _Reject(TRADE_RETCODE_INVALID, f"unsupported order type {echo.type!r}")
        self._check_volume(spec, echo.volume)
        self._check_filling(echo.type_filling)
        pos = self._position_for(echo) if echo.position else None
        if pos is not None:
            if pos.type == echo.type:
                raise _Reject(
                    TRADE_RETCODE_INVALID, "closing order must be opposite to the position"
                )
            if echo.volume > pos.volume + 1e-9:
                raise _Reject(TRADE_RETCODE_INVALID_VOLUME, "volume exceeds the position's volume")
        if quote is None or not quote.open:
            raise _Reject(TRADE_RETCODE_MARKET_CLOSED, "Market closed")
        slip_points = self.slippage_points
        if draw and self.slippage is not None:
            drawn = self._draw_slippage(symbol, spec, quote, echo.volume)
            if self.slippage.requote and drawn > echo.deviation:
                raise _Reject(
                    TRADE_RETCODE_REQUOTE,
                    f"Requote: slippage {drawn} points > deviation {echo.deviation}",
                )
            slip_points += drawn
        slip = slip_points * spec.point
        if echo.type == ORDER_TYPE_BUY:
            price = round(quote.ask + slip, spec.digits)
        else:
            price = round(quote.bid - slip, spec.digits)
        plan = _Plan(action, echo, spec, quote, price=price, position=pos)
        if pos is None:
            self._check_stops(spec, quote, echo.type, echo.sl, echo.tp)
            plan.margin = self._margin(spec, echo.volume, price)
            profit, used = self._floating()
            free = self._balance + profit - used
            if plan.margin > free + 1e-9:
                raise _Reject(
                    TRADE_RETCODE_NO_MONEY,
                    f"No money: margin {plan.margin:.2f} > free margin {free:.2f}",
                )
        return plan

    def _draw_slippage(self, symbol: str, spec: SymbolSpec, quote: _Quote, volume: float) -> int:
        """One draw of the slippage process for a fill now (points, adverse)."""
        proc = self.slippage
        assert proc is not None
        tf = self._base(symbol)[0]
        bars = self._last_bars(symbol, tf, self._horizon_utc(symbol), 1, proc.vol_window + 1)
        vol = return_volatility(bars["close"], proc.vol_window) if bars is not None else 0.0
        vol_points = vol * quote.bid / spec.point if spec.point else 0.0
        now = self._now_utc()
        hour = ((now if now is not None else quote.closed_end_utc) // 3600) % 24
        return proc.draw(
            spread_points=float(quote.spread), vol_points=vol_points, volume=volume, hour_utc=hour
        )

    def _position_for(self, echo: TradeRequest) -> _Position:
        pos = self._positions.get(echo.position)
        if pos is None:
            raise _Reject(TRADE_RETCODE_POSITION_CLOSED, f"position {echo.position} not found")
        if pos.symbol != echo.symbol:
            raise _Reject(
                TRADE_RETCODE_INVALID, f"position {echo.position} is not on {echo.symbol}"
            )
        return pos

    @staticmethod
    def _check_volume(spec: SymbolSpec, volume: float) -> None:
        if volume < spec.volume_min - 1e-9 or volume > spec.volume_max + 1e-9:
            raise _Reject(
                TRADE_RETCODE_INVALID_VOLUME,
                f"Invalid volume {volume}: outside [{spec.volume_min}, {spec.volume_max}]",
            )
        steps = volume / spec.volume_step
        if abs(steps - round(steps)) > 1e-6:
            raise _Reject(
                TRADE_RETCODE_INVALID_VOLUME,
                f"Invalid volume {volume}: not a multiple of {spec.volume_step}",
            )

    def _check_filling(self, filling: int) -> None:
        allowed = (
            (filling == ORDER_FILLING_FOK and self.filling_mode & SYMBOL_FILLING_FOK)
            or (filling == ORDER_FILLING_IOC and self.filling_mode & SYMBOL_FILLING_IOC)
            or (filling == ORDER_FILLING_RETURN and self.filling_mode == 0)
        )
        if not allowed:
            raise _Reject(TRADE_RETCODE_INVALID_FILL, f"Unsupported filling mode {filling}")

    @staticmethod
    def _check_stops(spec: SymbolSpec, quote: _Quote, side: int, sl: float, tp: float) -> None:
        gap = spec.stops_level * spec.point
        if side == ORDER_TYPE_BUY:  # closes at bid
            bad_sl = sl > 0 and sl > quote.bid - gap - 1e-12
            bad_tp = tp > 0 and tp < quote.bid + gap + 1e-12
        else:  # closes at ask
            bad_sl = sl > 0 and sl < quote.ask + gap + 1e-12
            bad_tp = tp > 0 and tp > quote.ask - gap - 1e-12
        if bad_sl or bad_tp:
            raise _Reject(TRADE_RETCODE_INVALID_STOPS, f"Invalid stops (sl={sl}, tp={tp})")

    def _execute(self, plan: _Plan) -> tuple[int, int]:
        echo, q = plan.request, plan.quote
        order = self._next_order
        self._next_order += 1
        now = self._now_server(q)
        if plan.position is None:
            pos = _Position(
                ticket=order,
                symbol=echo.symbol,
                type=echo.type,
                volume=echo.volume,
                price_open=plan.price,
                time=now,
                magic=echo.magic,
                comment=echo.comment,
                sl=echo.sl,
                tp=echo.tp,
                time_update=now,
                check_from_utc=q.closed_end_utc,
            )
            self._positions[order] = pos
            if pos.sl > 0 or pos.tp > 0:
                self._with_stops.add(order)
            self._changed(account_only=True)
            deal = self._deal(
                order,
                now,
                echo.type,
                DEAL_ENTRY_IN,
                pos,
                echo.volume,
                plan.price,
                0.0,
                DEAL_REASON_EXPERT,
                echo.magic,
                echo.comment,
            )
            logger.info(
                "opened #%d %s %s %.2f @ %s",
                order,
                echo.symbol,
                _side(echo.type),
                echo.volume,
                plan.price,
            )
            return order, deal
        pos = plan.position
        deal = self._close(
            pos, echo.volume, plan.price, now, order, DEAL_REASON_EXPERT, echo.magic, echo.comment
        )
        return order, deal

    def _close(
        self,
        pos: _Position,
        volume: float,
        price: float,
        time: int,
        order: int,
        reason: int,
        magic: int,
        comment: str,
    ) -> int:
        profit = round(self._profit(pos, price, volume), 2)
        self._balance += profit
        deal_type = ORDER_TYPE_SELL if pos.type == ORDER_TYPE_BUY else ORDER_TYPE_BUY
        deal = self._deal(
            order,
            time,
            deal_type,
            DEAL_ENTRY_OUT,
            pos,
            volume,
            price,
            profit,
            reason,
            magic,
            comment,
        )
        pos.volume = round(pos.volume - volume, 8)
        pos.time_update = time
        if pos.volume <= 1e-9:
            del self._positions[pos.ticket]
            self._with_stops.discard(pos.ticket)
        self._changed(account_only=True)
        logger.info("closed #%d %.2f @ %s profit %.2f", pos.ticket, volume, price, profit)
        return deal

    def _deal(
        self,
        order: int,
        time: int,
        deal_type: int,
        entry: int,
        pos: _Position,
        volume: float,
        price: float,
        profit: float,
        reason: int,
        magic: int,
        comment: str,
    ) -> int:
        ticket = self._next_deal
        self._next_deal += 1
        i = len(self._deals)
        self._by_order.setdefault(order, []).append(i)
        self._by_position.setdefault(pos.ticket, []).append(i)
        self._deals.append(
            TradeDeal(
                ticket=ticket,
                order=order,
                time=time,
                time_msc=time * 1000,
                type=deal_type,
                entry=entry,
                magic=magic,
                position_id=pos.ticket,
                reason=reason,
                volume=volume,
                price=price,
                commission=0.0,
                swap=0.0,
                profit=profit,
                fee=0.0,
                symbol=pos.symbol,
                comment=comment,
                external_id="",
            )
        )
        k = bisect_right(self._deal_times, time)  # after equal times: ticket order kept
        if k < len(self._deal_times):
            self._deals_in_time_order = False  # stamped before a deal made earlier
        self._deal_times.insert(k, time)
        self._deals_by_time.insert(k, self._deals[-1])
        return ticket

    def _sync(self) -> None:
        """Close positions whose SL/TP was touched by base bars closed since the last look."""
        if self.indexed and not self._with_stops:
            return  # no open position has a stop: nothing to check
        now = self._now_utc()
        if now is None:
            return
        hits: list[tuple[int, int, float, int]] = []  # (server time, ticket, price, reason)
        for p in self._positions.values():
            if p.sl <= 0 and p.tp <= 0:
                continue
            s = self._base(p.symbol)[1]
            end = now - s + 1  # bars that have closed by now
            if end <= p.check_from_utc:
                continue
            bars = self._base_bars(p.symbol, p.check_from_utc, end)
            if len(bars):
                p.check_from_utc = int(bars["time"][-1]) - self._off + s
            hit = _first_stop_hit(p, bars, self._spec(p.symbol))
            if hit is not None:  # stamped no earlier than the entry (same-bar hits)
                hits.append((max(hit[0], p.time), p.ticket, hit[1], hit[2]))
        for t, ticket, price, reason in sorted(hits):
            pos = self._positions[ticket]
            order = self._next_order
            self._next_order += 1
            tag = "sl" if reason == DEAL_REASON_SL else "tp"
            self._close(pos, pos.volume, price, t, order, reason, pos.magic, f"[{tag} {price}]")


_TICKET = attrgetter("ticket")
_MARKET_MEMO = frozenset({"info", "tick"})  # memo keys that no order changes


def _first_stop_hit(
    p: _Position, bars: np.ndarray, spec: SymbolSpec
) -> tuple[int, float, int] | None:
    """``(server time, fill price, reason)`` of the first bar that touches the SL or TP."""
    if len(bars) == 0:
        return None
    o, h, lo = bars["open"], bars["high"], bars["low"]
    if p.type == ORDER_TYPE_SELL:  # a short closes at ask
        add = bars["spread"] * spec.point
        o, h, lo = o + add, h + add, lo + add
        sl_hit = (p.sl > 0) & (h >= p.sl)
        tp_hit = (p.tp > 0) & (lo <= p.tp)
    else:
        sl_hit = (p.sl > 0) & (lo <= p.sl)
        tp_hit = (p.tp > 0) & (h >= p.tp)
    any_hit = np.flatnonzero(sl_hit | tp_hit)
    if len(any_hit) == 0:
        return None
    i = int(any_hit[0])
    t = int(bars["time"][i])
    if sl_hit[i]:  # the stop first when both are touched in one bar
        price = max(o[i], p.sl) if p.type == ORDER_TYPE_SELL else min(o[i], p.sl)
        return t, round(float(price), spec.digits), DEAL_REASON_SL
    price = min(o[i], p.tp) if p.type == ORDER_TYPE_SELL else max(o[i], p.tp)
    return t, round(float(price), spec.digits), DEAL_REASON_TP


_INT_TYPES = (int, np.integer)  # tuples, not ``int | np.integer`` built on every call
_FLOAT_TYPES = (float, np.floating)


def _is_int(v: Any) -> bool:
    return isinstance(v, _INT_TYPES) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, _FLOAT_TYPES)) and math.isfinite(float(v))


def _side(order_type: int) -> str:
    return "buy" if order_type == ORDER_TYPE_BUY else "sell"


def _echo(request: Mapping[str, Any]) -> TradeRequest:
    """The request as the official module echoes it: every field, defaults filled in."""

    def get(key: str, default: Any) -> Any:
        v = request.get(key, default)
        return v if v is not None else default

    return TradeRequest(
        action=get("action", 0),
        magic=get("magic", 0),
        order=get("order", 0),
        symbol=get("symbol", ""),
        volume=get("volume", 0.0),
        price=get("price", 0.0),
        stoplimit=get("stoplimit", 0.0),
        sl=get("sl", 0.0),
        tp=get("tp", 0.0),
        deviation=get("deviation", 0),
        type=get("type", 0),
        type_filling=get("type_filling", 0),
        type_time=get("type_time", 0),
        expiration=get("expiration", 0),
        comment=get("comment", ""),
        position=get("position", 0),
        position_by=get("position_by", 0),
    )
