"""Prometheus metrics of one engine (own registry, so several engines in a process don't clash)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class _MemoLabels:
    """``labels(*values)`` answered from a per-metric dict after the first call of a label
    set: the engine labels several metrics on every bar, and ``prometheus_client`` validates
    the values and takes a lock on each call. The children are the library's own (exposition
    unchanged); the engine never removes a label set, which would leave the memo stale."""

    def labels(self, *values: Any, **kw: Any) -> Any:
        if kw or not values:
            return super().labels(*values, **kw)  # type: ignore[misc]
        memo: dict[tuple[Any, ...], Any] = self.__dict__.setdefault("_tx_children", {})
        child = memo.get(values)
        if child is None:
            child = memo[values] = super().labels(*values)  # type: ignore[misc]
        return child


class _Counter(_MemoLabels, Counter):
    pass


class _Gauge(_MemoLabels, Gauge):
    pass


class _Histogram(_MemoLabels, Histogram):
    pass


class EngineMetrics:
    """Tick-to-decision latency by stage, decisions and refusals by reason, orders by retcode,
    equity, drawdown, feature age, trading state."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.stage_latency = _Histogram(
            "tx_engine_stage_latency_seconds",
            "Tick-to-decision latency by stage",
            ["stage"],
            registry=r,
            buckets=_BUCKETS,
        )
        self.decisions = _Counter(
            "tx_engine_decisions_total", "Decisions by verdict", ["verdict"], registry=r
        )
        self.refusals = _Counter(
            "tx_engine_refusals_total",
            "Refusals and order errors by reason code",
            ["reason"],
            registry=r,
        )
        self.orders = _Counter(
            "tx_engine_orders_total", "order_send answers by retcode", ["retcode"], registry=r
        )
        self.equity = _Gauge("tx_engine_equity", "Account equity", registry=r)
        self.drawdown = _Gauge(
            "tx_engine_drawdown_ratio", "Trailing drawdown from the equity peak", registry=r
        )
        self.feature_age = _Gauge(
            "tx_engine_feature_age_seconds",
            "Age of the last feature row read",
            ["symbol"],
            registry=r,
        )
        self.state = _Gauge(
            "tx_engine_trading_state", "Trading state (1 = current)", ["state"], registry=r
        )
        self.fallbacks = _Counter(
            "tx_engine_model_fallbacks_total",
            "Predictions answered by the in-process ONNX fallback",
            registry=r,
        )
        # for the alert rules: "no decision for two bars" and "feature age above two bars"
        self.last_decision = Gauge(
            "tx_engine_last_decision_timestamp_seconds",
            "Wall-clock time (UTC epoch seconds) of the last decision, taken or refused",
            registry=r,
        )
        self.bar_seconds = Gauge(
            "tx_engine_bar_seconds", "Length of one bar of the engine's timeframe", registry=r
        )

        self.journal_up = Gauge(
            "tx_engine_journal_up",
            "1 while the journal writes; 0: the engine does not trade (fail closed)",
            registry=r,
        )
        self.journal_errors = Counter(
            "tx_engine_journal_errors_total", "Journal reads/writes that failed", registry=r
        )
        self.kill_latency = Histogram(
            "tx_engine_kill_seconds",
            "Time from a kill request to its acknowledgement",
            registry=r,
            buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        )

        # continuous reconciliation (engine.reconcile)
        self.reconcile_mismatches = _Counter(
            "tx_engine_reconcile_mismatches_total",
            "Mismatches between the terminal and the journal, by kind, counted when first seen",
            ["kind"],
            registry=r,
        )
        for kind in ("unknown_position", "missing_position", "unknown_deal", "pending_intent"):
            self.reconcile_mismatches.labels(kind)  # exported at 0 from the start
        self.reconcile_open = Gauge(
            "tx_engine_reconcile_open_mismatches",
            "Mismatches between the terminal and the journal still open (trading REDUCING)",
            registry=r,
        )
        self.reconcile_errors = Counter(
            "tx_engine_reconcile_errors_total",
            "Reconciliation passes that could not read the terminal (link errors)",
            registry=r,
        )
        self.reconcile_last_run = Gauge(
            "tx_engine_reconcile_last_run_timestamp_seconds",
            "Wall-clock time (UTC epoch seconds) of the last completed reconciliation pass",
            registry=r,
        )
        self.reconcile_seconds = Histogram(
            "tx_engine_reconcile_seconds",
            "Duration of one reconciliation pass",
            registry=r,
            buckets=_BUCKETS,
        )

    def observe_stages(self, latency_ms: dict[str, float]) -> None:
        """Record one decision's latency breakdown (keys ``<stage>_ms``)."""
        for k, v in latency_ms.items():
            self.stage_latency.labels(k.removesuffix("_ms")).observe(v / 1e3)

    def set_state(self, state: str) -> None:
        """Mark the current trading state."""
        for s in ("ACTIVE", "REDUCING", "HALTED"):
            self.state.labels(s).set(1.0 if s == state else 0.0)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
