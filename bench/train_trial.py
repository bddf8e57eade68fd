"""Training time per Optuna trial (purged walk-forward folds) and per final fit, on a synthetic
dataset of the trend_v1 / trend_v2 shapes. Prints wall seconds per trial (p50/max over the
trials) and the fit times of XGBoost and the transformer.

    .venv/bin/python bench/train_trial.py [--rows 6000] [--trials 6]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

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



# run as `python bench/x.py`: the repository root goes on the path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=6000)
    ap.add_argument("--trials", type=int, default=6)
    args = ap.parse_args()

    import optuna

    from feature_repo.pipeline.transforms import TREND_V1_FEATURES
    from training.config import ExperimentConfig, TransformerConfig
    from training.models import ModelData, TransformerModel, XGBModel
    from training.tune import objective

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    names = list(TREND_V1_FEATURES)
    ds = synthetic(args.rows, names)
    cfg = ExperimentConfig(name="bench", feature_service="trend_v1", split={"n_folds": 3})  # type: ignore[arg-type]
    with tempfile.TemporaryDirectory() as tmp:
        study = optuna.create_study(storage=f"sqlite:///{Path(tmp) / 'o.db'}", direction="minimize", sampler=optuna.samplers.TPESampler(seed=1))
        times: list[float] = []

        def timed(trial: optuna.Trial) -> float:
            t0 = time.perf_counter()
            try:
                return objective(trial, ds, cfg, "M5")
            finally:
                times.append(time.perf_counter() - t0)

        study.optimize(timed, n_trials=args.trials)
    t = np.array(times)
    print(f"Optuna trial (XGBoost, {args.rows} rows x {len(names)} features, 3 purged walk-forward folds, SQLite storage):")
    print(f"  per trial: p50 {np.percentile(t, 50):.2f} s  max {t.max():.2f} s  over {len(t)} trials")

    x = ds[names].to_numpy(np.float32)
    d = ModelData(x, None, ds["label"].to_numpy())
    t0 = time.perf_counter()
    XGBModel({"n_estimators": 200, "max_depth": 4, "learning_rate": 0.05}).fit(d)
    print(f"  final XGBoost fit (200 trees): {time.perf_counter() - t0:.2f} s")
    seq = np.random.default_rng(1).normal(size=(args.rows, 64, 9)).astype(np.float32)
    t0 = time.perf_counter()
    TransformerModel(TransformerConfig(epochs=1)).fit(ModelData(x, seq, d.y))
    print(f"  transformer fit, one epoch over {args.rows} rows (d_model 32, 2 layers, CPU): {time.perf_counter() - t0:.2f} s")


if __name__ == "__main__":
    main()
