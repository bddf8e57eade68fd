"""The engine: for each newly closed bar, features → serving → risk → MT5 order → journal.

Its world comes in as arguments (terminal, feature reader, model client, journal, clock), so
the same code runs live against a real terminal, in paper mode and over a replay.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from engine.config import RiskLimits
from engine.features import FeatureRow, FeatureUnavailable
from engine.journal import DecisionRecord, Journal
from engine.mt5 import Terminal
from engine.mt5 import protocol as mt5
from engine.risk import Reason, check_order
from engine.serving_client import Prediction, ServingUnavailable

log = logging.getLogger(__name__)


class FeatureSource(Protocol):
    def read(self, symbol: str) -> FeatureRow: ...


class ModelClient(Protocol):
    def predict(self, row: FeatureRow) -> Prediction: ...


@dataclass
class EngineStats:
    latencies_ms: list[float] = field(default_factory=list)  # tick-to-decision per bar


class Engine:
    def __init__(
        self,
        *,
        terminal: Terminal,
        features: FeatureSource,
        model: ModelClient,
        journal: Journal,
        limits: RiskLimits,
        lots: float,
        magic: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.terminal = terminal
        self.features = features
        self.model = model
        self.journal = journal
        self.limits = limits
        self.lots = lots
        self.magic = magic
        self.clock = clock
        self.stats = EngineStats()

    # --- one bar ------------------------------------------------------------------------
    def on_bar(self, symbol: str, bar_close: int) -> DecisionRecord | None:
        """Decide on the bar of ``symbol`` that closed at ``bar_close`` (UTC epoch seconds).

        Returns the journaled record, or ``None`` if this bar was already decided (restart)."""
        if self.journal.decided(symbol, bar_close):
            return None
        t0 = time.perf_counter()
        lat: dict[str, float] = {}
        rec = DecisionRecord(
            symbol, bar_close, self.clock(), None, None, "none", None, "refused", None, None, None, None, lat
        )
        try:
            row = self.features.read(symbol)
            lat["features_ms"] = (time.perf_counter() - t0) * 1e3
            rec.feature_time = row.event_time
            if round(row.event_time) != bar_close:
                rec.reason = f"{Reason.STALE_FEATURES}: row at {row.event_time:.0f}, bar closed {bar_close}"
                return self._finish(rec, t0)
            t1 = time.perf_counter()
            pred = self.model.predict(row)
            lat["serving_ms"] = (time.perf_counter() - t1) * 1e3
            rec.model_version, rec.decision = pred.model_version, pred.decision
            target = pred.position * self.lots
            rec.target_lots = target
            current = self._net_lots(symbol)
            verdict = check_order(self.limits, current_lots=current, target_lots=target)
            if not verdict.allowed:
                rec.reason = f"{verdict.reason}: {verdict.detail}"
                return self._finish(rec, t0)
            if abs(target - current) < 1e-9:
                rec.verdict = "hold"
                return self._finish(rec, t0)
            t2 = time.perf_counter()
            self._move_position(symbol, current, target, bar_close, rec)
            lat["order_ms"] = (time.perf_counter() - t2) * 1e3
        except FeatureUnavailable as exc:
            rec.reason = f"{Reason.NO_FEATURES}: {exc}"
        except ServingUnavailable as exc:
            rec.reason = f"{Reason.SERVING_UNAVAILABLE}: {exc}"
        return self._finish(rec, t0)

    def _finish(self, rec: DecisionRecord, t0: float) -> DecisionRecord:
        total = (time.perf_counter() - t0) * 1e3
        rec.latency_ms["total_ms"] = total
        self.journal.record(rec)
        self.stats.latencies_ms.append(total)
        log.debug("%s %s %s %s", rec.symbol, rec.bar_close, rec.verdict, rec.reason or rec.decision)
        return rec

    # --- positions and orders -------------------------------------------------------------
    def _positions(self, symbol: str) -> tuple[Any, ...]:
        pos = self.terminal.positions_get(symbol=symbol)
        return tuple(p for p in (pos or ()) if p.magic == self.magic)

    def _net_lots(self, symbol: str) -> float:
        return sum(p.volume if p.type == mt5.POSITION_TYPE_BUY else -p.volume for p in self._positions(symbol))

    def _send(self, request: dict[str, Any]) -> Any:
        result = self.terminal.order_send(request)
        if result is None:
            return None, {"last_error": list(self.terminal.last_error())}
        return result, {k: v for k, v in result._asdict().items() if k != "request"}

    def _move_position(self, symbol: str, current: float, target: float, bar_close: int, rec: DecisionRecord) -> None:
        """Close what points the wrong way, then open the rest (hedging accounts)."""
        requests: list[dict[str, Any]] = []
        results: list[dict[str, Any]] = []
        comment = f"tx:{bar_close}"
        remaining = current
        if current != 0 and (target == 0 or (target > 0) != (current > 0)):
            for p in self._positions(symbol):
                close_type = mt5.ORDER_TYPE_SELL if p.type == mt5.POSITION_TYPE_BUY else mt5.ORDER_TYPE_BUY
                requests.append(self._request(symbol, close_type, p.volume, comment, position=p.ticket))
            remaining = 0.0
        delta = round(target - remaining, 8)
        if delta != 0:
            side = mt5.ORDER_TYPE_BUY if delta > 0 else mt5.ORDER_TYPE_SELL
            requests.append(self._request(symbol, side, abs(delta), comment))
        retcode = None
        for req in requests:
            res, res_d = self._send(req)
            results.append(res_d)
            retcode = res.retcode if res is not None else None
            if res is None or res.retcode != mt5.TRADE_RETCODE_DONE:
                rec.verdict = "error"
                rec.reason = f"order failed: retcode={retcode} {res_d}"
                break
        else:
            rec.verdict = "sent"
        rec.order_request = {"orders": requests}
        rec.order_result = {"results": results}
        rec.retcode = retcode

    def _request(self, symbol: str, order_type: int, volume: float, comment: str, position: int | None = None) -> dict[str, Any]:
        req: dict[str, Any] = {
            "action": mt5.TRADE_ACTION_DEAL,
            "symbol": symbol,
            "volume": float(volume),
            "type": order_type,
            "deviation": 20,
            "magic": self.magic,
            "comment": comment,
            "type_time": mt5.ORDER_TIME_GTC,
            "type_filling": mt5.ORDER_FILLING_IOC,
        }
        if position is not None:
            req["position"] = position
        return req

    # --- drivers ------------------------------------------------------------------------
    def replay(
        self,
        bar_closes: Iterable[int],
        symbols: list[str],
        set_time: Callable[[int], None],
        before_bar: Callable[[str, int], None] | None = None,
    ) -> None:
        """Paper/backtest driver: advance the simulated clock bar by bar and decide."""
        for close in bar_closes:
            set_time(close)
            for sym in symbols:
                if before_bar is not None:
                    before_bar(sym, close)
                self.on_bar(sym, close)

    def run_live(
        self,
        symbols: list[str],
        timeframe: int,
        *,
        utc_offset_hours: int,
        poll_s: float = 0.25,
        stop: Callable[[], bool] = lambda: False,
    ) -> None:
        """Live driver: poll the terminal for newly closed bars and decide on each."""
        from engine.mt5 import timeframe_seconds

        step = timeframe_seconds(timeframe)
        last: dict[str, int] = {}
        while not stop():
            for sym in symbols:
                rates = self.terminal.copy_rates_from_pos(sym, timeframe, 1, 1)  # last closed bar
                if rates is None or not len(rates):
                    continue
                close_server = int(rates["time"][0]) + step
                if last.get(sym) != close_server:
                    last[sym] = close_server
                    self.on_bar(sym, close_server - utc_offset_hours * 3600)
            time.sleep(poll_s)
