"""Model clients of the engine: the serving API over HTTP, an in-process ONNX session of the
same bundle, and the policy that picks between them when serving is slow or down.

* :class:`ServingClient` — ``POST /v1/predict`` with ``Authorization: Bearer <token>``
  (contract 3); ``api="legacy"`` keeps the walking skeleton's ``POST /predict``.
* :class:`OnnxModel` — the bundle's ONNX graph in onnxruntime (one intra-op thread); refuses
  to load when the file's sha256 differs from the manifest's ``bundle_sha256``.
* :class:`FallbackModel` — serving first; on an *outage* either fail closed
  (:class:`ServingUnavailable`) or answer from the in-process session, but only when its hash
  equals the bundle the engine expects (:class:`ModelMismatch` otherwise).

**Outage versus refusal.** Only a connect error, a timeout (the client's deadline) or a 5xx
is an outage (:class:`ServingUnavailable`) and may fall back. A 4xx (400 bad features, 401/403
wrong token, 404/422 ...) is serving *refusing* the request: :class:`ServingRejected` with
serving's detail, never a fallback: the same row would score locally what serving refused. A
200 whose body is not a valid answer (not JSON, wrong shape, non-finite probabilities, a
position outside -1/0/1) is :class:`ServingBadAnswer`: fail closed, no fallback.

**Expected bundle.** The fallback checks its ONNX file's sha256 against the bundle serving last
reported; when serving never answered, against ``expected_sha256`` (``TX_ENGINE_BUNDLE_SHA256``);
when neither is known it refuses (:class:`ModelMismatch`): a local file the engine cannot tie
to a served version is never traded.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import httpx
import numpy as np

from engine.features import FeatureRow
from engine.policy import PolicyError, apply_policy, as_policy

log = logging.getLogger(__name__)

CLASS_POSITIONS = {"short": -1, "flat": 0, "long": 1}
EXPLAIN_OUTPUTS = (
    "regime_state",
    "regime_probabilities",
    "member_weights",
    "xgb_probabilities",
    "transformer_probabilities",
)
"""The ensemble graph's explanation outputs (manifest ``explanation_outputs``), read by the
in-process session when the graph has them."""
MEMBER_NAMES = {"xgboost": "xgb", "transformer": "transformer"}


@dataclass(frozen=True)
class Prediction:
    """One model answer for one row."""

    model_version: str
    position: int
    decision: str
    probabilities: dict[str, float]
    bundle_sha256: str = ""
    source: str = "serving"  # serving | onnx
    confidence: float = 0.0
    explanation: dict[str, Any] | None = None  # contract C5: regime + members (None: not sent)
    policy: dict[str, Any] | None = None  # the bundle's decision_policy (None: the old rule)


def explanation_regime(explanation: dict[str, Any] | None) -> int | None:
    """The regime state an explanation carries, None when it carries none."""
    reg = (explanation or {}).get("regime")
    return int(reg["state"]) if isinstance(reg, dict) and reg.get("state") is not None else None


def parse_explanation(raw: Any) -> dict[str, Any] | None:
    """Serving's ``explanation`` (contract C5) checked and normalised, ``None`` when absent.

    Kept as sent (regime state and probabilities, each member's name, probabilities, weight);
    a malformed one is dropped with a warning: it explains the decision, it never blocks it."""
    if raw is None:
        return None
    try:
        reg = raw.get("regime")
        regime = (
            {
                "state": int(reg["state"]),
                "probabilities": [float(x) for x in reg.get("probabilities") or []],
            }
            if reg
            else None
        )
        members = [
            {
                "name": str(m["name"]),
                "probabilities": [float(x) for x in m["probabilities"]],
                "weight": float(m["weight"]),
            }
            for m in raw.get("members") or []
        ]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        log.warning("serving sent an unreadable explanation (%r): ignored", exc)
        return None
    return {"regime": regime, "members": members}


class ServingUnavailable(RuntimeError):
    """Serving did not answer in time, or answered with an error."""


class ModelMismatch(ServingUnavailable):
    """The in-process bundle is not the version serving runs: no fallback."""


class ServingRejected(RuntimeError):
    """Serving answered 4xx: it refused the request (bad input, wrong token). No fallback."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"serving answered {status}: {detail}")
        self.status = status
        self.detail = detail


class ServingBadAnswer(RuntimeError):
    """Serving answered 200 with a body that is not a valid prediction. No fallback."""


class BundleHashMismatch(ValueError):
    """The ONNX file's sha256 is not the manifest's ``bundle_sha256``."""


def _row_json(row: FeatureRow) -> dict[str, Any]:
    out: dict[str, Any] = {
        "symbol": row.symbol,
        "feature_time": datetime.fromtimestamp(row.event_time, UTC)
        .isoformat()
        .replace("+00:00", "Z"),
        "features": row.values,
    }
    seq = getattr(row, "sequence", None)
    if seq is not None:
        out["sequence"] = np.asarray(seq, dtype=float).tolist()
    return out


class ServingClient:
    """HTTP client of the serving API (contract 3)."""

    def __init__(
        self,
        base_url: str,
        timeout_s: float = 0.5,
        token: str | None = None,
        api: Literal["v1", "legacy"] = "v1",
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=base_url, timeout=timeout_s, headers=headers)
        self.path = "/v1/predict" if api == "v1" else "/predict"
        self.last_bundle_sha256 = ""
        self.last_model_version = ""

    def predict(self, row: FeatureRow) -> Prediction:
        """Ask serving for one row (see the module docstring for the errors)."""
        try:
            r = self._http.post(self.path, json={"rows": [_row_json(row)]})
        except httpx.HTTPError as exc:  # connect error, timeout, protocol error: an outage
            raise ServingUnavailable(f"serving call failed: {exc!r}") from exc
        if r.status_code >= 500:
            raise ServingUnavailable(f"serving answered {r.status_code}: {r.text[:300]}")
        if r.status_code != 200:
            raise ServingRejected(r.status_code, r.text[:500])
        try:
            data = r.json()
            p = data["predictions"][0]
            position = int(p["position"])
            probs = {str(k): float(v) for k, v in dict(p["probabilities"]).items()}
            version = str(data["model_version"])
            decision = str(p["decision"])
            confidence = float(p.get("confidence", 0.0))
            sha = str(data.get("bundle_sha256") or "")
            explanation = parse_explanation(p.get("explanation"))
            policy = data.get("decision_policy")
            if policy is not None:
                as_policy(policy)  # a malformed policy is a bad answer, never silently dropped
        except PolicyError as exc:
            raise ServingBadAnswer(f"invalid decision_policy in the serving answer: {exc}") from exc
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise ServingBadAnswer(f"unreadable serving answer: {exc!r}: {r.text[:200]}") from exc
        if position not in (-1, 0, 1) or not all(np.isfinite(v) for v in probs.values()):
            raise ServingBadAnswer(f"invalid serving answer: position {position}, {probs}")
        self.last_bundle_sha256 = sha
        self.last_model_version = version
        return Prediction(
            version, position, decision, probs, sha, "serving", confidence, explanation, policy
        )

    def guard_manifest(self, bundle_sha256: str) -> dict[str, Any] | None:
        """The model-guard keys serving publishes for the bundle hashing to ``bundle_sha256``
        (``GET /v1/models``: ``trained_at``, ``reference_stats``, ``features``), or ``None``
        when serving runs no such bundle or publishes none. Raises :class:`ServingUnavailable`
        when serving cannot be asked (the guard asks again later)."""
        try:
            r = self._http.get("/v1/models")
        except httpx.HTTPError as exc:
            raise ServingUnavailable(f"serving /v1/models failed: {exc!r}") from exc
        if r.status_code != 200:
            raise ServingUnavailable(f"serving /v1/models answered {r.status_code}")
        try:
            roles = r.json()
        except ValueError as exc:
            raise ServingUnavailable(f"unreadable /v1/models: {exc!r}") from exc
        for desc in (roles or {}).values() if isinstance(roles, dict) else ():
            if isinstance(desc, dict) and desc.get("bundle_sha256") == bundle_sha256:
                guard = desc.get("guard")
                if not isinstance(guard, dict):
                    return None
                return {**guard, "model_version": desc.get("model_version", "")}
        return None

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()


class OnnxModel:
    """The bundle's ONNX graph in-process (hash-checked at load)."""

    def __init__(
        self, onnx_bytes: bytes, manifest: dict[str, Any], model_version: str = ""
    ) -> None:
        import onnxruntime as ort  # allowed in the engine; imported only when a fallback is configured

        self.bundle_sha256 = hashlib.sha256(onnx_bytes).hexdigest()
        expected = manifest.get("bundle_sha256")
        if expected and expected != self.bundle_sha256:
            raise BundleHashMismatch(f"bundle sha256 {self.bundle_sha256} != manifest {expected}")
        self.manifest = manifest
        self.model_version = str(model_version or manifest.get("model_version", ""))
        self.features = list(manifest["features"])
        self.classes = list(manifest.get("classes", ["short", "flat", "long"]))
        self.min_confidence = float(manifest.get("min_confidence", 0.0))
        self.policy: dict[str, Any] | None = manifest.get("decision_policy")
        as_policy(self.policy)  # refuse a malformed policy at load (PolicyError)
        self.input_name = str(manifest.get("input_name", "input"))
        self.prob_output = str(manifest.get("prob_output", "probabilities"))
        seq = manifest.get("sequence")
        self.seq_input = str(seq["input_name"]) if seq else None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])
        outputs = {o.name for o in self.session.get_outputs()}
        # the explanation's extra outputs, when the export ships them (regime state, members)
        self.explain_spec: dict[str, Any] | None = manifest.get("explanation_outputs")
        wanted = set(EXPLAIN_OUTPUTS)
        if self.explain_spec:
            wanted |= {
                str(v)
                for k, v in self.explain_spec.items()
                if k != "members" and isinstance(v, str)
            }
            wanted |= {str(m["probabilities"]) for m in self.explain_spec.get("members", [])}
        self.extra_outputs = sorted(n for n in wanted if n in outputs and n != self.prob_output)
        self.run_outputs = [self.prob_output, *self.extra_outputs]
        ens = manifest.get("ensemble_weights") or {}
        self.member_names = [MEMBER_NAMES.get(m, m) for m in ens.get("members", [])]
        self.weights = ens.get("by_regime_state")
        self.regime = (manifest.get("thresholds") or {}).get("regime")

    @classmethod
    def from_dir(cls, bundle_dir: Path | str) -> OnnxModel:
        """Load ``<dir>/model.onnx`` with ``<dir>/manifest.json`` (the tx_manifest, plus
        ``model_version``)."""
        d = Path(bundle_dir)
        manifest = json.loads((d / "manifest.json").read_text())
        return cls((d / "model.onnx").read_bytes(), manifest)

    def predict(self, row: FeatureRow) -> Prediction:
        """Score one row exactly as serving does: argmax, flat below ``min_confidence``."""
        x = np.array([[row.values[f] for f in self.features]], dtype=np.float32)
        feeds: dict[str, np.ndarray] = {self.input_name: x}
        if self.seq_input is not None:
            seq = getattr(row, "sequence", None)
            if seq is None:
                raise ServingUnavailable("bundle needs the sequence feature; the row has none")
            feeds[self.seq_input] = np.asarray(seq, dtype=np.float32)[None, ...]
        out = self.session.run(self.run_outputs, feeds)
        probs = out[0][0]
        explanation = self._explanation(
            row, probs, dict(zip(self.extra_outputs, out[1:], strict=True))
        )
        k = int(np.argmax(probs))
        label = self.label(probs, explanation)
        return Prediction(
            self.model_version,
            CLASS_POSITIONS[label],
            label,
            {c: float(p) for c, p in zip(self.classes, probs, strict=True)},
            self.bundle_sha256,
            "onnx",
            float(probs[k]),
            explanation,
            self.policy,
        )

    def label(self, probs: Any, explanation: dict[str, Any] | None = None) -> str:
        """The class serving would answer: the bundle's decision policy without the
        edge-over-cost rule (the engine's gate applies that), else argmax at min_confidence."""
        if self.policy is None:
            k = int(np.argmax(probs))
            return self.classes[k] if float(probs[k]) >= self.min_confidence else "flat"
        side = apply_policy(
            [float(p) for p in probs],
            self.policy,
            cost_points=None,
            edge_points=None,
            regime=explanation_regime(explanation),
            classes=self.classes,
        )
        return {-1: "short", 0: "flat", 1: "long"}[side]

    def _explanation(
        self, row: FeatureRow, probs: np.ndarray, extra: dict[str, np.ndarray]
    ) -> dict[str, Any]:
        """The same ``explanation`` serving sends (contract C5), from the graph's extra
        outputs when it has them, else from the manifest: the regime state from its
        thresholds (the rule the graph computes), one member with weight 1 otherwise."""
        if self.explain_spec and extra:
            return self._explanation_from_graph(probs, extra)
        state: int | None = None
        if "regime_state" in extra:
            state = int(np.asarray(extra["regime_state"]).reshape(-1)[0])
        elif self.regime:
            try:
                vol = float(row.values[self.regime["vol_feature"]])
                trend = float(row.values[self.regime["trend_feature"]])
                state = 2 * int(vol > float(self.regime["vol_threshold"])) + int(
                    abs(trend) > float(self.regime["abs_trend_threshold"])
                )
            except (KeyError, TypeError, ValueError):
                state = None
        members: list[dict[str, Any]] = []
        if self.weights is not None and state is not None and self.member_names:
            w = self.weights[state]
            for i, name in enumerate(self.member_names):
                key = f"{name}_probabilities"
                mp = extra.get(key)
                members.append(
                    {
                        "name": name,
                        "probabilities": [float(x) for x in mp[0]] if mp is not None else [],
                        "weight": float(w[i]),
                    }
                )
        else:
            fam = str(self.manifest.get("family") or "model")
            name = MEMBER_NAMES.get(fam, fam)
            members.append(
                {"name": name, "probabilities": [float(x) for x in probs], "weight": 1.0}
            )
        regime = {"state": state, "probabilities": []} if state is not None else None
        return {"regime": regime, "members": members}

    def _explanation_from_graph(
        self, probs: np.ndarray, extra: dict[str, np.ndarray]
    ) -> dict[str, Any]:
        """The explanation from the outputs the manifest's ``explanation_outputs`` names."""
        spec = self.explain_spec or {}

        def first(name: Any) -> np.ndarray | None:
            if not name:
                return None
            if name == self.prob_output:
                return np.asarray(probs)
            v = extra.get(str(name))
            return None if v is None else np.asarray(v)[0]

        st, rp, mw = (
            first(spec.get("regime_state")),
            first(spec.get("regime_probabilities")),
            first(spec.get("member_weights")),
        )
        regime = (
            {
                "state": int(st),
                "probabilities": [float(x) for x in rp] if rp is not None else [],
            }
            if st is not None
            else None
        )
        members = []
        for i, m in enumerate(spec.get("members", [])):
            mp = first(m.get("probabilities"))
            members.append(
                {
                    "name": str(m.get("name")),
                    "probabilities": [float(x) for x in mp] if mp is not None else [],
                    "weight": float(mw[i]) if mw is not None else 1.0,
                }
            )
        return {"regime": regime, "members": members}


class FallbackModel:
    """Serving first; on outage fail closed or fall back to the same bundle in-process."""

    def __init__(
        self, primary: Any, fallback: OnnxModel | None = None, expected_sha256: str | None = None
    ) -> None:
        self.primary = primary
        self.fallback = fallback
        self.expected_sha256 = expected_sha256 or ""
        self.fallbacks = 0

    def predict(self, row: FeatureRow) -> Prediction:
        """See the class docstring; :class:`ServingRejected` and :class:`ServingBadAnswer`
        pass through (never a fallback)."""
        try:
            return self.primary.predict(row)  # type: ignore[no-any-return]
        except ServingUnavailable as exc:
            if self.fallback is None:
                raise
            served = getattr(self.primary, "last_bundle_sha256", "") or ""
            expected = served or self.expected_sha256
            if not expected:
                raise ModelMismatch(
                    "serving never answered and TX_ENGINE_BUNDLE_SHA256 is unset: the local "
                    "bundle cannot be tied to the served version"
                ) from exc
            if expected != self.fallback.bundle_sha256:
                raise ModelMismatch(
                    f"expected bundle {expected[:12]}, local bundle is {self.fallback.bundle_sha256[:12]}"
                ) from exc
            self.fallbacks += 1
            log.warning("serving unavailable (%s): in-process ONNX fallback", exc)
            pred = self.fallback.predict(row)
            if not pred.model_version:
                pred = replace(pred, model_version=getattr(self.primary, "last_model_version", ""))
            return pred
