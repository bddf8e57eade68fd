"""The simulated terminal dressed as the official ``MetaTrader5`` module, and an mt5linux-style
bridge server over it.

* :func:`sim_module` builds a module object named ``MetaTrader5`` whose functions are a
  :class:`~engine.mt5.sim.SimulatedTerminal`'s methods, whose constants are the official ones
  (:mod:`engine.mt5.protocol`) and whose results are instances of the module's *own* named-tuple
  classes (``MetaTrader5.AccountInfo``, …), as the official module returns. Put it in
  ``sys.modules["MetaTrader5"]`` and :class:`~engine.mt5.native.NativeTerminal` runs on Linux —
  the only way to exercise the native adapter off Windows.
* :func:`serve` runs what ``python -m mt5linux`` runs next to a real terminal — an rpyc
  *classic* server — in a process whose ``import MetaTrader5`` is that module. The
  ``mt5linux`` client, and so :class:`~engine.mt5.bridge.BridgeTerminal`, cannot tell it from a
  real bridge: ``python -m engine.mt5.simserver --port 18812`` and ``TX_MT5_MODE=bridge``.

Calls are serialised with a lock (the rpyc server is threaded; the simulator is not).
"""

from __future__ import annotations

import argparse
import collections
import logging
import sys
import threading
import types
from collections.abc import Callable
from typing import Any

import numpy as np

from engine.mt5 import protocol
from engine.mt5.sim import SimulatedTerminal, SyntheticFeed

__all__ = ["FUNCTIONS", "serve", "sim_module"]

logger = logging.getLogger(__name__)

FUNCTIONS = (
    "initialize",
    "shutdown",
    "last_error",
    "account_info",
    "symbol_info",
    "symbol_info_tick",
    "symbol_select",
    "symbols_get",
    "copy_rates_range",
    "copy_rates_from",
    "copy_rates_from_pos",
    "order_check",
    "order_send",
    "positions_total",
    "positions_get",
    "orders_get",
    "history_deals_get",
    "terminal_info",
)
"""The official functions the simulated module provides."""

_RECORDS = (
    protocol.AccountInfo,
    protocol.SymbolInfo,
    protocol.Tick,
    protocol.OrderSendResult,
    protocol.OrderCheckResult,
    protocol.TradePosition,
    protocol.TradeDeal,
    protocol.TradeRequest,
    protocol.TradeOrder,
    protocol.TerminalInfo,
)


def sim_module(terminal: SimulatedTerminal, name: str = "MetaTrader5") -> types.ModuleType:
    """A module object with the official module's surface over ``terminal`` (see above)."""
    mod = types.ModuleType(name, f"Simulated {name} module over a TitanovaX SimulatedTerminal")
    mod.__version__ = "5.0.5735"  # type: ignore[attr-defined]  # the version the stubs describe
    mod.__author__ = "TitanovaX simulator"  # type: ignore[attr-defined]
    for const, value in vars(protocol).items():
        if const.isupper() and isinstance(value, int) and not isinstance(value, bool):
            setattr(mod, const, value)
    classes: dict[str, Any] = {
        cls.__name__: collections.namedtuple(cls.__name__, cls._fields, module=name)  # type: ignore[misc]
        for cls in _RECORDS
    }
    for cls_name, cls in classes.items():
        setattr(mod, cls_name, cls)

    def native(value: Any) -> Any:
        """A sim result with the module's own classes and builtin scalars."""
        if isinstance(value, tuple):
            items = tuple(native(v) for v in value)
            own = classes.get(type(value).__name__) if hasattr(value, "_fields") else None
            return own(*items) if own is not None else items
        if isinstance(value, np.generic):
            return value.item()
        return value

    lock = threading.Lock()

    def export(fn_name: str) -> Callable[..., Any]:
        method = getattr(terminal, fn_name)

        def call(*args: Any, **kwargs: Any) -> Any:
            with lock:
                return native(method(*args, **kwargs))

        call.__name__ = call.__qualname__ = fn_name
        return call

    for fn_name in FUNCTIONS:
        setattr(mod, fn_name, export(fn_name))
    return mod


def serve(
    terminal: SimulatedTerminal,
    host: str = "127.0.0.1",
    port: int = 18812,
    *,
    on_ready: Callable[[int], None] | None = None,
) -> None:
    """Serve ``terminal`` as an mt5linux bridge (an rpyc classic server) until killed.

    Installs :func:`sim_module` as ``sys.modules["MetaTrader5"]`` of this process.
    ``on_ready`` gets the bound port (useful with ``port=0``).
    """
    from rpyc.core.service import SlaveService
    from rpyc.utils.server import ThreadedServer

    sys.modules["MetaTrader5"] = sim_module(terminal)
    server = ThreadedServer(SlaveService, hostname=host, port=port, reuse_addr=True)
    server._listen()  # listen before announcing readiness (start() would do it, later)
    logger.info("simulated MT5 bridge listening on %s:%d", host, server.port)
    if on_ready is not None:
        on_ready(server.port)
    server.start()


def main(argv: list[str] | None = None) -> None:
    """``python -m engine.mt5.simserver``: a bridge over the seeded synthetic market."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=18812)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--symbols", default="EURUSD,GBPUSD,USDJPY,XAUUSD")
    ap.add_argument(
        "--end-utc", type=int, default=None, help="end of history (epoch s); default: the feed's"
    )
    ap.add_argument("--server-utc-offset-hours", type=int, default=2)
    ap.add_argument("--login", type=int, default=50_000_001, help="account login it reports")
    ap.add_argument(
        "--spread-add",
        type=int,
        default=0,
        help="points added to every bar's spread (a venue that quotes wider)",
    )
    ap.add_argument(
        "--clock-file",
        default=None,
        help="read the terminal's UTC clock (epoch s) from this file at every call (a clock "
        "another process moves, e.g. a paced replay); default: no clock (history's end)",
    )
    ns = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    feed = SyntheticFeed(
        seed=ns.seed,
        symbols=[s for s in ns.symbols.split(",") if s],
        server_utc_offset_hours=ns.server_utc_offset_hours,
        end_utc=ns.end_utc,
    )
    if ns.spread_add:
        from engine.mt5.widened import WidenedFeed

        served: Any = WidenedFeed(feed, ns.spread_add)
    else:
        served = feed
    clock = None
    if ns.clock_file:
        from pathlib import Path

        path = Path(ns.clock_file)

        def clock() -> int:
            return int(float(path.read_text().strip() or 0))

    from engine.mt5.settings import SimSlippageSettings

    term = SimulatedTerminal(
        served,
        clock=clock,
        server_utc_offset_hours=ns.server_utc_offset_hours,
        slippage=SimSlippageSettings().process(),  # TX_SIM_SLIPPAGE_*; off by default
        login=ns.login,
    )

    def ready(p: int) -> None:
        print(f"READY {p}", flush=True)

    serve(term, ns.host, ns.port, on_ready=ready)


if __name__ == "__main__":
    main()
