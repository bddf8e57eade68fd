"""Open an MT5 terminal by mode: ``sim`` (embedded default), ``native`` or ``bridge``.

* ``sim``: a :class:`~engine.mt5.sim.SimulatedTerminal` over ``sim_feed`` (a
  :class:`~engine.mt5.sim.BarFeed`, or a folder of MT5 exports), by default the seeded
  synthetic market.
* ``native``: the official ``MetaTrader5`` package (Windows only), imported lazily, through
  :class:`~engine.mt5.native.NativeTerminal`.
* ``bridge``: ``mt5linux`` (an rpyc bridge to a terminal running under Wine or on another
  machine), through :class:`~engine.mt5.bridge.BridgeTerminal`.

``native`` and ``bridge`` come wrapped in :class:`~engine.mt5.resilient.ResilientTerminal`:
IPC / bridge failures reconnect with bounded exponential backoff (a bridge link that *timed
out* — a frozen terminal — is not tried again within the call, so the call fails within one
``bridge_timeout_s``; the next call reconnects); ``strict=True`` also turns every failed call
into :class:`TerminalError` carrying ``last_error()``.

Every mode returns an *initialized* terminal or raises: :class:`TerminalError` with the
terminal's ``last_error()`` when ``initialize`` fails (after the reconnect attempts, for a link
error), ``RuntimeError`` when the package a mode needs is not installed, ``ValueError`` for an
unknown mode. :func:`open_configured_terminal` does the same from ``TX_MT5_*`` settings.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from engine.mt5.protocol import Terminal, TerminalError
from engine.mt5.resilient import Backoff, ResilientTerminal
from engine.mt5.settings import MT5Settings
from engine.mt5.sim import BarFeed, ExportFeed, SimulatedTerminal, SyntheticFeed

__all__ = ["MODES", "open_configured_terminal", "open_terminal"]

logger = logging.getLogger(__name__)

MODES = ("sim", "native", "bridge")


def open_terminal(
    mode: str,
    *,
    sim_feed: BarFeed | str | Path | None = None,
    clock: Callable[[], int] | None = None,
    host: str = "127.0.0.1",
    port: int = 18812,
    login: int | None = None,
    password: str | SecretStr | None = None,
    server: str | None = None,
    path: str | None = None,
    server_utc_offset_hours: int = 2,
    timeout_ms: int | None = None,
    bridge_timeout_s: float = 30.0,
    reconnect_attempts: int = 5,
    backoff: Backoff | None = None,
    sleep: Callable[[float], None] = time.sleep,
    strict: bool = False,
) -> Terminal:
    """Open and initialize a terminal; see the module docstring for the modes.

    ``clock`` and ``server_utc_offset_hours`` apply to ``sim`` only (a real terminal has its
    own clock and server time); ``host``/``port``/``bridge_timeout_s`` to ``bridge`` only;
    ``path``, ``login``, ``password``, ``server`` and ``timeout_ms`` are passed to
    ``initialize`` in ``native`` and ``bridge`` (and, for ``sim``, ``login``/``server`` name the
    simulated account). ``reconnect_attempts``, ``backoff``, ``sleep`` and ``strict`` configure
    the :class:`~engine.mt5.resilient.ResilientTerminal` of ``native``/``bridge``.
    """
    if mode == "sim":
        return _open_sim(sim_feed, clock, login, server, server_utc_offset_hours)
    secret = password.get_secret_value() if isinstance(password, SecretStr) else password
    connect: Callable[[], Any]
    if mode == "native":
        from engine.mt5.native import NativeTerminal

        def connect() -> Any:
            return NativeTerminal.connect(
                path, login=login, password=secret, server=server, timeout_ms=timeout_ms
            )

    elif mode == "bridge":
        from engine.mt5.bridge import BridgeTerminal

        def connect() -> Any:
            return BridgeTerminal.connect(
                host,
                port,
                timeout_s=bridge_timeout_s,
                path=path,
                login=login,
                password=secret,
                server=server,
                timeout_ms=timeout_ms,
            )

    else:
        raise ValueError(f"unknown terminal mode {mode!r}; use one of {MODES}")
    term = ResilientTerminal(
        connect,
        attempts=reconnect_attempts,
        backoff=backoff,
        sleep=sleep,
        strict=strict,
        name=f"mt5-{mode}",
    )
    term.ensure_connected()
    return term


def open_configured_terminal(
    settings: MT5Settings | None = None,
    *,
    sim_feed: BarFeed | str | Path | None = None,
    clock: Callable[[], int] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    strict: bool = False,
) -> Terminal:
    """:func:`open_terminal` from ``TX_MT5_*`` (:class:`~engine.mt5.settings.MT5Settings`)."""
    s = settings or MT5Settings()
    return open_terminal(
        s.mode,
        sim_feed=sim_feed,
        clock=clock,
        host=s.bridge_host,
        port=s.bridge_port,
        login=s.login,
        password=s.password,
        server=s.server,
        path=s.path,
        server_utc_offset_hours=s.broker_utc_offset_hours,
        timeout_ms=s.timeout_ms,
        bridge_timeout_s=s.bridge_timeout_s,
        reconnect_attempts=s.reconnect_attempts,
        backoff=Backoff(s.reconnect_base_s, max(s.reconnect_max_s, s.reconnect_base_s)),
        sleep=sleep,
        strict=strict,
    )


def _open_sim(
    sim_feed: BarFeed | str | Path | None,
    clock: Callable[[], int] | None,
    login: int | None,
    server: str | None,
    server_utc_offset_hours: int,
) -> Terminal:
    feed: BarFeed
    if sim_feed is None:
        feed = SyntheticFeed(server_utc_offset_hours=server_utc_offset_hours)
    elif isinstance(sim_feed, str | Path):
        feed = ExportFeed(sim_feed, server_utc_offset_hours=server_utc_offset_hours)
    else:
        feed = sim_feed
    kwargs: dict[str, Any] = {}
    if login is not None:
        kwargs["login"] = int(login)
    if server is not None:
        kwargs["server"] = server
    term = SimulatedTerminal(
        feed, clock=clock, server_utc_offset_hours=server_utc_offset_hours, **kwargs
    )
    if not term.initialize():
        raise TerminalError("initialize", term.last_error())
    logger.info("opened simulated terminal over %s", type(feed).__name__)
    return term
