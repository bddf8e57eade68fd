"""One model interface; ONNX exports proven against the native models; leakage canary."""

from __future__ import annotations

import numpy as np
import pytest

from training.config import TransformerConfig
from training.export import (
    PARITY_TOLERANCE,
    check_parity,
    model_to_onnx,
    onnx_predict,
    onnx_session,
)
from training.models import (
    EnsembleModel,
    ModelData,
    NotFittedError,
    RegimeClassifier,
    TransformerModel,
    XGBModel,
    fit_weights,
)

pytestmark = pytest.mark.unit

N, F, L, C = 700, 8, 64, 9
NAMES = [f"f{i}" for i in range(F)]
SMALL_XGB = {"n_estimators": 30, "max_depth": 3, "learning_rate": 0.2}
TINY_TF = TransformerConfig(d_model=16, n_heads=2, n_layers=1, epochs=2, batch_size=128)


def data(n: int = N, seed: int = 0, signal: bool = True) -> ModelData:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, F)).astype(np.float32)
    seq = rng.normal(size=(n, L, C)).astype(np.float32)
    score = x[:, 0] + seq[:, -1, 0] if signal else rng.normal(size=n)
    y = np.where(score > 0.5, 2, np.where(score < -0.5, 0, 1))
    return ModelData(x, seq, y)


@pytest.mark.parametrize(
    "make",
    [
        lambda: XGBModel(SMALL_XGB),
        lambda: TransformerModel(TINY_TF),
        lambda: EnsembleModel(
            XGBModel(SMALL_XGB), TransformerModel(TINY_TF), RegimeClassifier(NAMES, "f1", "f2")
        ),
    ],
    ids=["xgboost", "transformer", "ensemble"],
)
def test_model_when_predicting_before_fit_then_refuses(make: object) -> None:
    with pytest.raises(NotFittedError):
        make().predict_proba(data(10))  # type: ignore[operator]


def test_xgboost_when_exported_then_onnx_matches_native_within_tolerance() -> None:
    d = data()
    m = XGBModel(SMALL_XGB).fit(d.take(np.arange(500)))
    test = d.take(np.arange(500, N))
    onnx_model = model_to_onnx(m, F)
    assert check_parity(m, onnx_model, test.x) <= PARITY_TOLERANCE
    assert {i.name for i in onnx_session(onnx_model).get_inputs()} == {"input"}


def test_ensemble_when_exported_then_one_graph_with_input_and_sequence_matches_native() -> None:
    d = data()
    ens = EnsembleModel(
        XGBModel(SMALL_XGB), TransformerModel(TINY_TF), RegimeClassifier(NAMES, "f1", "f2")
    )
    ens.fit(d.take(np.arange(400)), d.take(np.arange(400, 550)))
    assert ens.weights is not None and ens.weights.shape == (4, 2)
    np.testing.assert_allclose(ens.weights.sum(axis=1), 1.0, atol=1e-6)
    test = d.take(np.arange(550, N))
    onnx_model = model_to_onnx(ens, F, (L, C))
    sess = onnx_session(onnx_model)
    assert [i.name for i in sess.get_inputs()] == ["input", "sequence"]
    assert sess.get_outputs()[0].name == "probabilities"  # then the explanation outputs
    assert check_parity(ens, onnx_model, test.x, seq=test.seq) <= PARITY_TOLERANCE
    p = onnx_predict(sess, test.x[:1], test.seq[:1])
    assert p.shape == (1, 3) and abs(float(p.sum()) - 1.0) < 1e-5


def test_transformer_when_pickled_then_predictions_are_identical() -> None:
    import pickle

    d = data(300)
    m = TransformerModel(TINY_TF).fit(d)
    again = pickle.loads(pickle.dumps(m))
    np.testing.assert_array_equal(m.predict_proba(d), again.predict_proba(d))


def test_regime_when_fitted_then_states_split_on_training_medians() -> None:
    d = data()
    r = RegimeClassifier(NAMES, "f1", "f2").fit(d)
    s = r.predict(d)
    assert set(np.unique(s)) == {0, 1, 2, 3}
    assert abs((s >= 2).mean() - 0.5) < 0.01


def test_weights_when_one_member_is_noise_then_the_informative_one_gets_the_weight() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 2000)
    good = np.full((2000, 3), 0.1)
    good[np.arange(2000), y] = 0.8
    noise = rng.dirichlet([1, 1, 1], 2000)
    assert fit_weights([good, noise], y)[0] >= 0.9


def test_canary_when_labels_are_shuffled_then_the_model_does_not_beat_chance() -> None:
    d = data(3000, seed=5)
    rng = np.random.default_rng(9)
    shuffled = ModelData(d.x, None, rng.permutation(d.labels()))
    train, test = shuffled.take(np.arange(2000)), shuffled.take(np.arange(2000, 3000))
    m = XGBModel(SMALL_XGB).fit(train)
    acc = float((m.predict_proba(test).argmax(axis=1) == test.labels()).mean())
    majority = float(np.bincount(test.labels(), minlength=3).max() / len(test))
    assert acc <= majority + 0.03  # chance = always predicting the most frequent class
    # and the same model on the true labels does beat it: the canary can fail
    real = XGBModel(SMALL_XGB).fit(d.take(np.arange(2000)))
    real_acc = float(
        (
            real.predict_proba(d.take(np.arange(2000, 3000))).argmax(axis=1) == d.labels()[2000:]
        ).mean()
    )
    assert real_acc > majority + 0.05


def test_transformer_when_an_epoch_callback_is_given_then_called_per_epoch_in_eval_mode_without_changing_the_fit() -> (
    None
):
    d = data(300)
    calls: list[tuple[int, bool]] = []
    with_cb = TransformerModel(TINY_TF).fit(
        d, on_epoch=lambda e, m: calls.append((e, m.net.training))
    )
    plain = TransformerModel(TINY_TF).fit(d)
    assert calls == [(0, False), (1, False)]
    np.testing.assert_array_equal(with_cb.predict_proba(d), plain.predict_proba(d))

    class Stop(Exception):
        pass

    def stop(epoch: int, model: TransformerModel) -> None:
        raise Stop

    m = TransformerModel(TINY_TF)
    with pytest.raises(Stop):
        m.fit(d, on_epoch=stop)
    with pytest.raises(NotFittedError):
        m.predict_proba(d)
