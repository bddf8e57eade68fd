"""ONNX export of the XGBoost model, proven against the native model before registration."""

from __future__ import annotations

import numpy as np

PARITY_TOLERANCE = 1e-5


class ParityError(AssertionError):
    """ONNX outputs differ from the native model's beyond the tolerance."""


def xgb_to_onnx(model: object, n_features: int) -> object:
    from onnxmltools import convert_xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType

    return convert_xgboost(model, initial_types=[("input", FloatTensorType([None, n_features]))], target_opset=15)


def onnx_session(onnx_model: object) -> object:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(onnx_model.SerializeToString(), opts, providers=["CPUExecutionProvider"])  # type: ignore[attr-defined]


def check_parity(model: object, onnx_model: object, x: np.ndarray, tol: float = PARITY_TOLERANCE) -> float:
    """Max |ONNX − native| probability over ``x``; raises :class:`ParityError` above ``tol``."""
    x32 = np.ascontiguousarray(x, dtype=np.float32)
    native = model.predict_proba(x32)  # type: ignore[attr-defined]
    sess = onnx_session(onnx_model)
    got = sess.run(["probabilities"], {"input": x32})[0]  # type: ignore[attr-defined]
    diff = float(np.max(np.abs(np.asarray(got) - native))) if len(x32) else 0.0
    if not diff <= tol:
        raise ParityError(f"ONNX vs native XGBoost differ by {diff:.3g} > {tol:g}")
    return diff
