"""Train, evaluate, export and register the tx_trend model; promote it through a gate.

Three steps, each a plain function that the CLI, the DAG tasks and the tests call, passing
references (paths, run ids, versions) between them:

1. :func:`build_training_dataset` — point-in-time dataset through Feast, saved as parquet;
2. :func:`train_and_register` — chronological split with purge and embargo, XGBoost, cost-aware
   backtest on the test window, ONNX export with a parity check, an MLflow run and a
   registered model version carrying the bundle manifest;
3. :func:`promote` — the gate: the version gets the alias ``champion`` only if it beats
   always-flat (net return > 0 after costs) on the test window and passed parity.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from feature_repo.pipeline.store import FEATURE_VIEW
from feature_repo.pipeline.transforms import FEATURE_NAMES
from infra.settings import PlatformSettings, utc
from training.backtest import backtest, equity_curve, positions_from_proba
from training.config import ExperimentConfig
from training.dataset import build_dataset
from training.export import check_parity, xgb_to_onnx
from training.labels import CLASSES, POSITIONS

log = logging.getLogger(__name__)

CHAMPION = "champion"
PREVIOUS = "previous"
CHALLENGER = "challenger"


@dataclass
class TrainResult:
    run_id: str
    model_name: str
    version: str
    metrics: dict[str, float]
    parity_max_abs_diff: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _mlflow(settings: PlatformSettings) -> Any:
    import mlflow

    # the registry follows the tracking URI (never set a process-wide registry URI here)
    mlflow.set_tracking_uri(settings.tracking_uri)
    return mlflow


def ensure_experiment(settings: PlatformSettings) -> str:
    mlflow = _mlflow(settings)
    exp = mlflow.get_experiment_by_name(settings.mlflow_experiment)
    if exp is not None:
        return str(exp.experiment_id)
    settings.mlflow_artifacts.mkdir(parents=True, exist_ok=True)
    return str(mlflow.create_experiment(settings.mlflow_experiment, artifact_location=settings.mlflow_artifacts.as_uri()))


def build_training_dataset(
    settings: PlatformSettings, cfg: ExperimentConfig, as_of: datetime, timeframe: str | None = None
) -> str:
    """Build the dataset for the config's train+test span ending at ``as_of``; returns its path."""
    tf = timeframe or settings.timeframe
    r = cfg.ranges(utc(as_of))
    ds = build_dataset(
        settings,
        settings.symbols,
        tf,
        r["train"][0],
        r["test"][1],
        horizon=cfg.label.horizon_bars,
        cost_multiplier=cfg.label.cost_multiplier,
        feature_service=cfg.feature_service,
    )
    out = settings.home / "datasets" / f"{cfg.name}_{tf}_{utc(as_of):%Y%m%dT%H%M}.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.to_parquet(out, index=False)
    log.info("dataset %s: %d rows", out, len(ds))
    return str(out)


def chronological_split(
    ds: pd.DataFrame, test_start: datetime, embargo: pd.Timedelta
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train: rows whose label ends before the test window starts minus the embargo (purged).
    Test: rows whose features exist at or after the test start."""
    ts = pd.Timestamp(utc(test_start))
    train = ds[ds["label_end"] <= ts - embargo]
    test = ds[ds["event_timestamp"] >= ts]
    return train.reset_index(drop=True), test.reset_index(drop=True)


def _plots(test: pd.DataFrame, pos: np.ndarray, model: Any, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    fig, ax = plt.subplots(figsize=(9, 4))
    for sym, g in test.assign(_pos=pos).groupby("symbol"):
        ax.plot(equity_curve(g, g["_pos"].to_numpy()), label=f"{sym} model (net)")
    ax.axhline(0.0, color="grey", lw=0.8, label="always flat")
    ax.set_title("Test window: cumulative net log return")
    ax.legend()
    fig.tight_layout()
    files.append(out / "equity_curve.png")
    fig.savefig(files[-1], dpi=100)
    plt.close(fig)

    imp = pd.Series(model.feature_importances_, index=list(FEATURE_NAMES)).sort_values()
    fig, ax = plt.subplots(figsize=(6, 4))
    imp.plot.barh(ax=ax)
    ax.set_title("XGBoost feature importance (gain share)")
    fig.tight_layout()
    files.append(out / "feature_importance.png")
    fig.savefig(files[-1], dpi=100)
    plt.close(fig)
    return files


def train_and_register(
    settings: PlatformSettings,
    cfg: ExperimentConfig,
    dataset_path: str,
    as_of: datetime,
    timeframe: str | None = None,
) -> TrainResult:
    """Fit on the purged train window, evaluate on the test window, export, register."""
    from xgboost import XGBClassifier

    tf = timeframe or settings.timeframe
    ds = pd.read_parquet(dataset_path)
    r = cfg.ranges(utc(as_of))
    from engine.mt5 import timeframe_seconds

    embargo = pd.Timedelta(seconds=cfg.split.embargo_bars * timeframe_seconds(tf))
    train, test = chronological_split(ds, r["test"][0], embargo)
    if len(train) < 200 or len(test) < 50:
        raise ValueError(f"too little data: {len(train)} train rows, {len(test)} test rows")
    x_cols = list(FEATURE_NAMES)
    x_train = train[x_cols].to_numpy(np.float32)
    x_test = test[x_cols].to_numpy(np.float32)

    params = {"objective": "multi:softprob", "num_class": 3, "n_jobs": 2, "random_state": 7, **cfg.model}
    model = XGBClassifier(**params)
    model.fit(x_train, train["label"].to_numpy())
    proba = model.predict_proba(x_test)
    pos = positions_from_proba(proba, cfg.decision.min_confidence)
    bt = backtest(test, pos, tf)
    flat = backtest(test, np.zeros(len(test), dtype=np.int64), tf)
    acc = float((proba.argmax(axis=1) == test["label"].to_numpy()).mean())
    from sklearn.metrics import log_loss

    metrics = {
        "test_accuracy": acc,
        "test_log_loss": float(log_loss(test["label"], proba, labels=[0, 1, 2])),
        **{f"test_{k}": v for k, v in bt.items()},
        "baseline_flat_net_return": flat["net_return"],
        "train_rows": float(len(train)),
        "test_rows": float(len(test)),
    }
    onnx_model = xgb_to_onnx(model, len(x_cols))
    parity = check_parity(model, onnx_model, x_test)
    metrics["onnx_parity_max_abs_diff"] = parity

    manifest: dict[str, Any] = {
        "model_name": settings.model_name,
        "feature_service": cfg.feature_service,
        "feature_view": FEATURE_VIEW,
        "features": x_cols,
        "input_name": "input",
        "prob_output": "probabilities",
        "classes": list(CLASSES),
        "positions": list(POSITIONS),
        "min_confidence": cfg.decision.min_confidence,
        "timeframe": tf,
        "symbols": sorted(ds["symbol"].unique().tolist()),
        "train_range": [r["train"][0].isoformat(), r["train"][1].isoformat()],
        "test_range": [r["test"][0].isoformat(), r["test"][1].isoformat()],
        "label_horizon": cfg.label.horizon_bars,
        "metrics": metrics,
    }
    mlflow = _mlflow(settings)
    exp_id = ensure_experiment(settings)
    with mlflow.start_run(experiment_id=exp_id, run_name=f"{cfg.name}-{utc(as_of):%Y%m%d}") as run:
        mlflow.log_params({f"model.{k}": v for k, v in cfg.model.items()})
        mlflow.log_params(
            {
                "label.horizon_bars": cfg.label.horizon_bars,
                "label.cost_multiplier": cfg.label.cost_multiplier,
                "decision.min_confidence": cfg.decision.min_confidence,
                "feature_service": cfg.feature_service,
                "timeframe": tf,
                "symbols": ",".join(manifest["symbols"]),
                "train_range": "/".join(manifest["train_range"]),
                "test_range": "/".join(manifest["test_range"]),
            }
        )
        mlflow.log_metrics(metrics)
        with tempfile.TemporaryDirectory() as tmp:
            for f in _plots(test, pos, model, Path(tmp)):
                mlflow.log_artifact(str(f), artifact_path="plots")
            (Path(tmp) / "features.json").write_text(json.dumps(x_cols, indent=1))
            mlflow.log_artifact(str(Path(tmp) / "features.json"))
        info = mlflow.onnx.log_model(
            onnx_model,
            name="model",
            onnx_execution_providers=["CPUExecutionProvider"],
            metadata={"tx_manifest": manifest},
        )
        mv = mlflow.register_model(info.model_uri, settings.model_name)
    log.info("registered %s v%s (run %s): %s", settings.model_name, mv.version, run.info.run_id, bt)
    return TrainResult(run.info.run_id, settings.model_name, str(mv.version), metrics, parity)


@dataclass
class GateDecision:
    version: str
    promoted: bool
    reason: str
    previous_champion: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def promote(settings: PlatformSettings, version: str) -> GateDecision:
    """Move ``champion`` to ``version`` if it beats always-flat after costs on its test window
    and its ONNX export passed parity; the replaced champion becomes ``previous``.

    A refused version that passed parity becomes ``challenger``: it may be shadowed or paper
    traded, never served as the champion."""
    from mlflow import MlflowClient

    _mlflow(settings)
    client = MlflowClient(settings.tracking_uri, settings.tracking_uri)
    mv = client.get_model_version(settings.model_name, version)
    run = client.get_run(str(mv.run_id))
    m = run.data.metrics
    try:
        current: str | None = client.get_model_version_by_alias(settings.model_name, CHAMPION).version
    except Exception:
        current = None
    net, flat = m.get("test_net_return", float("-inf")), m.get("baseline_flat_net_return", 0.0)
    parity_ok = m.get("onnx_parity_max_abs_diff", float("inf")) <= 1e-5
    if not parity_ok:
        decision = GateDecision(version, False, "ONNX parity failed", current)
    elif not net > flat:
        decision = GateDecision(version, False, f"net return {net:.5f} does not beat always-flat {flat:.5f}", current)
        client.set_registered_model_alias(settings.model_name, CHALLENGER, str(version))
    else:
        if current is not None and current != str(version):
            client.set_registered_model_alias(settings.model_name, PREVIOUS, current)
        client.set_registered_model_alias(settings.model_name, CHAMPION, str(version))
        decision = GateDecision(version, True, f"net return {net:.5f} > always-flat {flat:.5f}", current)
    client.set_model_version_tag(settings.model_name, str(version), "gate", json.dumps(decision.to_dict()))
    log.info("gate for %s v%s: %s", settings.model_name, version, decision.reason)
    return decision
