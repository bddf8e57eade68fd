"""Feature contributions of journaled decisions, computed off the decision path.

TreeSHAP of a decision costs milliseconds (serving's ``POST /v1/explain``, contract C5): far
more than the decision itself. So the engine never computes it while deciding. It journals
what serving's answer already carries (probabilities, regime state, members' probabilities and
weights) plus the feature vector it scored; this worker then picks the decided bars that have a
feature vector and no contributions yet, asks serving for their TreeSHAP contributions in
batches, and stores them in the row's ``contributions`` column.

Why it cannot slow a decision down:

* it reads the journal through its **own connection**, so it only sees bars whose transaction
  committed, and never holds the engine's decision lock;
* its thread runs at the lowest CPU priority (``nice 19`` for that thread on Linux);
* its HTTP client is separate from the engine's serving client (no shared pool or timeout);
* an outage or refusal of ``/v1/explain`` only delays contributions (backoff, logged once).

A row serving refuses to explain (4xx: e.g. a bundle without a native booster) gets
``{"error": ...}`` in ``contributions`` so it is not asked for again.

Run it inside the engine (``TX_ENGINE_EXPLAIN_WORKER=true``) or on its own:
``tx explain worker --journal ... --serving-url ...``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from engine.journal import Journal, JournalUnavailable

log = logging.getLogger(__name__)


class ExplainUnavailable(RuntimeError):
    """``/v1/explain`` did not answer (connect error, timeout, 5xx)."""


class ExplainClient:
    """HTTP client of serving's ``POST /v1/explain`` (same bearer token as ``/v1/predict``)."""

    def __init__(self, base_url: str, token: str | None = None, timeout_s: float = 10.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=base_url, timeout=timeout_s, headers=headers)

    def explain(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One answer per row (``symbol``, ``bar_close``, ``features``): member, base value,
        margin, contributions by feature, explained class; ``{"error": ...}`` for a refusal."""
        body = {
            "rows": [
                {
                    "symbol": r["symbol"],
                    "feature_time": datetime.fromtimestamp(int(r["bar_close"]), UTC)
                    .isoformat()
                    .replace("+00:00", "Z"),
                    "features": r["features"],
                    **({"sequence": r["sequence"]} if r.get("sequence") is not None else {}),
                }
                for r in rows
            ]
        }
        try:
            resp = self._http.post("/v1/explain", json=body)
        except httpx.HTTPError as exc:
            raise ExplainUnavailable(f"/v1/explain failed: {exc!r}") from exc
        if resp.status_code >= 500:
            raise ExplainUnavailable(f"/v1/explain answered {resp.status_code}: {resp.text[:200]}")
        if resp.status_code != 200:
            return [{"error": f"HTTP {resp.status_code}: {resp.text[:300]}"} for _ in rows]
        return parse_explain_answer(resp.json(), len(rows))

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()


def parse_explain_answer(data: Any, n: int) -> list[dict[str, Any]]:
    """The per-row list of a ``/v1/explain`` answer (a list, or the first list under
    ``explanations``/``rows``/``results``), checked: contributions are finite numbers."""
    items: Any = data
    if isinstance(data, dict):
        items = next(
            (data[k] for k in ("explanations", "rows", "results") if isinstance(data.get(k), list)),
            None,
        )
    if not isinstance(items, list) or len(items) != n:
        raise ExplainUnavailable(f"/v1/explain answer is not {n} rows: {str(data)[:200]}")
    out: list[dict[str, Any]] = []
    for it in items:
        try:
            contrib = {str(k): float(v) for k, v in dict(it["contributions"]).items()}
            out.append(
                {
                    "member": str(it.get("member", "xgb")),
                    "base_value": float(it.get("base_value", 0.0)),
                    "margin": float(it.get("margin", 0.0)),
                    "class": it.get("class"),
                    "class_name": it.get("class_name"),
                    "member_probability": it.get("member_probability"),
                    "member_weight": it.get("member_weight"),
                    "contributions": contrib,
                }
            )
        except (KeyError, TypeError, ValueError) as exc:
            out.append({"error": f"unreadable explanation: {exc!r}"})
    return out


def explain_pending(journal: Journal, client: ExplainClient, batch: int = 32) -> int:
    """Compute and store the contributions of up to ``batch`` decided bars lacking them;
    the number stored (0: nothing was pending)."""
    rows = journal.lacking_contributions(batch)
    if not rows:
        return 0
    answers = client.explain(rows)
    for r, a in zip(rows, answers, strict=True):
        journal.set_contributions(r["symbol"], int(r["bar_close"]), a)
    return len(rows)


def _lower_priority() -> None:
    """This thread at nice 19 (Linux: per thread); elsewhere nothing."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


class ExplainWorker:
    """The background thread (see the module docstring); :meth:`stop` ends it."""

    def __init__(
        self,
        journal_target: Path | str,
        scope: str,
        client: ExplainClient,
        *,
        poll_s: float = 1.0,
        batch: int = 32,
    ) -> None:
        self.journal_target = str(journal_target)
        self.scope = scope
        self.client = client
        self.poll_s = poll_s
        self.batch = batch
        self.stored = 0
        self.errors = 0
        self._stop = threading.Event()
        self._batch_lock = threading.Lock()  # drain() and the thread never explain one row twice
        self._thread = threading.Thread(target=self._run, name="tx-explain-worker", daemon=True)

    def start(self) -> ExplainWorker:
        """Start the thread."""
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Ask the thread to end and wait for it."""
        self._stop.set()
        self._thread.join(timeout_s)

    def drain(self, timeout_s: float = 60.0) -> bool:
        """Run until nothing is pending (in the caller's thread); True when drained."""
        journal = Journal(self.journal_target, self.scope, durable=False)
        try:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                with self._batch_lock:
                    n = explain_pending(journal, self.client, self.batch)
                    self.stored += n
                if n == 0:
                    return True
            return False
        finally:
            journal.close()

    def _run(self) -> None:
        _lower_priority()
        journal: Journal | None = None
        warned = False
        while not self._stop.is_set():
            try:
                if journal is None:
                    journal = Journal(self.journal_target, self.scope, durable=False)
                with self._batch_lock:
                    n = explain_pending(journal, self.client, self.batch)
                    self.stored += n
                warned = False
                if n:
                    continue
            except (ExplainUnavailable, JournalUnavailable) as exc:
                self.errors += 1
                if not warned:
                    log.warning("explain worker: %s (contributions wait)", exc)
                    warned = True
                if isinstance(exc, JournalUnavailable) and journal is not None:
                    journal.close()
                    journal = None
            self._stop.wait(self.poll_s)
        if journal is not None:
            journal.close()
