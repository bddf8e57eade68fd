"""Explanations of served predictions (docs/explanations.md).

Two levels, so the cheap one can ride on every prediction:

- ``prediction_explanations``: the ``explanation`` of each ``/v1/predict`` row, read from
  the extra outputs of the same ``session.run`` that produced the probabilities (the
  ensemble graph exposes the regime state, each member's probabilities and the row's member
  weights, see ``training.export``). No model call of its own.
- ``treeshap``: ``POST /v1/explain``, TreeSHAP of the XGBoost member for the class the
  ensemble predicts, from the member's native booster shipped in the bundle
  (``xgb_booster.ubj``): XGBoost's own ``pred_contribs=True`` is exact TreeSHAP, in margin
  (log-odds) units, and ``sum(contributions) + base_value == margin`` holds per row. The
  transformer member is attributed by its weight share only (``MemberExplanation.weight``);
  per-feature gradients of a transformer are not computed here (no torch at serving).

xgboost is imported only when a bundle ships a booster (``load_booster``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from serving.preprocess import BundleSpec
from serving.schemas import (
    Explanation,
    FeatureContribution,
    MemberExplanation,
    RegimeExplanation,
    RowExplanation,
)

#: Default and largest ``top_k`` of ``/v1/explain``.
DEFAULT_TOP_K = 5
#: How each member's part of a decision is attributed (the ``attribution`` of a response).
ATTRIBUTION = {
    "xgb": "TreeSHAP (xgboost pred_contribs on the native booster), margin units, for the "
    "class the ensemble predicts; sum(contributions) + base_value == margin",
    "transformer": "weight share only: explanation.members[].weight of /v1/predict "
    "(no per-feature attribution)",
}
_EMPTY = Explanation(regime=None, members=[])


def prediction_explanations(
    spec: BundleSpec, probabilities: np.ndarray, outputs: dict[str, np.ndarray]
) -> list[Explanation]:
    """One ``Explanation`` per row from the graph's explanation outputs."""
    ex = spec.explanation
    n = len(probabilities)
    if ex is None:
        return [_EMPTY] * n
    member_probs = [outputs[o].tolist() for _, o in ex.members]
    weights = outputs[ex.member_weights].tolist() if ex.member_weights is not None else [[1.0]] * n
    states = outputs[ex.regime_state].tolist() if ex.regime_state is not None else None
    regime_probs = (
        outputs[ex.regime_probabilities].tolist() if ex.regime_probabilities is not None else None
    )
    names = [name for name, _ in ex.members]
    out = []
    for i in range(n):
        regime = (
            RegimeExplanation(
                state=int(states[i]),
                probabilities=regime_probs[i] if regime_probs is not None else [],
            )
            if states is not None
            else None
        )
        w = weights[i]
        out.append(
            Explanation(
                regime=regime,
                members=[
                    MemberExplanation(name=name, probabilities=mp[i], weight=w[m])
                    for m, (name, mp) in enumerate(zip(names, member_probs, strict=True))
                ],
            )
        )
    return out


def load_booster(path: str) -> Any:
    """The native XGBoost booster at ``path`` (one thread: a request's rows are few)."""
    import xgboost as xgb

    booster = xgb.Booster(model_file=path)
    booster.set_param({"nthread": 1})
    return booster


def treeshap(
    booster: Any,
    spec: BundleSpec,
    matrix: np.ndarray,
    probabilities: np.ndarray,
    outputs: dict[str, np.ndarray],
    symbols: list[str],
    feature_times: list[Any],
    top_k: int,
) -> list[RowExplanation]:
    """TreeSHAP of the XGBoost member for each row's most probable ensemble class."""
    import xgboost as xgb

    dm = xgb.DMatrix(matrix, nthread=1)
    contribs = np.asarray(booster.predict(dm, pred_contribs=True), dtype=np.float64)
    margins = np.asarray(booster.predict(dm, output_margin=True), dtype=np.float64)
    n_classes = len(spec.classes)
    if contribs.ndim == 2:  # a binary/one-output booster: [N, F + 1]
        contribs = contribs[:, None, :].repeat(n_classes, axis=1)
        margins = margins.reshape(-1, 1).repeat(n_classes, axis=1)
    member_probs, member_weight = _xgb_member(spec, probabilities, outputs)
    classes = probabilities.argmax(axis=1)
    features = spec.features
    k = min(top_k, len(features))
    rows = []
    for i, c in enumerate(classes.tolist()):
        phi = contribs[i, c, :-1]
        order = np.argsort(-np.abs(phi), kind="stable")[:k]
        rows.append(
            RowExplanation(
                symbol=symbols[i],
                feature_time=feature_times[i],
                member="xgb",
                explained_class=c,
                class_name=spec.classes[c],  # type: ignore[arg-type]
                base_value=float(contribs[i, c, -1]),
                margin=float(margins[i, c]),
                member_probability=float(member_probs[i, c]),
                member_weight=None if member_weight is None else float(member_weight[i]),
                top=[
                    FeatureContribution(
                        feature=features[j], value=float(matrix[i, j]), contribution=float(phi[j])
                    )
                    for j in order.tolist()
                ],
                contributions=dict(zip(features, phi.tolist(), strict=True)),
            )
        )
    return rows


def _xgb_member(
    spec: BundleSpec, probabilities: np.ndarray, outputs: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray | None]:
    """The XGBoost member's probabilities and weight per row, from the graph's outputs."""
    ex = spec.explanation
    if ex is not None:
        for m, (name, output) in enumerate(ex.members):
            if name == "xgb":
                weight = (
                    outputs[ex.member_weights][:, m]
                    if ex.member_weights is not None
                    else np.ones(len(probabilities))
                )
                return outputs[output], weight
    return probabilities, None
