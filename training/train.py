"""Train, evaluate, export and register the tx_trend model; promote it through a gate.

Each step is a plain function that the CLI, the DAG tasks and the tests call, passing
references (paths, run ids, versions) between them. A training *work dir*
(``$TX_HOME/runs/<name>_<tf>_<as_of>_<id>``) carries the state between steps:

1. :func:`build_training_dataset` — point-in-time dataset through Feast, saved as parquet;
2. :func:`fit_step` — purged chronological split, the config's model family fitted on the
   training window (the ensemble fits its weights on the last walk-forward fold);
3. :func:`backtest_step` — test-window predictions, cost-aware backtest with bootstrap CIs and
   baselines, plots;
4. :func:`export_step` — one ONNX graph, parity against the native model (hard check),
   single-row latency, and the monitoring reference (``trained_at``, per-feature quantiles and a
   training-split sample scored by the graph, ``reference_sample.parquet``);
5. :func:`register_step` — MLflow run + registered model version carrying the manifest;

:func:`train_and_register` runs 2-5. :func:`promote` (in :mod:`training.gate`) is the gate.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import subprocess
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from engine.policy import DecisionPolicy
from titanovax.settings import PROJECT_ROOT, PlatformSettings, utc
from training.backtest import (
    backtest,
    baselines,
    costs_from_config,
    pnl_frame,
    positions_from_proba,
)
from training.config import ExperimentConfig, TransformerConfig
from training.dataset import build_dataset, sequence_tensor, service_inputs
from training.labels import CLASSES, POSITIONS
from training.models import EnsembleModel, ModelData, RegimeClassifier, TransformerModel, XGBModel
from training.monitor.performance import expected_pnl_from_frame
from training.policy import policy_positions
from training.splits import purged_train_test, walk_forward_folds

log = logging.getLogger(__name__)

CHAMPION = "champion"
PREVIOUS = "previous"
CHALLENGER = "challenger"

REFERENCE_SAMPLE = "reference_sample.parquet"
"""The bundle's reference sample (contract C1): training-split feature rows plus the model's
class probabilities ``p_<class>``, the baseline the drift check compares the live window with."""
REFERENCE_ROWS = 5000
POLICY_FILE = "decision_policy.json"
"""The decision policy chosen on the training window's purged folds (manifest ``decision_policy``)."""
REFERENCE_QUANTILES = {"q01": 0.01, "q25": 0.25, "q50": 0.5, "q75": 0.75, "q99": 0.99}


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


def ensure_experiment(settings: PlatformSettings, name: str | None = None) -> str:
    mlflow = _mlflow(settings)
    name = name or settings.mlflow_experiment
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return str(exp.experiment_id)
    settings.mlflow_artifacts.mkdir(parents=True, exist_ok=True)
    return str(mlflow.create_experiment(name, artifact_location=settings.mlflow_artifacts.as_uri()))


def label_kwargs(cfg: ExperimentConfig) -> dict[str, Any]:
    lc = cfg.label
    return {
        "commission": lc.commission,
        "method": lc.method,
        "tp": lc.tp,
        "sl": lc.sl,
        "barrier_unit": lc.barrier_unit,
        "barrier_window": lc.barrier_window,
    }


def build_training_dataset(
    settings: PlatformSettings,
    cfg: ExperimentConfig,
    as_of: datetime | None,
    timeframe: str | None = None,
) -> str:
    """Build the dataset for the config's train+test span (ending at ``as_of``); returns its path."""
    tf = timeframe or settings.timeframe
    r = cfg.ranges(utc(as_of) if as_of else None)
    ds = build_dataset(
        settings,
        settings.symbols,
        tf,
        r["train"][0],
        r["test"][1],
        horizon=cfg.label.horizon_bars,
        cost_multiplier=cfg.label.cost_multiplier,
        feature_service=cfg.feature_service,
        label_kw=label_kwargs(cfg),
    )
    out = settings.home / "datasets" / f"{cfg.name}_{tf}_{r['test'][1]:%Y%m%dT%H%M}.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.to_parquet(out, index=False)
    log.info("dataset %s: %d rows", out, len(ds))
    return str(out)


def model_data(ds: pd.DataFrame, feature_service: str) -> ModelData:
    names, has_seq = service_inputs(feature_service)
    y = ds["label"].to_numpy() if "label" in ds else None
    return ModelData(ds[names].to_numpy(np.float32), sequence_tensor(ds) if has_seq else None, y)


def transformer_config(
    cfg: ExperimentConfig, transformer_params: dict[str, Any] | None = None
) -> TransformerConfig:
    """The config's transformer parameters with tuned ones (``transformer_params``) over them."""
    return TransformerConfig.model_validate(
        {**cfg.transformer.model_dump(), **(transformer_params or {})}
    )


def make_model(
    cfg: ExperimentConfig,
    params: dict[str, Any] | None = None,
    transformer_params: dict[str, Any] | None = None,
) -> Any:
    """The config's model family, unfitted (``params`` override the XGBoost parameters,
    ``transformer_params`` the transformer's — both typically an Optuna study's best)."""
    xgb = XGBModel({**cfg.model, **(params or {})})
    if cfg.family == "xgboost":
        return xgb
    names, has_seq = service_inputs(cfg.feature_service)
    if not has_seq:
        raise ValueError(
            f"family ensemble needs a feature service with the sequence; {cfg.feature_service} has none"
        )
    return EnsembleModel(
        xgb,
        TransformerModel(transformer_config(cfg, transformer_params)),
        RegimeClassifier(names, cfg.regime.vol_feature, cfg.regime.trend_feature),
    )


def _embargo(cfg: ExperimentConfig, timeframe: str) -> pd.Timedelta:
    from engine.mt5 import timeframe_seconds

    return pd.Timedelta(seconds=cfg.split.embargo_bars * timeframe_seconds(timeframe))


def split_dataset(
    ds: pd.DataFrame, cfg: ExperimentConfig, as_of: datetime | None, timeframe: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Purged, embargoed hold-out split at the config's test start."""
    r = cfg.ranges(utc(as_of) if as_of else None)
    tr, te = purged_train_test(ds, pd.Timestamp(r["test"][0]), _embargo(cfg, timeframe))
    return ds.iloc[tr].reset_index(drop=True), ds.iloc[te].reset_index(drop=True)


def fit_model(model: Any, train: pd.DataFrame, cfg: ExperimentConfig, timeframe: str) -> Any:
    """Fit ``model`` on the training rows; the ensemble gets the last walk-forward fold as
    validation (purged and embargoed from the rows before it)."""
    data = model_data(train, cfg.feature_service)
    if isinstance(model, EnsembleModel):
        folds = walk_forward_folds(
            train,
            n_folds=max(cfg.split.n_folds, 1),
            embargo=_embargo(cfg, timeframe),
            min_train_rows=50,
        )
        if not folds:
            raise ValueError("too little training data for a validation fold")
        last = folds[-1]
        return model.fit(data.take(last.train), data.take(last.test))
    return model.fit(data)


# --- the steps ---------------------------------------------------------------------------------
def _workdir(
    settings: PlatformSettings, cfg: ExperimentConfig, tf: str, as_of: datetime | None
) -> Path:
    stamp = f"{utc(as_of):%Y%m%dT%H%M}" if as_of else "explicit"
    d = settings.home / "runs" / f"{cfg.name}_{tf}_{stamp}_{uuid.uuid4().hex[:8]}"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1, default=str))


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def fit_step(
    settings: PlatformSettings,
    cfg: ExperimentConfig,
    dataset_path: str,
    as_of: datetime | None,
    timeframe: str | None = None,
    params: dict[str, Any] | None = None,
    transformer_params: dict[str, Any] | None = None,
) -> str:
    """Split, fit and pickle the model into a new work dir; returns the work dir.

    ``params`` / ``transformer_params``: tuned XGBoost / transformer parameters (over the config's)."""
    tf = timeframe or settings.timeframe
    ds = pd.read_parquet(dataset_path)
    train, test = split_dataset(ds, cfg, as_of, tf)
    if len(train) < 200 or len(test) < 50:
        raise ValueError(f"too little data: {len(train)} train rows, {len(test)} test rows")
    model = fit_model(make_model(cfg, params, transformer_params), train, cfg, tf)
    wd = _workdir(settings, cfg, tf, as_of)
    with open(wd / "model.pkl", "wb") as f:
        pickle.dump(model, f)
    if cfg.decision.policy == "learned":  # on the training split's purged folds only
        from training.policy import learn_policy

        policy = learn_policy(
            train, cfg, tf, costs_from_config(cfg.costs), params, transformer_params
        )
        _write_json(wd / POLICY_FILE, policy.to_dict())
    r = cfg.ranges(utc(as_of) if as_of else None)
    _write_json(
        wd / "step.json",
        {
            "config": cfg.model_dump(mode="json"),
            "dataset_path": dataset_path,
            "as_of": utc(as_of).isoformat() if as_of else None,
            "timeframe": tf,
            "params": params or {},
            "transformer_params": transformer_params or {},
            "train_range": [r["train"][0].isoformat(), r["train"][1].isoformat()],
            "test_range": [r["test"][0].isoformat(), r["test"][1].isoformat()],
            "train_rows": len(train),
            "test_rows": len(test),
            "symbols": sorted(ds["symbol"].unique().tolist()),
        },
    )
    log.info("fitted %s (%s) on %d rows → %s", cfg.name, cfg.family, len(train), wd)
    return str(wd)


def load_policy(workdir: str) -> DecisionPolicy | None:
    """The work dir's learned decision policy, None for the old rule (``decision.policy: legacy``
    or a work dir fitted before policies)."""
    f = Path(workdir) / POLICY_FILE
    return DecisionPolicy.from_mapping(_read_json(f)) if f.exists() else None


def _load_step(workdir: str) -> tuple[dict[str, Any], ExperimentConfig, Any, pd.DataFrame]:
    wd = Path(workdir)
    step = _read_json(wd / "step.json")
    cfg = ExperimentConfig.model_validate(step["config"])
    with open(wd / "model.pkl", "rb") as f:
        model = pickle.load(f)
    ds = pd.read_parquet(step["dataset_path"])
    as_of = datetime.fromisoformat(step["as_of"]) if step["as_of"] else None
    _, test = split_dataset(ds, cfg, as_of, step["timeframe"])
    return step, cfg, model, test


def _load_train(workdir: str) -> pd.DataFrame:
    """The training split of the work dir's dataset (the rows the model was fitted on)."""
    step = _read_json(Path(workdir) / "step.json")
    cfg = ExperimentConfig.model_validate(step["config"])
    ds = pd.read_parquet(step["dataset_path"])
    as_of = datetime.fromisoformat(step["as_of"]) if step["as_of"] else None
    train, _ = split_dataset(ds, cfg, as_of, step["timeframe"])
    return train


def reference_stats(train: pd.DataFrame, names: list[str]) -> dict[str, dict[str, float]]:
    """Per-feature quantiles (``q01`` … ``q99``) of the training rows: small enough for the
    manifest, so the lean engine can judge a live row without reading any parquet."""
    q = train[names].astype(float).quantile(list(REFERENCE_QUANTILES.values()))
    return {n: {k: float(q.loc[v, n]) for k, v in REFERENCE_QUANTILES.items()} for n in names}


def reference_sample(
    train: pd.DataFrame, feature_service: str, onnx_model: Any, rows: int = REFERENCE_ROWS
) -> pd.DataFrame:
    """Up to ``rows`` training rows (a seeded random draw, time-ordered) with the tabular
    features and the ONNX graph's class probabilities as ``p_<class>`` — scored by the same
    graph the live window is scored by, so the output-drift comparison is like for like."""
    from training.export import onnx_predict, onnx_session

    names, _ = service_inputs(feature_service)
    sample = train.sample(n=min(rows, len(train)), random_state=0) if len(train) > rows else train
    sample = sample.sort_values(["event_timestamp", "symbol"]).reset_index(drop=True)
    data = model_data(sample, feature_service)
    proba = onnx_predict(onnx_session(onnx_model), data.x, data.seq)
    out = sample[["event_timestamp", "symbol", *names]].copy()
    for i, c in enumerate(CLASSES):
        out[f"p_{c}"] = proba[:, i].astype(np.float64)
    return out


def backtest_step(workdir: str) -> dict[str, float]:
    """Test-window predictions → backtest with CIs, baselines and plots; writes metrics.json."""
    from sklearn.metrics import log_loss

    from training.plots import write_plots

    step, cfg, model, test = _load_step(workdir)
    tf = step["timeframe"]
    data = model_data(test, cfg.feature_service)
    proba = model.predict_proba(data)
    np.save(Path(workdir) / "test_proba.npy", proba)
    costs = costs_from_config(cfg.costs)
    policy = load_policy(workdir)
    legacy = positions_from_proba(proba, cfg.decision.min_confidence)
    pos = (
        legacy
        if policy is None
        else policy_positions(
            test,
            proba,
            policy,
            costs,
            regime=model.regime.predict(data) if isinstance(model, EnsembleModel) else None,
        )
    )
    bt = backtest(test, pos, tf, costs, n_boot=cfg.gate.n_boot, ci=cfg.gate.ci)
    base = baselines(test, tf, costs, n_boot=cfg.gate.n_boot)
    y = data.labels()
    metrics: dict[str, float] = {
        "test_accuracy": float((proba.argmax(axis=1) == y).mean()),
        "test_log_loss": float(log_loss(y, np.clip(proba, 1e-7, 1), labels=[0, 1, 2])),
        **{f"test_{k}": v for k, v in bt.items()},
        **{
            f"baseline_{b}_{k}": v
            for b, m in base.items()
            for k, v in m.items()
            if k in ("net_return", "sharpe", "max_drawdown", "sharpe_ci_low", "sharpe_ci_high")
        },
        "train_rows": float(step["train_rows"]),
        "test_rows": float(step["test_rows"]),
    }
    if policy is not None:  # the old rule beside the learned policy, on the same bars
        old = backtest(test, legacy, tf, costs, n_boot=cfg.gate.n_boot, ci=cfg.gate.ci)
        metrics.update(
            {f"legacy_{k}": old[k] for k in ("net_return", "sharpe", "trades", "exposure")}
        )
    pnl = pnl_frame(test, pos, tf, costs)
    pnl.to_parquet(Path(workdir) / "test_pnl.parquet", index=False)
    names, _ = service_inputs(cfg.feature_service)
    write_plots(Path(workdir) / "plots", test, pos, proba, y, model, names, tf, costs)
    _write_json(Path(workdir) / "metrics.json", metrics)
    return metrics


def export_step(workdir: str) -> dict[str, Any]:
    """One ONNX graph; parity with the native model on the test window (hard check) and
    single-row latency; writes model.onnx, the XGBoost member's native booster
    (``xgb_booster.ubj``, for serving's TreeSHAP) and export.json."""
    from training.export import (
        NATIVE_BOOSTER_FILE,
        check_parity,
        explanation_outputs,
        model_to_onnx,
        save_native_booster,
        sha256,
        single_row_latency_us,
    )

    _step, cfg, model, test = _load_step(workdir)
    data = model_data(test, cfg.feature_service)
    seq_shape = None if data.seq is None else (int(data.seq.shape[1]), int(data.seq.shape[2]))
    onnx_model = model_to_onnx(model, data.x.shape[1], seq_shape)
    parity = check_parity(model, onnx_model, data.x, seq=data.seq)
    lat = single_row_latency_us(onnx_model, data.x[0], None if data.seq is None else data.seq[0])
    (Path(workdir) / "model.onnx").write_bytes(onnx_model.SerializeToString())
    train = _load_train(workdir)
    names, _ = service_inputs(cfg.feature_service)
    reference_sample(train, cfg.feature_service, onnx_model).to_parquet(
        Path(workdir) / REFERENCE_SAMPLE, index=False
    )
    has_booster = save_native_booster(model, Path(workdir) / NATIVE_BOOSTER_FILE)
    info = {
        "parity_max_abs_diff": parity,
        "onnx_latency_us": lat,
        "bundle_sha256": sha256(onnx_model),
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "reference_stats": reference_stats(train, names),
        "native_booster": NATIVE_BOOSTER_FILE if has_booster else None,
        "explanation_outputs": explanation_outputs(model),
    }
    _write_json(Path(workdir) / "export.json", info)
    log.info("ONNX export: parity %.2e, single-row p50 %.0f µs", parity, lat["p50"])
    return info


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def lake_snapshot(settings: PlatformSettings, symbols: list[str], timeframe: str) -> str:
    """Hash of the lake partitions (path, size, content hash of small files) the dataset read."""
    h = hashlib.sha256()
    for sym in symbols:
        for p in sorted(
            (settings.lake_dir / f"symbol={sym}" / f"timeframe={timeframe}").glob(
                "date=*/bars.parquet"
            )
        ):
            h.update(str(p.relative_to(settings.lake_dir)).encode())
            h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def model_params(model: Any) -> dict[str, Any]:
    """The fitted model's member parameters, as trained (config + tuned): ``xgboost`` and, for
    the ensemble, ``transformer``."""
    xgb = model.xgb if isinstance(model, EnsembleModel) else model
    out: dict[str, Any] = {"xgboost": dict(xgb.params) if isinstance(xgb, XGBModel) else None}
    if isinstance(model, EnsembleModel):
        out["transformer"] = model.transformer.cfg.model_dump(mode="json")
    return out


def build_manifest(
    settings: PlatformSettings,
    step: dict[str, Any],
    cfg: ExperimentConfig,
    model: Any,
    metrics: dict[str, float],
    export: dict[str, Any],
) -> dict[str, Any]:
    from feature_repo.pipeline.store import SEQ_VIEW, SERVICE_VIEWS
    from feature_repo.pipeline.transforms import SEQ_CHANNELS, SEQ_FIELD, SEQ_LEN

    names, has_seq = service_inputs(cfg.feature_service)
    views = list(SERVICE_VIEWS[cfg.feature_service])
    tab_views = [v for v in views if v != SEQ_VIEW]
    manifest: dict[str, Any] = {
        "model_name": settings.model_name,
        "feature_service": cfg.feature_service,
        "feature_view": tab_views[0],
        "feature_views": views,
        "features": names,
        "input_name": "input",
        "prob_output": "probabilities",
        "classes": list(CLASSES),
        "positions": list(POSITIONS),
        "min_confidence": cfg.decision.min_confidence,
        "timeframe": step["timeframe"],
        "symbols": step["symbols"],
        "train_range": step["train_range"],
        "test_range": step["test_range"],
        "label_horizon": cfg.label.horizon_bars,
        "label": cfg.label.model_dump(mode="json"),
        "costs": cfg.costs.model_dump(mode="json"),
        "gate": cfg.gate.model_dump(mode="json"),
        "family": cfg.family,
        "experiment": cfg.name,
        "metrics": metrics,
        "thresholds": {"min_confidence": cfg.decision.min_confidence},
        "ensemble_weights": None,
        "model_params": model_params(model),
        "lake_snapshot": lake_snapshot(settings, step["symbols"], step["timeframe"]),
        "git_commit": git_commit(),
        "bundle_sha256": export["bundle_sha256"],
        "onnx_latency_us": export["onnx_latency_us"]["p50"],
        "onnx_latency_p99_us": export["onnx_latency_us"]["p99"],
        "parity_max_abs_diff": export["parity_max_abs_diff"],
    }
    # contract C1 (work dirs exported before it lack these: the bundle then has no reference)
    if export.get("trained_at"):
        manifest["trained_at"] = export["trained_at"]
    if export.get("reference_stats"):
        manifest["reference_stats"] = export["reference_stats"]
        manifest["reference_sample"] = REFERENCE_SAMPLE
    # explanations (docs/explanations.md): extra graph outputs, native booster for TreeSHAP
    if export.get("explanation_outputs"):
        manifest["explanation_outputs"] = export["explanation_outputs"]
    if export.get("native_booster"):
        manifest["native_booster"] = export["native_booster"]
    if has_seq:
        manifest["sequence"] = {
            "input_name": "sequence",
            "feature_view": SEQ_VIEW,
            "field": SEQ_FIELD,
            "seq_len": SEQ_LEN,
            "channels": list(SEQ_CHANNELS),
        }
    if isinstance(model, EnsembleModel) and model.weights is not None:
        manifest["ensemble_weights"] = {
            "members": ["xgboost", "transformer"],
            "by_regime_state": model.weights.tolist(),
        }
        manifest["thresholds"]["regime"] = {
            "vol_feature": cfg.regime.vol_feature,
            "vol_threshold": model.regime.vol_thr,
            "trend_feature": cfg.regime.trend_feature,
            "abs_trend_threshold": model.regime.trend_thr,
        }
    return manifest


def training_dataset(step: dict[str, Any], cfg: ExperimentConfig, manifest: dict[str, Any]) -> Any:
    """The training dataset as an MLflow dataset: the point-in-time parquet, named after the
    feature service, its digest the lake snapshot it was built from."""
    from mlflow.data.pandas_dataset import from_pandas

    ds = pd.read_parquet(step["dataset_path"])
    return from_pandas(
        ds,
        source=step["dataset_path"],
        name=f"{cfg.feature_service}:{step['timeframe']}:{','.join(step['symbols'])}",
        targets="label" if "label" in ds else None,
        digest=manifest["lake_snapshot"][:16],
    )


def dataset_tags(manifest: dict[str, Any]) -> dict[str, str]:
    """What the logged dataset is: feature service, lake snapshot hash and date range."""
    return {
        "feature_service": str(manifest["feature_service"]),
        "lake_snapshot": str(manifest["lake_snapshot"]),
        "range": f"{manifest['train_range'][0]} / {manifest['test_range'][1]}",
        "train_range": "/".join(manifest["train_range"]),
        "test_range": "/".join(manifest["test_range"]),
        "symbols": ",".join(manifest["symbols"]),
        "timeframe": str(manifest["timeframe"]),
    }


def signature_and_example(model: Any, test: pd.DataFrame, feature_service: str) -> tuple[Any, Any]:
    """The model version's input example (five test rows, in the ONNX graph's input names)
    and the signature inferred from it and the model's class probabilities."""
    from mlflow.models import infer_signature

    data = model_data(test.head(5), feature_service)
    proba = np.asarray(model.predict_proba(data), dtype=np.float32)
    example: dict[str, np.ndarray] = {"input": data.x.astype(np.float32)}
    if data.seq is not None:
        example["sequence"] = data.seq.astype(np.float32)
    return example, infer_signature(example, {"probabilities": proba})


def register_step(settings: PlatformSettings, workdir: str) -> TrainResult:
    """MLflow run (params, metrics, plots, per-bar test P&L) and a registered ONNX version."""
    import onnx

    wd = Path(workdir)
    step, cfg, model, test = _load_step(workdir)
    metrics = _read_json(wd / "metrics.json")
    export = _read_json(wd / "export.json")
    metrics = {
        **metrics,
        "onnx_parity_max_abs_diff": export["parity_max_abs_diff"],
        "onnx_latency_p50_us": export["onnx_latency_us"]["p50"],
    }
    manifest = build_manifest(settings, step, cfg, model, metrics, export)
    # C2: what the monitor compares the champion's live P&L with (training/monitor/performance.py)
    manifest["expected_pnl"] = expected_pnl_from_frame(pd.read_parquet(wd / "test_pnl.parquet"))
    policy = load_policy(workdir)  # docs/execution-policy.md; absent: the old rule
    if policy is not None:
        manifest["decision_policy"] = policy.to_dict()
    onnx_model = onnx.load(str(wd / "model.onnx"))
    mlflow = _mlflow(settings)
    exp_id = ensure_experiment(settings)
    with mlflow.start_run(
        experiment_id=exp_id, run_name=f"{cfg.name}-{step['test_range'][1][:10]}"
    ) as run:
        mlflow.log_params({f"model.{k}": v for k, v in {**cfg.model, **step["params"]}.items()})
        if isinstance(model, EnsembleModel):
            mlflow.log_params(
                {
                    f"transformer.{k}": v
                    for k, v in model.transformer.cfg.model_dump(mode="json").items()
                }
            )
        mlflow.log_params(
            {
                "family": cfg.family,
                "label.method": cfg.label.method,
                "label.horizon_bars": cfg.label.horizon_bars,
                "label.cost_multiplier": cfg.label.cost_multiplier,
                "label.commission": cfg.label.commission,
                "decision.min_confidence": cfg.decision.min_confidence,
                "decision.policy": cfg.decision.policy,
                "feature_service": cfg.feature_service,
                "timeframe": step["timeframe"],
                "symbols": ",".join(step["symbols"]),
                "train_range": "/".join(step["train_range"]),
                "test_range": "/".join(step["test_range"]),
            }
        )
        mlflow.log_metrics({k: v for k, v in metrics.items() if np.isfinite(v)})
        for f in sorted((wd / "plots").glob("*.png")):
            mlflow.log_artifact(str(f), artifact_path="plots")
        mlflow.log_artifact(str(wd / "test_pnl.parquet"), artifact_path="evaluation")
        _write_json(wd / "features.json", manifest["features"])
        mlflow.log_artifact(str(wd / "features.json"))
        mlflow.set_tag("mlflow.source.git.commit", manifest["git_commit"])
        mlflow.log_input(
            training_dataset(step, cfg, manifest), context="training", tags=dataset_tags(manifest)
        )
        example, signature = signature_and_example(model, test, cfg.feature_service)
        # the native booster travels inside the model (MLflow ``extra_files/``), so the
        # registry version alone is a complete bundle for serving and `tx models pull`
        booster = manifest.get("native_booster")
        info = mlflow.onnx.log_model(
            onnx_model,
            name="model",
            onnx_execution_providers=["CPUExecutionProvider"],
            metadata={"tx_manifest": manifest},
            signature=signature,
            input_example=example,
            extra_files=[str(wd / booster)] if booster else None,
            # one self-contained file: serving and `tx models pull` read model.onnx alone,
            # and MLflow would otherwise move the transformer's weights to side files
            save_as_external_data=False,
        )
        if (wd / REFERENCE_SAMPLE).exists():  # next to model.onnx in the model's artifacts
            mlflow.MlflowClient(settings.tracking_uri).log_model_artifact(
                info.model_id, str(wd / REFERENCE_SAMPLE)
            )
        mv = mlflow.register_model(info.model_uri, settings.model_name)
    from training.registry import client_for, describe_version

    client_for(settings).update_model_version(
        settings.model_name,
        str(mv.version),
        description=describe_version(manifest, str(mv.version)),
    )
    log.info("registered %s v%s (run %s)", settings.model_name, mv.version, run.info.run_id)
    return TrainResult(
        run.info.run_id,
        settings.model_name,
        str(mv.version),
        metrics,
        float(export["parity_max_abs_diff"]),
    )


def train_and_register(
    settings: PlatformSettings,
    cfg: ExperimentConfig,
    dataset_path: str,
    as_of: datetime | None,
    timeframe: str | None = None,
    params: dict[str, Any] | None = None,
    transformer_params: dict[str, Any] | None = None,
) -> TrainResult:
    """fit → backtest → export (parity-checked) → register."""
    wd = fit_step(settings, cfg, dataset_path, as_of, timeframe, params, transformer_params)
    backtest_step(wd)
    export_step(wd)
    return register_step(settings, wd)


def promote(settings: PlatformSettings, version: str, **kw: Any) -> Any:
    """The promotion gate (see :func:`training.gate.promote`)."""
    from training.gate import promote as gate

    return gate(settings, version, **kw)
