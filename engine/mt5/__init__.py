"""MT5 gateway: one protocol (the subset of the official ``MetaTrader5`` module we use) and
its implementations — the simulated terminal (:mod:`engine.mt5.sim`), the official module
(:mod:`engine.mt5.native`, Windows) and the mt5linux bridge (:mod:`engine.mt5.bridge`), opened by
:mod:`engine.mt5.gateway` and kept connected by :mod:`engine.mt5.resilient`; broker server time
rules in :mod:`engine.mt5.brokertime`. Importing this package loads only numpy."""

from engine.mt5.protocol import (
    RATES_DTYPE,
    TIMEFRAMES,
    AccountInfo,
    OrderCheckResult,
    OrderSendResult,
    SymbolInfo,
    Terminal,
    TerminalConnectionError,
    TerminalError,
    Tick,
    TradeDeal,
    TradePosition,
    is_ipc_error,
    timeframe_seconds,
)

__all__ = [
    "RATES_DTYPE",
    "TIMEFRAMES",
    "AccountInfo",
    "OrderCheckResult",
    "OrderSendResult",
    "SymbolInfo",
    "Terminal",
    "TerminalConnectionError",
    "TerminalError",
    "Tick",
    "TradeDeal",
    "TradePosition",
    "is_ipc_error",
    "timeframe_seconds",
]
