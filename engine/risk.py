"""The risk layer: every refusal carries a reason code, limits are frozen config.

Two parts:

* :func:`check_order` — a pure function: may the net position of one symbol move from
  ``current_lots`` to ``target_lots`` now, given the frozen :class:`~engine.config.RiskLimits`,
  the mutable :class:`RiskState` and the market context? Returns a :class:`Verdict`.
* :class:`RiskManager` — owns the :class:`RiskState` (trading state ACTIVE / REDUCING /
  HALTED, the day's first equity, the equity peak, consecutive losses, recent order times),
  moves it on equity and closed-trade observations, and hands every change to a callback that
  persists it (the journal), so a restart resumes in the same state.

States: ``ACTIVE`` trades freely; ``REDUCING`` only lets orders through that bring a position
closer to flat; ``HALTED`` refuses every engine order (an operator may still flatten through
the control API). Transitions: kill switch / max drawdown → HALTED (operator resume needed);
daily loss limit → HALTED until the next UTC day; max consecutive losses → REDUCING until
the next UTC day (or resume); "no money" → REDUCING (operator resume needed).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from engine.config import GridLimits, RiskLimits

log = logging.getLogger(__name__)


class Reason(StrEnum):
    """Reason codes of refusals (the journal, metrics and the console use these strings)."""

    KILL_SWITCH = "kill_switch"
    HALTED = "halted"
    REDUCING_ONLY = "reducing_only"
    DAILY_LOSS_LIMIT = "daily_loss_limit"
    MAX_DRAWDOWN = "max_drawdown"
    MAX_POSITION = "max_position"
    MAX_TOTAL_EXPOSURE = "max_total_exposure"
    MAX_ORDERS_PER_MINUTE = "max_orders_per_minute"
    MAX_CONSECUTIVE_LOSSES = "max_consecutive_losses"
    STALE_FEATURES = "stale_features"
    FEATURES_UNAVAILABLE = "features_unavailable"  # no row, or the online store did not answer
    NO_FEATURES = "features_unavailable"  # the older name of the same code
    INVALID_FEATURES = "invalid_features"  # wrong wire type/length, non-finite, out of range
    WIDE_SPREAD = "wide_spread"
    MARKET_CLOSED = "market_closed"
    SERVING_UNAVAILABLE = "serving_unavailable"
    MODEL_MISMATCH = "model_mismatch"
    SERVING_REJECTED = "serving_rejected"  # serving answered 4xx: no fallback
    SERVING_BAD_ANSWER = "serving_bad_answer"  # a 200 that is not a valid prediction
    TERMINAL_UNAVAILABLE = "terminal_unavailable"  # the terminal/bridge link failed or timed out
    JOURNAL_UNAVAILABLE = "journal_unavailable"  # the journal cannot be written: fail closed
    JOURNAL_MISSING = "journal_missing"  # empty journal next to positions of this magic
    KILLED = "killed"  # the kill was acknowledged before this order_send
    DECISION_ERROR = "decision_error"  # any other failure on the decision path
    EDGE_BELOW_COST = "edge_below_cost"
    POLICY_ABSTAIN = "policy_abstain"  # the bundle's decision policy abstains (verdict abstain)
    SIZE_BELOW_MIN = "size_below_min"
    NO_MONEY = "no_money"
    NO_PRICES = "no_prices"
    ORDER_FAILED = "order_failed"
    OPERATOR = "operator"
    MONITOR_REDUCE = "monitor_reduce"  # POST /api/reduce (the monitoring actions): only reductions
    RECONCILE_MISMATCH = "reconcile_mismatch"  # terminal and journal disagree: only reductions
    MODEL_EXPIRED = "model_expired"  # the bundle is older than TX_ENGINE_MODEL_MAX_AGE_DAYS
    OUT_OF_DISTRIBUTION = "out_of_distribution"  # a feature far outside the training reference
    GRID_MAX_LEVELS = "grid_max_levels"  # the grid already holds its risk cap of levels
    GRID_MAX_EXPOSURE = "grid_max_exposure"  # the add would take the grid's lots over the cap
    GRID_BASKET_DRAWDOWN = "grid_basket_drawdown"  # basket loss / equity over the cap: close it


class TradingState(StrEnum):
    """What the engine may do: trade, only reduce, or nothing."""

    ACTIVE = "ACTIVE"
    REDUCING = "REDUCING"
    HALTED = "HALTED"


@dataclass(frozen=True)
class Verdict:
    """The risk layer's answer; ``reason`` is set on every refusal."""

    allowed: bool
    reason: Reason | None = None
    detail: str = ""


@dataclass
class RiskState:
    """The mutable side of risk, persisted across restarts (JSON in the journal)."""

    trading_state: TradingState = TradingState.ACTIVE
    state_reason: str = ""  # a Reason value: why the state is not ACTIVE
    state_detail: str = ""
    day: str = ""  # UTC date of day_start_equity
    day_start_equity: float = 0.0
    peak_equity: float = 0.0
    equity: float = 0.0
    consecutive_losses: int = 0
    last_deal_ticket: int = 0  # closing deals up to this ticket are counted
    order_times: list[float] = field(default_factory=list)

    def to_json(self) -> str:
        """Serialise for the journal (the fields in order; what ``asdict`` gives, without its
        deep copy: this runs on every state change, up to several times a bar)."""
        d = {f: getattr(self, f) for f in _STATE_FIELDS}
        d["order_times"] = list(self.order_times)
        return json.dumps(d)

    @classmethod
    def from_json(cls, text: str) -> RiskState:
        """Read back what :meth:`to_json` wrote."""
        d: dict[str, Any] = json.loads(text)
        d["trading_state"] = TradingState(d.get("trading_state", "ACTIVE"))
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    @property
    def drawdown(self) -> float:
        """Trailing drawdown from the equity peak, as a fraction of the peak."""
        return (self.peak_equity - self.equity) / self.peak_equity if self.peak_equity > 0 else 0.0

    @property
    def daily_loss(self) -> float:
        """Loss since the day's first equity, as a fraction of it (negative: a gain)."""
        return (
            (self.day_start_equity - self.equity) / self.day_start_equity
            if self.day_start_equity > 0
            else 0.0
        )


_STATE_FIELDS = tuple(f.name for f in fields(RiskState))


def _utc_day(now: float) -> str:
    """``YYYY-MM-DD`` of the UTC day of ``now`` (epoch seconds); the last answer is kept, as
    the engine asks it on every bar."""
    day = int(now // 86_400)
    if _LAST_DAY[0] != day:
        _LAST_DAY[:] = [day, datetime.fromtimestamp(day * 86_400, UTC).strftime("%Y-%m-%d")]
    return str(_LAST_DAY[1])


_LAST_DAY: list[int | str] = [-(10**9), ""]


def _reduces(current: float, target: float) -> bool:
    """Whether moving ``current`` → ``target`` only brings the position closer to flat."""
    if abs(target) > abs(current) + 1e-12:
        return False
    return target == 0 or current == 0 or (target > 0) == (current > 0)


def check_order(
    limits: RiskLimits,
    state: RiskState | None = None,
    *,
    current_lots: float,
    target_lots: float,
    other_lots: float = 0.0,
    now: float = 0.0,
    spread_points: float = 0.0,
    market_open: bool = True,
    feature_age_s: float = 0.0,
    new_orders: int = 1,
) -> Verdict:
    """May the net position move from ``current_lots`` to ``target_lots``?

    ``other_lots`` is the sum of absolute net lots on the engine's other symbols, ``now`` the
    clock (for the order rate), ``feature_age_s`` how old the features behind the decision are,
    ``new_orders`` how many orders the move takes (a flip on a hedging account: close + open).
    Rules run in a fixed order; the first that refuses names the reason.
    """
    st = state or RiskState()
    reducing = _reduces(current_lots, target_lots)
    if limits.kill_switch:
        return Verdict(False, Reason.KILL_SWITCH, "kill switch engaged in config")
    if st.trading_state is TradingState.HALTED:
        reason = (
            Reason(st.state_reason)
            if st.state_reason in Reason.__members__.values()
            else Reason.HALTED
        )
        return Verdict(False, reason, f"trading HALTED: {st.state_detail or reason}")
    if not market_open:
        return Verdict(False, Reason.MARKET_CLOSED, "no quote at the current time")
    if limits.max_feature_age_s and feature_age_s > limits.max_feature_age_s:
        return Verdict(
            False,
            Reason.STALE_FEATURES,
            f"features {feature_age_s:.0f} s old > {limits.max_feature_age_s:g}",
        )
    if limits.max_spread_points and spread_points > limits.max_spread_points:
        return Verdict(
            False,
            Reason.WIDE_SPREAD,
            f"spread {spread_points:g} points > {limits.max_spread_points:g}",
        )
    if st.trading_state is TradingState.REDUCING and not reducing:
        reason = (
            Reason(st.state_reason)
            if st.state_reason in Reason.__members__.values()
            else Reason.REDUCING_ONLY
        )
        return Verdict(
            False, reason, f"trading REDUCING ({st.state_detail or reason}): only reductions"
        )
    if (
        limits.max_consecutive_losses
        and st.consecutive_losses >= limits.max_consecutive_losses
        and not reducing
    ):
        return Verdict(
            False, Reason.MAX_CONSECUTIVE_LOSSES, f"{st.consecutive_losses} losses in a row"
        )
    if not reducing:
        if abs(target_lots) > limits.max_position_lots + 1e-12:
            return Verdict(
                False,
                Reason.MAX_POSITION,
                f"|target| {abs(target_lots):g} lots > max {limits.max_position_lots:g}",
            )
        total = other_lots + abs(target_lots)
        if total > limits.max_total_lots + 1e-12:
            return Verdict(
                False,
                Reason.MAX_TOTAL_EXPOSURE,
                f"total {total:g} lots > max {limits.max_total_lots:g}",
            )
    if limits.max_orders_per_minute:
        recent = [t for t in st.order_times if now - t < 60.0]
        if len(recent) + new_orders > limits.max_orders_per_minute:
            return Verdict(
                False,
                Reason.MAX_ORDERS_PER_MINUTE,
                f"{len(recent)} orders in the last minute, {new_orders} more needed",
            )
    return Verdict(True)


def check_grid_add(
    limits: GridLimits, *, levels: int, grid_lots: float, add_lots: float
) -> Verdict:
    """May the grid of one symbol, holding ``levels`` levels of ``grid_lots`` lots in all,
    open one more level of ``add_lots``? (Runs before :func:`check_order`, which still
    applies to the symbol's net position.)"""
    if limits.max_levels and levels + 1 > limits.max_levels:
        return Verdict(
            False,
            Reason.GRID_MAX_LEVELS,
            f"{levels} levels open, cap {limits.max_levels}: no level {levels + 1}",
        )
    total = grid_lots + add_lots
    if limits.max_lots and total > limits.max_lots + 1e-9:
        return Verdict(
            False,
            Reason.GRID_MAX_EXPOSURE,
            f"grid lots {grid_lots:g} + {add_lots:g} = {total:g} > cap {limits.max_lots:g}",
        )
    return Verdict(True)


def check_grid_basket(limits: GridLimits, *, basket_pnl: float, equity: float) -> Verdict:
    """May the open basket (floating P&L ``basket_pnl``, account currency) stay open? A
    refusal means: close every level now (reason ``grid_basket_drawdown``)."""
    if limits.max_basket_drawdown and equity > 0 and basket_pnl < 0:
        dd = -basket_pnl / equity
        if dd >= limits.max_basket_drawdown:
            return Verdict(
                False,
                Reason.GRID_BASKET_DRAWDOWN,
                f"basket loss {-basket_pnl:.2f} = {dd:.2%} of equity >= cap "
                f"{limits.max_basket_drawdown:.2%}",
            )
    return Verdict(True)


class RiskManager:
    """Owns the :class:`RiskState`; every change goes to ``on_change`` (persistence)."""

    def __init__(
        self,
        limits: RiskLimits,
        state: RiskState | None = None,
        on_change: Callable[[RiskState], None] | None = None,
    ) -> None:
        self.limits = limits
        self.state = state or RiskState()
        self._on_change = on_change

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self.state)

    def set_state(self, new: TradingState, reason: Reason | str = "", detail: str = "") -> None:
        """Move to ``new`` (logged and persisted)."""
        st = self.state
        if st.trading_state is new and st.state_reason == str(reason):
            return
        why = ": ".join(str(x) for x in (reason, detail) if x)
        log.warning("trading state %s -> %s%s", st.trading_state, new, f" ({why})" if why else "")
        st.trading_state, st.state_reason, st.state_detail = new, str(reason), detail
        self._changed()

    def kill(self, detail: str = "operator kill") -> None:
        """Engage the kill switch: HALTED until :meth:`resume`."""
        self.set_state(TradingState.HALTED, Reason.KILL_SWITCH, detail)

    def resume(self) -> None:
        """Back to ACTIVE; the equity peak restarts at the current equity, losses reset."""
        st = self.state
        st.peak_equity = st.equity or st.peak_equity
        st.consecutive_losses = 0
        self.set_state(TradingState.ACTIVE, "", "")
        self._changed()

    def observe_equity(self, equity: float, now: float) -> None:
        """Track the day's first equity and the peak; halt on daily loss or drawdown."""
        st = self.state
        day = _utc_day(now)
        changed = False
        if st.day != day:
            st.day, st.day_start_equity = day, equity
            changed = True
            if (
                st.trading_state is TradingState.HALTED
                and st.state_reason == Reason.DAILY_LOSS_LIMIT
            ):
                self.set_state(TradingState.ACTIVE, "", "new trading day")
            if (
                st.trading_state is TradingState.REDUCING
                and st.state_reason == Reason.MAX_CONSECUTIVE_LOSSES
            ):
                st.consecutive_losses = 0  # a losing streak throttles for the rest of its day
                self.set_state(TradingState.ACTIVE, "", "new trading day")
        if equity > st.peak_equity:
            st.peak_equity = equity
            changed = True
        st.equity = equity
        lim = self.limits
        if st.trading_state is not TradingState.HALTED:
            if lim.daily_loss_limit and st.daily_loss >= lim.daily_loss_limit:
                self.set_state(
                    TradingState.HALTED,
                    Reason.DAILY_LOSS_LIMIT,
                    f"day loss {st.daily_loss:.2%} >= {lim.daily_loss_limit:.2%}",
                )
                return
            if lim.max_drawdown and st.drawdown >= lim.max_drawdown:
                self.set_state(
                    TradingState.HALTED,
                    Reason.MAX_DRAWDOWN,
                    f"drawdown {st.drawdown:.2%} >= {lim.max_drawdown:.2%}",
                )
                return
        if changed:
            self._changed()

    def observe_closed_trades(self, trades: list[tuple[int, float]]) -> None:
        """Count closing deals ``(ticket, profit)`` not seen before; REDUCING after too many losses."""
        st = self.state
        new = sorted(t for t in trades if t[0] > st.last_deal_ticket)
        if not new:
            return
        for ticket, profit in new:
            st.consecutive_losses = st.consecutive_losses + 1 if profit < 0 else 0
            st.last_deal_ticket = ticket
        lim = self.limits.max_consecutive_losses
        if lim and st.consecutive_losses >= lim and st.trading_state is TradingState.ACTIVE:
            self.set_state(
                TradingState.REDUCING,
                Reason.MAX_CONSECUTIVE_LOSSES,
                f"{st.consecutive_losses} losses in a row",
            )
        self._changed()

    def record_order(self, now: float) -> None:
        """Remember an order sent at ``now`` (for the per-minute rate)."""
        self.state.order_times = [t for t in self.state.order_times if now - t < 60.0] + [now]
        self._changed()

    def check(self, **ctx: Any) -> Verdict:
        """:func:`check_order` with this manager's limits and state."""
        return check_order(self.limits, self.state, **ctx)
