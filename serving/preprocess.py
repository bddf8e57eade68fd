"""Bundle manifest, the validation error of a request and decisions, as plain functions.

Nothing here imports BentoML or onnxruntime, so a client, a benchmark or a batch job can
reuse exactly what the service does with a request. Errors name the offending field with a
``loc`` path in the shape of the HTTP request (``("rows", 0, "features", "rsi_14")``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any

import numpy as np

from engine.policy import DecisionPolicy, PolicyError, as_policy, policy_sides

#: The trading meaning of each class the bundle may name, as the model bundle contract fixes it.
CLASS_POSITIONS: Mapping[str, int] = {"short": -1, "flat": 0, "long": 1}
#: Decision taken when the most probable class is below the bundle's ``min_confidence``.
FALLBACK_CLASS = "flat"
#: At most this many issues are reported for one request.
MAX_REPORTED_ISSUES = 20

Loc = tuple[str | int, ...]


class ManifestError(ValueError):
    """The bundle manifest does not satisfy the model bundle contract."""


@dataclass(frozen=True)
class BundleSpec:
    """What serving needs from a bundle's ``tx_manifest``, validated."""

    model_name: str
    feature_service: str
    features: tuple[str, ...]
    input_name: str
    prob_output: str
    classes: tuple[str, ...]
    positions: tuple[int, ...]
    min_confidence: float
    sequence: SequenceSpec | None = None
    explanation: ExplanationSpec | None = None
    native_booster: str | None = None  # file of the XGBoost member's booster (TreeSHAP)
    # manifest ``decision_policy`` (docs/execution-policy.md); None: the old min_confidence rule
    decision_policy: DecisionPolicy | None = None
    # the ensemble's regime rule (vol index, threshold, trend index, |trend| threshold)
    regime_rule: tuple[int, float, int, float] | None = None

    @property
    def n_features(self) -> int:
        return len(self.features)

    @property
    def policy_wire(self) -> dict[str, Any] | None:
        """The decision policy as sent with each prediction (no fold statistics)."""
        if self.decision_policy is None:
            return None
        d = self.decision_policy.to_dict()
        d.pop("stats", None)
        return d


@dataclass(frozen=True)
class ExplanationSpec:
    """Which graph outputs explain a prediction (manifest ``explanation_outputs``, see
    ``training.export.explanation_outputs`` and docs/explanations.md).

    ``members`` pairs each member's name with the output of its ``[N, C]`` probabilities;
    ``member_weights`` is the ``[N, len(members)]`` output of their weights (None: a single
    member of weight 1); ``regime_state`` ``[N]`` and ``regime_probabilities`` ``[N, S]``
    are None for a bundle without a regime classifier."""

    members: tuple[tuple[str, str], ...]
    member_weights: str | None = None
    regime_state: str | None = None
    regime_probabilities: str | None = None

    @property
    def extra_outputs(self) -> tuple[str, ...]:
        """The outputs to fetch besides the probabilities, without duplicates, in order."""
        names = [o for _, o in self.members]
        names += [
            n for n in (self.member_weights, self.regime_state, self.regime_probabilities) if n
        ]
        return tuple(dict.fromkeys(names))


def _explanation_spec(manifest: Mapping[str, Any], prob_output: str) -> ExplanationSpec | None:
    raw = manifest.get("explanation_outputs")
    if raw is None:
        # bundles from before the key: an XGBoost-only bundle is its own single member
        if manifest.get("family") == "xgboost" or (
            manifest.get("native_booster") and manifest.get("sequence") is None
        ):
            return ExplanationSpec(members=(("xgb", prob_output),))
        return None
    if not isinstance(raw, Mapping):
        raise ManifestError("manifest 'explanation_outputs' must be an object or absent")
    members = raw.get("members")
    if (
        not isinstance(members, list)
        or not members
        or not all(
            isinstance(m, Mapping)
            and isinstance(m.get("name"), str)
            and isinstance(m.get("probabilities"), str)
            for m in members
        )
    ):
        raise ManifestError(
            "manifest 'explanation_outputs.members' must list {name, probabilities} objects"
        )
    names: dict[str, str | None] = {}
    for key in ("member_weights", "regime_state", "regime_probabilities"):
        value = raw.get(key)
        if value is not None and not isinstance(value, str):
            raise ManifestError(f"manifest 'explanation_outputs.{key}' must be a name or null")
        names[key] = value
    if names["member_weights"] is None and len(members) != 1:
        raise ManifestError("manifest 'explanation_outputs' has several members and no weights")
    return ExplanationSpec(
        members=tuple((str(m["name"]), str(m["probabilities"])) for m in members),
        member_weights=names["member_weights"],
        regime_state=names["regime_state"],
        regime_probabilities=names["regime_probabilities"],
    )


@dataclass(frozen=True)
class SequenceSpec:
    """The optional per-bar sequence input of a bundle (manifest key ``sequence``)."""

    input_name: str
    seq_len: int
    channels: tuple[str, ...]

    @property
    def n_channels(self) -> int:
        return len(self.channels)


def _sequence_spec(raw: Any) -> SequenceSpec | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ManifestError("manifest 'sequence' must be an object or absent")
    seq_len = raw.get("seq_len")
    channels = raw.get("channels")
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ManifestError(f"manifest 'sequence.seq_len' must be a positive int, got {seq_len!r}")
    if (
        not isinstance(channels, list | tuple)
        or not channels
        or not all(isinstance(c, str) and c for c in channels)
    ):
        raise ManifestError("manifest 'sequence.channels' must be a non-empty list of names")
    return SequenceSpec(
        input_name=str(raw.get("input_name", "sequence")),
        seq_len=seq_len,
        channels=tuple(channels),
    )


def bundle_spec(manifest: Mapping[str, Any]) -> BundleSpec:
    """Validate a bundle manifest and return the part serving uses.

    Raises:
        ManifestError: a required key is missing or inconsistent with the contract.
    """

    def require(key: str) -> Any:
        if key not in manifest:
            raise ManifestError(f"manifest has no {key!r}")
        return manifest[key]

    features = require("features")
    if (
        not isinstance(features, list | tuple)
        or not features
        or not all(isinstance(f, str) and f for f in features)
    ):
        raise ManifestError("manifest 'features' must be a non-empty list of names")
    if len(set(features)) != len(features):
        raise ManifestError("manifest 'features' has duplicate names")

    classes = tuple(require("classes"))
    positions = tuple(require("positions"))
    if sorted(classes) != sorted(CLASS_POSITIONS):
        raise ManifestError(
            f"manifest 'classes' must be an ordering of {sorted(CLASS_POSITIONS)}, got {classes}"
        )
    expected_positions = tuple(CLASS_POSITIONS[c] for c in classes)
    if positions != expected_positions:
        raise ManifestError(
            f"manifest 'positions' {positions} do not match classes {classes}: "
            f"expected {expected_positions}"
        )

    min_confidence = require("min_confidence")
    if (
        isinstance(min_confidence, bool)
        or not isinstance(min_confidence, Real)
        or not 0.0 <= float(min_confidence) <= 1.0
    ):
        raise ManifestError(f"manifest 'min_confidence' must be in [0, 1], got {min_confidence!r}")

    booster = manifest.get("native_booster")
    if booster is not None and (
        not isinstance(booster, str) or not booster or "/" in booster or booster.startswith(".")
    ):
        raise ManifestError(f"manifest 'native_booster' must be a plain file name, got {booster!r}")
    prob_output = str(manifest.get("prob_output", "probabilities"))
    try:
        policy = as_policy(manifest.get("decision_policy"))
    except PolicyError as exc:
        raise ManifestError(str(exc)) from exc
    return BundleSpec(
        model_name=str(manifest.get("model_name", "")),
        feature_service=str(manifest.get("feature_service", "")),
        features=tuple(features),
        input_name=str(manifest.get("input_name", "input")),
        prob_output=prob_output,
        classes=classes,
        positions=positions,
        min_confidence=float(min_confidence),
        sequence=_sequence_spec(manifest.get("sequence")),
        explanation=_explanation_spec(manifest, prob_output),
        native_booster=booster,
        decision_policy=policy,
        regime_rule=_regime_rule(manifest, list(features)),
    )


def _regime_rule(
    manifest: Mapping[str, Any], features: list[str]
) -> tuple[int, float, int, float] | None:
    r = (manifest.get("thresholds") or {}).get("regime")
    if not isinstance(r, Mapping):
        return None
    try:
        return (
            features.index(r["vol_feature"]),
            float(r["vol_threshold"]),
            features.index(r["trend_feature"]),
            float(r["abs_trend_threshold"]),
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise ManifestError(f"manifest 'thresholds.regime' is unusable: {exc!r}") from exc


def regime_states(
    spec: BundleSpec, matrix: np.ndarray | None, outputs: Mapping[str, np.ndarray] | None = None
) -> np.ndarray | None:
    """Each row's regime state: the graph's ``regime_state`` output when exported, else the
    manifest's rule on the feature matrix; None for a bundle without regimes."""
    name = spec.explanation.regime_state if spec.explanation is not None else None
    if outputs and name and name in outputs:
        return np.asarray(outputs[name]).reshape(-1).astype(np.int64)
    if spec.regime_rule is None or matrix is None:
        return None
    vi, vt, ti, tt = spec.regime_rule
    x = np.asarray(matrix, dtype=np.float32)
    v = x[:, vi] > np.float32(vt)
    t = np.abs(x[:, ti]) > np.float32(tt)
    return 2 * v.astype(np.int64) + t.astype(np.int64)


@dataclass(frozen=True)
class FeatureIssue:
    """One reason a request cannot be scored, located like the request's JSON."""

    loc: Loc
    kind: str  # missing | missing_feature | unexpected_feature | not_a_number | non_finite | …
    message: str

    @property
    def field(self) -> str:
        """The ``loc`` as a dotted path, e.g. ``rows.0.features.rsi_14``."""
        return ".".join(str(p) for p in self.loc)


class FeatureValidationError(ValueError):
    """The rows cannot be turned into a model input; ``issues`` says where and why."""

    def __init__(self, issues: Sequence[FeatureIssue], *, truncated: bool = False) -> None:
        self.issues = list(issues)
        self.truncated = truncated  # more issues were found than ``issues`` lists
        super().__init__("; ".join(f"{i.field}: {i.message}" for i in self.issues))


@dataclass(frozen=True)
class Decision:
    """The class a row is traded as, its position and the probability behind it."""

    label: str
    position: int
    confidence: float


def decide(
    probabilities: np.ndarray, spec: BundleSpec, regimes: np.ndarray | None = None
) -> list[Decision]:
    """Map ``[N, C]`` class probabilities to decisions.

    With a ``decision_policy`` the bundle's policy decides (:func:`engine.policy.policy_sides`,
    the function the training backtest and the engine's gate call); serving knows no spread,
    so the edge-over-cost rule is left to the engine. Without one: the most probable class when
    its probability is at least ``spec.min_confidence``, otherwise ``flat``.
    """
    if probabilities.ndim != 2 or probabilities.shape[1] != len(spec.classes):
        raise ValueError(
            f"probabilities must be [N, {len(spec.classes)}], got {list(probabilities.shape)}"
        )
    if spec.decision_policy is not None:
        sides, _ = policy_sides(
            probabilities,
            spec.decision_policy,
            regime=regimes,
            classes=spec.classes,
        )
        best = probabilities.argmax(axis=1)
        conf = probabilities[np.arange(len(best)), best]
        labels = {v: k for k, v in CLASS_POSITIONS.items()}
        return [
            Decision(label=labels[s], position=s, confidence=p)
            for s, p in zip(sides.tolist(), conf.tolist(), strict=True)
        ]
    best = probabilities.argmax(axis=1)
    confidence = probabilities[np.arange(len(best)), best]
    out: list[Decision] = []
    for k, p in zip(best.tolist(), confidence.tolist(), strict=True):
        label = spec.classes[k] if p >= spec.min_confidence else FALLBACK_CLASS
        out.append(Decision(label=label, position=CLASS_POSITIONS[label], confidence=p))
    return out
