"""onnxruntime session for a bundle, tuned for single-row latency."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


def warm_up(session: ort.InferenceSession, spec: BundleSpec, runs: int = 3) -> None:
    """Score zeros a few times: the first runs allocate and would otherwise land on a live
    request (BentoML #3434)."""
    matrix = np.zeros((1, spec.n_features), dtype=np.float32)
    seq = (
        np.zeros((1, spec.sequence.seq_len, spec.sequence.n_channels), dtype=np.float32)
        if spec.sequence is not None
        else None
    )
    for _ in range(runs):
        predict_explained(session, spec, matrix, seq)


def check_session(session: ort.InferenceSession, spec: BundleSpec) -> None:
    """Raise ``BundleMismatchError`` unless the graph takes ``spec.input_name`` as
    ``[N, len(features)]`` (plus, for a sequence bundle, ``spec.sequence.input_name`` as
    ``[N, SEQ_LEN, C]``), needs no other input, and outputs ``spec.prob_output``."""
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
    seq = spec.sequence
    if seq is not None:
        if seq.input_name not in inputs:
            raise BundleMismatchError(
                f"ONNX graph has no input {seq.input_name!r} that the manifest's 'sequence' "
                f"promises; inputs: {sorted(inputs)}"
            )
        seq_shape = inputs[seq.input_name].shape
        want = [None, seq.seq_len, seq.n_channels]
        if len(seq_shape) != 3 or any(
            isinstance(got, int) and w is not None and got != w
            for got, w in zip(seq_shape, want, strict=True)
        ):
            raise BundleMismatchError(
                f"ONNX input {seq.input_name!r} has shape {seq_shape}, manifest promises "
                f"[N, {seq.seq_len}, {seq.n_channels}]"
            )
    fed = {spec.input_name} | ({seq.input_name} if seq is not None else set())
    if set(inputs) - fed:
        raise BundleMismatchError(
            f"ONNX graph needs inputs {sorted(set(inputs) - fed)} the manifest does not describe"
        )
    outputs = [o.name for o in session.get_outputs()]
    if spec.prob_output not in outputs:
        raise BundleMismatchError(
            f"ONNX graph has no output {spec.prob_output!r}; outputs: {outputs}"
        )
    if spec.explanation is not None:
        missing = [o for o in spec.explanation.extra_outputs if o not in outputs]
        if missing:
            raise BundleMismatchError(
                f"ONNX graph has no outputs {missing} that the manifest's "
                f"'explanation_outputs' promises; outputs: {outputs}"
            )


def _feeds(
    spec: BundleSpec, matrix: np.ndarray, sequence: np.ndarray | None
) -> dict[str, np.ndarray]:
    feeds = {spec.input_name: matrix}
    if spec.sequence is not None:
        if sequence is None:
            raise ValueError(f"bundle needs its {spec.sequence.input_name!r} input")
        feeds[spec.sequence.input_name] = sequence
    return feeds


def _checked(probs: Any, spec: BundleSpec, n: int) -> np.ndarray:
    probs = np.asarray(probs)
    if probs.shape != (n, len(spec.classes)):
        raise BundleMismatchError(
            f"output {spec.prob_output!r} has shape {list(probs.shape)}, expected "
            f"[{n}, {len(spec.classes)}]"
        )
    return probs


def predict_explained(
    session: ort.InferenceSession,
    spec: BundleSpec,
    matrix: np.ndarray,
    sequence: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``predict_proba`` plus the bundle's explanation outputs (regime state, member
    probabilities and weights), all from ONE ``session.run``: the members are computed for
    the probabilities anyway, so the explanation costs a few copied tensors."""
    extra = spec.explanation.extra_outputs if spec.explanation is not None else ()
    names = [spec.prob_output, *(o for o in extra if o != spec.prob_output)]
    values = session.run(names, _feeds(spec, matrix, sequence))
    probs = _checked(values[0], spec, matrix.shape[0])
    outputs = dict(zip(names, (np.asarray(v) for v in values), strict=True))
    return probs, outputs


def predict_proba(
    session: ort.InferenceSession,
    spec: BundleSpec,
    matrix: np.ndarray,
    sequence: np.ndarray | None = None,
) -> np.ndarray:
    """Class probabilities ``[N, len(spec.classes)]`` for a float32 ``[N, F]`` matrix (and
    the float32 ``[N, SEQ_LEN, C]`` sequence when the bundle has one)."""
    (probs,) = session.run([spec.prob_output], _feeds(spec, matrix, sequence))
    return _checked(probs, spec, matrix.shape[0])
