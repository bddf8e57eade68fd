"""The MT5 terminal protocol: the subset of the official ``MetaTrader5`` Python API that
TitanovaX uses, with the same names, argument order, constants and return shapes.

Return shapes follow the official module:
- ``copy_rates_*`` return a numpy structured array with :data:`RATES_DTYPE` (``time`` is the
  bar's *open* time in broker server time, as epoch seconds), or ``None`` on failure;
- infos and results are named tuples (:class:`AccountInfo`, :class:`SymbolInfo`,
  :class:`Tick`, :class:`OrderSendResult`, :class:`TradePosition`);
- failures return ``None`` and leave the reason in ``last_error()`` as ``(code, message)``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

# --- timeframes (values of the official module) -------------------------------------------
TIMEFRAME_M1 = 1
TIMEFRAME_M5 = 5
TIMEFRAME_M15 = 15
TIMEFRAME_M30 = 30
TIMEFRAME_H1 = 1 | 0x4000
TIMEFRAME_H4 = 4 | 0x4000
TIMEFRAME_D1 = 24 | 0x4000

TIMEFRAMES: dict[str, int] = {
    "M1": TIMEFRAME_M1,
    "M5": TIMEFRAME_M5,
    "M15": TIMEFRAME_M15,
    "M30": TIMEFRAME_M30,
    "H1": TIMEFRAME_H1,
    "H4": TIMEFRAME_H4,
    "D1": TIMEFRAME_D1,
}
_TF_SECONDS: dict[int, int] = {
    TIMEFRAME_M1: 60,
    TIMEFRAME_M5: 300,
    TIMEFRAME_M15: 900,
    TIMEFRAME_M30: 1800,
    TIMEFRAME_H1: 3600,
    TIMEFRAME_H4: 14400,
    TIMEFRAME_D1: 86400,
}


def timeframe_seconds(timeframe: int | str) -> int:
    """Length of one bar in seconds, for an MT5 timeframe constant or its name ("M5")."""
    tf = TIMEFRAMES[timeframe] if isinstance(timeframe, str) else timeframe
    try:
        return _TF_SECONDS[tf]
    except KeyError:
        raise ValueError(f"unsupported timeframe {timeframe!r}") from None


# --- order constants ----------------------------------------------------------------------
ORDER_TYPE_BUY = 0
ORDER_TYPE_SELL = 1
POSITION_TYPE_BUY = 0
POSITION_TYPE_SELL = 1
TRADE_ACTION_DEAL = 1
ORDER_FILLING_FOK = 0
ORDER_FILLING_IOC = 1
ORDER_FILLING_RETURN = 2
ORDER_TIME_GTC = 0
# symbol_info().filling_mode is a bit mask of these
SYMBOL_FILLING_FOK = 1
SYMBOL_FILLING_IOC = 2
SYMBOL_TRADE_MODE_DISABLED = 0
SYMBOL_TRADE_MODE_LONGONLY = 1
SYMBOL_TRADE_MODE_SHORTONLY = 2
SYMBOL_TRADE_MODE_CLOSEONLY = 3
SYMBOL_TRADE_MODE_FULL = 4
SYMBOL_CALC_MODE_FOREX = 0
SYMBOL_TRADE_EXECUTION_MARKET = 2
DEAL_ENTRY_IN = 0
DEAL_ENTRY_OUT = 1

# --- trade server return codes (subset; same numbers as the official module) --------------
TRADE_RETCODE_REQUOTE = 10004
TRADE_RETCODE_REJECT = 10006
TRADE_RETCODE_DONE = 10009
TRADE_RETCODE_INVALID = 10013
TRADE_RETCODE_INVALID_VOLUME = 10014
TRADE_RETCODE_INVALID_PRICE = 10015
TRADE_RETCODE_INVALID_STOPS = 10016
TRADE_RETCODE_TRADE_DISABLED = 10017
TRADE_RETCODE_MARKET_CLOSED = 10018
TRADE_RETCODE_NO_MONEY = 10019
TRADE_RETCODE_PRICE_CHANGED = 10020
TRADE_RETCODE_PRICE_OFF = 10021
TRADE_RETCODE_INVALID_FILL = 10030
TRADE_RETCODE_CONNECTION = 10031

# --- last_error() codes -------------------------------------------------------------------
RES_S_OK = 1
RES_E_FAIL = -1
RES_E_INVALID_PARAMS = -2
RES_E_NOT_FOUND = -4
RES_E_NO_MEMORY = -3
RES_E_INVALID_VERSION = -5
RES_E_AUTH_FAILED = -6
RES_E_UNSUPPORTED = -7
RES_E_AUTO_TRADING_DISABLED = -8
RES_E_INTERNAL_FAIL = -10000
RES_E_INTERNAL_FAIL_SEND = -10001
RES_E_INTERNAL_FAIL_RECEIVE = -10002
RES_E_INTERNAL_FAIL_INIT = -10003
RES_E_INTERNAL_FAIL_CONNECT = -10004
RES_E_INTERNAL_FAIL_TIMEOUT = -10005
RES_E_NO_IPC = RES_E_INTERNAL_FAIL_CONNECT
"""What the official module answers before ``initialize()``: ``(-10004, 'No IPC connection')``."""

RATES_DTYPE = np.dtype(
    [
        ("time", "<i8"),
        ("open", "<f8"),
        ("high", "<f8"),
        ("low", "<f8"),
        ("close", "<f8"),
        ("tick_volume", "<u8"),
        ("spread", "<i4"),
        ("real_volume", "<u8"),
    ]
)


class AccountInfo(NamedTuple):
    login: int
    trade_mode: int
    leverage: int
    limit_orders: int
    margin_so_mode: int
    trade_allowed: bool
    trade_expert: bool
    margin_mode: int
    currency_digits: int
    fifo_close: bool
    balance: float
    credit: float
    profit: float
    equity: float
    margin: float
    margin_free: float
    margin_level: float
    margin_so_call: float
    margin_so_so: float
    margin_initial: float
    margin_maintenance: float
    assets: float
    liabilities: float
    commission_blocked: float
    name: str
    server: str
    currency: str
    company: str


class SymbolInfo(NamedTuple):
    """``symbol_info()`` of the official module: every field, in the official order.

    The order and names follow ``symbol_info()._asdict()`` as printed in the official
    documentation (tests/unit/test_mt5_stubs.py checks them). Every field has a neutral
    default so a terminal fills in what it knows, by keyword.
    """

    custom: bool = False
    chart_mode: int = 0
    select: bool = False
    visible: bool = False
    session_deals: int = 0
    session_buy_orders: int = 0
    session_sell_orders: int = 0
    volume: int = 0
    volumehigh: int = 0
    volumelow: int = 0
    time: int = 0
    digits: int = 0
    spread: int = 0
    spread_float: bool = False
    ticks_bookdepth: int = 0
    trade_calc_mode: int = 0
    trade_mode: int = 0
    start_time: int = 0
    expiration_time: int = 0
    trade_stops_level: int = 0
    trade_freeze_level: int = 0
    trade_exemode: int = 0
    swap_mode: int = 0
    swap_rollover3days: int = 0
    margin_hedged_use_leg: bool = False
    expiration_mode: int = 0
    filling_mode: int = 0
    order_mode: int = 0
    order_gtc_mode: int = 0
    option_mode: int = 0
    option_right: int = 0
    bid: float = 0.0
    bidhigh: float = 0.0
    bidlow: float = 0.0
    ask: float = 0.0
    askhigh: float = 0.0
    asklow: float = 0.0
    last: float = 0.0
    lasthigh: float = 0.0
    lastlow: float = 0.0
    volume_real: float = 0.0
    volumehigh_real: float = 0.0
    volumelow_real: float = 0.0
    option_strike: float = 0.0
    point: float = 0.0
    trade_tick_value: float = 0.0
    trade_tick_value_profit: float = 0.0
    trade_tick_value_loss: float = 0.0
    trade_tick_size: float = 0.0
    trade_contract_size: float = 0.0
    trade_accrued_interest: float = 0.0
    trade_face_value: float = 0.0
    trade_liquidity_rate: float = 0.0
    volume_min: float = 0.0
    volume_max: float = 0.0
    volume_step: float = 0.0
    volume_limit: float = 0.0
    swap_long: float = 0.0
    swap_short: float = 0.0
    margin_initial: float = 0.0
    margin_maintenance: float = 0.0
    session_volume: float = 0.0
    session_turnover: float = 0.0
    session_interest: float = 0.0
    session_buy_orders_volume: float = 0.0
    session_sell_orders_volume: float = 0.0
    session_open: float = 0.0
    session_close: float = 0.0
    session_aw: float = 0.0
    session_price_settlement: float = 0.0
    session_price_limit_min: float = 0.0
    session_price_limit_max: float = 0.0
    margin_hedged: float = 0.0
    price_change: float = 0.0
    price_volatility: float = 0.0
    price_theoretical: float = 0.0
    price_greeks_delta: float = 0.0
    price_greeks_theta: float = 0.0
    price_greeks_gamma: float = 0.0
    price_greeks_vega: float = 0.0
    price_greeks_rho: float = 0.0
    price_greeks_omega: float = 0.0
    price_sensitivity: float = 0.0
    basis: str = ""
    category: str = ""
    currency_base: str = ""
    currency_profit: str = ""
    currency_margin: str = ""
    bank: str = ""
    description: str = ""
    exchange: str = ""
    formula: str = ""
    isin: str = ""
    name: str = ""
    page: str = ""
    path: str = ""


class Tick(NamedTuple):
    time: int
    bid: float
    ask: float
    last: float
    volume: int
    time_msc: int
    flags: int
    volume_real: float


class OrderSendResult(NamedTuple):
    retcode: int
    deal: int
    order: int
    volume: float
    price: float
    bid: float
    ask: float
    comment: str
    request_id: int
    retcode_external: int
    request: Any


class TradePosition(NamedTuple):
    ticket: int
    time: int
    time_msc: int
    time_update: int
    time_update_msc: int
    type: int
    magic: int
    identifier: int
    reason: int
    volume: float
    price_open: float
    sl: float
    tp: float
    price_current: float
    swap: float
    profit: float
    symbol: str
    comment: str
    external_id: str


class TradeDeal(NamedTuple):
    ticket: int
    order: int
    time: int
    time_msc: int
    type: int
    entry: int
    magic: int
    position_id: int
    reason: int
    volume: float
    price: float
    commission: float
    swap: float
    profit: float
    fee: float
    symbol: str
    comment: str
    external_id: str


class TerminalError(RuntimeError):
    """A terminal call failed; carries the terminal's ``last_error()``."""

    def __init__(self, call: str, last_error: tuple[int, str]) -> None:
        self.call = call
        self.last_error = last_error
        super().__init__(f"MT5 {call} failed: last_error={last_error}")

    @property
    def code(self) -> int:
        """The ``last_error()`` code (``RES_*``)."""
        return int(self.last_error[0])

    @property
    def is_connection_error(self) -> bool:
        """Whether the failure is the link to the terminal (IPC or bridge), not the request."""
        return is_ipc_error(self.code)


class TerminalConnectionError(TerminalError):
    """The link to the terminal failed: MT5 IPC (``RES_E_INTERNAL_FAIL*``) or the rpyc bridge
    (connection refused, closed stream, timeout). Reconnecting may help; see
    :class:`engine.mt5.resilient.ResilientTerminal`."""


def initialize_kwargs(
    login: int | None = None,
    password: str | None = None,
    server: str | None = None,
    timeout: int | None = None,
) -> dict[str, Any]:
    """The keywords of the official ``initialize(...)``, typed as it expects; unset ones left out."""
    kw: dict[str, Any] = {}
    if login is not None:
        kw["login"] = int(login)
    if password is not None:
        kw["password"] = str(password)
    if server is not None:
        kw["server"] = str(server)
    if timeout is not None:
        kw["timeout"] = int(timeout)
    return kw


def is_ipc_error(code: int) -> bool:
    """``RES_E_INTERNAL_FAIL`` … ``RES_E_INTERNAL_FAIL_TIMEOUT`` (-10000 … -10005, and the rest
    of the -10000 range): the terminal link, not the request, failed."""
    return -10099 <= int(code) <= RES_E_INTERNAL_FAIL


@runtime_checkable
class Terminal(Protocol):
    """What TitanovaX needs of an MT5 terminal: the official module's own signatures."""

    def initialize(self, *args: Any, **kwargs: Any) -> bool: ...
    def shutdown(self) -> None: ...
    def last_error(self) -> tuple[int, str]: ...
    def account_info(self) -> AccountInfo | None: ...
    def symbol_info(self, symbol: str) -> SymbolInfo | None: ...
    def symbol_info_tick(self, symbol: str) -> Tick | None: ...
    def symbol_select(self, symbol: str, enable: bool = True) -> bool: ...
    def copy_rates_range(
        self, symbol: str, timeframe: int, date_from: datetime | int, date_to: datetime | int
    ) -> np.ndarray | None: ...
    def copy_rates_from_pos(
        self, symbol: str, timeframe: int, start_pos: int, count: int
    ) -> np.ndarray | None: ...
    def order_check(self, request: dict[str, Any]) -> Any: ...
    def order_send(self, request: dict[str, Any]) -> OrderSendResult | None: ...
    def positions_get(
        self, symbol: str | None = None, ticket: int | None = None
    ) -> tuple[TradePosition, ...] | None: ...
    def history_deals_get(
        self, date_from: datetime | int, date_to: datetime | int
    ) -> tuple[TradeDeal, ...] | None: ...


# --- additions used by the simulated terminal (same names and numbers as the official module)
TRADE_ACTION_SLTP = 6
TRADE_RETCODE_POSITION_CLOSED = 10036
DEAL_TYPE_BUY = 0
DEAL_TYPE_SELL = 1
DEAL_REASON_CLIENT = 0
DEAL_REASON_EXPERT = 3
DEAL_REASON_SL = 4
DEAL_REASON_TP = 5
POSITION_REASON_EXPERT = 3
ACCOUNT_TRADE_MODE_DEMO = 0
ACCOUNT_STOPOUT_MODE_PERCENT = 0
ACCOUNT_MARGIN_MODE_RETAIL_HEDGING = 2
TICK_FLAG_BID = 2
TICK_FLAG_ASK = 4


class TradeRequest(NamedTuple):
    """The request echoed in :class:`OrderSendResult` / :class:`OrderCheckResult`."""

    action: int
    magic: int
    order: int
    symbol: str
    volume: float
    price: float
    stoplimit: float
    sl: float
    tp: float
    deviation: int
    type: int
    type_filling: int
    type_time: int
    expiration: int
    comment: str
    position: int
    position_by: int


class OrderCheckResult(NamedTuple):
    """What ``order_check`` returns; ``retcode`` 0 means the request would be accepted."""

    retcode: int
    balance: float
    equity: float
    profit: float
    margin: float
    margin_free: float
    margin_level: float
    comment: str
    request: Any


class TradeOrder(NamedTuple):
    """An active (pending) order, as ``orders_get`` returns it."""

    ticket: int
    time_setup: int
    time_setup_msc: int
    time_done: int
    time_done_msc: int
    time_expiration: int
    type: int
    type_time: int
    type_filling: int
    state: int
    magic: int
    position_id: int
    position_by_id: int
    reason: int
    volume_initial: float
    volume_current: float
    price_open: float
    sl: float
    tp: float
    price_current: float
    price_stoplimit: float
    symbol: str
    comment: str
    external_id: str


class TerminalInfo(NamedTuple):
    """``terminal_info()``: the terminal's state and settings."""

    community_account: bool
    community_connection: bool
    connected: bool
    dlls_allowed: bool
    trade_allowed: bool
    tradeapi_disabled: bool
    email_enabled: bool
    ftp_enabled: bool
    notifications_enabled: bool
    mqid: bool
    build: int
    maxbars: int
    codepage: int
    ping_last: int
    community_balance: float
    retransmission: float
    company: str
    name: str
    language: str
    path: str
    data_path: str
    commondata_path: str
