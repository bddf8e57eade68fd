"""Test-side world for the engine: a fault-injecting wrapper around the *real*
:class:`~engine.mt5.sim.SimulatedTerminal` (the broker's answers are scripted, everything else
is the simulator's), and a scripted model client.

Faults (``FaultyTerminal.script``, consumed one per ``order_send``):

* ``int`` retcode — the broker answers this without executing (requote, no prices, …);
* ``("lost", rc)`` — the broker executes the order but the answer is ``rc`` (e.g. 10031: the
  reply was lost on the connection);
* ``"none"`` — ``order_send`` returns ``None`` (IPC failure) without executing;
* ``"crash"`` — the broker executes, then the engine process "dies" (:class:`Crash` raised
  from ``order_send``), i.e. before the engine can journal the result;
* ``None`` — pass through.

``refuse_filling`` makes the broker answer 10030 to the given ``ORDER_FILLING_*`` modes even
though ``symbol_info`` advertises them (the situation the filling-mode cache exists for).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from engine.config import ExecutionConfig, RiskLimits, SizingConfig
from engine.features import FeatureRow
from engine.journal import Journal
from engine.loop import Engine
from engine.mt5 import protocol as mt5
from engine.mt5.sim import SimulatedTerminal, SyntheticFeed
from engine.serving_client import Prediction, ServingUnavailable

MONDAY_0800 = 1_768_204_800  # 2026-01-12 08:00 UTC (a Monday), market open


class Crash(BaseException):  # a dying process, not an error the engine handles
    """The engine process died right after order_send returned."""


class FaultyTerminal:
    """The real simulator with scripted broker faults (see the module docstring)."""

    def __init__(
        self,
        inner: SimulatedTerminal,
        script: Iterable[Any] = (),
        refuse_filling: Iterable[int] = (),
        stops_level: int | None = None,
    ) -> None:
        self.inner = inner
        self.script: deque[Any] = deque(script)
        self.refuse_filling = set(refuse_filling)
        self.stops_level = stops_level
        self.sent: list[dict[str, Any]] = []  # every request that reached the "broker"

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def symbol_info(self, symbol: str) -> Any:
        info = self.inner.symbol_info(symbol)
        if info is not None and self.stops_level is not None:
            info = info._replace(trade_stops_level=self.stops_level)
        return info

    def _answer(self, request: dict[str, Any], rc: int, comment: str) -> mt5.OrderSendResult:
        tick = self.inner.symbol_info_tick(request["symbol"])
        return mt5.OrderSendResult(
            rc,
            0,
            0,
            0.0,
            0.0,
            tick.bid if tick else 0.0,
            tick.ask if tick else 0.0,
            comment,
            0,
            0,
            None,
        )

    def order_send(self, request: dict[str, Any]) -> mt5.OrderSendResult | None:
        self.sent.append(dict(request))
        if request.get("type_filling") in self.refuse_filling:
            return self._answer(request, mt5.TRADE_RETCODE_INVALID_FILL, "Unsupported filling mode")
        fault = self.script.popleft() if self.script else None
        if fault is None:
            return self.inner.order_send(request)
        if fault == "none":
            return None
        if fault == "crash":
            self.inner.order_send(request)
            raise Crash("engine died after order_send")
        if isinstance(fault, tuple) and fault[0] == "lost":
            self.inner.order_send(request)
            return self._answer(request, int(fault[1]), "reply lost")
        if fault == mt5.TRADE_RETCODE_INVALID_STOPS and self.stops_level is not None:
            # the broker checks stops against its own level: pass through when they respect it
            res = self.inner.order_send(request)
            return res
        return self._answer(request, int(fault), f"injected {fault}")


class ScriptedModel:
    """A model client answering a fixed position (or raising ServingUnavailable)."""

    def __init__(
        self, position: int = 1, probabilities: dict[str, float] | None = None, version: str = "7"
    ) -> None:
        self.position = position
        self.version = version
        self.probabilities = probabilities
        self.down = False

    def predict(self, row: FeatureRow) -> Prediction:
        if self.down:
            raise ServingUnavailable("serving down (scripted)")
        label = {1: "long", -1: "short", 0: "flat"}[self.position]
        probs = self.probabilities or {"short": 0.1, "flat": 0.1, "long": 0.1} | {label: 0.8}
        return Prediction(
            self.version, self.position, label, probs, "abc", "serving", max(probs.values())
        )


class ClockFeatures:
    """Feature rows stamped with the current bar close (a fresh online row each bar)."""

    def __init__(self, now: list[int], lag_s: int = 0) -> None:
        self.now = now
        self.lag_s = lag_s

    def read(self, symbol: str) -> FeatureRow:
        return FeatureRow(symbol, float(self.now[0] - self.lag_s), {"f0": 0.0, "f1": 1.0})


def sim_terminal(
    now: list[int],
    *,
    balance: float = 10_000.0,
    symbols: tuple[str, ...] = ("EURUSD", "GBPUSD"),
    **kw: Any,
) -> SimulatedTerminal:
    """A real simulated terminal over the seeded synthetic market, on a test clock."""
    term = SimulatedTerminal(
        SyntheticFeed(seed=7, symbols=list(symbols)), clock=lambda: now[0], balance=balance, **kw
    )
    assert term.initialize()
    return term


def closes(start: int = MONDAY_0800, n: int = 10, step: int = 300) -> list[int]:
    """``n`` consecutive M5 bar closes from ``start``."""
    return [int(start + i * step) for i in range(n)]


def make_engine(
    tmp_path: Path,
    now: list[int],
    *,
    terminal: Any = None,
    features: Any = None,
    model: Any = None,
    limits: RiskLimits | None = None,
    sizing: SizingConfig | None = None,
    execution: ExecutionConfig | None = None,
    magic: int = 42,
) -> Engine:
    """The real engine on the test world: the simulator (or ``terminal``), features at every
    bar close of ``now``, a scripted long model, a SQLite journal in ``tmp_path``, no sleeping."""
    return Engine(
        terminal=terminal or sim_terminal(now),
        features=features or ClockFeatures(now),
        model=model or ScriptedModel(1),
        journal=Journal(tmp_path / "j.sqlite"),
        limits=limits or RiskLimits(),
        lots=0.1,
        magic=magic,
        clock=lambda: float(now[0]),
        sizing=sizing,
        execution=execution,
        sleep=lambda s: None,
    )
