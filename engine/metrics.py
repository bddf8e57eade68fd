"""Prometheus metrics of one engine (own registry, so several engines in a process don't clash)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class EngineMetrics:
    """Tick-to-decision latency by stage, decisions and refusals by reason, orders by retcode,
    equity, drawdown, feature age, trading state."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.stage_latency = Histogram(
            "tx_engine_stage_latency_seconds",
            "Tick-to-decision latency by stage",
            ["stage"],
            registry=r,
            buckets=_BUCKETS,
        )
        self.decisions = Counter(
            "tx_engine_decisions_total", "Decisions by verdict", ["verdict"], registry=r
        )
        self.refusals = Counter(
            "tx_engine_refusals_total",
            "Refusals and order errors by reason code",
            ["reason"],
            registry=r,
        )
        self.orders = Counter(
            "tx_engine_orders_total", "order_send answers by retcode", ["retcode"], registry=r
        )
        self.equity = Gauge("tx_engine_equity", "Account equity", registry=r)
        self.drawdown = Gauge(
            "tx_engine_drawdown_ratio", "Trailing drawdown from the equity peak", registry=r
        )
        self.feature_age = Gauge(
            "tx_engine_feature_age_seconds",
            "Age of the last feature row read",
            ["symbol"],
            registry=r,
        )
        self.state = Gauge(
            "tx_engine_trading_state", "Trading state (1 = current)", ["state"], registry=r
        )
        self.fallbacks = Counter(
            "tx_engine_model_fallbacks_total",
            "Predictions answered by the in-process ONNX fallback",
            registry=r,
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
