"""ONNX export of every model family into ONE graph, proven against the native model.

Graph contract (see the bundle manifest): input ``input`` float32 ``[N, F]`` and, for models
that read the bar sequence, ``sequence`` float32 ``[N, SEQ_LEN, C]``; output
``probabilities`` float32 ``[N, 3]`` (short, flat, long).

The ensemble graph also outputs what went into that answer, so serving can explain every
decision from the same ``session.run`` (no second model call): ``regime_state`` int64 ``[N]``,
``regime_probabilities`` float32 ``[N, 4]`` (one-hot: the classifier is two thresholds),
``xgb_probabilities`` and ``transformer_probabilities`` float32 ``[N, 3]`` (each member's own
answer) and ``member_weights`` float32 ``[N, 2]`` (the weights of the row's regime state, in
member order). ``probabilities`` is exactly ``sum_m member_weights[:, m] * member_m``.
:func:`explanation_outputs` is the manifest's description of them (key
``explanation_outputs``); asking onnxruntime for ``probabilities`` alone still computes only
what it needs, and its value and parity are unchanged.

* XGBoost → ``onnxmltools.convert_xgboost``;
* transformer → ``torch.onnx.export`` (opset 18, dynamic batch);
* ensemble → both graphs merged under prefixes, plus the regime state and the per-state
  weighted sum written as ONNX nodes (Greater/Abs/Cast/Gather/Mul/Add).
"""

from __future__ import annotations

import hashlib
import io
import time
from typing import Any

import numpy as np

PARITY_TOLERANCE = 1e-5
TORCH_OPSET = 18
#: File name of the XGBoost member's native booster in the bundle (manifest ``native_booster``).
NATIVE_BOOSTER_FILE = "xgb_booster.ubj"
#: Names of the ensemble graph's explanation outputs.
REGIME_STATE = "regime_state"
REGIME_PROBABILITIES = "regime_probabilities"
MEMBER_WEIGHTS = "member_weights"
ENSEMBLE_MEMBERS = (("xgb", "xgb_probabilities"), ("transformer", "transformer_probabilities"))


class ParityError(AssertionError):
    """ONNX outputs differ from the native model's beyond the tolerance."""


def xgb_to_onnx(model: object, n_features: int) -> Any:
    """ONNX graph of a fitted ``XGBClassifier`` (or :class:`training.models.XGBModel`)."""
    from onnxmltools import convert_xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType

    booster = getattr(model, "booster", model)
    return convert_xgboost(
        booster, initial_types=[("input", FloatTensorType([None, n_features]))], target_opset=15
    )


def transformer_to_onnx(model: Any, n_features: int, seq_len: int, n_channels: int) -> Any:
    """ONNX graph of a fitted :class:`training.models.TransformerModel` (inputs input, sequence)."""
    import onnx
    import torch

    net = model.net
    net.eval()
    x = torch.zeros(2, n_features)
    s = torch.zeros(2, seq_len, n_channels)
    buf = io.BytesIO()
    batch = torch.export.Dim("batch")
    onnx_program = torch.onnx.export(
        net,
        (x, s),
        input_names=["input", "sequence"],
        output_names=["probabilities"],
        opset_version=TORCH_OPSET,
        dynamo=True,
        dynamic_shapes={"x": {0: batch}, "seq": {0: batch}},
        optimize=True,
        verbose=False,
    )
    onnx_program.save(buf)  # type: ignore[union-attr,arg-type]
    return onnx.load_from_string(buf.getvalue())


def _prefixed(m: Any, prefix: str) -> Any:
    import onnx.compose

    return onnx.compose.add_prefix(m, prefix)


def ensemble_to_onnx(model: Any, n_features: int, seq_len: int, n_channels: int) -> Any:
    """One graph: XGBoost + transformer + regime state + per-state weighted sum."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    xg = _prefixed(xgb_to_onnx(model.xgb, n_features), "xgb_")
    tf = _prefixed(transformer_to_onnx(model.transformer, n_features, seq_len, n_channels), "tf_")
    reg = model.regime
    nodes = [
        helper.make_node("Identity", ["input"], ["xgb_input"]),
        helper.make_node("Identity", ["input"], ["tf_input"]),
        helper.make_node("Identity", ["sequence"], ["tf_sequence"]),
        *xg.graph.node,
        *tf.graph.node,
    ]
    inits = [*xg.graph.initializer, *tf.graph.initializer]
    inits += [
        numpy_helper.from_array(np.array([reg.vol_idx], dtype=np.int64), "ens_vol_idx"),
        numpy_helper.from_array(np.array([reg.trend_idx], dtype=np.int64), "ens_trend_idx"),
        numpy_helper.from_array(np.array(reg.vol_thr, dtype=np.float32), "ens_vol_thr"),
        numpy_helper.from_array(np.array(reg.trend_thr, dtype=np.float32), "ens_trend_thr"),
        numpy_helper.from_array(np.array(2, dtype=np.int64), "ens_two"),
        numpy_helper.from_array(np.asarray(model.weights, dtype=np.float32), "ens_weights"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "ens_c0"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "ens_c1"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "ens_c2"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "ens_axis1"),
    ]
    nodes += [
        helper.make_node("Gather", ["input", "ens_vol_idx"], ["ens_vol"], axis=1),  # [N,1]
        helper.make_node("Gather", ["input", "ens_trend_idx"], ["ens_trend"], axis=1),
        helper.make_node("Abs", ["ens_trend"], ["ens_trend_abs"]),
        helper.make_node("Greater", ["ens_vol", "ens_vol_thr"], ["ens_vol_hi"]),
        helper.make_node("Greater", ["ens_trend_abs", "ens_trend_thr"], ["ens_trending"]),
        helper.make_node("Cast", ["ens_vol_hi"], ["ens_vol_i"], to=TensorProto.INT64),
        helper.make_node("Cast", ["ens_trending"], ["ens_trend_i"], to=TensorProto.INT64),
        helper.make_node("Mul", ["ens_vol_i", "ens_two"], ["ens_vol_2"]),
        helper.make_node("Add", ["ens_vol_2", "ens_trend_i"], ["ens_state2d"]),  # [N,1]
        helper.make_node("Squeeze", ["ens_state2d", "ens_axis1"], ["ens_state"]),  # [N]
        helper.make_node("Gather", ["ens_weights", "ens_state"], ["ens_w"], axis=0),  # [N,2]
        helper.make_node("Slice", ["ens_w", "ens_c0", "ens_c1", "ens_axis1"], ["ens_w_xgb"]),
        helper.make_node("Slice", ["ens_w", "ens_c1", "ens_c2", "ens_axis1"], ["ens_w_tf"]),
        helper.make_node("Mul", ["ens_w_xgb", "xgb_probabilities"], ["ens_p_xgb"]),
        helper.make_node("Mul", ["ens_w_tf", "tf_probabilities"], ["ens_p_tf"]),
        helper.make_node("Add", ["ens_p_xgb", "ens_p_tf"], ["probabilities"]),
        # explanation outputs: views of tensors computed above (one extra Gather)
        helper.make_node("Identity", ["ens_state"], [REGIME_STATE]),
        helper.make_node("Gather", ["ens_eye", "ens_state"], [REGIME_PROBABILITIES], axis=0),
        helper.make_node("Identity", ["tf_probabilities"], ["transformer_probabilities"]),
        helper.make_node("Identity", ["ens_w"], [MEMBER_WEIGHTS]),
    ]
    inits.append(numpy_helper.from_array(np.eye(reg.n_states, dtype=np.float32), "ens_eye"))
    graph = helper.make_graph(
        nodes,
        "tx_ensemble",
        inputs=[
            helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, n_features]),
            helper.make_tensor_value_info(
                "sequence", TensorProto.FLOAT, [None, seq_len, n_channels]
            ),
        ],
        outputs=[
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 3]),
            helper.make_tensor_value_info(REGIME_STATE, TensorProto.INT64, [None]),
            helper.make_tensor_value_info(
                REGIME_PROBABILITIES, TensorProto.FLOAT, [None, reg.n_states]
            ),
            helper.make_tensor_value_info("xgb_probabilities", TensorProto.FLOAT, [None, 3]),
            helper.make_tensor_value_info(
                "transformer_probabilities", TensorProto.FLOAT, [None, 3]
            ),
            helper.make_tensor_value_info(MEMBER_WEIGHTS, TensorProto.FLOAT, [None, 2]),
        ],
        initializer=inits,
    )
    opsets: dict[str, int] = {}
    for m in (xg, tf):
        for o in m.opset_import:
            opsets[o.domain] = max(opsets.get(o.domain, 0), o.version)
    functions = [*xg.functions, *tf.functions]
    out = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
        functions=functions,
        producer_name="titanovax",
    )
    out.ir_version = max(xg.ir_version, tf.ir_version)
    onnx.checker.check_model(out)
    return out


def explanation_outputs(model: Any) -> dict[str, Any] | None:
    """The manifest's ``explanation_outputs``: which graph outputs explain a prediction.

    ``{"regime_state": name | None, "regime_probabilities": name | None,
    "member_weights": name | None, "members": [{"name": ..., "probabilities": output}]}``;
    ``member_weights`` None means one member of weight 1 (an XGBoost-only bundle, whose
    member answer is ``probabilities`` itself). None for a family with nothing to add."""
    from training.models import EnsembleModel, XGBModel

    if isinstance(model, EnsembleModel):
        return {
            "regime_state": REGIME_STATE,
            "regime_probabilities": REGIME_PROBABILITIES,
            "member_weights": MEMBER_WEIGHTS,
            "members": [{"name": n, "probabilities": o} for n, o in ENSEMBLE_MEMBERS],
        }
    if isinstance(model, XGBModel):
        return {
            "regime_state": None,
            "regime_probabilities": None,
            "member_weights": None,
            "members": [{"name": "xgb", "probabilities": "probabilities"}],
        }
    return None


def save_native_booster(model: Any, path: Any) -> bool:
    """Write the XGBoost member's native booster (UBJSON, ``Booster.save_model``) to ``path``;
    False when the model has no XGBoost member. Serving's TreeSHAP (``pred_contribs``) runs
    on it: the ONNX graph has the trees but no Shapley values."""
    from training.models import EnsembleModel, XGBModel

    xgb = model.xgb if isinstance(model, EnsembleModel) else model
    if not isinstance(xgb, XGBModel) or xgb.booster is None:
        return False
    xgb.booster.get_booster().save_model(str(path))
    return True


def model_to_onnx(model: Any, n_features: int, seq_shape: tuple[int, int] | None = None) -> Any:
    """ONNX graph of any model family of :mod:`training.models`."""
    from training.models import EnsembleModel, TransformerModel, XGBModel

    if isinstance(model, XGBModel):
        return xgb_to_onnx(model, n_features)
    if seq_shape is None:
        raise ValueError("sequence models need seq_shape (SEQ_LEN, C)")
    if isinstance(model, TransformerModel):
        return transformer_to_onnx(model, n_features, *seq_shape)
    if isinstance(model, EnsembleModel):
        return ensemble_to_onnx(model, n_features, *seq_shape)
    raise TypeError(f"no ONNX export for {type(model).__name__}")


def onnx_session(onnx_model: Any) -> Any:
    """A single-row-tuned ONNX Runtime session (one thread, no spinning)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    data = onnx_model if isinstance(onnx_model, bytes) else onnx_model.SerializeToString()
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def onnx_feeds(x: np.ndarray, seq: np.ndarray | None) -> dict[str, np.ndarray]:
    feeds = {"input": np.ascontiguousarray(x, dtype=np.float32)}
    if seq is not None:
        feeds["sequence"] = np.ascontiguousarray(seq, dtype=np.float32)
    return feeds


def onnx_predict(
    sess: Any, x: np.ndarray, seq: np.ndarray | None = None, batch: int = 4096
) -> np.ndarray:
    names = {i.name for i in sess.get_inputs()}
    outs = []
    for i in range(0, len(x), batch):
        feeds = onnx_feeds(
            x[i : i + batch], None if seq is None or "sequence" not in names else seq[i : i + batch]
        )
        outs.append(np.asarray(sess.run(["probabilities"], feeds)[0]))
    return np.concatenate(outs) if outs else np.zeros((0, 3), np.float32)


def check_parity(
    model: Any,
    onnx_model: Any,
    x: np.ndarray,
    tol: float = PARITY_TOLERANCE,
    seq: np.ndarray | None = None,
) -> float:
    """Max |ONNX − native| probability over the rows; raises :class:`ParityError` above ``tol``.

    ``model`` is a :mod:`training.models` model or a bare ``XGBClassifier``."""
    from training.models import ModelData

    x32 = np.ascontiguousarray(x, dtype=np.float32)
    if hasattr(model, "booster") or hasattr(model, "net") or hasattr(model, "weights"):
        native = model.predict_proba(ModelData(x32, seq))
    else:
        native = model.predict_proba(x32)
    got = onnx_predict(onnx_session(onnx_model), x32, seq)
    diff = float(np.max(np.abs(got - native))) if len(x32) else 0.0
    if not diff <= tol:
        raise ParityError(f"ONNX vs native {type(model).__name__} differ by {diff:.3g} > {tol:g}")
    return diff


def single_row_latency_us(
    onnx_model: Any, x_row: np.ndarray, seq_row: np.ndarray | None = None, n: int = 300
) -> dict[str, float]:
    """p50/p99 of one-row ``session.run`` in µs (tight loop after a short warm-up)."""
    sess = onnx_session(onnx_model)
    feeds = onnx_feeds(x_row.reshape(1, -1), None if seq_row is None else seq_row[None])
    for _ in range(20):
        sess.run(["probabilities"], feeds)
    t = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter_ns()
        sess.run(["probabilities"], feeds)
        t[i] = time.perf_counter_ns() - t0
    return {"p50": float(np.percentile(t, 50) / 1e3), "p99": float(np.percentile(t, 99) / 1e3)}


def sha256(onnx_model: Any) -> str:
    return hashlib.sha256(onnx_model.SerializeToString()).hexdigest()
