"""Single-row latency: the exported ONNX graph (onnxruntime, 1 thread, no spinning) against the
native model, interleaved in one run, for XGBoost (trend_v1 shape) and the ensemble (trend_v2
shape: 46 features + a 64x9 sequence). Prints p50/p99 in µs and the native/ONNX ratio, and
``onnx+expl``: the same graph asked for every output (probabilities plus the explanation
outputs: regime state, member probabilities and weights), as serving runs it, and ``pre-expl``:
the graph as it was before those outputs (they and the nodes that only feed them removed), so
the before/after of the export change is measured in one interleaved run.

    .venv/bin/python bench/onnx_latency.py [--n 2000]

Synthetic data of the real shapes; the models are small (training them is not measured here).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

# run as `python bench/x.py`: the repository root goes on the path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000, help="calls per case")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from training.config import TransformerConfig
    from training.export import model_to_onnx, onnx_feeds, onnx_session
    from training.models import (
        EnsembleModel,
        ModelData,
        RegimeClassifier,
        TransformerModel,
        XGBModel,
    )

    rng = np.random.default_rng(0)

    def data(n: int, f: int, seq: bool) -> ModelData:
        x = rng.normal(size=(n, f)).astype(np.float32)
        s = rng.normal(size=(n, 64, 9)).astype(np.float32) if seq else None
        y = np.where(x[:, 0] > 0.5, 2, np.where(x[:, 0] < -0.5, 0, 1))
        return ModelData(x, s, y)

    xgb_params = {"n_estimators": 200, "max_depth": 4, "learning_rate": 0.05}
    d1 = data(3000, 13, False)
    xgb = XGBModel(xgb_params).fit(d1)
    d2 = data(1500, 46, True)
    names = [f"f{i}" for i in range(46)]
    ens = EnsembleModel(
        XGBModel(xgb_params),
        TransformerModel(TransformerConfig(epochs=1)),
        RegimeClassifier(names, "f1", "f2"),
    )
    ens.fit(d2.take(np.arange(1000)), d2.take(np.arange(1000, 1500)))

    cases = {
        "xgboost (13 features, 200 trees)": (xgb, model_to_onnx(xgb, 13), d1),
        "ensemble (46 features + 64x9 sequence)": (ens, model_to_onnx(ens, 46, (64, 9)), d2),
    }

    def without_explanation(onnx_model: object) -> object:
        """The graph before the explanation outputs: only ``probabilities``, no node or
        initializer that only fed the others."""
        import copy

        from training.export import MEMBER_WEIGHTS, REGIME_PROBABILITIES, REGIME_STATE

        m = copy.deepcopy(onnx_model)
        g = m.graph  # type: ignore[attr-defined]
        added = {REGIME_STATE, REGIME_PROBABILITIES, "transformer_probabilities", MEMBER_WEIGHTS}
        keep = [n for n in g.node if not set(n.output) & added]
        del g.node[:]
        g.node.extend(keep)
        outs = [o for o in g.output if o.name == "probabilities"]
        del g.output[:]
        g.output.extend(outs)
        inits = [i for i in g.initializer if i.name != "ens_eye"]
        del g.initializer[:]
        g.initializer.extend(inits)
        return m

    print(f"single-row latency, {args.n} calls per case, interleaved (µs)")
    print(f"{'model':<42} {'path':<8} {'p50':>9} {'p99':>9}")
    for name, (model, onnx_model, d) in cases.items():
        sess = onnx_session(onnx_model)
        pre = onnx_session(without_explanation(onnx_model)) if model is ens else sess
        row = d.take(np.arange(1))
        feeds = onnx_feeds(row.x, row.seq)
        every = [o.name for o in sess.get_outputs()]
        t_onnx, t_nat, t_all = np.empty(args.n), np.empty(args.n), np.empty(args.n)
        t_pre = np.empty(args.n)
        for _ in range(50):
            sess.run(["probabilities"], feeds)
            sess.run(every, feeds)
            model.predict_proba(row)
        runs = [
            (pre, ["probabilities"], t_pre),
            (sess, ["probabilities"], t_onnx),
            (sess, every, t_all),
        ]
        for i in range(args.n):
            # the ONNX paths take turns going first: none always follows the native call
            # (which leaves the caches cold)
            for j in range(3):
                s_, outs, t = runs[(i + j) % 3]
                t0 = time.perf_counter_ns()
                s_.run(outs, feeds)
                t[i] = time.perf_counter_ns() - t0
            t0 = time.perf_counter_ns()
            model.predict_proba(row)
            t_nat[i] = time.perf_counter_ns() - t0
        paths = [("onnx", t_onnx), ("onnx+expl", t_all), ("native", t_nat)]
        if model is ens:
            paths.insert(0, ("pre-expl", t_pre))
        for path, t in paths:
            print(
                f"{name:<42} {path:<8} {np.percentile(t, 50) / 1e3:9.1f} {np.percentile(t, 99) / 1e3:9.1f}"
            )
        print(
            f"{'':<42} ratio native/onnx p50 = {np.percentile(t_nat, 50) / np.percentile(t_onnx, 50):.1f}x"
        )


if __name__ == "__main__":
    main()
