"""The ensemble graph's explanation outputs (regime state, member answers, member weights) are
consistent with its final probabilities, and the native booster shipped next to it is the
XGBoost member of the graph (its TreeSHAP contributions add up to its margin)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.config import TransformerConfig
from training.export import (
    ENSEMBLE_MEMBERS,
    MEMBER_WEIGHTS,
    PARITY_TOLERANCE,
    REGIME_PROBABILITIES,
    REGIME_STATE,
    check_parity,
    explanation_outputs,
    model_to_onnx,
    onnx_feeds,
    onnx_session,
    save_native_booster,
)
from training.models import EnsembleModel, ModelData, RegimeClassifier, TransformerModel, XGBModel

pytestmark = pytest.mark.unit

N, F, L, C = 600, 8, 16, 3
NAMES = [f"f{i}" for i in range(F)]


def _data(n: int = N, seed: int = 0) -> ModelData:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, F)).astype(np.float32)
    seq = rng.normal(size=(n, L, C)).astype(np.float32)
    score = x[:, 0] + seq[:, -1, 0]
    return ModelData(x, seq, np.where(score > 0.5, 2, np.where(score < -0.5, 0, 1)))


@pytest.fixture(scope="module")
def fitted() -> tuple[EnsembleModel, object, ModelData]:
    d = _data()
    ens = EnsembleModel(
        XGBModel({"n_estimators": 20, "max_depth": 3, "learning_rate": 0.3}),
        TransformerModel(
            TransformerConfig(d_model=16, n_heads=2, n_layers=1, epochs=1, batch_size=128)
        ),
        RegimeClassifier(NAMES, "f1", "f2"),
    )
    ens.fit(d.take(np.arange(350)), d.take(np.arange(350, 450)))
    return ens, model_to_onnx(ens, F, (L, C)), d.take(np.arange(450, N))


def _run(onnx_model: object, test: ModelData) -> dict[str, np.ndarray]:
    sess = onnx_session(onnx_model)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, onnx_feeds(test.x, test.seq)), strict=True))


def test_ensemble_graph_when_exported_then_probabilities_first_and_parity_unchanged(
    fitted: tuple[EnsembleModel, object, ModelData],
) -> None:
    ens, onnx_model, test = fitted
    names = [o.name for o in onnx_session(onnx_model).get_outputs()]
    assert names[0] == "probabilities"
    spec = explanation_outputs(ens)
    assert spec is not None
    promised = {spec["regime_state"], spec["regime_probabilities"], spec["member_weights"]}
    assert promised | {m["probabilities"] for m in spec["members"]} <= set(names)
    assert check_parity(ens, onnx_model, test.x, seq=test.seq) <= PARITY_TOLERANCE


def test_explanation_outputs_when_run_then_weighted_member_average_is_the_ensemble_output(
    fitted: tuple[EnsembleModel, object, ModelData],
) -> None:
    ens, onnx_model, test = fitted
    out = _run(onnx_model, test)
    members = [out[o] for _, o in ENSEMBLE_MEMBERS]
    w = out[MEMBER_WEIGHTS]
    assert w.shape == (len(test), 2)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-6)
    mixed = w[:, :1] * members[0] + w[:, 1:2] * members[1]
    np.testing.assert_allclose(mixed, out["probabilities"], atol=1e-6)
    # each member is the native member, each weight the fitted weight of the row's state
    np.testing.assert_allclose(members[0], ens.xgb.predict_proba(test), atol=PARITY_TOLERANCE)
    np.testing.assert_allclose(
        members[1], ens.transformer.predict_proba(test), atol=PARITY_TOLERANCE
    )
    state = ens.regime.predict(test)
    np.testing.assert_array_equal(out[REGIME_STATE], state)
    np.testing.assert_array_equal(out[REGIME_PROBABILITIES], np.eye(4, dtype=np.float32)[state])
    assert ens.weights is not None
    np.testing.assert_allclose(w, ens.weights[state], atol=0)


def test_native_booster_when_saved_then_it_is_the_graphs_xgb_member_and_treeshap_adds_up(
    fitted: tuple[EnsembleModel, object, ModelData], tmp_path: Path
) -> None:
    import xgboost as xgb

    ens, onnx_model, test = fitted
    path = tmp_path / "xgb_booster.ubj"
    assert save_native_booster(ens, path)
    booster = xgb.Booster(model_file=str(path))
    dm = xgb.DMatrix(test.x)
    member = _run(onnx_model, test)["xgb_probabilities"]
    np.testing.assert_allclose(booster.predict(dm), member, atol=PARITY_TOLERANCE)
    contribs = booster.predict(dm, pred_contribs=True)  # [N, 3, F + 1], bias last
    margin = booster.predict(dm, output_margin=True)  # [N, 3]
    assert contribs.shape == (len(test), 3, F + 1)
    np.testing.assert_allclose(contribs.sum(axis=2), margin, atol=1e-4)


def test_save_native_booster_when_model_has_no_xgb_member_then_false(tmp_path: Path) -> None:
    tf = TransformerModel(TransformerConfig(d_model=16, n_heads=2, n_layers=1, epochs=1))
    assert not save_native_booster(tf, tmp_path / "b.ubj")
    assert explanation_outputs(tf) is None
