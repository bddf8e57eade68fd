"""The engine: for each newly closed bar, features → model → sizing/gate → risk → MT5 order →
journal.

Its world comes in as arguments (terminal, feature reader, model client, journal, clock), so
the same code runs ``live`` against a real terminal, in ``paper`` mode (simulated terminal,
wall clock) and as a ``backtest`` (simulated terminal and clock, as fast as it goes).

Per bar (:meth:`Engine.on_bar`):

1. account: equity → risk state (daily loss, trailing drawdown), closed deals → consecutive
   losses;
2. features: the row's event time must equal the bar close being decided (else
   ``stale_features``); its age feeds the risk layer;
3. model: serving, or the hash-checked in-process fallback (``serving_unavailable`` /
   ``model_mismatch`` when neither answers);
4. target: the model's position × lots sized from risk % of equity over an ATR stop (rounded
   to the symbol's volume step), through the execution gate (``edge_below_cost``);
5. risk: :func:`engine.risk.check_order` (every refusal has a reason code);
6. orders: close what points the wrong way, open the rest, each through the idempotent
   :class:`engine.execution.OrderExecutor` (write-ahead intents, client order ids);
7. journal: one row per bar with the latency breakdown, verdict, reason, requests and results,
   and (``explain=True``, the default) the model's probabilities, serving's explanation (regime
   state, members' probabilities and weights) and the feature vector it scored. The features'
   contributions are computed later, off the decision path (:mod:`engine.explain_worker`).

The bar is one journal transaction (group commit, see :mod:`engine.journal`): a bar without
orders commits once; a bar with orders commits its intents and state synchronously right
before ``order_send`` (write-ahead) and the rest once after.

On start (:meth:`Engine.reconcile`) every non-final intent (``pending``, ``not_sent``) is
resolved against the terminal's positions and deals, so a crash between ``order_send`` and the
journal write neither loses the order nor sends it twice, however many times it happens; a
re-decided bar shows the orders the broker executed for it in its row.

**Failures** (see ``docs/failure-behaviour.md``): every failure on the decision path becomes the
bar's journaled refusal with a reason code and a metric (``features_unavailable``,
``invalid_features``, ``serving_unavailable``, ``serving_rejected``, ``serving_bad_answer``,
``model_mismatch``, ``terminal_unavailable``, ``journal_unavailable``, ``decision_error``). When
the journal itself cannot be written the engine fails closed: no order is sent, the bars' rows
wait in memory (``tx_engine_journal_up`` is 0) and are written, and the terminal reconciled,
before it trades again.

**Kill pre-empts.** :meth:`Engine.kill` never waits for an in-flight decision: it sets the kill
flag, which the order path checks under the send gate immediately before every
``order_send``, waits a bounded moment for an ``order_send`` already in flight, and answers.
The HALTED state is persisted at once when the decision lock is free, else by the decision
thread as soon as its bar ends. :meth:`Engine.status` does not wait either.

**Audit.** Every operator action (kill, flatten, resume, reload, reduce) and every automatic
reduction by the continuous reconciliation (:meth:`Engine.reconcile_pass`, see
:mod:`engine.reconcile`) is an ``audit`` row in the journal: who, when (UTC), why, and the
state before and after. Rows are written under the decision lock, never inside a bar's
transaction; while the journal is down they wait in memory.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from engine.config import ExecutionConfig, RiskLimits, SizingConfig
from engine.execution import FILL_VOL_WINDOW, OrderExecutor, OrderOutcome
from engine.features import FeatureRow, FeatureUnavailable, InvalidFeatures
from engine.grid import GridRunner
from engine.journal import (
    DecisionRecord,
    DuplicateDecision,
    Journal,
    JournalUnavailable,
    journal_scope,
)
from engine.metrics import EngineMetrics
from engine.model_guard import ModelExpired, OutOfDistribution
from engine.mt5 import Terminal
from engine.mt5 import protocol as mt5
from engine.policy import CLASSES as POLICY_CLASSES
from engine.policy import LABELS as POLICY_LABELS
from engine.policy import as_policy, decide_policy, policy_cost_points
from engine.reconcile import Mismatch, compare
from engine.risk import Reason, RiskManager, RiskState, TradingState
from engine.router import OrderRouter
from engine.serving_client import (
    ModelMismatch,
    Prediction,
    ServingBadAnswer,
    ServingRejected,
    ServingUnavailable,
    explanation_regime,
)
from engine.sizing import (
    atr,
    cost_points,
    edge_points,
    lots_for_risk,
    return_volatility,
    round_volume,
)
from engine.slippage_model import SlippageEstimator, gate_cost_points

log = logging.getLogger(__name__)


class FeatureSource(Protocol):
    """Reads the feature row of a symbol (the latest one written)."""

    def read(self, symbol: str) -> FeatureRow: ...


class ModelClient(Protocol):
    """Scores one feature row."""

    def predict(self, row: FeatureRow) -> Prediction: ...


POLICY_BARS = 26
"""Closed bars the policy gate reads (its volatility and ATR)."""

STATS_KEEP = 250_000
"""Bars whose latencies :class:`EngineStats` keeps (the newest): a live engine runs for
months, so the figures are bounded; a backtest of 60 days x 4 symbols on M5 is 69,120 bars."""


def _recent() -> deque[Any]:
    return deque(maxlen=STATS_KEEP)


@dataclass
class EngineStats:
    """In-process figures of one run (the journal and metrics hold the rest)."""

    latencies_ms: deque[float] = field(default_factory=_recent)  # tick-to-decision per bar
    stages_ms: deque[dict[str, float]] = field(default_factory=_recent)
    bars: int = 0


class EngineBusy(RuntimeError):
    """A decision holds the engine longer than an operator read may wait (try again)."""


class _GridOnly(Exception):
    """A ``grid`` symbol's bar is decided by :mod:`engine.grid` alone (no features, no model)."""


class _Refuse(Exception):
    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


# exception type → reason code; the first match wins (subclasses before their bases)
_FAILURES: tuple[tuple[type[BaseException], Reason], ...] = (
    (JournalUnavailable, Reason.JOURNAL_UNAVAILABLE),
    (ModelExpired, Reason.MODEL_EXPIRED),
    (OutOfDistribution, Reason.OUT_OF_DISTRIBUTION),
    (InvalidFeatures, Reason.INVALID_FEATURES),
    (FeatureUnavailable, Reason.FEATURES_UNAVAILABLE),
    (ModelMismatch, Reason.MODEL_MISMATCH),
    (ServingUnavailable, Reason.SERVING_UNAVAILABLE),
    (ServingRejected, Reason.SERVING_REJECTED),
    (ServingBadAnswer, Reason.SERVING_BAD_ANSWER),
    (mt5.TerminalError, Reason.TERMINAL_UNAVAILABLE),
    (EOFError, Reason.TERMINAL_UNAVAILABLE),
    (OSError, Reason.TERMINAL_UNAVAILABLE),  # sockets, timeouts of the terminal link
)


def _venue(position: Any) -> dict[str, Any]:
    """``{"venue": ...}`` of a position read through several venues (engine.router), else {}."""
    v = getattr(position, "venue", None)
    return {"venue": v} if v else {}


def failure_reason(exc: BaseException) -> Reason:
    """The reason code a failure on the decision path is journaled under."""
    for kind, reason in _FAILURES:
        if isinstance(exc, kind):
            return reason
    return Reason.DECISION_ERROR


class Engine:
    """One engine for live, paper and backtest (see the module docstring)."""

    def __init__(
        self,
        *,
        terminal: Terminal,
        features: FeatureSource,
        model: ModelClient,
        journal: Journal,
        limits: RiskLimits,
        lots: float = 0.1,
        magic: int,
        clock: Callable[[], float] = time.time,
        sizing: SizingConfig | None = None,
        execution: ExecutionConfig | None = None,
        timeframe: int = mt5.TIMEFRAME_M5,
        server_utc_offset_hours: int = 2,
        metrics: EngineMetrics | None = None,
        sleep: Callable[[float], None] = time.sleep,
        reload_hook: Callable[[], dict[str, Any]] | None = None,
        mode: str = "paper",
        kill_wait_s: float = 0.3,
        explain: bool = True,
        grid: GridRunner | None = None,
        router: OrderRouter | None = None,
        slippage: SlippageEstimator | None = None,
    ) -> None:
        self.terminal = terminal
        self.grid = grid  # symbols whose strategy is grid or both (engine.grid)
        self.slippage = slippage  # learned slippage of the edge gate (None: the fixed formula)
        self.features = features
        self.model = model
        self.journal = journal
        self.limits = limits
        self.lots = lots
        self.magic = magic
        self.clock = clock
        self.sizing = sizing or SizingConfig(fixed_lots=lots, stop_atr_mult=0.0)
        self.execution = execution or ExecutionConfig()
        self.timeframe = timeframe
        self.offset_s = int(server_utc_offset_hours) * 3600
        self.metrics = metrics or EngineMetrics()
        self.reload_hook = reload_hook
        self.explain = explain  # journal probabilities, explanation and feature vector per bar
        self.stats = EngineStats()
        self.lock = threading.RLock()  # the decision lock (one bar at a time)
        self.send_gate = threading.Lock()  # held around "kill flag check + order_send"
        self.killed = threading.Event()  # set by kill(), checked before every order_send
        self._send_t: float | None = None  # the bar's first order_send (perf_counter)
        self._snap_thread: int | None = None  # the deciding thread while a bar is decided
        self._positions_snap: tuple[Any, ...] | None = None  # its view of the positions
        self._infos_snap: dict[str, Any] = {}  # its symbol infos
        self._bars_snap: dict[str, tuple[int, Any]] = {}  # its closed bars: (asked, rates)
        self.kill_wait_s = kill_wait_s
        self._pending_kill: str | None = None  # a kill not yet persisted (lock was busy)
        self._pending_flatten = False
        self.journal_up = True
        self._unwritten: list[DecisionRecord] = []  # rows waiting for the journal to return
        self.mode = mode
        self.started = False
        acct = terminal.account_info()
        self.login = int(acct.login) if acct is not None else 0
        journal.set_scope(journal_scope(self.login, magic, mode))
        saved = journal.load_state("risk")
        self.risk = RiskManager(
            limits, RiskState.from_json(saved) if saved else RiskState(), on_change=self._save_risk
        )
        if (
            self.risk.state.trading_state is TradingState.HALTED
            and self.risk.state.state_reason == str(Reason.KILL_SWITCH)
        ):
            self.killed.set()  # a kill survives restarts until an operator resumes
        self.metrics.set_state(self.risk.state.trading_state)
        self.metrics.journal_up.set(1.0)
        self.metrics.bar_seconds.set(mt5.timeframe_seconds(timeframe))
        self.metrics.last_decision.set(time.time())  # "no decision since start" counts from here
        self.executor: OrderExecutor | OrderRouter = OrderExecutor(
            terminal,
            journal,
            self.execution,
            magic=magic,
            login=self.login,
            sleep=sleep,
            on_retcode=lambda rc: self.metrics.orders.labels(str(rc)).inc(),
            may_send=self._may_send,
            send_gate=self.send_gate,
            timeframe=timeframe,  # the fills' recent volatility
            symbol_info=self._symbol_info,  # within a bar: the bar's reads
            closed_bars=self._closed_bars,
        )
        self.router = router  # several venues (engine.router): orders go through the router
        if router is not None:
            self.executor = router.bind(
                login=self.login,
                sleep=sleep,
                on_retcode=lambda rc: self.metrics.orders.labels(str(rc)).inc(),
                may_send=self._may_send,
                send_gate=self.send_gate,
            )
        self.last_reconcile: dict[str, Any] = {}
        self._audit_unwritten: list[dict[str, Any]] = []  # audit rows waiting for the journal
        self._kill_meta: dict[str, Any] | None = None  # who/why of a kill not yet audited
        saved_rec = journal.load_state("reconcile")
        rec_state: dict[str, Any] = json.loads(saved_rec) if saved_rec else {}
        self._rec_open: dict[str, dict[str, Any]] = dict(rec_state.get("open", {}))
        self._rec_before: dict[str, str] | None = rec_state.get("before")
        self._rec_known: set[int] = {int(t) for t in rec_state.get("known", [])}
        self._rec_flagged: set[int] = {int(t) for t in rec_state.get("flagged", [])}
        self._rec_acked: set[str] = set(rec_state.get("acked", []))
        self._rec_link_down = False
        self.reconcile_info: dict[str, Any] = {
            "passes": 0,
            "errors": 0,
            "skipped": 0,
            "last_pass_at": None,
        }
        self.metrics.reconcile_open.set(len(self._rec_open))
        self._deals_seen_to: int | None = None
        self._earlier_intents = True  # the bar being decided may have intents from before  # time of the newest deal _observe_account saw

    def _save_risk(self, state: RiskState) -> None:
        self.metrics.set_state(state.trading_state)
        try:  # inside a bar's transaction: serialised once, at the next commit point
            self.journal.save_state("risk", self.risk.state.to_json)
        except JournalUnavailable as exc:  # written again once the journal is back
            self._journal_down(exc)

    def _journal_down(self, exc: BaseException) -> None:
        if self.journal_up:
            log.error("journal unavailable, trading stops until it writes again: %s", exc)
        self.journal_up = False
        self.started = False  # intents may be unresolved: reconcile before trading again
        self.metrics.journal_up.set(0.0)
        self.metrics.journal_errors.inc()

    def _flush_unwritten(self) -> None:
        """Write the rows kept while the journal was down (raises JournalUnavailable)."""
        while self._unwritten:
            rec = self._unwritten[0]
            try:
                self.journal.record(rec)
            except DuplicateDecision:
                log.warning("%s bar %s was journaled meanwhile", rec.symbol, rec.bar_close)
            self._unwritten.pop(0)
        if not self.journal_up:
            self.journal.save_state("risk", self.risk.state.to_json())
            self.journal_up = True
            self.metrics.journal_up.set(1.0)
            log.warning("journal writes again: rows flushed, reconciling before trading")

    # --- start: reconcile ---------------------------------------------------------------
    def reconcile(self) -> dict[str, Any]:
        """Resolve every non-final intent against the terminal; report what it holds.

        An intent that is not final (``pending``, or ``not_sent`` from an earlier start) whose
        client id is found at the broker (position, deal or order) becomes ``recovered``; a
        ``pending`` one that is not found becomes ``not_sent`` (its bar, if decided again,
        sends it under the same id and the intent is ``pending`` again). Positions of this
        magic with an unknown comment are reported (adopted: the engine trades the net
        position). An empty journal while the terminal holds positions of this magic means
        the journal was lost or is the wrong one: the engine starts HALTED
        (``journal_missing``) until an operator resumes."""
        with self.lock:
            now = self.clock()
            report: dict[str, Any] = {"recovered": [], "not_sent": [], "unknown_positions": []}
            for it in self.journal.open_intents():
                found = self.executor.find_existing(it.symbol, it.client_id, now)
                if found is not None:
                    self.journal.intent_end(
                        it.client_id, "recovered", {"results": [found], "reconciled": True}, None
                    )
                    report["recovered"].append(it.client_id)
                elif it.status != "not_sent":
                    self.journal.intent_end(
                        it.client_id, "not_sent", {"results": [], "reconciled": True}, None
                    )
                    report["not_sent"].append(it.client_id)
            known = {it.client_id for it in self.journal.intents()}
            positions = [p for p in (self.terminal.positions_get() or ()) if p.magic == self.magic]
            report["positions"] = len(positions)
            report["unknown_positions"] = [
                int(p.ticket) for p in positions if p.comment not in known
            ]
            adopt = {t for t in report["unknown_positions"] if t not in self._rec_flagged}
            if adopt - self._rec_known:  # adopted: the continuous reconciliation accepts them
                self._rec_known |= adopt
                self._save_reconcile()
            if positions and self.journal.is_empty():
                report["journal_missing"] = True
                self.risk.set_state(
                    TradingState.HALTED,
                    Reason.JOURNAL_MISSING,
                    f"the journal holds nothing for {self.journal.scope} but the terminal holds "
                    f"{len(positions)} position(s) of magic {self.magic}: resume once checked",
                )
            self._observe_account(now)
            self.last_reconcile = report
            self.started = True
            if report["recovered"] or report["not_sent"] or report["unknown_positions"]:
                log.warning("reconciliation: %s", report)
            return report

    # --- one bar ------------------------------------------------------------------------
    def on_bar(self, symbol: str, bar_close: int) -> DecisionRecord | None:
        """Decide on the bar of ``symbol`` that closed at ``bar_close`` (UTC epoch seconds).

        Returns the journaled record (kept in memory while the journal is down), or ``None``
        if this bar was already decided (restart). Never raises for a failing dependency."""
        bar_close = int(bar_close)
        with self.lock:
            try:
                self._apply_pending_kill()
                if any(r.symbol == symbol and r.bar_close == bar_close for r in self._unwritten):
                    return None
                try:
                    if self._unwritten or not self.journal_up:
                        self._flush_unwritten()
                    if self.journal.decided(symbol, bar_close):
                        return None
                    if not self.started:
                        self.reconcile()
                    self.journal.begin()  # the bar's group transaction (committed in _finish)
                except Exception as exc:  # journal or terminal unusable: refuse the bar
                    return self._refuse_early(symbol, bar_close, exc)
                try:
                    return self._decide(symbol, bar_close)
                except BaseException:  # e.g. KeyboardInterrupt: never leave the bar's tx open
                    self.journal.rollback()
                    raise
            finally:
                self._apply_pending_kill()
                if self._audit_unwritten and self.journal_up:
                    self._flush_audit()

    def flush_journal(self) -> bool:
        """Write the rows kept while the journal was down (e.g. before a clean stop); True
        when none is left."""
        with self.lock:
            try:
                self._flush_unwritten()
            except JournalUnavailable as exc:
                self._journal_down(exc)
            return not self._unwritten

    def _refuse_early(self, symbol: str, bar_close: int, exc: BaseException) -> DecisionRecord:
        reason = failure_reason(exc)
        if reason is Reason.JOURNAL_UNAVAILABLE:
            self._journal_down(exc)
        rec = DecisionRecord(
            symbol,
            bar_close,
            self.clock(),
            None,
            None,
            "none",
            None,
            "refused",
            f"{reason}: {type(exc).__name__}: {exc}",
            None,
            None,
            None,
            {},
            str(reason),
        )
        return self._finish(rec, time.perf_counter())

    def _may_send(self) -> bool:
        """Asked by the executor right before each ``order_send`` (the send gate held):
        no kill acknowledged and the journal writable. Notes the bar's first send: the
        moment the decision leaves the engine (``send_ms``)."""
        ok = not self.killed.is_set() and self.journal_up
        if ok and self._send_t is None:
            self._send_t = time.perf_counter()
        return ok

    def _decide(self, symbol: str, bar_close: int) -> DecisionRecord:
        t0 = time.perf_counter()
        self._send_t = None
        lat: dict[str, float] = {}
        now = self.clock()
        rec = DecisionRecord(
            symbol, bar_close, now, None, None, "none", None, "refused", None, None, None, None, lat
        )
        self._earlier_intents = True
        grid_out: dict[str, Any] | None = None
        strategy = self.grid.strategy(symbol) if self.grid is not None else "model"
        try:
            # intents of this bar before this decision can only come from an earlier start
            # (or a flatten): known up front, so a bar without them needs no query afterwards
            self._earlier_intents = self.journal.may_have_intents(symbol, bar_close)
            self._observe_account(now)
            if self.grid is not None and strategy != "model":  # engine.grid: grid or both
                if self.killed.is_set():
                    raise _Refuse(Reason.KILL_SWITCH, "kill acknowledged: no new orders")
                grid_out = self.grid.step(self, symbol, bar_close)
                if strategy == "grid":
                    raise _GridOnly
            self._bar_view(threading.get_ident())
            t = time.perf_counter()
            row = self.features.read(symbol)
            lat["feature_ms"] = (time.perf_counter() - t) * 1e3
            rec.feature_time = row.event_time
            age = now - row.event_time
            self.metrics.feature_age.labels(symbol).set(age)
            if round(row.event_time) != bar_close:
                raise _Refuse(
                    Reason.STALE_FEATURES, f"row at {row.event_time:.0f}, bar closed {bar_close}"
                )
            t = time.perf_counter()
            pred = self.model.predict(row)
            lat["predict_ms"] = (time.perf_counter() - t) * 1e3
            if pred.source != "serving":
                self.metrics.fallbacks.inc()
                lat["fallback"] = 1.0
            rec.model_version, rec.decision = pred.model_version, pred.decision
            if self.explain:  # what the answer already carries: references, no work
                rec.probabilities, rec.explanation = pred.probabilities, pred.explanation
                rec.features = row.values
                rec.feature_sequence = row.sequence
            if self.killed.is_set():
                raise _Refuse(Reason.KILL_SWITCH, "kill acknowledged: no new orders")
            t = time.perf_counter()
            abstain = None
            if pred.policy is not None:  # the bundle's decision policy (engine/policy.py)
                pred, abstain = self._policy_gate(symbol, pred)
                rec.decision = pred.decision
            plan = self._plan(symbol, pred, age)
            lat["risk_ms"] = (time.perf_counter() - t) * 1e3
            if abstain is not None:
                rec.reason = f"{Reason.POLICY_ABSTAIN}: {abstain}"
            if plan is None:
                rec.verdict = "hold"
                rec.target_lots = self._net_lots(symbol)
                if abstain is not None and rec.target_lots == 0:
                    rec.verdict, rec.reason_code = "abstain", str(Reason.POLICY_ABSTAIN)
            else:
                current, target, sl_d, tp_d = plan
                rec.target_lots = target
                t, b = time.perf_counter(), self.executor.broker_s
                self._move_position(symbol, current, target, bar_close, rec, sl_d, tp_d)
                lat["order_ms"] = (time.perf_counter() - t) * 1e3
                lat["broker_ms"] = (self.executor.broker_s - b) * 1e3  # inside order_send
                if self._send_t is not None:  # tick-to-send: the first order_send of the bar
                    lat["send_ms"] = (self._send_t - t0) * 1e3
        except _GridOnly:  # the grid already decided and journaled this bar's actions
            pass
        except _Refuse as r:
            rec.verdict, rec.reason_code, rec.reason = (
                "refused",
                str(r.reason),
                f"{r.reason}: {r.detail}",
            )
        except Exception as exc:  # any other failure: the bar's row says which
            reason = failure_reason(exc)
            if reason is Reason.JOURNAL_UNAVAILABLE:
                self._journal_down(exc)
            elif reason is Reason.DECISION_ERROR:
                log.exception("%s bar %s: decision failed", symbol, bar_close)
            rec.verdict = "error" if rec.order_request else "refused"
            rec.reason_code = str(reason)
            rec.reason = f"{reason}: {type(exc).__name__}: {exc}"[:2000]
        finally:
            self._bar_view(None)
        if grid_out is not None and self.grid is not None:
            self.grid.merge(rec, grid_out, alone=strategy == "grid")
        self._show_executed(rec)
        return self._finish(rec, t0)

    def _show_executed(self, rec: DecisionRecord) -> None:
        """Put the orders the broker executed for this bar in earlier attempts (a crash
        before the row was written) into its row: the row shows what the broker did."""
        try:
            if not self._earlier_intents:
                return
            prior = [
                it
                for it in self.journal.bar_intents(rec.symbol, rec.bar_close)
                if it.status in ("done", "recovered")
            ]
        except JournalUnavailable:
            return
        sent_now = {r.get("client_id") for r in (rec.order_result or {}).get("results", []) if r}
        earlier = [it for it in prior if it.client_id not in sent_now]
        if not earlier:
            return
        result = dict(rec.order_result or {"results": []})
        result["executed_before_restart"] = [
            {
                "client_id": it.client_id,
                "intent": it.intent,
                "status": it.status,
                "result": it.result,
            }
            for it in earlier
        ]
        rec.order_result = result
        if rec.verdict in ("hold", "refused"):
            rec.verdict = "sent"
            note = f"orders executed before a restart: {[it.intent for it in earlier]}"
            rec.reason = f"{rec.reason}; {note}" if rec.reason else note

    def _policy_gate(self, symbol: str, pred: Prediction) -> tuple[Prediction, str | None]:
        """The bundle's decision policy on the answer's probabilities, with the spread, ATR
        and volatility the terminal shows now: the same function the training backtest and
        serving call. Returns the (possibly flat) prediction and the abstain reason."""
        pol = as_policy(pred.policy)
        assert pol is not None
        cost = edge = None
        if pol.needs_costs:
            info = self._symbol_info(symbol)
            tick = self.terminal.symbol_info_tick(symbol)
            rates = self._closed_bars(symbol, max(self.sizing.atr_period + 1, POLICY_BARS))
            if info is not None and tick is not None and info.point and rates is not None:
                close = float(rates["close"][-1]) if len(rates) else 0.0
                cost = policy_cost_points(
                    pol,
                    spread_points=(tick.ask - tick.bid) / info.point,
                    vol_points=return_volatility(rates["close"]) * close / info.point,
                    price_points=close / info.point,
                )
                edge = pol.edge_atr_mult * atr(rates, self.sizing.atr_period) / info.point
        d = decide_policy(
            [float(pred.probabilities.get(c, 0.0)) for c in POLICY_CLASSES],
            pol,
            cost_points=cost,
            edge_points=edge,
            regime=explanation_regime(pred.explanation),
        )
        if d.side != pred.position:
            pred = replace(pred, position=d.side, decision=POLICY_LABELS[d.side])
        return pred, (f"{d.reason}: {d.detail}" if d.reason else None)

    def _plan(
        self, symbol: str, pred: Prediction, feature_age: float
    ) -> tuple[float, float, float, float] | None:
        """``(current, target, sl distance, tp distance)``, ``None`` to hold; raises _Refuse."""
        current = self._net_lots(symbol)
        side = 0 if current == 0 else (1 if current > 0 else -1)
        if pred.position == side:
            return None  # already where the model wants to be (no resizing mid-trade)
        info = self._symbol_info(symbol)
        tick = self.terminal.symbol_info_tick(symbol)
        now_server = self.clock() + self.offset_s
        market_open = (
            info is not None
            and tick is not None
            and info.trade_mode != mt5.SYMBOL_TRADE_MODE_DISABLED
            and (
                not self.limits.max_tick_age_s
                or now_server - tick.time <= self.limits.max_tick_age_s
            )
        )
        spread = (
            (tick.ask - tick.bid) / info.point
            if (info is not None and tick is not None and info.point)
            else 0.0
        )
        target, sl_d, tp_d = 0.0, 0.0, 0.0
        if pred.position != 0 and info is not None:
            rates = self._closed_bars(symbol, self.sizing.atr_period + 1)
            a = atr(rates, self.sizing.atr_period) if rates is not None else 0.0
            sl_d = self.sizing.stop_atr_mult * a
            tp_d = self.sizing.take_profit_atr_mult * a
            ex = self.execution
            if ex.min_edge_cost_ratio > 0:
                edge = edge_points(
                    pred.probabilities, pred.position, a / info.point, ex.edge_atr_mult
                )
                cost = (
                    cost_points(spread, ex.slippage_points, ex.slippage_spread_frac)
                    if self.slippage is None
                    else gate_cost_points(self, symbol, pred.position, spread)
                )
                if edge < ex.min_edge_cost_ratio * cost:
                    if current == 0:
                        raise _Refuse(
                            Reason.EDGE_BELOW_COST,
                            f"edge {edge:.1f} points < {ex.min_edge_cost_ratio:g} x cost {cost:.1f}",
                        )
                    pred_position = 0  # the edge does not pay for a new position: only close
                else:
                    pred_position = pred.position
            else:
                pred_position = pred.position
            if pred_position != 0:
                if self.sizing.risk_per_trade > 0:
                    acct = self.terminal.account_info()
                    lots = lots_for_risk(
                        acct.equity if acct else 0.0,
                        self.sizing.risk_per_trade,
                        sl_d,
                        tick_size=info.trade_tick_size,
                        tick_value=info.trade_tick_value,
                        volume_min=info.volume_min,
                        volume_step=info.volume_step,
                        volume_max=info.volume_max,
                    )
                else:
                    lots = round_volume(
                        self.sizing.fixed_lots, info.volume_min, info.volume_step, info.volume_max
                    )
                if lots <= 0:
                    if current == 0:
                        raise _Refuse(
                            Reason.SIZE_BELOW_MIN, f"risked size below volume_min {info.volume_min}"
                        )
                else:
                    target = pred_position * lots
        if abs(target - current) < 1e-9:
            return None
        other = sum(abs(v) for s, v in self._all_net_lots().items() if s != symbol)
        closing = current != 0 and (target == 0 or (target > 0) != (current > 0))
        n_orders = (len(self._model_positions(symbol)) if closing else 0) + (
            1
            if abs(target) > 1e-12 and (closing or current == 0 or abs(target) > abs(current))
            else 0
        )
        v = self.risk.check(
            current_lots=current,
            target_lots=target,
            other_lots=other,
            now=self.clock(),
            spread_points=spread,
            market_open=market_open,
            feature_age_s=feature_age,
            new_orders=max(n_orders, 1),
        )
        if not v.allowed and current != 0 and target != 0 and (target > 0) != (current > 0):
            # a flip the rules refuse may still close the position (e.g. REDUCING, exposure)
            v_close = self.risk.check(
                current_lots=current,
                target_lots=0.0,
                other_lots=other,
                now=self.clock(),
                spread_points=spread,
                market_open=market_open,
                feature_age_s=feature_age,
                new_orders=len(self._model_positions(symbol)),
            )
            if v_close.allowed:
                log.info("%s: %s refuses the flip (%s); closing only", symbol, v.reason, v.detail)
                return current, 0.0, sl_d, tp_d
        if not v.allowed:
            assert v.reason is not None
            raise _Refuse(v.reason, v.detail)
        return current, target, sl_d, tp_d

    def _finish(self, rec: DecisionRecord, t0: float) -> DecisionRecord:
        total = (time.perf_counter() - t0) * 1e3
        rec.latency_ms["total_ms"] = total
        rec.trading_state = str(self.risk.state.trading_state)
        if self.journal_up:
            try:
                try:
                    self.journal.record(rec)
                finally:  # one commit for the bar (after a checkpoint: not synchronous)
                    self.journal.commit()
            except JournalUnavailable as exc:
                self.journal.rollback()
                self._journal_down(exc)
                self._unwritten.append(rec)
        else:
            self.journal.rollback()  # intents pending at the broker are reconciled later
            self._unwritten.append(rec)
        self.stats.latencies_ms.append(total)
        self.stats.stages_ms.append(dict(rec.latency_ms))
        self.stats.bars += 1
        self.metrics.decisions.labels(rec.verdict).inc()
        self.metrics.last_decision.set(time.time())
        if rec.reason_code and rec.verdict != "abstain":  # abstaining is no refusal
            self.metrics.refusals.labels(rec.reason_code).inc()
        self.metrics.observe_stages({k: v for k, v in rec.latency_ms.items() if k.endswith("_ms")})
        log.debug("%s %s %s %s", rec.symbol, rec.bar_close, rec.verdict, rec.reason or rec.decision)
        return rec

    # --- account ------------------------------------------------------------------------
    def _observe_account(self, now: float) -> None:
        acct = self.terminal.account_info()
        if acct is None:
            return
        self.risk.observe_equity(float(acct.equity), now)
        self.metrics.equity.set(float(acct.equity))
        self.metrics.drawdown.set(self.risk.state.drawdown)
        # incremental: only the deals from the newest one counted so far (its time included,
        # the ticket filter drops the ones already seen), never before the 2-day window
        lo = int(now) - 2 * 86_400
        if self._deals_seen_to is not None and self._deals_seen_to > lo:
            lo = self._deals_seen_to
        deals = self.terminal.history_deals_get(lo, int(now) + 2 * 86_400) or ()
        if not deals:
            return
        last = self.risk.state.last_deal_ticket
        magic = self.magic
        closed = [
            (int(d.ticket), float(d.profit + d.commission + d.swap))
            for d in deals
            if d.ticket > last and d.magic == magic and d.entry == mt5.DEAL_ENTRY_OUT
        ]
        self._deals_seen_to = max(int(d.time) for d in deals)
        if closed:
            self.risk.observe_closed_trades(closed)

    # --- positions and orders -------------------------------------------------------------
    def positions(self, symbol: str | None = None) -> tuple[Any, ...]:
        """This engine's open positions (its magic).

        Inside a decision (from after the grid's step until the bar ends, on the deciding
        thread only) one ``positions_get`` answers every ask of the bar until an order is
        sent: the plan asks for the symbol's net, the other symbols' exposure and the count
        of positions to close, and a bridge terminal answers each call over the network. The
        bar then also decides on one view of the account."""
        if self._snap_thread != threading.get_ident():
            pos = (
                self.terminal.positions_get(symbol=symbol)
                if symbol
                else self.terminal.positions_get()
            )
            return tuple(p for p in (pos or ()) if p.magic == self.magic)
        snap = self._positions_snap
        if snap is None:
            every = self.terminal.positions_get() or ()
            snap = self._positions_snap = tuple(p for p in every if p.magic == self.magic)
        return snap if symbol is None else tuple(p for p in snap if p.symbol == symbol)

    def _bar_view(self, thread: int | None) -> None:
        """Start (on ``thread``, the deciding one) or end (``None``) the bar's one view of
        the positions, symbol infos and closed bars; empty either way."""
        self._snap_thread = thread
        self._positions_snap, self._infos_snap, self._bars_snap = None, {}, {}

    def _symbol_info(self, symbol: str) -> Any:
        """``symbol_info(symbol)``; inside a decision (the deciding thread) one read serves
        the bar: the policy gate, the plan, the cost gate and the executor (filling mode,
        stops, the fill's point) each ask for it. Quotes are not kept: the executor prices
        each request from a fresh ``symbol_info_tick``."""
        if self._snap_thread != threading.get_ident():
            return self.terminal.symbol_info(symbol)
        if symbol not in self._infos_snap:
            info = self.terminal.symbol_info(symbol)
            if info is None:
                return None  # not kept: the next ask tries again (last_error is the terminal's)
            self._infos_snap[symbol] = info
        return self._infos_snap[symbol]

    def _closed_bars(self, symbol: str, count: int) -> Any:
        """The last ``count`` closed bars of ``symbol`` on the engine's timeframe, oldest
        first: ``copy_rates_from_pos(symbol, timeframe, 1, count)``. Inside a decision one
        read of the most any step needs (ATR, the policy's volatility, the fill's) serves the
        bar, sliced: closed bars do not change within it. Read-only."""
        if self._snap_thread != threading.get_ident():
            return self.terminal.copy_rates_from_pos(symbol, self.timeframe, 1, count)
        got = self._bars_snap.get(symbol)
        if got is None or got[0] < count:
            n = max(count, self.sizing.atr_period + 1, POLICY_BARS, FILL_VOL_WINDOW + 1)
            rates = self.terminal.copy_rates_from_pos(symbol, self.timeframe, 1, n)
            if rates is None:
                return None
            rates.flags.writeable = False
            got = self._bars_snap[symbol] = (n, rates)
        rates = got[1]
        return rates[-count:] if len(rates) > count else rates

    def _model_positions(self, symbol: str) -> tuple[Any, ...]:
        """The model strategy's positions of ``symbol``: this engine's, minus the grid's."""
        pos = self.positions(symbol)
        grid = self.grid.tickets(symbol) if self.grid is not None else set()
        return tuple(p for p in pos if int(p.ticket) not in grid) if grid else pos

    def _net_lots(self, symbol: str) -> float:
        return round(
            sum(
                p.volume if p.type == mt5.POSITION_TYPE_BUY else -p.volume
                for p in self._model_positions(symbol)
            ),
            8,
        )

    def _all_net_lots(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for p in self.positions():
            out[p.symbol] = round(
                out.get(p.symbol, 0.0)
                + (p.volume if p.type == mt5.POSITION_TYPE_BUY else -p.volume),
                8,
            )
        return out

    def _move_position(
        self,
        symbol: str,
        current: float,
        target: float,
        bar_close: int,
        rec: DecisionRecord,
        sl_d: float,
        tp_d: float,
    ) -> None:
        """Close what points the wrong way (or all when going flat), then open the rest
        (hedging accounts). With one terminal the bar's intents are journaled together before
        the first send, so a flip (close, then open) waits for the disk once; the router picks
        the venue, and with it the closing ids, only at each send."""
        outcomes: list[OrderOutcome] = []
        now = self.clock()
        closes = []
        flip = current != 0 and (target == 0 or (target > 0) != (current > 0))
        if flip:
            closes = [
                (
                    f"close:{p.ticket}",
                    mt5.ORDER_TYPE_SELL if p.type == mt5.POSITION_TYPE_BUY else mt5.ORDER_TYPE_BUY,
                    p.volume,
                    {"position": int(p.ticket), **_venue(p)},
                )
                for p in self._model_positions(symbol)
            ]
        delta = round(target - (0.0 if flip else current), 8)  # once every close is done
        orders = list(closes)
        if delta != 0:
            side = mt5.ORDER_TYPE_BUY if delta > 0 else mt5.ORDER_TYPE_SELL
            extra = {"sl_distance": sl_d, "tp_distance": tp_d}
            orders.append((f"open:{'buy' if delta > 0 else 'sell'}", side, abs(delta), extra))
        ahead: list[Any] = [None] * len(orders)
        if isinstance(self.executor, OrderExecutor) and len(orders) > 1:
            ahead = [
                self.executor.prepare(
                    symbol,
                    bar_close,
                    intent,
                    order_type=kind,
                    volume=volume,
                    position=kw.get("position"),
                )
                for intent, kind, volume, kw in orders
            ]
        for i, (intent, kind, volume, kw) in enumerate(orders):
            if outcomes and not outcomes[-1].ok:  # a close failed: nothing more this bar
                if isinstance(self.executor, OrderExecutor) and ahead[i] is not None:
                    self.executor.abandon(ahead[i], f"not sent: {outcomes[-1].intent} failed")
                continue
            if ahead[i] is not None:
                kw = {**kw, "prepared": ahead[i]}
            o = self.executor.execute(
                symbol, bar_close, intent, order_type=kind, volume=volume, now_utc=now, **kw
            )
            self._positions_snap = None  # the account moved: ask again
            outcomes.append(o)
            if o.status == "done":
                self.risk.record_order(now)
        rec.order_request = {
            "orders": [
                o.requests[-1] if o.requests else {"client_id": o.client_id} for o in outcomes
            ]
        }
        rec.order_result = {
            "results": [
                {
                    "client_id": o.client_id,
                    "intent": o.intent,
                    "status": o.status,
                    "attempts": o.results,
                }
                for o in outcomes
            ]
        }
        rec.retcode = outcomes[-1].retcode if outcomes else None
        failed = [o for o in outcomes if not o.ok]
        if failed:
            f = failed[0]
            rec.verdict = "error"
            rec.reason_code = str(f.reason or Reason.ORDER_FAILED)
            rec.reason = f"{rec.reason_code}: {f.intent} retcode={f.retcode} {f.detail}"
            if f.reason is Reason.NO_MONEY:
                self.risk.set_state(TradingState.REDUCING, Reason.NO_MONEY, f.detail)
        else:
            rec.verdict = "sent"

    # --- audit ----------------------------------------------------------------------------
    def _state_view(self) -> dict[str, str]:
        st = self.risk.state
        return {
            "state": str(st.trading_state),
            "reason": st.state_reason,
            "detail": st.state_detail,
        }

    def _audit(
        self, action: str, actor: str, reason: str | None, detail: dict[str, Any]
    ) -> dict[str, Any]:
        """Journal one audit row (decision lock held, no bar transaction open); kept in
        memory while the journal is down and written before the next one."""
        from datetime import UTC, datetime

        row = {
            "action": action,
            "actor": actor,
            "reason": reason,
            "detail": detail,
            "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        }
        self._audit_unwritten.append(row)
        self._flush_audit()
        log.warning("audit: %s by %s (%s)", action, actor, reason or "no reason given")
        return row

    def _flush_audit(self) -> None:
        if self.journal.in_transaction:
            return  # written by the next call outside the bar
        while self._audit_unwritten:
            r = self._audit_unwritten[0]
            try:
                self.journal.audit(
                    r["action"],
                    actor=r["actor"],
                    reason=r["reason"],
                    detail=r["detail"],
                    at=r["at"],
                )
            except JournalUnavailable as exc:
                log.error("audit row %s kept in memory: %s", r["action"], exc)
                return
            self._audit_unwritten.pop(0)

    def audit_rows(self, limit: int = 50) -> list[dict[str, Any]]:
        """The newest audit rows, newest first (rows not yet written first, marked)."""
        with self._operator_lock():
            self._flush_audit()
            waiting = [{**r, "id": None, "unwritten": True} for r in self._audit_unwritten[::-1]]
            return (waiting + self.journal.audit_rows(limit))[:limit]

    # --- operator actions (control API) ---------------------------------------------------
    def kill(
        self,
        flatten: bool = False,
        detail: str = "operator kill",
        *,
        actor: str = "operator",
        reason: str | None = None,
    ) -> dict[str, Any]:
        """HALT trading now, without waiting for an in-flight decision (see the module
        docstring); with ``flatten`` also close every position of this engine (at once when
        the decision lock is free, else as soon as the in-flight bar ends).

        The answer says whether an ``order_send`` was still in flight (it started before the
        kill) and whether the HALTED state is already persisted. The audit row (action
        ``kill`` or ``flatten``) is written when the kill is persisted, with what it closed."""
        t0 = time.perf_counter()
        before = self._state_view()
        self.killed.set()
        in_flight = not self.send_gate.acquire(timeout=self.kill_wait_s)
        if not in_flight:
            self.send_gate.release()
        self._pending_flatten = self._pending_flatten or flatten
        self._pending_kill = detail
        self._kill_meta = {
            "action": "flatten" if self._pending_flatten else "kill",
            "actor": actor,
            "reason": reason,
            "before": (self._kill_meta or {}).get("before", before),
            "order_in_flight": in_flight,
        }
        self.risk.state.trading_state = TradingState.HALTED  # shown at once; persisted below
        self.metrics.set_state(TradingState.HALTED)
        done: list[list[dict[str, Any]]] = []

        def persist() -> None:  # under the decision lock, which a hung bar may hold
            with self.lock:
                done.append(self._apply_pending_kill())

        worker = threading.Thread(target=persist, name="tx-engine-kill", daemon=True)
        worker.start()
        worker.join(self.kill_wait_s)
        self.metrics.kill_latency.observe(time.perf_counter() - t0)
        return {
            "state": str(TradingState.HALTED),
            "killed": True,
            "order_in_flight": in_flight,
            "persisted": bool(done) and self.journal_up,
            "flattened": (done[0] if done else "queued") if flatten else [],
        }

    def _apply_pending_kill(self) -> list[dict[str, Any]]:
        """Persist a kill acknowledged meanwhile and run its flatten (decision lock held)."""
        detail, self._pending_kill = self._pending_kill, None
        if detail is None:
            return []
        meta, self._kill_meta = self._kill_meta or {}, None
        self.risk.kill(detail)
        closed: list[dict[str, Any]] = []
        if self._pending_flatten:
            self._pending_flatten = False
            closed = self._flatten_all()
        self._audit_unwritten.append(self._kill_row(meta, closed))
        self._flush_audit()  # nothing inside a bar's transaction: written after its commit
        return closed

    def _kill_row(self, meta: dict[str, Any], closed: list[dict[str, Any]]) -> dict[str, Any]:
        from datetime import UTC, datetime

        action = str(meta.get("action", "kill"))
        detail: dict[str, Any] = {
            "before": meta.get("before"),
            "after": self._state_view(),
            "order_in_flight": meta.get("order_in_flight", False),
        }
        if action == "flatten":
            detail["flattened"] = closed
        log.warning("audit: %s by %s", action, meta.get("actor", "operator"))
        return {
            "action": action,
            "actor": str(meta.get("actor", "operator")),
            "reason": meta.get("reason"),
            "detail": detail,
            "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        }

    def _flatten_all(self) -> list[dict[str, Any]]:
        closed: list[dict[str, Any]] = []
        now = self.clock()
        stamp = int(now)
        try:
            for p in self.positions():
                close_type = (
                    mt5.ORDER_TYPE_SELL if p.type == mt5.POSITION_TYPE_BUY else mt5.ORDER_TYPE_BUY
                )
                o = self.executor.execute(
                    p.symbol,
                    stamp,
                    f"flatten:{p.ticket}",
                    order_type=close_type,
                    volume=p.volume,
                    now_utc=now,
                    position=int(p.ticket),
                    flatten=True,
                    **_venue(p),
                )
                closed.append(
                    {
                        "ticket": int(p.ticket),
                        "symbol": p.symbol,
                        "volume": float(p.volume),
                        "status": o.status,
                        "retcode": o.retcode,
                    }
                )
        except Exception as exc:  # terminal or journal down: the operator sees it
            log.error("flatten failed: %s", exc)
            closed.append({"error": f"{failure_reason(exc)}: {type(exc).__name__}: {exc}"})
        return closed

    @contextlib.contextmanager
    def _operator_lock(self, wait_s: float = 2.0) -> Iterator[None]:
        """The decision lock for an operator call, or :class:`EngineBusy` after ``wait_s``
        (a control API thread never waits on a hung dependency)."""
        if not self.lock.acquire(timeout=wait_s):
            raise EngineBusy("a decision is in flight (a dependency is slow): try again")
        try:
            yield
        finally:
            self.lock.release()

    def resume(self, *, actor: str = "operator", reason: str | None = None) -> dict[str, Any]:
        """Back to ACTIVE (peak restarts at current equity, loss streak resets); also lifts
        ``journal_missing`` once the operator has checked the account, and acknowledges the
        open reconciliation mismatches (their positions are adopted)."""
        with self._operator_lock():
            self._apply_pending_kill()
            before = self._state_view()
            acked = list(self._rec_open.values())
            if acked:
                for m in acked:
                    if m.get("kind") in ("unknown_position", "unknown_deal") and "ticket" in m:
                        self._rec_known.add(int(m["ticket"]))
                    if m.get("kind") == "unknown_deal" and "position" in m:
                        self._rec_known.add(int(m["position"]))
                    self._rec_acked.add(str(m["key"]))
                self._rec_open.clear()
                self._rec_before = None
                self.metrics.reconcile_open.set(0)
                self._save_reconcile()
            self.killed.clear()
            self.risk.resume()
            detail: dict[str, Any] = {"before": before, "after": self._state_view()}
            if acked:
                detail["acknowledged_mismatches"] = acked
            self._audit("resume", actor, reason, detail)
            return {"state": str(self.risk.state.trading_state)}

    def reduce(self, *, actor: str = "operator", reason: str | None = None) -> dict[str, Any]:
        """REDUCING with reason ``monitor_reduce`` (only orders towards flat) until an operator
        resumes; a HALTED engine stays HALTED. Audited; returns :meth:`status`."""
        with self._operator_lock():
            self._apply_pending_kill()
            before = self._state_view()
            if self.risk.state.trading_state is not TradingState.HALTED:
                self.risk.set_state(
                    TradingState.REDUCING, Reason.MONITOR_REDUCE, reason or "monitoring action"
                )
            self._audit("reduce", actor, reason, {"before": before, "after": self._state_view()})
        return self.status()

    def reload(self, *, actor: str = "operator", reason: str | None = None) -> dict[str, Any]:
        """Re-open the model (serving client/bundle) through ``reload_hook``; journaled in
        state and audited."""
        with self._operator_lock():
            try:
                info = (
                    self.reload_hook()
                    if self.reload_hook is not None
                    else {"reloaded": False, "detail": "no reload hook"}
                )
            except Exception as exc:
                self._audit("reload", actor, reason, {"error": f"{type(exc).__name__}: {exc}"})
                raise
            self.journal.save_state("last_reload", str(info))
            self._audit("reload", actor, reason, {"result": info, "state": self._state_view()})
            return info

    # --- continuous reconciliation (engine.reconcile) ---------------------------------------
    def _save_reconcile(self) -> None:
        try:
            self.journal.save_state(
                "reconcile",
                json.dumps(
                    {
                        "open": self._rec_open,
                        "before": self._rec_before,
                        "known": sorted(self._rec_known),
                        "flagged": sorted(self._rec_flagged),
                        "acked": sorted(self._rec_acked),
                    }
                ),
            )
        except JournalUnavailable as exc:
            self._journal_down(exc)

    def _read_terminal(self, term: Any, now: float) -> tuple[Any, Any] | dict[str, Any]:
        """Positions and deals of the lookback window, or ``{"error": ...}`` on a link error
        (counted, logged once per outage)."""
        lookback = self.execution.history_lookback_s
        try:
            positions = term.positions_get()
            deals = term.history_deals_get(int(now) - lookback, int(now) + 2 * 86_400)
            if positions is None or deals is None:
                raise mt5.TerminalError("positions_get/history_deals_get", (-1, "no answer"))
        except Exception as exc:  # the link: counted, logged once per outage, not fatal
            self.metrics.reconcile_errors.inc()
            self.reconcile_info["errors"] += 1
            if not self._rec_link_down:
                log.warning("reconciliation: terminal link error, retrying: %s", exc)
            self._rec_link_down = True
            return {"error": f"{type(exc).__name__}: {exc}"}
        if self._rec_link_down:
            log.warning("reconciliation: terminal link back")
            self._rec_link_down = False
        return positions, deals

    def reconcile_pass(
        self, lock_wait_s: float = 1.0, terminal: Any = None
    ) -> dict[str, Any] | None:
        """One pass of the continuous reconciliation (see :mod:`engine.reconcile`): ``None``
        when skipped (a decision holds the lock, not started, journal down), else what it saw.
        A terminal link error is counted and answered, never raised.

        ``terminal``: a connection of the reconciliation's own (a second bridge link), read
        *before* the decision lock is taken, so a hung terminal call never holds the lock;
        without one the engine's terminal is read under the lock. Reading the terminal before
        the journal is safe: an order's intent is journaled before it is sent (write-ahead),
        so every position in the snapshot has its intent by the time the journal is read."""
        wall = time.time()
        t0 = time.perf_counter()
        snap = None
        if terminal is not None:
            if not self.started:
                return None
            snap = self._read_terminal(terminal, self.clock())
            if isinstance(snap, dict):
                return snap
        if not self.lock.acquire(timeout=lock_wait_s):
            self.metrics.reconcile_skipped.inc()  # a decision (or a hung terminal call) holds it
            self.reconcile_info["skipped"] += 1
            return None
        try:
            if not self.started or not self.journal_up or self.journal.in_transaction:
                return None
            now = self.clock()
            if snap is None:
                wall = time.time()
                snap = self._read_terminal(self.terminal, now)
                if isinstance(snap, dict):
                    return snap
            positions, deals = snap
            lookback = self.execution.history_lookback_s
            events: list[Mismatch] = []
            try:
                self._flush_audit()
                for it in self.journal.open_intents():
                    if it.status != "pending" or it.updated_at > wall:
                        continue  # not_sent: nothing at the broker, re-sent if re-decided
                    if self.router is not None and it.client_id in self.router.in_doubt:
                        continue  # its venue is down: the router resolves it when it answers
                    found = self.executor.find_existing(it.symbol, it.client_id, now)
                    status = "recovered" if found is not None else "not_sent"
                    self.journal.intent_end(
                        it.client_id,
                        status,
                        {"results": [found] if found else [], "reconciled": True},
                        None,
                    )
                    events.append(
                        Mismatch(
                            "pending_intent",
                            f"intent:{it.client_id}",
                            {"client_id": it.client_id, "symbol": it.symbol, "resolved": status},
                        )
                    )
                intents = self.journal.intents_since(wall - lookback)
                window = {it.client_id for it in intents}
                comments = {
                    str(x.comment)
                    for x in (*positions, *deals)
                    if int(x.magic) == self.magic and x.comment and x.comment not in window
                }
                older = self.journal.known_client_ids(comments)
            except JournalUnavailable as exc:
                self._journal_down(exc)
                return None
            found_now = (self.router.compare if self.router is not None else compare)(
                positions=positions,
                deals=deals,
                intents=intents,
                magic=self.magic,
                known_tickets=self._rec_known,
                since_wall=wall,
                flagged=self._rec_flagged,
                older_ids=older,
            )
            found_now = [m for m in found_now if m.key not in self._rec_acked]
            out = self._apply_mismatches(found_now, events)
            self.reconcile_info["passes"] += 1
            self.reconcile_info["last_pass_at"] = time.time()
            self.metrics.reconcile_last_run.set(time.time())
            self.metrics.reconcile_seconds.observe(time.perf_counter() - t0)
            return out
        finally:
            self.lock.release()

    def _apply_mismatches(self, found: list[Mismatch], events: list[Mismatch]) -> dict[str, Any]:
        """New mismatches: count, audit, reduce; none left: restore the state before."""
        current = {m.key: m.as_dict() for m in found}
        new = [m for m in found if m.key not in self._rec_open]
        gone = [v for k, v in self._rec_open.items() if k not in current]
        for m in [*new, *events]:
            self.metrics.reconcile_mismatches.labels(m.kind).inc()
            log.warning("reconciliation mismatch %s: %s", m.kind, m.detail)
        for m in found:
            if m.kind == "unknown_position":
                self._rec_flagged.add(int(m.detail["ticket"]))
        changed = bool(new or gone or events)
        self._rec_open = current
        self.metrics.reconcile_open.set(len(current))
        st = self.risk.state
        if new or events:
            before = self._state_view()
            if current and st.trading_state is TradingState.ACTIVE:
                self._rec_before = before
                self.risk.set_state(
                    TradingState.REDUCING,
                    Reason.RECONCILE_MISMATCH,
                    f"{len(current)} open mismatch(es): "
                    + ", ".join(sorted({m["kind"] for m in current.values()})),
                )
            self._audit(
                "reconcile_mismatch",
                "reconcile",
                Reason.RECONCILE_MISMATCH.value,
                {
                    "new": [m.as_dict() for m in new],
                    "resolved_at_once": [m.as_dict() for m in events],
                    "open": list(current.values()),
                    "before": before,
                    "after": self._state_view(),
                },
            )
        if gone and not current:
            before = self._state_view()
            restore = self._rec_before
            if (
                st.trading_state is TradingState.REDUCING
                and st.state_reason == Reason.RECONCILE_MISMATCH
            ):
                if restore is not None:
                    self.risk.set_state(
                        TradingState(restore["state"]), restore["reason"], restore["detail"]
                    )
                else:
                    self.risk.set_state(TradingState.ACTIVE, "", "")
            self._rec_before = None
            self._audit(
                "reconcile_resolved",
                "reconcile",
                "mismatch gone",
                {"resolved": gone, "before": before, "after": self._state_view()},
            )
        if changed:
            self._save_reconcile()
        return {"open": list(current.values()), "new": [m.as_dict() for m in new]}

    def status(self) -> dict[str, Any]:
        """Trading state, risk figures, decision counts, last decision. Never waits longer
        than ``kill_wait_s`` for an in-flight decision: then the journal figures are left
        out and ``decision_in_flight`` is true."""
        st = self.risk.state
        out: dict[str, Any] = {
            "trading_state": str(st.trading_state),
            "state_reason": st.state_reason,
            "state_detail": st.state_detail,
            "killed": self.killed.is_set(),
            "journal_up": self.journal_up,
            "unwritten_rows": len(self._unwritten),
            "equity": st.equity,
            "peak_equity": st.peak_equity,
            "day_start_equity": st.day_start_equity,
            "drawdown": st.drawdown,
            "daily_loss": st.daily_loss,
            "consecutive_losses": st.consecutive_losses,
            "last_reconcile": self.last_reconcile,
            "reconcile": {
                **self.reconcile_info,
                "open_mismatches": list(self._rec_open.values()),
                "link_down": self._rec_link_down,
            },
            "magic": self.magic,
            "login": self.login,
            "mode": self.mode,
            "decision_in_flight": False,
            "decisions": {},
            "refusals": {},
            "last_decision": None,
        }
        if self.router is not None:  # each venue's health, open lots and orders in doubt
            out["venues"] = self.router.status()
        if not self.lock.acquire(timeout=self.kill_wait_s):
            out["decision_in_flight"] = True
            return out
        try:
            last = self.journal.rows(limit=1)
            out["decisions"] = self.journal.counts()
            out["refusals"] = self.journal.reason_counts()
            out["last_decision"] = (
                {k: last[0][k] for k in ("symbol", "bar_close", "verdict", "reason", "decision")}
                if last
                else None
            )
        except JournalUnavailable as exc:
            out["journal_error"] = str(exc)
        finally:
            self.lock.release()
        return out

    def positions_view(self) -> list[dict[str, Any]]:
        """Open positions as JSON-able dicts."""
        with self._operator_lock():
            return [
                {
                    "ticket": int(p.ticket),
                    "symbol": p.symbol,
                    "side": "buy" if p.type == mt5.POSITION_TYPE_BUY else "sell",
                    "volume": float(p.volume),
                    "price_open": float(p.price_open),
                    "price_current": float(p.price_current),
                    "sl": float(p.sl),
                    "tp": float(p.tp),
                    "profit": float(p.profit),
                    "comment": p.comment,
                }
                for p in self.positions()
            ]

    def pnl(self) -> dict[str, Any]:
        """Balance, equity, floating and realised P&L of this engine's deals."""
        with self._operator_lock():
            acct = self.terminal.account_info()
            now = self.clock()
            deals = self.terminal.history_deals_get(0, int(now) + 2 * 86_400) or ()
            realised = sum(
                float(d.profit + d.commission + d.swap) for d in deals if d.magic == self.magic
            )
            floating = sum(float(p.profit) for p in self.positions())
            return {
                "balance": float(acct.balance) if acct else None,
                "equity": float(acct.equity) if acct else None,
                "floating": floating,
                "realised": realised,
                "drawdown": self.risk.state.drawdown,
                "daily_loss": self.risk.state.daily_loss,
            }

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
        before_bar: Callable[[str, int], None] | None = None,
    ) -> None:
        """Live/paper driver: poll the terminal for newly closed bars and decide on each
        (``before_bar`` runs first, e.g. a paper-mode feature pusher)."""
        from engine.mt5 import timeframe_seconds

        step = timeframe_seconds(timeframe)
        last: dict[str, int] = {}
        self.reconcile()
        # What start-up built (modules, the model session, journal and terminal state) lives
        # as long as the process: frozen out of the collector, so the full collections that
        # land on some bars do not traverse it again (a p99 cost, measured in
        # bench/engine_tick.py, which steps its engines the same way).
        gc.freeze()
        while not stop():
            for sym in symbols:
                try:
                    with self.lock:
                        rates = self.terminal.copy_rates_from_pos(
                            sym, timeframe, 1, 1
                        )  # last closed bar
                except Exception as exc:  # terminal down: no bar known, nothing to decide
                    log.warning("%s: cannot read the last bar: %s", sym, exc)
                    rates = None
                if rates is None or not len(rates):
                    continue
                close_server = int(rates["time"][0]) + step
                if last.get(sym) != close_server:
                    last[sym] = close_server
                    close_utc = close_server - utc_offset_hours * 3600
                    try:
                        if before_bar is not None:
                            before_bar(sym, close_utc)
                        self.on_bar(sym, close_utc)
                    except (
                        Exception
                    ):  # one bad bar must not stop a live engine; the journal shows the gap
                        log.exception("%s bar %s: decision failed", sym, close_utc)
            time.sleep(poll_s)
