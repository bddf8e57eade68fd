"""The ``mt5linux`` rpyc bridge behind :class:`~engine.mt5.protocol.Terminal`.

``mt5linux`` (1.0.11) runs an rpyc *classic* server next to a terminal (under Wine, or on a
Windows host) whose Python has the official ``MetaTrader5`` module; its client,
``mt5linux.MetaTrader5(host, port, timeout)``, connects with ``rpyc.classic.connect``, runs
``import MetaTrader5 as mt5`` on the server and evaluates ``mt5.<call>(…)`` there.

This adapter uses that client for the connection and its public ``execute``/``eval``, but not
its per-call wrappers: they hand back rpyc *proxies* of the server's named tuples (one network
round trip per field read, and dead once the link drops) and format ``datetime`` arguments
through the client's local time zone. Instead it installs a small helper on the server
(:data:`REMOTE_HELPERS`) and evaluates ``_tx_call(name, args, kwargs)``, which calls
``mt5.<name>`` and returns plain values only (named tuples as ``(fields, values)``, bar arrays as
bytes plus dtype). Each call is one round trip, arguments travel as *data*: one string of
Python literals (times as epoch seconds of server time, requests as plain dicts) that the
server reads with ``ast.literal_eval`` and never evaluates as code, so a value (the account
password of ``initialize``, a comment) cannot become code on the server and never appears in
a code string. Results become this package's named tuples and ``RATES_DTYPE`` arrays.

**Security.** The mt5linux server is an rpyc *classic* server: whoever can open a TCP
connection to its port can run any code on the machine that holds the terminal (and its
logged-in account). Bind it to 127.0.0.1 and reach it over an SSH tunnel
(``ssh -N -L 18812:127.0.0.1:18812 user@mt5-host``) or a VPN / private network; never expose
it on a public or shared interface (see ``docs/failure-behaviour.md``).

**Deadline.** ``timeout_s`` bounds every step: the TCP connect, the handshake, every call
(rpyc's sync request timeout); closing a broken link does not wait on the server at all. The
engine sets it from ``TX_ENGINE_TERMINAL_TIMEOUT_S``. A frozen server (SIGSTOP, a hung
terminal) is a ``TimeoutError`` within the deadline, raised as
:class:`~engine.mt5.protocol.TerminalConnectionError` whose ``__cause__`` is that timeout.

Failures: a call that fails on the terminal returns ``None`` / ``False`` with
``last_error()`` from the terminal, as the official module does. A broken link (connection
refused or closed, timeout: ``OSError``, ``EOFError``) raises
:class:`~engine.mt5.protocol.TerminalConnectionError` with ``last_error() ==
(RES_E_INTERNAL_FAIL_CONNECT, "bridge …")``; the adapter stays broken (every later call raises
the same) until it is replaced — :class:`~engine.mt5.resilient.ResilientTerminal` does that
with backoff.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import numpy as np

from engine.mt5.adapter import plain_request, server_seconds, to_rates, to_record, to_records
from engine.mt5.protocol import (
    RES_E_FAIL,
    RES_E_INTERNAL_FAIL_CONNECT,
    AccountInfo,
    OrderCheckResult,
    OrderSendResult,
    SymbolInfo,
    TerminalConnectionError,
    TerminalError,
    TerminalInfo,
    Tick,
    TradeDeal,
    TradeOrder,
    TradePosition,
    initialize_kwargs,
)

__all__ = ["LINK_ERRORS", "REMOTE_HELPERS", "BridgeTerminal"]

logger = logging.getLogger(__name__)

LINK_ERRORS: tuple[type[BaseException], ...] = (EOFError, OSError)
"""What a broken rpyc link raises: ``EOFError`` (stream closed), ``ConnectionError`` and other
``OSError`` (refused, reset), rpyc's ``AsyncResultTimeout`` (a ``TimeoutError``)."""

REMOTE_HELPERS = """
def _tx_plain(x):
    if x is None or isinstance(x, (bool, int, float, str, bytes)):
        return x
    fields = getattr(x, "_fields", None)
    if fields is not None:
        return ("__nt__", tuple(fields), tuple(_tx_plain(v) for v in x))
    if hasattr(x, "dtype") and hasattr(x, "tobytes"):
        if getattr(x, "ndim", 0) == 0:
            return x.item()
        return ("__nd__", tuple(tuple(d) for d in x.dtype.descr), x.tobytes())
    if isinstance(x, (tuple, list)):
        return tuple(_tx_plain(v) for v in x)
    if isinstance(x, dict):
        return ("__dict__", tuple((k, _tx_plain(v)) for k, v in x.items()))
    return ("__repr__", repr(x))

def _tx_call(name, args, kwargs):
    return _tx_plain(getattr(mt5, name)(*args, **kwargs))

def _tx_call_data(payload):
    import ast
    name, args, kwargs = ast.literal_eval(payload)
    return _tx_call(name, args, kwargs)
"""
"""Installed on the bridge server at connect: plain-value results in one round trip."""


def _client(cls: Any, host: str, port: int, timeout_s: float) -> tuple[Any, Any]:
    """An ``mt5linux.MetaTrader5`` client, and its socket stream, whose every step has the
    deadline ``timeout_s``: the TCP connect (one try; rpyc's default is 3 s, six tries with
    backoff), the handshake and every round trip (rpyc's sync request timeout; mt5linux 1.0.11
    connects with rpyc's default 30 s and sets its own only afterwards, so a stopped server
    would hold a reconnect for 30 s). A failed handshake closes its socket."""
    from rpyc.core.service import ClassicService  # what rpyc.classic.connect exposes
    from rpyc.utils.factory import connect_stream

    stream = _deadline_stream_class().connect(host, port, timeout=timeout_s, attempts=1)
    try:
        conn = connect_stream(stream, ClassicService, config={"sync_request_timeout": timeout_s})
        client = cls.__new__(cls)
        client._MetaTrader5__conn = conn  # the attribute the client's execute/eval use
        conn.execute("import sys; sys.path.append('C:\\\\mt5libs')")
        conn.execute("import MetaTrader5 as mt5")
        conn.execute("import datetime")
    except BaseException:
        stream.close()
        raise
    return client, stream


_DEADLINE_STREAM: Any = None


def _deadline_stream_class() -> Any:
    """rpyc's ``SocketStream`` whose read gives up when the peer stalls in the middle of a
    frame. rpyc reads a frame only once ``poll`` saw data, but then reads it to the end and
    retries a socket timeout forever: a server frozen half-way through a large answer (bars,
    deals) would hold the caller for the whole freeze. Here the socket keeps the connect
    deadline as its timeout, so a read (and a write: rpyc turns its socket error into
    ``EOFError``) that waits longer than the deadline breaks the link."""
    global _DEADLINE_STREAM
    if _DEADLINE_STREAM is None:
        from rpyc.core.stream import SocketStream, retry_errnos

        class DeadlineStream(SocketStream):  # type: ignore[misc]
            __slots__ = ()

            def read(self, count: int) -> bytes:
                data = []
                while count > 0:
                    try:
                        buf = self.sock.recv(min(self.MAX_IO_CHUNK, count))
                    except TimeoutError as exc:
                        self.close()
                        raise EOFError(
                            f"TimeoutError: the bridge stalled in the middle of a frame ({exc})"
                        ) from exc
                    except OSError as exc:
                        if exc.errno in retry_errnos:
                            continue
                        self.close()
                        raise EOFError(exc) from exc
                    if not buf:
                        self.close()
                        raise EOFError("connection closed by peer")
                    data.append(buf)
                    count -= len(buf)
                return b"".join(data)

        _DEADLINE_STREAM = DeadlineStream
    return _DEADLINE_STREAM


class _Record(tuple):  # type: ignore[type-arg]
    """A named tuple of the server, decoded: its values, with ``_fields``."""

    _fields: tuple[str, ...]

    def __new__(cls, fields: tuple[str, ...], values: tuple[Any, ...]) -> _Record:
        self = super().__new__(cls, values)
        self._fields = tuple(fields)
        return self


def _decode(x: Any) -> Any:
    if isinstance(x, tuple) and x and isinstance(x[0], str):
        tag = x[0]
        if tag == "__nt__" and len(x) == 3:
            return _Record(x[1], tuple(_decode(v) for v in x[2]))
        if tag == "__nd__" and len(x) == 3:
            dtype = np.dtype([tuple(d) for d in x[1]])
            return np.frombuffer(x[2], dtype=dtype).copy()
        if tag == "__dict__" and len(x) == 2:
            return {k: _decode(v) for k, v in x[1]}
        if tag == "__repr__" and len(x) == 2:
            return x[1]
    if isinstance(x, tuple):
        return tuple(_decode(v) for v in x)
    return x


class BridgeTerminal:
    """An mt5linux bridge connection as a :class:`~engine.mt5.protocol.Terminal` (see the
    module docstring). Connects in the constructor; call :meth:`initialize` next (or use
    :meth:`connect`)."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 18812, *, timeout_s: float = 30.0
    ) -> None:
        try:
            from mt5linux import MetaTrader5
        except ImportError as exc:
            raise RuntimeError(
                "mode 'bridge' needs the mt5linux package (pip install mt5linux) and an mt5linux "
                f"server reachable at {host}:{port} ({exc})"
            ) from exc
        self.host, self.port = host, int(port)
        self._link_error: tuple[int, str] | None = None
        self._client: Any = None
        self._stream: Any = None
        try:
            self._client, self._stream = _client(MetaTrader5, host, int(port), timeout_s)
            self._client.execute(REMOTE_HELPERS)
            self._remote_call = self._client.eval("_tx_call_data")
        except LINK_ERRORS as exc:
            err = self._broken(exc)
            self.close()  # the socket, at once (the link is broken: no goodbye)
            raise TerminalConnectionError("connect", err) from exc
        except ImportError as exc:  # the server's Python has no MetaTrader5 module
            self.close()
            raise TerminalError("connect", (RES_E_FAIL, f"bridge {host}:{port}: {exc}")) from exc

    @classmethod
    def connect(
        cls,
        host: str = "127.0.0.1",
        port: int = 18812,
        *,
        timeout_s: float = 30.0,
        path: str | None = None,
        login: int | None = None,
        password: str | None = None,
        server: str | None = None,
        timeout_ms: int | None = None,
    ) -> BridgeTerminal:
        """Connect and initialize; :class:`TerminalError` with ``last_error()`` on failure."""
        term = cls(host, port, timeout_s=timeout_s)
        if not term.initialize(
            path, login=login, password=password, server=server, timeout=timeout_ms
        ):
            err = term.last_error()
            term.close()
            raise TerminalError("initialize", err)
        logger.info("MT5 bridge %s:%d initialized (login=%s, server=%s)", host, port, login, server)
        return term

    # -- plumbing -------------------------------------------------------------------------

    def _broken(self, exc: BaseException) -> tuple[int, str]:
        self._link_error = (
            RES_E_INTERNAL_FAIL_CONNECT,
            f"bridge {self.host}:{self.port}: {type(exc).__name__}: {exc}",
        )
        return self._link_error

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if self._link_error is not None:
            raise TerminalConnectionError(name, self._link_error)
        payload = repr((name, tuple(args), dict(kwargs)))  # data, read by ast.literal_eval
        try:
            raw = self._remote_call(payload)
        except LINK_ERRORS as exc:
            logger.warning("MT5 bridge %s:%d: %s failed: %r", self.host, self.port, name, exc)
            raise TerminalConnectionError(name, self._broken(exc)) from exc
        return _decode(raw)

    def close(self) -> None:
        """Close the rpyc connection (mt5linux 1.0.11 keeps it in a private attribute).

        rpyc's close is a *sync* request (``HANDLE_CLOSE``): on a frozen server it would wait a
        whole deadline more. A broken link closes its socket first, so the close is local and
        immediate; a healthy one says goodbye to the server."""
        if self._link_error is not None and self._stream is not None:
            self._stream.close()
        conn = getattr(self._client, "_MetaTrader5__conn", None)
        if conn is not None:
            try:
                conn.close()
            except Exception:  # closing a dead link
                logger.debug("closing bridge connection failed", exc_info=True)

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
        kw = initialize_kwargs(login, password, server, timeout)
        args = (str(path),) if path is not None else ()
        return bool(self._call("initialize", *args, **kw))

    def shutdown(self) -> None:
        try:
            self._call("shutdown")
        finally:
            self.close()

    def last_error(self) -> tuple[int, str]:
        if self._link_error is not None:
            return self._link_error
        err = self._call("last_error")
        try:
            return int(err[0]), str(err[1])
        except (TypeError, IndexError, ValueError):
            return RES_E_FAIL, f"unreadable last_error() {err!r}"

    def terminal_info(self) -> TerminalInfo | None:
        return to_record(TerminalInfo, self._call("terminal_info"))

    # -- account and symbols ----------------------------------------------------------------

    def account_info(self) -> AccountInfo | None:
        return to_record(AccountInfo, self._call("account_info"))

    def symbol_info(self, symbol: str) -> SymbolInfo | None:
        return to_record(SymbolInfo, self._call("symbol_info", str(symbol)))

    def symbol_info_tick(self, symbol: str) -> Tick | None:
        return to_record(Tick, self._call("symbol_info_tick", str(symbol)))

    def symbol_select(self, symbol: str, enable: bool = True) -> bool:
        return bool(self._call("symbol_select", str(symbol), bool(enable)))

    # -- bars ---------------------------------------------------------------------------------

    def copy_rates_range(
        self, symbol: str, timeframe: int, date_from: datetime | int, date_to: datetime | int
    ) -> np.ndarray | None:
        return to_rates(
            self._call(
                "copy_rates_range",
                str(symbol),
                int(timeframe),
                server_seconds(date_from),
                server_seconds(date_to),
            )
        )

    def copy_rates_from(
        self, symbol: str, timeframe: int, date_from: datetime | int, count: int
    ) -> np.ndarray | None:
        return to_rates(
            self._call(
                "copy_rates_from",
                str(symbol),
                int(timeframe),
                server_seconds(date_from),
                int(count),
            )
        )

    def copy_rates_from_pos(
        self, symbol: str, timeframe: int, start_pos: int, count: int
    ) -> np.ndarray | None:
        return to_rates(
            self._call(
                "copy_rates_from_pos", str(symbol), int(timeframe), int(start_pos), int(count)
            )
        )

    # -- trading ------------------------------------------------------------------------------

    def order_check(self, request: Mapping[str, Any]) -> OrderCheckResult | None:
        return to_record(OrderCheckResult, self._call("order_check", plain_request(request)))

    def order_send(self, request: Mapping[str, Any]) -> OrderSendResult | None:
        return to_record(OrderSendResult, self._call("order_send", plain_request(request)))

    def positions_total(self) -> int:
        return int(self._call("positions_total"))

    def positions_get(
        self, symbol: str | None = None, ticket: int | None = None, group: str | None = None
    ) -> tuple[TradePosition, ...] | None:
        return to_records(
            TradePosition, self._call("positions_get", **_filters(symbol, ticket, group))
        )

    def orders_get(
        self, symbol: str | None = None, ticket: int | None = None, group: str | None = None
    ) -> tuple[TradeOrder, ...] | None:
        return to_records(TradeOrder, self._call("orders_get", **_filters(symbol, ticket, group)))

    def history_deals_get(
        self,
        date_from: datetime | int | None = None,
        date_to: datetime | int | None = None,
        *,
        ticket: int | None = None,
        position: int | None = None,
    ) -> tuple[TradeDeal, ...] | None:
        if ticket is not None:
            return to_records(TradeDeal, self._call("history_deals_get", ticket=int(ticket)))
        if position is not None:
            return to_records(TradeDeal, self._call("history_deals_get", position=int(position)))
        if date_from is None or date_to is None:
            raise TypeError("history_deals_get: pass date_from and date_to, or ticket/position")
        return to_records(
            TradeDeal,
            self._call("history_deals_get", server_seconds(date_from), server_seconds(date_to)),
        )


def _filters(symbol: str | None, ticket: int | None, group: str | None) -> dict[str, Any]:
    """The one keyword filter the official ``positions_get``/``orders_get`` take."""
    if ticket is not None:
        return {"ticket": int(ticket)}
    if symbol is not None:
        return {"symbol": str(symbol)}
    if group is not None:
        return {"group": str(group)}
    return {}
