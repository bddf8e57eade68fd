"""Grid trading with reverse safety: a pure state machine plus the engine's adapter.

**The strategy** (:class:`GridStrategy`, pure: numbers in, proposed actions out). A grid has a
direction (+1 long, -1 short), an anchor (the first level's price) and levels, each with its
price and lots. On every closed bar, given the close, the ATR, the trend signal and the
volatility ratio, it proposes, in this order:

1. ``close_all`` / ``basket_tp`` — the basket's floating P&L reached ``basket_tp_atr`` ATRs per
   lot (or ``basket_tp_ccy`` in account currency);
2. ``close_all`` / ``basket_stop`` — it lost ``basket_stop_atr`` ATRs per lot (or
   ``basket_stop_ccy``);
3. **reverse safety** — the trend signal points against the grid: ``reverse_mode``
   ``stop_adding`` (no new level until the trend no longer points against it),
   ``flatten`` (``close_all`` / ``trend_against``) or ``reverse`` (``close_all`` then
   ``open`` a one-level grid the other way);
4. ``add`` — price moved a spacing against the last level and fewer than ``max_levels`` are
   open: one more level of ``lots * lot_multiplier ** n``. The spacing is ``spacing_atr`` ATRs
   times ``max(1, atr / slow atr) ** vol_widen``: it widens when volatility rises above its
   slow average;
5. with no grid open: ``open`` the first level — ``direction=trend`` in the trend's direction
   (nothing while the trend filter is flat), ``long``/``short`` whenever the trend does not
   point against that side.

Every action carries a reason code and a one-line detail. The strategy never changes its state
when it proposes; :meth:`GridStrategy.apply` records what was executed (the engine calls it only
for filled orders, the vectorised backtest for every action the risk caps allow), so a refused
add leaves no phantom level.

**The trend filter** (:func:`market_signals`) is computed from closed bars only: the slope of an
EMA (``trend_period``) over the last ``trend_slope_bars`` bars, in ATRs; ``|slope| >=
trend_threshold`` is a trend. The EMA is seeded at the first close of a fixed window of
``3 * trend_period + trend_slope_bars`` bars, so the engine (reading that window from the
terminal) and the vectorised backtest (slicing the same bars) compute the very same number;
it equals the ``ta`` library's ``EMAIndicator`` on that window (tested). Hand-written in numpy
because the engine installs without pandas (``tests/unit/test_engine_lean.py``).

**The engine adapter** (:class:`GridRunner`): per symbol configured ``grid`` or ``both``
(``TX_ENGINE_STRATEGY``), it reads the bars, asks the strategy, runs every proposed order
through the risk caps (:func:`engine.risk.check_grid_add`, :func:`engine.risk.check_grid_basket`
and :func:`engine.risk.check_order` on the net position) and the idempotent order path, and
journals each action with its reason in the bar's decision row (``order_request.grid``). Its
state is persisted in the journal (``engine_state`` key ``grid:<symbol>``) and checked against
the terminal's positions on every bar (a level closed elsewhere is dropped, and said so).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from engine.config import GridConfig, GridLimits
from engine.mt5 import protocol as mt5
from engine.risk import Reason, Verdict, check_grid_add, check_grid_basket
from engine.sizing import atr as mean_true_range
from engine.sizing import round_volume

log = logging.getLogger(__name__)

ActionKind = Literal["open", "add", "close_all", "stop_adding", "resume_adding"]


# --- signals -------------------------------------------------------------------------------


def ema_last(close: np.ndarray, period: int, back: int = 0) -> float:
    """EMA (``alpha = 2 / (period + 1)``, seeded at ``close[0]``, not adjusted) of ``close`` at
    index ``len(close) - 1 - back``; a dot product with the closed-form weights."""
    x = np.asarray(close, dtype=float)
    n = len(x) - back
    if n <= 0:
        raise ValueError("ema_last: not enough closes")
    a = 2.0 / (period + 1.0)
    k = np.arange(n - 1, -1, -1, dtype=float)  # age of each close at index n - 1
    w = a * (1.0 - a) ** k
    w[0] = (1.0 - a) ** (n - 1)  # the seed keeps the rest of the weight
    return float(w @ x[:n])


@dataclass(frozen=True)
class Signals:
    """What the strategy reads from the closed bars of one decision."""

    close: float
    atr: float
    slow_atr: float
    slope_atr: float  # EMA slope over trend_slope_bars, in ATRs
    trend: int  # +1 up, -1 down, 0 none

    @property
    def vol_ratio(self) -> float:
        """Fast over slow ATR (1 when the slow one is 0)."""
        return self.atr / self.slow_atr if self.slow_atr > 0 else 1.0


def market_signals(rates: np.ndarray, cfg: GridConfig) -> Signals:
    """Signals from ``rates`` (MT5 rates, oldest first, the last one the bar being decided);
    needs ``cfg.bars_needed`` bars (fewer: :class:`ValueError`)."""
    if rates is None or len(rates) < cfg.bars_needed:
        raise ValueError(f"grid needs {cfg.bars_needed} closed bars, got {len(rates or ())}")
    r = rates[-cfg.bars_needed :]
    a = mean_true_range(r, cfg.atr_period)
    slow = mean_true_range(r, cfg.vol_window)
    window = r["close"][-(3 * cfg.trend_period + cfg.trend_slope_bars) :]
    slope = ema_last(window, cfg.trend_period) - ema_last(
        window, cfg.trend_period, cfg.trend_slope_bars
    )
    slope_atr = slope / a if a > 0 else 0.0
    if cfg.trend_threshold > 0:
        trend = (
            1
            if slope_atr >= cfg.trend_threshold
            else (-1 if slope_atr <= -cfg.trend_threshold else 0)
        )
    else:
        trend = int(np.sign(slope_atr))
    return Signals(float(r["close"][-1]), a, slow, slope_atr, trend)


# --- state and actions -----------------------------------------------------------------------


@dataclass
class GridLevel:
    """One open level: where it filled, how many lots, and its broker position."""

    index: int  # 1 = the first level
    price: float
    lots: float
    opened_at: int
    client_id: str | None = None
    ticket: int | None = None


@dataclass
class GridState:
    """The grid of one symbol (persisted as JSON)."""

    direction: int = 0  # +1 long, -1 short, 0 no grid
    anchor: float = 0.0
    levels: list[GridLevel] = field(default_factory=list)
    adding: bool = True  # False: stopped adding (reverse_mode stop_adding)

    @property
    def open(self) -> bool:
        return bool(self.levels)

    @property
    def lots(self) -> float:
        return round(sum(lv.lots for lv in self.levels), 8)

    @property
    def avg_price(self) -> float:
        lots = self.lots
        return sum(lv.price * lv.lots for lv in self.levels) / lots if lots > 0 else 0.0

    def pnl_price(self, price: float) -> float:
        """Floating P&L in price units x lots (multiply by the contract value for money)."""
        return self.direction * sum(lv.lots * (price - lv.price) for lv in self.levels)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> GridState:
        d = json.loads(text)
        return cls(
            direction=int(d["direction"]),
            anchor=float(d["anchor"]),
            levels=[GridLevel(**lv) for lv in d["levels"]],
            adding=bool(d.get("adding", True)),
        )


@dataclass(frozen=True)
class GridAction:
    """A proposed grid action: ``kind``, why (``reason`` code, ``detail``), and for an
    ``open``/``add`` the side, lots and level number."""

    kind: ActionKind
    reason: str
    detail: str
    direction: int = 0
    lots: float = 0.0
    level: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class GridStrategy:
    """The pure grid state machine (see the module docstring)."""

    def __init__(self, cfg: GridConfig, state: GridState | None = None) -> None:
        self.cfg = cfg
        self.state = state or GridState()

    def spacing(self, atr: float, vol_ratio: float = 1.0) -> float:
        """Distance between levels in price: ``spacing_atr`` ATRs, widened with volatility."""
        widen = max(1.0, vol_ratio) ** self.cfg.vol_widen if self.cfg.vol_widen > 0 else 1.0
        return self.cfg.spacing_atr * atr * widen

    def level_lots(self, index: int) -> float:
        """Lots of level ``index`` (1-based)."""
        return self.cfg.lots * self.cfg.lot_multiplier ** (index - 1)

    def on_bar(
        self,
        *,
        close: float,
        atr: float,
        trend: int,
        vol_ratio: float = 1.0,
        basket_money: float | None = None,
    ) -> list[GridAction]:
        """Proposed actions for this closed bar (state unchanged; see :meth:`apply`)."""
        cfg, st = self.cfg, self.state
        if not math.isfinite(close) or not math.isfinite(atr) or atr <= 0:
            return []
        if not st.open:
            side = self._start_side(trend)
            if side == 0:
                return []
            return [
                GridAction(
                    "open",
                    "grid_start",
                    f"{_side(side)} level 1 at {close:.6g} (trend {trend:+d}, "
                    f"direction={cfg.direction})",
                    side,
                    self.level_lots(1),
                    1,
                )
            ]
        lots = st.lots
        pnl_atr = st.pnl_price(close) / (atr * lots) if lots > 0 else 0.0
        money = f", {basket_money:+.2f} ccy" if basket_money is not None else ""
        where = f"basket {pnl_atr:+.2f} ATR/lot{money}, {len(st.levels)} levels, {lots:g} lots"
        if (cfg.basket_tp_atr > 0 and pnl_atr >= cfg.basket_tp_atr) or (
            cfg.basket_tp_ccy > 0 and basket_money is not None and basket_money >= cfg.basket_tp_ccy
        ):
            return [GridAction("close_all", "basket_tp", f"take-profit: {where}")]
        if (cfg.basket_stop_atr > 0 and pnl_atr <= -cfg.basket_stop_atr) or (
            cfg.basket_stop_ccy > 0
            and basket_money is not None
            and basket_money <= -cfg.basket_stop_ccy
        ):
            return [GridAction("close_all", "basket_stop", f"stop: {where}")]
        if trend == -st.direction:
            against = f"trend {trend:+d} against the {_side(st.direction)} grid ({where})"
            if cfg.reverse_mode == "stop_adding":
                if st.adding:
                    return [GridAction("stop_adding", "trend_against", against)]
                return []
            if cfg.reverse_mode == "flatten":
                return [GridAction("close_all", "trend_against", f"flatten: {against}")]
            return [
                GridAction("close_all", "trend_against", f"reverse: {against}"),
                GridAction(
                    "open",
                    "reverse",
                    f"{_side(-st.direction)} level 1 at {close:.6g} after the reversal",
                    -st.direction,
                    self.level_lots(1),
                    1,
                ),
            ]
        out: list[GridAction] = []
        if not st.adding:
            out.append(GridAction("resume_adding", "trend_cleared", f"trend {trend:+d}"))
        if (st.adding or out) and len(st.levels) < cfg.max_levels:
            gap = self.spacing(atr, vol_ratio)
            last = st.levels[-1].price
            moved = st.direction * (last - close)
            if moved >= gap * (1 - 1e-9):  # a move of exactly one spacing, float rounding aside
                n = len(st.levels) + 1
                out.append(
                    GridAction(
                        "add",
                        "level_reached",
                        f"level {n} at {close:.6g}: {moved:.6g} against level {n - 1} >= "
                        f"spacing {gap:.6g} ({cfg.spacing_atr:g} ATR x widen "
                        f"{gap / (cfg.spacing_atr * atr):.2f})",
                        st.direction,
                        self.level_lots(n),
                        n,
                    )
                )
        return out

    def _start_side(self, trend: int) -> int:
        d = self.cfg.direction
        if d == "trend":
            return trend
        side = 1 if d == "long" else -1
        return side if trend != -side else 0

    def apply(
        self,
        action: GridAction,
        *,
        price: float = 0.0,
        time: int = 0,
        client_id: str | None = None,
        ticket: int | None = None,
        lots: float | None = None,
    ) -> None:
        """Record an executed action (``price``: the fill of an ``open``/``add``)."""
        st = self.state
        if action.kind == "close_all":
            st.direction, st.anchor, st.levels, st.adding = 0, 0.0, [], True
        elif action.kind == "stop_adding":
            st.adding = False
        elif action.kind == "resume_adding":
            st.adding = True
        elif action.kind in ("open", "add"):
            if action.kind == "open":
                st.direction, st.anchor, st.levels, st.adding = action.direction, price, [], True
            st.levels.append(
                GridLevel(
                    len(st.levels) + 1,
                    float(price),
                    float(action.lots if lots is None else lots),
                    int(time),
                    client_id,
                    ticket,
                )
            )


def _side(d: int) -> str:
    return "long" if d > 0 else "short"


# --- the engine's adapter ---------------------------------------------------------------------


class NoModel:
    """The model client of an engine whose every symbol runs ``grid``: such an engine never
    scores a row, and if asked it answers as an unreachable model would."""

    model_version = None
    bundle_sha256 = None

    def predict(self, row: Any) -> Any:
        from engine.serving_client import ServingUnavailable

        raise ServingUnavailable("grid-only engine: no model configured")


class GridRunner:
    """Runs the grid of every ``grid``/``both`` symbol inside :class:`engine.loop.Engine`."""

    def __init__(
        self, cfg: GridConfig, limits: GridLimits, strategies: Mapping[str, str] | None = None
    ) -> None:
        self.cfg = cfg
        self.limits = limits
        self.strategies = dict(strategies or {})
        self._grids: dict[str, GridStrategy] = {}

    def strategy(self, symbol: str) -> str:
        """``model``, ``grid`` or ``both`` for ``symbol``."""
        return self.strategies.get(symbol, "model")

    def grid(self, engine: Any, symbol: str) -> GridStrategy:
        """The symbol's strategy, its state read from the journal the first time."""
        g = self._grids.get(symbol)
        if g is None:
            saved = engine.journal.load_state(f"grid:{symbol}")
            g = self._grids[symbol] = GridStrategy(
                self.cfg, GridState.from_json(saved) if saved else None
            )
        return g

    def tickets(self, symbol: str) -> set[int]:
        """Broker positions the grid of ``symbol`` holds (the model strategy leaves them)."""
        g = self._grids.get(symbol)
        return {int(lv.ticket) for lv in g.state.levels if lv.ticket} if g else set()

    def step(self, engine: Any, symbol: str, bar_close: int) -> dict[str, Any]:
        """One bar of the grid: signals, proposed actions, risk caps, orders. Returns what
        happened (journaled by :meth:`merge`); raises only for a failing dependency."""
        g = self.grid(engine, symbol)
        st = g.state
        out: dict[str, Any] = {"actions": [], "orders": [], "results": []}
        term = engine.terminal
        positions = {int(p.ticket): p for p in engine.positions(symbol)}
        gone = [lv for lv in st.levels if lv.ticket is not None and lv.ticket not in positions]
        if gone:  # closed elsewhere (operator flatten, reconciliation): the grid forgets them
            st.levels = [lv for lv in st.levels if lv not in gone]
            if not st.levels:
                g.apply(GridAction("close_all", "levels_gone", ""))
            out["actions"].append(
                {
                    "kind": "forget",
                    "reason": "levels_gone",
                    "detail": f"positions {[lv.ticket for lv in gone]} no longer open",
                    "status": "done",
                }
            )
        need = self.cfg.bars_needed
        rates = term.copy_rates_from_pos(symbol, engine.timeframe, 0, need + 1)
        step_s = mt5.timeframe_seconds(engine.timeframe)
        if rates is None or len(rates) == 0:
            raise mt5.TerminalError("copy_rates_from_pos", term.last_error())
        if int(rates["time"][-1]) + step_s - engine.offset_s > engine.clock():
            rates = rates[:-1]  # the forming bar (absent before a gap: then all are closed)
        rates = rates[-need:]
        last_close = int(rates["time"][-1]) + step_s - engine.offset_s if len(rates) else 0
        if last_close != int(bar_close):
            out["refused"] = (
                str(Reason.NO_PRICES),
                f"last bar closes {last_close}, not {bar_close}",
            )
            return self._done(engine, symbol, out)
        try:
            sig = market_signals(rates, self.cfg)
        except ValueError as exc:  # warm-up: not enough history yet
            out["refused"] = (str(Reason.NO_PRICES), str(exc))
            return self._done(engine, symbol, out)
        info = term.symbol_info(symbol)
        tick = term.symbol_info_tick(symbol)
        if info is None or tick is None:
            raise mt5.TerminalError("symbol_info/tick", term.last_error())
        spread = (tick.ask - tick.bid) / info.point if info.point else 0.0
        basket = sum(
            float(positions[lv.ticket].profit) for lv in st.levels if lv.ticket in positions
        )
        out["signals"] = asdict(sig) | {"spread_points": spread, "basket_money": basket}
        equity = float(engine.risk.state.equity)
        actions = g.on_bar(
            close=sig.close,
            atr=sig.atr,
            trend=sig.trend,
            vol_ratio=sig.vol_ratio,
            basket_money=basket if st.open else None,
        )
        if st.open and not any(a.kind == "close_all" for a in actions):
            v = check_grid_basket(self.limits, basket_pnl=basket, equity=equity)
            if not v.allowed:
                actions = [GridAction("close_all", str(v.reason), v.detail)]
        for a in actions:
            row = a.as_dict() | {"status": "done"}
            out["actions"].append(row)
            if a.kind in ("stop_adding", "resume_adding"):
                g.apply(a)
                continue
            if a.kind == "close_all":
                if not self._close_all(engine, symbol, bar_close, g, a, row, out, spread):
                    break
                continue
            lots = round_volume(a.lots, info.volume_min, info.volume_step, info.volume_max)
            verdict = self._check_add(engine, symbol, g, a, lots, spread)
            if not verdict.allowed:
                row["status"] = "refused"
                row["refusal"] = f"{verdict.reason}: {verdict.detail}"
                out.setdefault("refused", (str(verdict.reason), verdict.detail))
                continue
            o = engine.executor.execute(
                symbol,
                bar_close,
                f"grid:{a.kind}:{a.level}",
                order_type=mt5.ORDER_TYPE_BUY if a.direction > 0 else mt5.ORDER_TYPE_SELL,
                volume=lots,
                now_utc=engine.clock(),
            )
            self._record(engine, o, out)
            row["status"] = o.status
            if not o.ok:
                out["failed"] = o
                break
            pos = next((p for p in engine.positions(symbol) if p.comment == o.client_id), None)
            price = float(pos.price_open) if pos is not None else float(sig.close)
            g.apply(
                a,
                price=price,
                time=int(bar_close),
                client_id=o.client_id,
                ticket=int(pos.ticket) if pos is not None else None,
                lots=lots,
            )
            row["price"] = price
        return self._done(engine, symbol, out)

    def _check_add(
        self, engine: Any, symbol: str, g: GridStrategy, a: GridAction, lots: float, spread: float
    ) -> Verdict:
        st = g.state
        if lots <= 0:
            return Verdict(False, Reason.SIZE_BELOW_MIN, f"{a.lots:g} lots below volume_min")
        levels, grid_lots = (0, 0.0) if a.kind == "open" else (len(st.levels), st.lots)
        v = check_grid_add(self.limits, levels=levels, grid_lots=grid_lots, add_lots=lots)
        if not v.allowed:
            return v
        nets = engine._all_net_lots()
        current = nets.get(symbol, 0.0)
        other = sum(abs(x) for s, x in nets.items() if s != symbol)
        return engine.risk.check(
            current_lots=current,
            target_lots=round(current + a.direction * lots, 8),
            other_lots=other,
            now=engine.clock(),
            spread_points=spread,
            market_open=True,
            feature_age_s=0.0,  # the grid reads bars, not features
            new_orders=1,
        )

    def _close_all(
        self,
        engine: Any,
        symbol: str,
        bar_close: int,
        g: GridStrategy,
        a: GridAction,
        row: dict[str, Any],
        out: dict[str, Any],
        spread: float,
    ) -> bool:
        st = g.state
        nets = engine._all_net_lots()
        current = nets.get(symbol, 0.0)
        v = engine.risk.check(
            current_lots=current,
            target_lots=round(current - st.direction * st.lots, 8),
            other_lots=sum(abs(x) for s, x in nets.items() if s != symbol),
            now=engine.clock(),
            spread_points=spread,
            market_open=True,
            feature_age_s=0.0,
            new_orders=len(st.levels),
        )
        if not v.allowed:
            row["status"] = "refused"
            row["refusal"] = f"{v.reason}: {v.detail}"
            out.setdefault("refused", (str(v.reason), v.detail))
            return False
        for lv in list(st.levels):
            if lv.ticket is None:
                continue
            o = engine.executor.execute(
                symbol,
                bar_close,
                f"grid:close:{lv.ticket}",
                order_type=mt5.ORDER_TYPE_SELL if st.direction > 0 else mt5.ORDER_TYPE_BUY,
                volume=lv.lots,
                now_utc=engine.clock(),
                position=int(lv.ticket),
            )
            self._record(engine, o, out)
            if not o.ok:  # the levels not closed yet stay in the grid
                row["status"] = o.status
                out["failed"] = o
                return False
            st.levels = [x for x in st.levels if x is not lv]
        g.apply(a)
        return True

    @staticmethod
    def _record(engine: Any, o: Any, out: dict[str, Any]) -> None:
        if o.status == "done":
            engine.risk.record_order(engine.clock())
        out["retcode"] = o.retcode
        out["orders"].append(o.requests[-1] if o.requests else {"client_id": o.client_id})
        out["results"].append(
            {
                "client_id": o.client_id,
                "intent": o.intent,
                "status": o.status,
                "attempts": o.results,
            }
        )

    def _done(self, engine: Any, symbol: str, out: dict[str, Any]) -> dict[str, Any]:
        st = self._grids[symbol].state
        out["state"] = {
            "direction": st.direction,
            "levels": len(st.levels),
            "lots": st.lots,
            "avg_price": st.avg_price,
            "adding": st.adding,
        }
        engine.journal.save_state(f"grid:{symbol}", st.to_json)
        return out

    def merge(self, rec: Any, out: dict[str, Any], *, alone: bool) -> None:
        """Put the grid's bar into the decision row: ``order_request.grid`` holds the actions
        with their reasons and the grid's state, ``order_result.grid`` the orders' results;
        alone (strategy ``grid``) the row's verdict and reason are the grid's."""
        failed = out.pop("failed", None)
        refused = out.pop("refused", None)
        retcode = out.pop("retcode", None)
        acted = [a for a in out["actions"] if a["status"] in ("done", "recovered")]
        text = "; ".join(
            f"{a['kind']} {a['reason']}: {a.get('refusal') or a['detail']}" for a in out["actions"]
        )
        grid_req: dict[str, Any] = {k: out[k] for k in ("actions", "orders", "state") if k in out}
        grid_req["signals"] = out.get("signals")
        if alone:
            rec.decision = "grid"
            rec.order_request = {"orders": out["orders"], "grid": grid_req}
            rec.order_result = {"results": out["results"]}
            rec.target_lots = out["state"]["lots"] * out["state"]["direction"]
            if failed is not None:
                rec.verdict, rec.retcode = "error", failed.retcode
                rec.reason_code = str(failed.reason or Reason.ORDER_FAILED)
                rec.reason = f"{rec.reason_code}: {failed.intent} retcode={failed.retcode} " + (
                    f"{failed.detail}; {text}"
                )
            elif refused is not None and not out["orders"]:
                rec.verdict, rec.reason_code = "refused", refused[0]
                rec.reason = f"{refused[0]}: {refused[1]}" + (f"; {text}" if text else "")
            else:
                rec.verdict = "sent" if out["orders"] else "hold"
                rec.reason = text or None
                rec.reason_code = refused[0] if refused is not None else None
                rec.retcode = retcode
            return
        req = dict(rec.order_request or {})
        req["grid"] = grid_req | {"orders": out["orders"]}
        rec.order_request = req
        res = dict(rec.order_result or {})
        res["grid"] = out["results"]
        rec.order_result = res
        if text:
            rec.reason = f"{rec.reason}; grid: {text}" if rec.reason else f"grid: {text}"
        if failed is not None and rec.verdict != "error":
            rec.verdict = "error"
            rec.reason_code = str(failed.reason or Reason.ORDER_FAILED)
        elif acted and out["orders"] and rec.verdict in ("hold", "refused"):
            rec.verdict = "sent"
