"""The manifest's ``explanation_outputs`` and ``native_booster`` as serving reads them: what an
old bundle gets, what a wrong manifest is refused with, and a graph that lacks a promised
output is refused at load (never a request failing later)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from serving.explain import prediction_explanations
from serving.inference import BundleMismatchError, check_session, open_session
from serving.preprocess import ExplanationSpec, ManifestError, bundle_spec

pytestmark = pytest.mark.unit

BASE: dict[str, Any] = {
    "features": ["a", "b"],
    "classes": ["short", "flat", "long"],
    "positions": [-1, 0, 1],
    "min_confidence": 0.4,
}
ENSEMBLE = {
    "regime_state": "regime_state",
    "regime_probabilities": "regime_probabilities",
    "member_weights": "member_weights",
    "members": [
        {"name": "xgb", "probabilities": "xgb_probabilities"},
        {"name": "transformer", "probabilities": "transformer_probabilities"},
    ],
}


def test_spec_when_no_key_then_xgboost_bundle_is_its_own_member_and_others_get_nothing() -> None:
    assert bundle_spec(BASE).explanation is None
    xgb = bundle_spec({**BASE, "family": "xgboost"}).explanation
    assert xgb == ExplanationSpec(members=(("xgb", "probabilities"),))
    booster = bundle_spec({**BASE, "native_booster": "xgb_booster.ubj"})
    assert booster.native_booster == "xgb_booster.ubj"
    assert booster.explanation == xgb  # a tabular bundle with a booster is XGBoost


def test_spec_when_ensemble_outputs_then_extra_outputs_listed_once_in_order() -> None:
    spec = bundle_spec({**BASE, "explanation_outputs": ENSEMBLE})
    assert spec.explanation is not None
    assert spec.explanation.extra_outputs == (
        "xgb_probabilities",
        "transformer_probabilities",
        "member_weights",
        "regime_state",
        "regime_probabilities",
    )


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"explanation_outputs": []}, "explanation_outputs"),
        ({"explanation_outputs": {"members": []}}, "explanation_outputs.members"),
        ({"explanation_outputs": {**ENSEMBLE, "member_weights": None}}, "no weights"),
        ({"explanation_outputs": {**ENSEMBLE, "regime_state": 3}}, "regime_state"),
        ({"native_booster": "../etc/passwd"}, "native_booster"),
        ({"native_booster": ""}, "native_booster"),
    ],
)
def test_spec_when_manifest_wrong_then_manifest_error_naming_the_key(
    extra: dict[str, Any], needle: str
) -> None:
    with pytest.raises(ManifestError, match=needle.replace(".", r"\.")):
        bundle_spec({**BASE, **extra})


def _xgb_onnx() -> bytes:
    import onnxmltools
    import xgboost as xgb
    from onnxmltools.convert.common.data_types import FloatTensorType

    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 2)).astype(np.float32)
    clf = xgb.XGBClassifier(n_estimators=3, max_depth=2, n_jobs=1).fit(x, np.arange(90) % 3)
    onx = onnxmltools.convert_xgboost(
        clf, initial_types=[("input", FloatTensorType([None, 2]))], target_opset=15
    )
    return bytes(onx.SerializeToString())


def test_check_session_when_promised_outputs_missing_then_refused_at_load() -> None:
    session = open_session(_xgb_onnx())
    check_session(session, bundle_spec({**BASE, "family": "xgboost"}))
    with pytest.raises(BundleMismatchError, match="explanation_outputs"):
        check_session(session, bundle_spec({**BASE, "explanation_outputs": ENSEMBLE}))


def test_prediction_explanations_when_single_member_then_weight_one_and_no_regime() -> None:
    spec = bundle_spec({**BASE, "family": "xgboost"})
    probs = np.array([[0.2, 0.3, 0.5]], dtype=np.float32)
    (ex,) = prediction_explanations(spec, probs, {"probabilities": probs})
    assert ex.regime is None
    assert [(m.name, m.weight) for m in ex.members] == [("xgb", 1.0)]
    np.testing.assert_allclose(ex.members[0].probabilities, probs[0])
    (none,) = prediction_explanations(bundle_spec(BASE), probs, {})
    assert none.regime is None and none.members == []
