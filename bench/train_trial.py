"""Training time per Optuna trial (purged walk-forward folds) and per final fit, on a synthetic
dataset of the trend_v1 / trend_v2 shapes. Prints wall seconds per trial (p50/p90/max over
the trials) of the XGBoost study, the fit times of XGBoost and the transformer, then per trial
of the transformer study (trend_v2's search space, one torch thread as in the tuning workers,
pruning off so every trial runs all its epochs and folds).

    .venv/bin/python bench/train_trial.py [--rows 6000] [--trials 6] [--tf-rows 3000] [--tf-trials 4]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def synthetic(rows: int, names: list[str]) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    t = pd.date_range("2026-01-05 00:05", periods=rows, freq="5min", tz="UTC")
    x = rng.normal(size=(rows, len(names)))
    score = x[:, 0] + rng.normal(0, 1, rows)
    ds = pd.DataFrame(x, columns=names)
    ds["symbol"], ds["event_timestamp"], ds["label_end"] = "EURUSD", t, t + pd.Timedelta(minutes=30)
    ds["label"] = np.where(score > 0.6, 2, np.where(score < -0.6, 0, 1))
    return ds


def synthetic_v2(rows: int, names: list[str], seq_len: int, channels: int) -> pd.DataFrame:
    """trend_v2's shape: the tabular features and the flat bar sequence column."""
    ds = synthetic(rows, names)
    ds["seq"] = list(
        np.random.default_rng(2).normal(size=(rows, seq_len * channels)).astype(np.float32)
    )
    return ds


def timed_study(
    objective: Any, ds: pd.DataFrame, cfg: Any, n_trials: int, storage: str, pruner: Any = None
) -> np.ndarray:
    import optuna

    study = optuna.create_study(
        storage=storage,
        direction="minimize",
        sampler=optuna.samplers.TPESampler(seed=1),
        pruner=pruner,
    )
    times: list[float] = []

    def timed(trial: optuna.Trial) -> float:
        t0 = time.perf_counter()
        try:
            return float(objective(trial, ds, cfg, "M5"))
        finally:
            times.append(time.perf_counter() - t0)

    study.optimize(timed, n_trials=n_trials)
    return np.array(times)


def pct(t: np.ndarray) -> str:
    return f"p50 {np.percentile(t, 50):.2f} s  p90 {np.percentile(t, 90):.2f} s  max {t.max():.2f} s  over {len(t)} trials"


# run as `python bench/x.py`: the repository root goes on the path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=6000)
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument(
        "--tf-rows", type=int, default=3000, help="rows of the transformer trials' dataset"
    )
    ap.add_argument("--tf-trials", type=int, default=4, help="transformer trials (0: skip)")
    args = ap.parse_args()

    import optuna
    import torch

    from feature_repo.pipeline.transforms import SEQ_CHANNELS, SEQ_LEN, TREND_V1_FEATURES
    from training.config import ExperimentConfig, TransformerConfig, load_config
    from training.dataset import service_inputs
    from training.models import ModelData, TransformerModel, XGBModel
    from training.tune import objective, transformer_objective

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    names = list(TREND_V1_FEATURES)
    ds = synthetic(args.rows, names)
    cfg = ExperimentConfig(name="bench", feature_service="trend_v1", split={"n_folds": 3})  # type: ignore[arg-type]
    with tempfile.TemporaryDirectory() as tmp:
        t = timed_study(objective, ds, cfg, args.trials, f"sqlite:///{Path(tmp) / 'o.db'}")
    print(
        f"Optuna trial (XGBoost, {args.rows} rows x {len(names)} features, 3 purged walk-forward folds, SQLite storage, n_jobs 1):"
    )
    print(f"  per trial: {pct(t)}")

    x = ds[names].to_numpy(np.float32)
    d = ModelData(x, None, ds["label"].to_numpy())
    t0 = time.perf_counter()
    XGBModel({"n_estimators": 200, "max_depth": 4, "learning_rate": 0.05}).fit(d)
    print(f"  final XGBoost fit (200 trees): {time.perf_counter() - t0:.2f} s")
    seq = np.random.default_rng(1).normal(size=(args.rows, 64, 9)).astype(np.float32)
    t0 = time.perf_counter()
    TransformerModel(TransformerConfig(epochs=1)).fit(ModelData(x, seq, d.y))
    print(
        f"  transformer fit, one epoch over {args.rows} rows (d_model 32, 2 layers, CPU): {time.perf_counter() - t0:.2f} s"
    )

    # the transformer study last, so the fits above are timed as before this was added
    if args.tf_trials:
        v2 = load_config("trend_v2")
        sp = v2.tune.transformer
        v2_names, _ = service_inputs("trend_v2")
        ds2 = synthetic_v2(args.tf_rows, v2_names, SEQ_LEN, len(SEQ_CHANNELS))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as in a tuning worker
        try:
            with tempfile.TemporaryDirectory() as tmp:
                tt = timed_study(
                    transformer_objective,
                    ds2,
                    v2,
                    args.tf_trials,
                    f"sqlite:///{Path(tmp) / 'o.db'}",
                    optuna.pruners.NopPruner(),
                )
        finally:
            torch.set_num_threads(threads)
        print(
            f"Optuna trial (transformer, {args.tf_rows} rows x {len(v2_names)} features + {SEQ_LEN}x{len(SEQ_CHANNELS)} sequence, "
            f"{v2.split.n_folds} folds, trend_v2 space: d_model {sp.d_model}, layers {list(sp.n_layers)}, epochs {list(sp.epochs)}, 1 torch thread, no pruning):"
        )
        print(f"  per trial: {pct(tt)}")


if __name__ == "__main__":
    main()
