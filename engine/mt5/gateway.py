"""Open an MT5 terminal by mode: ``sim`` (embedded default), ``native`` or ``bridge``.

* ``sim``: a :class:`~engine.mt5.sim.SimulatedTerminal` over ``sim_feed`` (a
  :class:`~engine.mt5.sim.BarFeed`, or a folder of MT5 exports), by default the seeded
  synthetic market.
* ``native``: the official ``MetaTrader5`` package (Windows only), imported lazily.
* ``bridge``: ``mt5linux`` (an rpyc bridge to a terminal running under Wine or on another
  machine, with the same API), imported lazily.

Every mode returns an *initialized* terminal or raises: :class:`TerminalError` with the
terminal's ``last_error()`` when ``initialize`` fails, ``RuntimeError`` when the package a
mode needs is not installed, ``ValueError`` for an unknown mode.
"""

from __future__ import annotations

import importlib
import logging
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from engine.mt5.protocol import Terminal, TerminalError
from engine.mt5.sim import BarFeed, ExportFeed, SimulatedTerminal, SyntheticFeed

__all__ = ["MODES", "open_terminal"]

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
    password: str | None = None,
    server: str | None = None,
    path: str | None = None,
    server_utc_offset_hours: int = 2,
) -> Terminal:
    """Open and initialize a terminal; see the module docstring for the modes.

    ``clock`` and ``server_utc_offset_hours`` apply to ``sim`` only (a real terminal has its
    own clock and server time); ``host``/``port`` to ``bridge`` only; ``path``, ``login``,
    ``password`` and ``server`` are passed to ``initialize`` in ``native`` and ``bridge``
    (and, for ``sim``, ``login``/``server`` name the simulated account).
    """
    if mode == "sim":
        return _open_sim(sim_feed, clock, login, server, server_utc_offset_hours)
    if mode == "native":
        mt5 = _import(
            "MetaTrader5",
            f"mode 'native' needs the official MetaTrader5 package, which exists only for "
            f"Windows; this is {platform.system() or sys.platform} ({sys.platform}). "
            f"Use mode 'bridge' (mt5linux) or 'sim' here.",
        )
        return _initialize(mt5, path=path, login=login, password=password, server=server)
    if mode == "bridge":
        mt5linux = _import(
            "mt5linux",
            "mode 'bridge' needs the mt5linux package (pip install mt5linux) and an mt5linux "
            f"server reachable at {host}:{port}",
        )
        terminal = mt5linux.MetaTrader5(host=host, port=port)
        return _initialize(terminal, path=path, login=login, password=password, server=server)
    raise ValueError(f"unknown terminal mode {mode!r}; use one of {MODES}")


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


def _import(module: str, hint: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise RuntimeError(f"{hint} ({exc})") from exc


def _initialize(
    mt5: Any,
    *,
    path: str | None,
    login: int | None,
    password: str | None,
    server: str | None,
) -> Terminal:
    """Call ``mt5.initialize`` with the given credentials; raise :class:`TerminalError`."""
    args: tuple[Any, ...] = (str(path),) if path is not None else ()
    kwargs: dict[str, Any] = {}
    if login is not None:
        kwargs["login"] = int(login)
    if password is not None:
        kwargs["password"] = password
    if server is not None:
        kwargs["server"] = server
    if not mt5.initialize(*args, **kwargs):
        error = tuple(mt5.last_error())
        raise TerminalError("initialize", (int(error[0]), str(error[1])))
    logger.info("MT5 terminal initialized (login=%s, server=%s)", login, server)
    return cast(Terminal, mt5)
