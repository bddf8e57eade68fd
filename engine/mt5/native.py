"""The official ``MetaTrader5`` Python module (Windows only) behind :class:`~engine.mt5.protocol.Terminal`.

``MetaTrader5`` talks to a running terminal over IPC and exists only for Windows; it is
imported lazily, inside each call, so this module imports (and type-checks) anywhere. Every
call is written against the module's API as typed by ``metatrader5-stubs`` (mypy resolves
``import MetaTrader5`` to those stubs; ``make typecheck-mt5`` and
``tests/unit/test_mt5_stubs.py`` run it). The functions the stubs (0.1.3) do not declare —
``account_info``, ``symbol_info``, ``copy_rates_range``, ``copy_rates_from``, ``order_check``,
``history_deals_get`` — are reached through :func:`_unstubbed`, untyped.

Semantics are the module's: a failing call returns ``None`` (``False`` for ``symbol_select``)
and leaves ``(code, message)`` in :meth:`NativeTerminal.last_error`. Values are converted to
this package's named tuples (by field name) and bar arrays to ``RATES_DTYPE``. Reconnecting
with backoff and raising :class:`~engine.mt5.protocol.TerminalError` is the job of
:class:`~engine.mt5.resilient.ResilientTerminal`, which :func:`engine.mt5.gateway.open_terminal`
puts around this adapter.

On Linux there is no ``MetaTrader5`` module: the tests inject a stand-in built from the
simulated terminal into ``sys.modules["MetaTrader5"]`` (tests/unit/test_mt5_native.py); that is
the only way to run this adapter off Windows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from engine.mt5.adapter import plain_request, to_rates, to_record, to_records
from engine.mt5.protocol import (
    RES_E_FAIL,
    AccountInfo,
    OrderCheckResult,
    OrderSendResult,
    SymbolInfo,
    TerminalError,
    TerminalInfo,
    Tick,
    TradeDeal,
    TradeOrder,
    TradePosition,
    initialize_kwargs,
)

if TYPE_CHECKING:
    from MetaTrader5 import TradeRequest as StubTradeRequest

__all__ = ["NativeTerminal", "import_module"]

logger = logging.getLogger(__name__)


def import_module() -> Any:
    """Import the official module, or raise ``RuntimeError`` saying why it cannot be here."""
    import platform
    import sys

    try:
        import MetaTrader5
    except ImportError as exc:
        raise RuntimeError(
            "mode 'native' needs the official MetaTrader5 package, which exists only for "
            f"Windows; this is {platform.system() or sys.platform} ({sys.platform}). "
            f"Use mode 'bridge' (mt5linux) or 'sim' here. ({exc})"
        ) from exc
    return MetaTrader5


def _unstubbed(name: str) -> Callable[..., Any]:
    """A function of the official module that ``metatrader5-stubs`` does not declare."""
    import MetaTrader5

    fn: Callable[..., Any] = getattr(MetaTrader5, name)
    return fn


class NativeTerminal:
    """The official module as a :class:`~engine.mt5.protocol.Terminal` (see the module doc)."""

    def __init__(self) -> None:
        import_module()  # fail early, with the platform in the message

    @classmethod
    def connect(
        cls,
        path: str | None = None,
        *,
        login: int | None = None,
        password: str | None = None,
        server: str | None = None,
        timeout_ms: int | None = None,
    ) -> NativeTerminal:
        """An initialized terminal, or :class:`TerminalError` with ``last_error()``."""
        term = cls()
        if not term.initialize(
            path, login=login, password=password, server=server, timeout=timeout_ms
        ):
            raise TerminalError("initialize", term.last_error())
        logger.info("MT5 native terminal initialized (login=%s, server=%s)", login, server)
        return term

    # -- session --------------------------------------------------------------------------

    def initialize(
        self,
        path: str | None = None,
        *,
        login: int | None = None,
        password: str | None = None,
        server: str | None = None,
        timeout: int | None = None,
    ) -> bool:
        """``initialize([path], login=, password=, server=, timeout=)``; unset ones omitted."""
        import MetaTrader5 as mt5

        kw = initialize_kwargs(login, password, server, timeout)
        if path is not None:
            return bool(mt5.initialize(str(path), **kw))
        return bool(mt5.initialize(**kw))

    def shutdown(self) -> None:
        import MetaTrader5 as mt5

        mt5.shutdown()

    def last_error(self) -> tuple[int, str]:
        import MetaTrader5 as mt5

        err = mt5.last_error()
        try:
            return int(err[0]), str(err[1])
        except (TypeError, IndexError, ValueError):
            return RES_E_FAIL, f"unreadable last_error() {err!r}"

    def terminal_info(self) -> TerminalInfo | None:
        import MetaTrader5 as mt5

        return to_record(TerminalInfo, mt5.terminal_info())

    # -- account and symbols ----------------------------------------------------------------

    def account_info(self) -> AccountInfo | None:
        return to_record(AccountInfo, _unstubbed("account_info")())

    def symbol_info(self, symbol: str) -> SymbolInfo | None:
        return to_record(SymbolInfo, _unstubbed("symbol_info")(symbol))

    def symbol_info_tick(self, symbol: str) -> Tick | None:
        import MetaTrader5 as mt5

        return to_record(Tick, mt5.symbol_info_tick(symbol))

    def symbol_select(self, symbol: str, enable: bool = True) -> bool:
        import MetaTrader5 as mt5

        return bool(mt5.symbol_select(symbol, enable))

    # -- bars ---------------------------------------------------------------------------------

    def copy_rates_range(
        self, symbol: str, timeframe: int, date_from: datetime | int, date_to: datetime | int
    ) -> np.ndarray | None:
        return to_rates(_unstubbed("copy_rates_range")(symbol, int(timeframe), date_from, date_to))

    def copy_rates_from(
        self, symbol: str, timeframe: int, date_from: datetime | int, count: int
    ) -> np.ndarray | None:
        return to_rates(
            _unstubbed("copy_rates_from")(symbol, int(timeframe), date_from, int(count))
        )

    def copy_rates_from_pos(
        self, symbol: str, timeframe: int, start_pos: int, count: int
    ) -> np.ndarray | None:
        import MetaTrader5 as mt5

        return to_rates(mt5.copy_rates_from_pos(symbol, int(timeframe), int(start_pos), int(count)))

    # -- trading ------------------------------------------------------------------------------

    def order_check(self, request: Mapping[str, Any]) -> OrderCheckResult | None:
        return to_record(OrderCheckResult, _unstubbed("order_check")(plain_request(request)))

    def order_send(self, request: Mapping[str, Any]) -> OrderSendResult | None:
        import MetaTrader5 as mt5

        typed = cast(
            "StubTradeRequest", plain_request(request)
        )  # keys checked against TradeRequest
        return to_record(OrderSendResult, mt5.order_send(typed))

    def positions_total(self) -> int:
        import MetaTrader5 as mt5

        return int(mt5.positions_total())

    def positions_get(
        self, symbol: str | None = None, ticket: int | None = None, group: str | None = None
    ) -> tuple[TradePosition, ...] | None:
        import MetaTrader5 as mt5

        if ticket is not None:
            return to_records(TradePosition, mt5.positions_get(ticket=int(ticket)))
        if symbol is not None:
            return to_records(TradePosition, mt5.positions_get(symbol=symbol))
        if group is not None:
            return to_records(TradePosition, mt5.positions_get(group=group))
        return to_records(TradePosition, mt5.positions_get())

    def orders_get(
        self, symbol: str | None = None, ticket: int | None = None, group: str | None = None
    ) -> tuple[TradeOrder, ...] | None:
        import MetaTrader5 as mt5

        if ticket is not None:
            return to_records(TradeOrder, mt5.orders_get(ticket=int(ticket)))
        if symbol is not None:
            return to_records(TradeOrder, mt5.orders_get(symbol=symbol))
        if group is not None:
            return to_records(TradeOrder, mt5.orders_get(group=group))
        return to_records(TradeOrder, mt5.orders_get())

    def history_deals_get(
        self,
        date_from: datetime | int | None = None,
        date_to: datetime | int | None = None,
        *,
        ticket: int | None = None,
        position: int | None = None,
    ) -> tuple[TradeDeal, ...] | None:
        fn = _unstubbed("history_deals_get")
        if ticket is not None:
            return to_records(TradeDeal, fn(ticket=int(ticket)))
        if position is not None:
            return to_records(TradeDeal, fn(position=int(position)))
        return to_records(TradeDeal, fn(date_from, date_to))
