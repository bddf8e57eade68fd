"""Real model bundles and a feature table for engine backtest tests: features computed from
the simulated terminal's own bars, a linear softmax ONNX graph (optionally with the sequence
input) and a small XGBoost exported to ONNX, each with its tx manifest."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from engine.mt5 import protocol as P
from engine.mt5.sim import SimulatedTerminal, SyntheticFeed

OFF = 2 * 3600
NAMES = ["ret_1", "ret_3", "ret_12", "range_12"]


def synthetic_features(
    symbols: list[str], start_utc: int, end_utc: int, *, seed: int = 7
) -> tuple[list[str], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """``NAMES`` at every M5 close in ``[start_utc, end_utc]`` (event time = bar close, UTC),
    from the synthetic market's bars: log returns over 1, 3 and 12 bars, and the 12-bar range
    over the close."""
    term = SimulatedTerminal(SyntheticFeed(seed=seed, symbols=symbols), clock=lambda: end_utc)
    assert term.initialize()
    tables = {}
    for sym in symbols:
        r = term.copy_rates_range(sym, P.TIMEFRAME_M5, start_utc - 86_400 * 4 + OFF, end_utc + OFF)
        assert r is not None
        close_t = r["time"].astype(np.int64) - OFF + 300
        c = np.log(r["close"])
        x = np.full((len(r), len(NAMES)), np.nan)
        for j, k in enumerate((1, 3, 12)):
            x[k:, j] = c[k:] - c[:-k]
        hi = np.array([r["high"][max(0, i - 11) : i + 1].max() for i in range(len(r))])
        lo = np.array([r["low"][max(0, i - 11) : i + 1].min() for i in range(len(r))])
        x[:, 3] = (hi - lo) / r["close"]
        keep = (close_t >= start_utc) & (close_t <= end_utc)
        tables[sym] = (close_t[keep], x[keep])
    return list(NAMES), tables


def _write(d: Path, data: bytes, names: list[str], **extra: object) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "model.onnx").write_bytes(data)
    manifest = {
        "model_version": "bt-1",
        "features": names,
        "input_name": "input",
        "prob_output": "probabilities",
        "classes": ["short", "flat", "long"],
        "min_confidence": 0.45,
        "bundle_sha256": hashlib.sha256(data).hexdigest(),
        **extra,
    }
    (d / "manifest.json").write_text(json.dumps(manifest))
    return d


def linear_bundle(d: Path, names: list[str], seq_channels: int = 0) -> Path:
    """softmax(input @ W [+ flatten(sequence) @ V]): momentum on the returns, so the decisions
    mix long, short and flat."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.zeros((len(names), 3), np.float32)
    w[0] = [-3000.0, 0.0, 3000.0]
    w[1] = [-1500.0, 0.0, 1500.0]
    nodes = [helper.make_node("MatMul", ["input", "W"], ["z"])]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, len(names)])]
    inits = [numpy_helper.from_array(w, "W")]
    extra: dict[str, object] = {}
    if seq_channels:
        v = np.random.default_rng(5).normal(0, 0.05, (64 * seq_channels, 3)).astype(np.float32)
        nodes += [
            helper.make_node("Flatten", ["sequence"], ["s"], axis=1),
            helper.make_node("MatMul", ["s", "V"], ["zs"]),
            helper.make_node("Add", ["z", "zs"], ["z2"]),
        ]
        inputs.append(
            helper.make_tensor_value_info("sequence", TensorProto.FLOAT, [None, 64, seq_channels])
        )
        inits.append(numpy_helper.from_array(v, "V"))
        extra["sequence"] = {
            "input_name": "sequence",
            "seq_len": 64,
            "channels": [f"c{i}" for i in range(seq_channels)],
        }
    nodes.append(
        helper.make_node("Softmax", ["z2" if seq_channels else "z"], ["probabilities"], axis=1)
    )
    graph = helper.make_graph(
        nodes,
        "g",
        inputs,
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 3])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return _write(d, model.SerializeToString(), names, **extra)


def xgboost_bundle(
    d: Path, names: list[str], tables: dict[str, tuple[np.ndarray, np.ndarray]]
) -> Path:
    """A small XGBoost fitted on the table (label: the next row's 1-bar return, in terciles),
    exported to ONNX as the training room does."""
    import xgboost as xgb

    from training.export import xgb_to_onnx

    xs, ys = [], []
    for _, x in tables.values():
        ok = np.isfinite(x).all(axis=1)
        x = x[ok]
        fwd = np.r_[x[1:, 0], 0.0]
        lo, hi = np.quantile(fwd, [1 / 3, 2 / 3])
        xs.append(x)
        ys.append(np.where(fwd > hi, 2, np.where(fwd < lo, 0, 1)))
    model = xgb.XGBClassifier(n_estimators=30, max_depth=3, tree_method="hist", n_jobs=1)
    model.fit(np.vstack(xs).astype(np.float32), np.concatenate(ys))

    class _Fitted:
        booster = model

    onnx_model = xgb_to_onnx(_Fitted(), len(names))
    return _write(d, onnx_model.SerializeToString(), names, min_confidence=0.4)
