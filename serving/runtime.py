"""What a serving worker holds: the loaded models, their atomic swap, shadow scoring, reload.

- ``LoadedModel``: one bundle, immutable once built (spec, warmed onnxruntime session,
  version, bundle hash).
- ``ServingState``: the champion and the optional challenger, immutable. A request reads
  ``ServingRuntime.state`` once and uses that object to the end, so a reload that swaps the
  state (one reference assignment) never mixes two models in one answer and never fails a
  request in flight: the old sessions stay alive as long as a request holds them.
- ``ShadowScorer``: a background thread that scores the challenger on the champion's rows
  off the response path and appends both results to a JSONL log.
- ``ServingRuntime``: ties them together; ``reload()`` resolves the registry aliases and
  swaps when one moved; ``start_polling()`` does that every ``interval_s``.

Nothing here imports BentoML at module level.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from serving.inference import (
    BundleMismatchError,
    check_session,
    open_session,
    predict_explained,
    predict_proba,
)
from serving.inference import warm_up as warm_up_session
from serving.preprocess import BundleSpec, Decision, bundle_spec, decide, regime_states
from serving.request import format_utc

if TYPE_CHECKING:
    import onnxruntime as ort

    from serving.importer import ImportedModel
    from serving.metrics import ServingMetrics
    from serving.request import ParsedRequest, RequestCodec

logger = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"


@dataclass(frozen=True)
class LoadedModel:
    """One bundle ready to score: never mutated after ``load_model`` returns it."""

    spec: BundleSpec
    session: ort.InferenceSession
    model_name: str
    model_version: str
    bundle_sha256: str
    bentoml_tag: str
    loaded_at: str
    booster: Any = None  # the XGBoost member's native booster (TreeSHAP), when shipped
    # what the engine's model guard needs (manifest trained_at, reference_stats, features;
    # contract C1): published by GET /v1/models so the engine can guard serving's answers
    guard: dict[str, Any] | None = None

    def predict(self, matrix: np.ndarray, sequence: np.ndarray | None) -> np.ndarray:
        return predict_proba(self.session, self.spec, matrix, sequence)

    def predict_explained(
        self, matrix: np.ndarray, sequence: np.ndarray | None
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Probabilities and the explanation outputs, one ``session.run``."""
        return predict_explained(self.session, self.spec, matrix, sequence)

    @cached_property
    def codec(self) -> RequestCodec:
        """The ``/v1/predict`` decoder of this bundle's requests."""
        from serving.request import codec_for

        return codec_for(self.spec)

    def describe(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "model_version": self.model_version,
            "bundle_sha256": self.bundle_sha256,
            "bentoml_tag": self.bentoml_tag,
            "feature_service": self.spec.feature_service,
            "n_features": self.spec.n_features,
            "sequence": self.spec.sequence is not None,
            "explain": self.booster is not None,
            "loaded_at": self.loaded_at,
            "guard": self.guard,
        }


def load_model(tag: str, *, bentoml_home: str | Path | None = None) -> LoadedModel:
    """Load BentoML model ``tag`` (written by ``serving.importer``), check it and warm it up.

    Raises:
        BundleMismatchError: the ONNX bytes do not hash to the manifest's ``bundle_sha256``
            or the graph does not match the manifest.
    """
    from serving.importer import get_stored

    stored = get_stored(tag, bentoml_home=bentoml_home)
    return load_stored(stored)


def load_stored(stored: Any) -> LoadedModel:
    """``load_model`` for a BentoML model object already at hand."""
    from serving.importer import MANIFEST_FILE, ONNX_FILE

    manifest = json.loads(Path(stored.path_of(MANIFEST_FILE)).read_text())
    spec = bundle_spec(manifest)
    onnx_bytes = Path(stored.path_of(ONNX_FILE)).read_bytes()
    sha = hashlib.sha256(onnx_bytes).hexdigest()
    promised = manifest.get("bundle_sha256")
    if promised and promised != sha:
        raise BundleMismatchError(
            f"{stored.tag}: model.onnx hashes to {sha}, its manifest promises {promised}"
        )
    session = open_session(onnx_bytes)
    check_session(session, spec)
    warm_up_session(session, spec)
    booster = None
    if spec.native_booster:
        path = Path(stored.path_of(spec.native_booster))
        if path.is_file():
            from serving.explain import load_booster

            booster = load_booster(str(path))
        else:  # an import from before boosters were copied: serve, but /v1/explain says why
            logger.warning("%s: no %s in the stored model", stored.tag, spec.native_booster)
    model = LoadedModel(
        spec=spec,
        session=session,
        model_name=str(stored.info.metadata.get("mlflow_model_name", stored.tag.name)),
        model_version=str(stored.info.labels.get("mlflow_version", stored.tag.version)),
        bundle_sha256=sha,
        bentoml_tag=str(stored.tag),
        loaded_at=datetime.now(UTC).isoformat(timespec="seconds"),
        booster=booster,
        guard=guard_keys(manifest),
    )
    _ = model.codec  # built now, not on the first request
    return model


def guard_keys(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest keys of the engine's model guard (``trained_at``, ``reference_stats`` and
    the feature order), or ``None`` for a bundle trained before they existed."""
    if "trained_at" not in manifest and "reference_stats" not in manifest:
        return None
    return {
        "trained_at": manifest.get("trained_at"),
        "reference_stats": manifest.get("reference_stats"),
        "features": list(manifest.get("features") or []),
    }


@dataclass(frozen=True)
class ShadowPlan:
    """How the champion's inputs feed the challenger (column indices by feature name)."""

    columns: np.ndarray | None  # None: the challenger cannot be fed from the champion's rows
    use_sequence: bool

    @staticmethod
    def between(champion: BundleSpec, challenger: BundleSpec) -> ShadowPlan:
        index = {name: j for j, name in enumerate(champion.features)}
        if any(name not in index for name in challenger.features):
            return ShadowPlan(None, False)
        seq_c, seq_ch = champion.sequence, challenger.sequence
        if seq_ch is not None and (
            seq_c is None or (seq_c.seq_len, seq_c.channels) != (seq_ch.seq_len, seq_ch.channels)
        ):
            return ShadowPlan(None, False)
        cols = np.array([index[name] for name in challenger.features], dtype=np.intp)
        return ShadowPlan(cols, seq_ch is not None)


@dataclass(frozen=True)
class ServingState:
    """The models served together; replaced as a whole, never modified."""

    champion: LoadedModel
    challenger: LoadedModel | None = None
    shadow: ShadowPlan | None = None

    @staticmethod
    def of(champion: LoadedModel, challenger: LoadedModel | None) -> ServingState:
        if challenger is None or challenger.bentoml_tag == champion.bentoml_tag:
            return ServingState(champion)
        return ServingState(
            champion, challenger, ShadowPlan.between(champion.spec, challenger.spec)
        )

    def describe(self) -> dict[str, Any]:
        return {
            CHAMPION: self.champion.describe(),
            CHALLENGER: self.challenger.describe() if self.challenger else None,
        }


@dataclass(frozen=True)
class Scored:
    """The champion's answer to one request."""

    state: ServingState
    probabilities: np.ndarray
    decisions: list[Decision]
    outputs: dict[str, np.ndarray] = field(default_factory=dict)  # explanation outputs


@dataclass
class _ShadowJob:
    request_id: str
    received_at: str
    state: ServingState
    parsed: ParsedRequest
    champion_probs: np.ndarray
    champion_decisions: list[Decision]


class ShadowScorer:
    """Scores the challenger on a background thread and appends both results to a JSONL file.

    One line per row: ``ts``, ``request_id``, ``row``, ``symbol``, ``feature_time``, and for
    ``champion`` and ``challenger`` their ``model_version``, ``bundle_sha256``,
    ``probabilities``, ``decision`` and ``position``, plus ``agree`` (same decision). A
    challenger that cannot be fed from the champion's inputs gets one line per request
    with ``"outcome": "incompatible"``. Lines are written with one ``O_APPEND`` write per
    request, so several workers may share the file. When ``max_queue`` requests wait, new
    ones are dropped (counted), never blocking a response.
    """

    def __init__(
        self, path: Path, *, max_queue: int = 10_000, metrics: ServingMetrics | None = None
    ) -> None:
        self.path = path
        self.metrics = metrics
        self._queue: queue.Queue[_ShadowJob | None] = queue.Queue(maxsize=max_queue)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.dropped = 0
        self.written = 0

    def submit(self, job: _ShadowJob) -> bool:
        """Queue ``job``; ``False`` when the queue is full (the job is dropped)."""
        if self._thread is None:
            self._start()
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self.dropped += 1
            self._count(job.state, "dropped", job.parsed.n_rows)
            return False
        return True

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._thread = threading.Thread(target=self._run, name="tx-shadow", daemon=True)
                self._thread.start()

    def close(self, timeout_s: float = 5.0) -> None:
        """Score what is queued, then stop the thread."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout_s)

    def wait_idle(self, timeout_s: float = 5.0) -> bool:
        """Block until the queue is empty and processed (for tests and shutdown)."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.005)
        return not self._queue.unfinished_tasks

    def _run(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            while True:
                job = self._queue.get()
                try:
                    if job is None:
                        return
                    os.write(fd, self._lines(job))
                    self.written += 1
                except Exception:  # a shadow failure must never reach a client
                    logger.exception("shadow scoring failed")
                    if job is not None:
                        self._count(job.state, "failed", job.parsed.n_rows)
                finally:
                    self._queue.task_done()
        finally:
            os.close(fd)

    def _lines(self, job: _ShadowJob) -> bytes:
        state = job.state
        champ, chall, plan = state.champion, state.challenger, state.shadow
        assert chall is not None and plan is not None
        base: dict[str, Any] = {"ts": job.received_at, "request_id": job.request_id}
        if plan.columns is None:
            self._count(state, "incompatible", job.parsed.n_rows)
            record = {
                **base,
                "outcome": "incompatible",
                "champion": {
                    "model_version": champ.model_version,
                    "bundle_sha256": champ.bundle_sha256,
                },
                "challenger": {
                    "model_version": chall.model_version,
                    "bundle_sha256": chall.bundle_sha256,
                },
                "reason": "the challenger needs inputs the champion's rows do not carry",
            }
            return (json.dumps(record) + "\n").encode()
        parsed = job.parsed
        t0 = time.perf_counter()
        matrix = np.ascontiguousarray(parsed.matrix[:, plan.columns])
        probs = chall.predict(matrix, parsed.sequence if plan.use_sequence else None)
        latency_us = (time.perf_counter() - t0) * 1e6
        decisions = decide(probs, chall.spec, regime_states(chall.spec, matrix))
        lines = []
        agree = 0
        for i, (symbol, ft) in enumerate(zip(parsed.symbols, parsed.feature_times, strict=True)):
            cd, hd = job.champion_decisions[i], decisions[i]
            agree += cd.label == hd.label
            record = {
                **base,
                "outcome": "scored",
                "row": i,
                "symbol": symbol,
                "feature_time": format_utc(ft),
                "champion": _result(champ, job.champion_probs[i], cd),
                "challenger": _result(chall, probs[i], hd),
                "agree": cd.label == hd.label,
                "challenger_latency_us": round(latency_us, 1),
            }
            lines.append(json.dumps(record))
        if self.metrics is not None:
            c = self.metrics.shadow
            if agree:
                c.labels(champ.model_version, chall.model_version, "agree").inc(agree)
            if parsed.n_rows - agree:
                c.labels(champ.model_version, chall.model_version, "disagree").inc(
                    parsed.n_rows - agree
                )
        return ("\n".join(lines) + "\n").encode()

    def _count(self, state: ServingState, outcome: str, n: int) -> None:
        if self.metrics is not None and state.challenger is not None:
            self.metrics.shadow.labels(
                state.champion.model_version, state.challenger.model_version, outcome
            ).inc(n)


def _result(model: LoadedModel, probs: np.ndarray, decision: Decision) -> dict[str, Any]:
    return {
        "model_version": model.model_version,
        "bundle_sha256": model.bundle_sha256,
        "probabilities": dict(zip(model.spec.classes, probs.tolist(), strict=True)),
        "decision": decision.label,
        "position": decision.position,
    }


@dataclass(frozen=True)
class ReloadResult:
    """What a reload found and did."""

    changed: bool
    state: ServingState
    previous: ServingState

    def to_dict(self) -> dict[str, Any]:
        return {
            "changed": self.changed,
            "serving": self.state.describe(),
            "previous": {
                CHAMPION: self.previous.champion.model_version,
                CHALLENGER: (
                    self.previous.challenger.model_version if self.previous.challenger else None
                ),
            },
        }


#: ``resolver(alias) -> ImportedModel | None``: import what the alias points to (None: unset).
Resolver = Callable[[str], "ImportedModel | None"]


@dataclass
class ServingRuntime:
    """The state of one serving worker; thread-safe for requests, reloads and polling."""

    state: ServingState
    resolver: Resolver | None = None
    champion_alias: str = CHAMPION
    challenger_alias: str = CHALLENGER
    shadow: ShadowScorer | None = None
    metrics: ServingMetrics | None = None
    loader: Callable[[str], LoadedModel] = load_model
    _reload_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _poller: threading.Thread | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._publish(self.state, None)

    # --- requests ------------------------------------------------------------------------
    def score(self, state: ServingState, parsed: ParsedRequest) -> Scored:
        """The champion's probabilities and decisions for ``parsed`` (valid for ``state``)."""
        champ = state.champion
        probs, outputs = champ.predict_explained(parsed.matrix, parsed.sequence)
        regimes = regime_states(champ.spec, parsed.matrix, outputs)
        return Scored(state, probs, decide(probs, champ.spec, regimes), outputs)

    def shadow_submit(self, scored: Scored, parsed: ParsedRequest, request_id: str) -> None:
        """Queue the challenger's run on the same rows, when there is a challenger."""
        if scored.state.challenger is None or self.shadow is None:
            return
        self.shadow.submit(
            _ShadowJob(
                request_id=request_id,
                received_at=datetime.now(UTC).isoformat(timespec="microseconds"),
                state=scored.state,
                parsed=parsed,
                champion_probs=scored.probabilities,
                champion_decisions=scored.decisions,
            )
        )

    # --- reload --------------------------------------------------------------------------
    def reload(self, trigger: str = "admin") -> ReloadResult:
        """Resolve the aliases; load and swap in what moved. The old state serves until the
        new one is loaded and warmed; a failure leaves the old state in place and raises."""
        if self.resolver is None:
            raise RuntimeError("no registry configured for reloads")
        with self._reload_lock:
            previous = self.state
            try:
                champ_ref = self.resolver(self.champion_alias)
                if champ_ref is None:
                    raise LookupError(f"alias {self.champion_alias!r} is not set")
                chall_ref = self.resolver(self.challenger_alias) if self.challenger_alias else None
                champion = self._reuse_or_load(champ_ref.bentoml_tag, previous)
                challenger = (
                    self._reuse_or_load(chall_ref.bentoml_tag, previous)
                    if chall_ref is not None
                    else None
                )
            except Exception:
                self._count_reload(trigger, "failed")
                raise
            new = ServingState.of(champion, challenger)
            changed = _tags(new) != _tags(previous)
            if changed:
                self.state = new  # the atomic swap
                self._publish(new, previous)
                logger.info("reload (%s): now serving %s", trigger, _tags(new))
            self._count_reload(trigger, "swapped" if changed else "unchanged")
            return ReloadResult(changed, self.state, previous)

    def _reuse_or_load(self, tag: str, previous: ServingState) -> LoadedModel:
        for model in (previous.champion, previous.challenger):
            if model is not None and model.bentoml_tag == tag:
                return model
        return self.loader(tag)

    def start_polling(self, interval_s: float) -> None:
        """Reload every ``interval_s`` seconds on a daemon thread (no-op when 0)."""
        if interval_s <= 0 or self.resolver is None or self._poller is not None:
            return

        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.reload("poll")
                except Exception as exc:  # keep serving what is loaded
                    logger.warning(
                        "registry poll failed, still serving %s: %s", _tags(self.state), exc
                    )

        self._poller = threading.Thread(target=loop, name="tx-reload-poll", daemon=True)
        self._poller.start()

    def close(self) -> None:
        """Stop polling and drain the shadow queue."""
        self._stop.set()
        if self.shadow is not None:
            self.shadow.close()

    # --- metrics -------------------------------------------------------------------------
    def _publish(self, new: ServingState, old: ServingState | None) -> None:
        if self.metrics is None:
            return
        gauge = self.metrics.model_info
        if old is not None:
            for role, m in ((CHAMPION, old.champion), (CHALLENGER, old.challenger)):
                if m is not None:
                    gauge.labels(role, m.model_version, m.bundle_sha256).set(0)
        for role, m in ((CHAMPION, new.champion), (CHALLENGER, new.challenger)):
            if m is not None:
                gauge.labels(role, m.model_version, m.bundle_sha256).set(1)

    def _count_reload(self, trigger: str, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.reloads.labels(trigger, outcome).inc()


def _tags(state: ServingState) -> tuple[str, str | None]:
    return (
        state.champion.bentoml_tag,
        state.challenger.bentoml_tag if state.challenger is not None else None,
    )
