"""Reconnect with bounded exponential backoff, and (optionally) raise on every failed call.

:class:`ResilientTerminal` wraps a *connect* function (which returns an initialized terminal
or raises :class:`~engine.mt5.protocol.TerminalError`) and forwards every call to the current
terminal. When the link fails — :class:`~engine.mt5.protocol.TerminalConnectionError` from the
bridge, or a ``None``/``False`` answer whose ``last_error()`` code is in the IPC range
(``RES_E_INTERNAL_FAIL*``, -10000 … -10005) from the native module — it drops the terminal,
sleeps ``min(max_delay, base_delay * 2**k)`` scaled by a random factor in
``[1 - jitter, 1 + jitter]`` (``sleep`` and ``random`` are injectable), reconnects and tries
again, at most ``attempts`` times in all. Then it raises
:class:`~engine.mt5.protocol.TerminalConnectionError` carrying the last ``last_error()``.

A link that *timed out* (a frozen terminal or bridge: SIGSTOP, a hung process, a silent
network) is not tried again within the same call: each try would wait a whole deadline on the
same frozen peer, so a call that should fail within one deadline would hold its caller (the
engine's decision lock) for ``attempts`` deadlines and more. The call raises at once with the
timeout's ``last_error()``; the link is dropped and the *next* call reconnects (its handshake
bounded by the same deadline). Fast link failures (refused, reset, closed) are retried with
backoff as above.

``order_send`` is never re-sent after the link failed *during* the call: the order may have
reached the server. The call answers ``None`` (``last_error()`` says why; ``strict`` raises) and
the next call reconnects; the caller looks the order up by its client id (the engine's
execution layer does) before deciding to send again. Connecting is always retried.

Errors that are not the link (an unknown symbol, bad parameters, authorization failed) are not
retried: the call answers as the terminal did (``None`` and ``last_error()``), or with
``strict=True`` raises :class:`~engine.mt5.protocol.TerminalError` carrying ``last_error()``.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import numpy as np

from engine.mt5.protocol import (
    RES_S_OK,
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
)

__all__ = ["Backoff", "ResilientTerminal", "timed_out"]

logger = logging.getLogger(__name__)

_NOT_RESENT = frozenset({"order_send"})
_NO_RESULT_CHECK = frozenset({"shutdown", "last_error", "positions_total"})


def timed_out(exc: BaseException) -> bool:
    """Whether a link error is a timeout (the peer did not answer within its deadline), read
    from the exception and its causes: the bridge raises its connection errors ``from`` rpyc's
    ``AsyncResultTimeout`` / the socket's ``TimeoutError``."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        if isinstance(e, TimeoutError):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


class Backoff:
    """Bounded exponential backoff with jitter: delay ``k`` (0-based) is
    ``min(max_delay, base_delay * factor**k) * uniform(1 - jitter, 1 + jitter)``."""

    def __init__(
        self,
        base_delay: float = 0.5,
        max_delay: float = 30.0,
        factor: float = 2.0,
        jitter: float = 0.2,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if base_delay < 0 or max_delay < base_delay or factor < 1 or not 0 <= jitter < 1:
            raise ValueError("need 0 <= base_delay <= max_delay, factor >= 1, 0 <= jitter < 1")
        self.base_delay, self.max_delay, self.factor, self.jitter = (
            base_delay,
            max_delay,
            factor,
            jitter,
        )
        self.rand = rand

    def delay(self, k: int) -> float:
        """Seconds to wait before reconnect attempt ``k + 1``."""
        d = min(self.max_delay, self.base_delay * self.factor**k)
        return d * (1.0 + self.jitter * (2.0 * self.rand() - 1.0))


class ResilientTerminal:
    """A :class:`~engine.mt5.protocol.Terminal` that reconnects (see the module docstring).

    ``connect`` is called lazily on the first call (or by :meth:`ensure_connected`); every
    other attribute of the underlying terminal is forwarded through the same retry logic.
    """

    def __init__(
        self,
        connect: Callable[[], Any],
        *,
        attempts: int = 5,
        backoff: Backoff | None = None,
        sleep: Callable[[float], None] = time.sleep,
        strict: bool = False,
        name: str = "mt5",
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be >= 1")
        self._connect = connect
        self.attempts = attempts
        self.backoff = backoff or Backoff()
        self.sleep = sleep
        self.strict = strict
        self.name = name
        self._term: Any = None
        self._error: tuple[int, str] | None = None  # set when the last call failed here
        self._cause: BaseException | None = None  # the last link failure (raised from)
        self.reconnects = 0  # successful connects after the first
        self._connected_once = False

    # -- plumbing -------------------------------------------------------------------------

    @property
    def terminal(self) -> Any:
        """The current underlying terminal (``None`` while disconnected)."""
        return self._term

    def ensure_connected(self) -> Any:
        """Connect now (with retries) if not connected; returns the underlying terminal."""
        err: tuple[int, str] = (RES_S_OK, "Success")
        self._cause = None
        for k in range(self.attempts):
            if self._term is not None:
                return self._term
            failed = self._open("connect", k)
            if failed is not None:
                err = failed[0]
                if failed[1]:  # timed out: no second deadline on the same frozen peer
                    break
        if self._term is not None:
            return self._term
        self._error = err
        raise TerminalConnectionError("connect", err) from self._cause

    def _open(self, call: str, k: int) -> tuple[tuple[int, str], bool] | None:
        """One connect attempt: ``None`` when connected, else the link error and whether it
        timed out (after the backoff sleep, unless it timed out). A failure that is not the
        link (authorization) raises at once."""
        try:
            self._term = self._connect()
        except TerminalError as exc:
            self._cause = exc
            if not exc.is_connection_error:
                self._error = exc.last_error
                raise
            if timed_out(exc):
                logger.warning("%s: %s timed out on the link %s", self.name, call, exc.last_error)
                return exc.last_error, True
            self._backoff(call, k, exc.last_error)
            return exc.last_error, False
        if self._connected_once:
            self.reconnects += 1
            logger.info("%s: reconnected (%d so far)", self.name, self.reconnects)
        self._connected_once = True
        return None

    def _backoff(self, call: str, k: int, err: tuple[int, str]) -> None:
        if k + 1 >= self.attempts:
            return
        delay = self.backoff.delay(k)
        logger.warning(
            "%s: %s failed on the link %s; retry %d/%d in %.2fs",
            self.name,
            call,
            err,
            k + 1,
            self.attempts - 1,
            delay,
        )
        self.sleep(delay)

    def _drop(self) -> None:
        term, self._term = self._term, None
        if term is None:
            return
        try:
            term.shutdown()
        except Exception:  # the link is gone already
            logger.debug("%s: shutdown of a broken terminal failed", self.name, exc_info=True)

    def _invoke(self, call: str, *args: Any, **kwargs: Any) -> Any:
        err: tuple[int, str] = (RES_S_OK, "Success")
        self._cause = None
        for k in range(self.attempts):
            if self._term is None:
                opened = self._open(call, k)
                if opened is not None:
                    err = opened[0]
                    if opened[1]:  # timed out: the next call reconnects
                        break
                if self._term is None:
                    continue
            term = self._term
            stuck = False
            try:
                result = getattr(term, call)(*args, **kwargs)
                failed = call not in _NO_RESULT_CHECK and (result is None or result is False)
                err = term.last_error() if failed else (RES_S_OK, "Success")
            except TerminalConnectionError as exc:
                self._cause = exc
                failed, err, result, stuck = True, exc.last_error, None, timed_out(exc)
            if not failed:
                self._error = None
                return result
            if not is_ipc_error(err[0]):
                self._error = err
                if self.strict:
                    raise TerminalError(call, err)
                return result
            self._drop()
            if call in _NOT_RESENT:
                self._error = err
                logger.warning("%s: link failed during %s %s; not re-sent", self.name, call, err)
                if self.strict:
                    raise TerminalConnectionError(call, err) from self._cause
                return None
            if stuck:  # timed out: no second deadline on the same frozen peer
                logger.warning("%s: %s timed out on the link %s", self.name, call, err)
                break
            self._backoff(call, k, err)
        self._error = err
        raise TerminalConnectionError(call, err) from self._cause

    def __getattr__(self, call: str) -> Any:
        """Any other call of the underlying terminal (``orders_get``, ``terminal_info``, …),
        through the same retry logic; ``AttributeError`` when the terminal has no such call."""
        if call.startswith("_"):
            raise AttributeError(call)
        term = self._term if self._term is not None else self.ensure_connected()
        if not callable(getattr(term, call, None)):
            raise AttributeError(f"{type(term).__name__} has no call {call!r}")

        def forward(*args: Any, **kwargs: Any) -> Any:
            return self._invoke(call, *args, **kwargs)

        return forward

    # -- the protocol ---------------------------------------------------------------------

    def initialize(self, *args: Any, **kwargs: Any) -> bool:
        """Connect (the connect function initializes); True when connected."""
        self.ensure_connected()
        return True

    def shutdown(self) -> None:
        self._drop()

    def last_error(self) -> tuple[int, str]:
        if self._error is not None or self._term is None:
            return self._error or (RES_S_OK, "Success")
        err: tuple[int, str] = self._term.last_error()
        return err

    def account_info(self) -> AccountInfo | None:
        out: AccountInfo | None = self._invoke("account_info")
        return out

    def symbol_info(self, symbol: str) -> SymbolInfo | None:
        out: SymbolInfo | None = self._invoke("symbol_info", symbol)
        return out

    def symbol_info_tick(self, symbol: str) -> Tick | None:
        out: Tick | None = self._invoke("symbol_info_tick", symbol)
        return out

    def symbol_select(self, symbol: str, enable: bool = True) -> bool:
        return bool(self._invoke("symbol_select", symbol, enable))

    def copy_rates_range(
        self, symbol: str, timeframe: int, date_from: datetime | int, date_to: datetime | int
    ) -> np.ndarray | None:
        out: np.ndarray | None = self._invoke(
            "copy_rates_range", symbol, timeframe, date_from, date_to
        )
        return out

    def copy_rates_from_pos(
        self, symbol: str, timeframe: int, start_pos: int, count: int
    ) -> np.ndarray | None:
        out: np.ndarray | None = self._invoke(
            "copy_rates_from_pos", symbol, timeframe, start_pos, count
        )
        return out

    def order_check(self, request: Mapping[str, Any]) -> OrderCheckResult | None:
        out: OrderCheckResult | None = self._invoke("order_check", request)
        return out

    def order_send(self, request: Mapping[str, Any]) -> OrderSendResult | None:
        out: OrderSendResult | None = self._invoke("order_send", request)
        return out

    def positions_get(
        self, symbol: str | None = None, ticket: int | None = None
    ) -> tuple[TradePosition, ...] | None:
        kw: dict[str, Any] = {}
        if symbol is not None:
            kw["symbol"] = symbol
        if ticket is not None:
            kw["ticket"] = ticket
        out: tuple[TradePosition, ...] | None = self._invoke("positions_get", **kw)
        return out

    def history_deals_get(
        self,
        date_from: datetime | int | None = None,
        date_to: datetime | int | None = None,
        **kwargs: Any,
    ) -> tuple[TradeDeal, ...] | None:
        args = () if date_from is None and date_to is None else (date_from, date_to)
        out: tuple[TradeDeal, ...] | None = self._invoke("history_deals_get", *args, **kwargs)
        return out


def _check_protocol(t: ResilientTerminal) -> Terminal:
    return t  # mypy: ResilientTerminal satisfies the Terminal protocol
