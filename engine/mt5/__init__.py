"""MT5 gateway: one protocol (the subset of the official ``MetaTrader5`` module we use) and
its implementations. The platform rooms may import this package; it imports only numpy."""

from engine.mt5.protocol import (
    RATES_DTYPE,
    TIMEFRAMES,
    AccountInfo,
    OrderSendResult,
    SymbolInfo,
    Terminal,
    TerminalError,
    Tick,
    TradePosition,
    timeframe_seconds,
)

__all__ = [
    "RATES_DTYPE",
    "TIMEFRAMES",
    "AccountInfo",
    "OrderSendResult",
    "SymbolInfo",
    "Terminal",
    "TerminalError",
    "Tick",
    "TradePosition",
    "timeframe_seconds",
]
