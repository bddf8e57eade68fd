"""onnxruntime session for a bundle, tuned for single-row latency."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from serving.preprocess import BundleSpec


class BundleMismatchError(ValueError):
    """The ONNX graph does not have the inputs or outputs its manifest promises."""


def open_session(model: str | Path | bytes) -> ort.InferenceSession:
    """Open ``model`` (path or serialized bytes) on the CPU provider with one intra-op and one
    inter-op thread and spinning off: a single row is faster without a thread pool, and
    idle spinning threads would steal the cores of the rest of the process."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])


def check_session(session: ort.InferenceSession, spec: BundleSpec) -> None:
    """Raise ``BundleMismatchError`` unless the graph takes ``spec.input_name`` as
    ``[N, len(features)]`` and outputs ``spec.prob_output``."""
    inputs = {i.name: i for i in session.get_inputs()}
    if spec.input_name not in inputs:
        raise BundleMismatchError(
            f"ONNX graph has no input {spec.input_name!r}; inputs: {sorted(inputs)}"
        )
    shape = inputs[spec.input_name].shape
    if len(shape) != 2 or (isinstance(shape[1], int) and shape[1] != spec.n_features):
        raise BundleMismatchError(
            f"ONNX input {spec.input_name!r} has shape {shape}, manifest lists "
            f"{spec.n_features} features"
        )
    outputs = [o.name for o in session.get_outputs()]
    if spec.prob_output not in outputs:
        raise BundleMismatchError(
            f"ONNX graph has no output {spec.prob_output!r}; outputs: {outputs}"
        )


def predict_proba(
    session: ort.InferenceSession, spec: BundleSpec, matrix: np.ndarray
) -> np.ndarray:
    """Class probabilities ``[N, len(spec.classes)]`` for a float32 ``[N, F]`` matrix."""
    (probs,) = session.run([spec.prob_output], {spec.input_name: matrix})
    probs = np.asarray(probs)
    if probs.shape != (matrix.shape[0], len(spec.classes)):
        raise BundleMismatchError(
            f"output {spec.prob_output!r} has shape {list(probs.shape)}, expected "
            f"[{matrix.shape[0]}, {len(spec.classes)}]"
        )
    return probs
