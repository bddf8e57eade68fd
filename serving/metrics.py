"""Prometheus metrics of the serving API, exported on BentoML's own ``/metrics``.

BentoML workers run prometheus_client in multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` is
set by the worker at start-up, after the service module is imported), and BentoML's
``/metrics`` collects every metric written there. So the metrics here are created on the
first ``ServingMetrics()`` call inside the worker, never at import time, and appear next to
BentoML's ``bentoml_service_*`` series.

Series (all prefixed ``tx_serving_``):

- ``request_duration_seconds`` histogram by ``endpoint``, ``model_version``, ``outcome``;
- ``requests_total`` counter by ``endpoint``, ``model_version``, ``outcome``
  (``ok`` | ``bad_request`` | ``unauthorized`` | ``unavailable`` | ``error``);
- ``rows_total`` counter by ``model_version`` (rows scored);
- ``model_info`` gauge (1 = serving) by ``role``, ``model_version``, ``bundle_sha256``;
- ``reloads_total`` counter by ``trigger`` (``poll`` | ``admin``) and ``outcome``
  (``swapped`` | ``unchanged`` | ``failed``);
- ``shadow_total`` counter by ``champion_version``, ``challenger_version``, ``outcome``
  (``agree`` | ``disagree`` | ``incompatible`` | ``dropped`` | ``failed``);
- ``last_request_timestamp_seconds`` gauge: wall-clock time (UTC epoch seconds) of the last
  request of any outcome, set at start too (serving's heartbeat: the engine asks on every
  bar, so silence while the market is open means the engine does not reach it; alert
  TxServingSilent). Multiprocess mode ``max``: the newest of every worker.
"""

from __future__ import annotations

import time
from typing import Any

#: Latency buckets in seconds: 50 µs to 2.5 s.
LATENCY_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.00075,
    0.001,
    0.0015,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)


class ServingMetrics:
    """The serving series; create once per process, inside the BentoML worker."""

    def __init__(self, registry: Any = None) -> None:
        import prometheus_client as prom

        kw: dict[str, Any] = {"registry": registry} if registry is not None else {}
        labels = ("endpoint", "model_version", "outcome")
        self.latency = prom.Histogram(
            "tx_serving_request_duration_seconds",
            "Time from request received to response sent, by outcome.",
            labels,
            buckets=LATENCY_BUCKETS,
            **kw,
        )
        self.requests = prom.Counter(
            "tx_serving_requests", "Requests by endpoint, model version and outcome.", labels, **kw
        )
        self.rows = prom.Counter(
            "tx_serving_rows", "Rows scored by the champion.", ("model_version",), **kw
        )
        self.model_info = prom.Gauge(
            "tx_serving_model_info",
            "1 for the model versions being served, by role (champion | challenger).",
            ("role", "model_version", "bundle_sha256"),
            multiprocess_mode="livemax",
            **kw,
        )
        self.reloads = prom.Counter(
            "tx_serving_reloads",
            "Registry reloads by trigger and outcome.",
            ("trigger", "outcome"),
            **kw,
        )
        self.shadow = prom.Counter(
            "tx_serving_shadow",
            "Rows scored in shadow by the challenger, by outcome.",
            ("champion_version", "challenger_version", "outcome"),
            **kw,
        )
        self.last_request = prom.Gauge(
            "tx_serving_last_request_timestamp_seconds",
            "Wall-clock time (UTC epoch seconds) of the last request, any outcome.",
            multiprocess_mode="max",
            **kw,
        )
        self.last_request.set(time.time())  # "no request since start" counts from here

        # labelled children by label tuple: ``.labels()`` validates and locks on every call
        self._children: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    def observe(self, endpoint: str, model_version: str, outcome: str, seconds: float) -> None:
        """Count one request and its latency."""
        key = (endpoint, model_version, outcome)
        children = self._children.get(key)
        if children is None:
            children = (self.latency.labels(*key), self.requests.labels(*key))
            self._children[key] = children
        children[0].observe(seconds)
        children[1].inc()
        self.last_request.set(time.time())
