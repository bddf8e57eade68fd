"""Optuna tuning of the XGBoost parameters on purged walk-forward folds.

TPE sampler, :class:`optuna.pruners.MedianPruner` on the per-fold validation log loss (a trial
reports after each fold and stops when it is worse than the median of earlier trials at that
fold). The study lives in ``TX_OPTUNA_STORAGE`` (default SQLite under ``TX_HOME``; PostgreSQL
when set), so several workers — ``tx tune --workers N`` processes or the DAG's mapped tasks —
share one study by name. :func:`log_study` records the study, the best trial and the parameter
importances in MLflow. Only the training window is used: the test window stays unseen.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from infra.settings import PlatformSettings, utc
from training.config import ExperimentConfig

log = logging.getLogger(__name__)


def search_space(trial: Any) -> dict[str, Any]:
    return {
        "n_estimators": trial.suggest_int("n_estimators", 50, 300, step=25),
        "max_depth": trial.suggest_int("max_depth", 2, 6),
        "learning_rate": trial.suggest_float("learning_rate", 0.02, 0.3, log=True),
        "subsample": trial.suggest_float("subsample", 0.5, 1.0),
        "colsample_bytree": trial.suggest_float("colsample_bytree", 0.5, 1.0),
        "min_child_weight": trial.suggest_float("min_child_weight", 1.0, 20.0, log=True),
        "reg_lambda": trial.suggest_float("reg_lambda", 0.1, 10.0, log=True),
    }


def objective(trial: Any, train: pd.DataFrame, cfg: ExperimentConfig, timeframe: str) -> float:
    """Mean validation log loss over the purged walk-forward folds (a plain function)."""
    import optuna

    from training.models import XGBModel
    from training.splits import walk_forward_folds
    from training.train import _embargo, model_data

    params = {**cfg.model, **search_space(trial)}
    trial.set_user_attr("pid", os.getpid())
    data = model_data(train, cfg.feature_service)
    folds = walk_forward_folds(train, n_folds=cfg.split.n_folds, embargo=_embargo(cfg, timeframe), scheme=cfg.split.scheme, min_train_rows=50)
    if not folds:
        raise ValueError("no walk-forward fold has enough training rows")
    losses = []
    for step, f in enumerate(folds):
        m = XGBModel({**params, "n_jobs": 1}).fit(data.take(f.train))
        va = data.take(f.test)
        p = m.predict_proba(va)
        losses.append(float(-np.mean(np.log(np.clip(p[np.arange(len(va)), va.labels()], 1e-7, 1)))))
        trial.report(float(np.mean(losses)), step)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return float(np.mean(losses))


def open_study(storage: str, study_name: str, seed: int = 11) -> Any:
    import optuna

    return optuna.create_study(
        study_name=study_name,
        storage=storage,
        direction="minimize",
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=4),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0),
        load_if_exists=True,
    )


def study_name_for(cfg: ExperimentConfig, dataset_path: str) -> str:
    return f"{cfg.name}-{Path(dataset_path).stem}"


def _train_rows(cfg: ExperimentConfig, dataset_path: str, as_of: datetime | None, timeframe: str) -> pd.DataFrame:
    from training.train import split_dataset

    ds = pd.read_parquet(dataset_path)
    train, _ = split_dataset(ds, cfg, as_of, timeframe)
    return train


def tune_worker(
    storage: str,
    study_name: str,
    cfg: ExperimentConfig,
    dataset_path: str,
    as_of: datetime | None,
    timeframe: str,
    n_trials: int,
    worker: int = 0,
) -> int:
    """Run ``n_trials`` trials of the shared study in this process; returns trials finished."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(storage, study_name, seed=cfg.tune.seed + worker)
    train = _train_rows(cfg, dataset_path, as_of, timeframe)
    study.optimize(lambda t: objective(t, train, cfg, timeframe), n_trials=n_trials, catch=())
    log.info("worker %d: %d trials done in study %s", worker, n_trials, study_name)
    return n_trials


def _worker_main(args: tuple[Any, ...]) -> int:
    storage, study_name, cfg_json, dataset_path, as_of, timeframe, n_trials, worker = args
    cfg = ExperimentConfig.model_validate(cfg_json)
    return tune_worker(storage, study_name, cfg, dataset_path, datetime.fromisoformat(as_of) if as_of else None, timeframe, n_trials, worker)


@dataclass
class TuneResult:
    study_name: str
    storage: str
    n_trials: int
    best_value: float
    best_params: dict[str, Any]
    mlflow_run_id: str | None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["storage"] = redact(self.storage)
        return d


def redact(url: str) -> str:
    """Hide a password in a database URL."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        if ":" in cred:
            return f"{scheme}://{cred.split(':', 1)[0]}:***@{host}"
    return url


def tune(
    settings: PlatformSettings,
    cfg: ExperimentConfig,
    dataset_path: str,
    as_of: datetime | None,
    *,
    timeframe: str | None = None,
    workers: int = 1,
    n_trials: int | None = None,
    study_name: str | None = None,
) -> TuneResult:
    """``workers`` processes share one study (``n_trials`` in all); then log it to MLflow."""
    tf = timeframe or settings.timeframe
    storage = settings.optuna_storage_url
    name = study_name or study_name_for(cfg, dataset_path)
    total = n_trials or cfg.tune.n_trials
    open_study(storage, name, cfg.tune.seed)  # create once, before the workers race to
    per = [total // workers + (1 if i < total % workers else 0) for i in range(workers)]
    args = [(storage, name, cfg.model_dump(mode="json"), dataset_path, utc(as_of).isoformat() if as_of else None, tf, n, i) for i, n in enumerate(per) if n]
    if workers == 1:
        _worker_main(args[0])
    else:
        ctx = mp.get_context("spawn")
        with ctx.Pool(len(args)) as pool:
            pool.map(_worker_main, args)
    return log_study(settings, storage, name)


def log_study(settings: PlatformSettings, storage: str, study_name: str) -> TuneResult:
    """Record the study in MLflow: best trial's params and value, importances, all trials."""
    import optuna

    from training.train import _mlflow, ensure_experiment

    study = optuna.load_study(study_name=study_name, storage=storage)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise RuntimeError(f"study {study_name} has no completed trial")
    try:
        importances = dict(optuna.importance.get_param_importances(study)) if len(done) >= 2 else {}
    except (RuntimeError, ValueError) as exc:
        log.warning("no parameter importances: %s", exc)
        importances = {}
    mlflow = _mlflow(settings)
    exp_id = ensure_experiment(settings, f"{settings.mlflow_experiment}_tuning")
    with mlflow.start_run(experiment_id=exp_id, run_name=f"study-{study_name}") as run:
        mlflow.set_tags({"optuna.study": study_name, "optuna.storage": redact(storage)})
        mlflow.log_params({f"best.{k}": v for k, v in study.best_params.items()})
        mlflow.log_metrics(
            {
                "best_value_log_loss": float(study.best_value),
                "trials_total": float(len(study.trials)),
                "trials_complete": float(len(done)),
                "trials_pruned": float(sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)),
                **{f"importance.{k}": float(v) for k, v in importances.items()},
            }
        )
        with tempfile.TemporaryDirectory() as tmp:
            df = study.trials_dataframe()
            df.to_csv(Path(tmp) / "trials.csv", index=False)
            (Path(tmp) / "best.json").write_text(json.dumps({"params": study.best_params, "value": study.best_value, "importances": importances}, indent=1))
            mlflow.log_artifact(str(Path(tmp) / "trials.csv"), artifact_path="optuna")
            mlflow.log_artifact(str(Path(tmp) / "best.json"), artifact_path="optuna")
    return TuneResult(study_name, storage, len(study.trials), float(study.best_value), dict(study.best_params), run.info.run_id)


def plan_workers(settings: PlatformSettings, cfg: ExperimentConfig, dataset_path: str) -> list[dict[str, Any]]:
    """One job per worker (the DAG maps over it); creates the study first. With tuning
    disabled the jobs carry zero trials and the workers pass straight through."""
    name = study_name_for(cfg, dataset_path)
    total = cfg.tune.n_trials if cfg.tune.enabled else 0
    if total:
        open_study(settings.optuna_storage_url, name, cfg.tune.seed)
    w = cfg.tune.workers
    return [{"study": name, "dataset_path": dataset_path, "worker": i, "trials": total // w + (1 if i < total % w else 0)} for i in range(w)]


def run_planned_worker(settings: PlatformSettings, cfg: ExperimentConfig, job: dict[str, Any], as_of: datetime | None) -> int:
    if not job["trials"]:
        log.info("tuning disabled for %s: worker %d has nothing to do", cfg.name, job["worker"])
        return 0
    return tune_worker(
        settings.optuna_storage_url, job["study"], cfg, job["dataset_path"], utc(as_of) if as_of else None,
        settings.timeframe, int(job["trials"]), int(job["worker"]),
    )


def summarise(settings: PlatformSettings, cfg: ExperimentConfig, dataset_path: str, trials_done: int) -> dict[str, Any]:
    """Log the study to MLflow and return the best parameters ({} when tuning was off)."""
    if not trials_done:
        return {"study": None, "params": {}}
    res = log_study(settings, settings.optuna_storage_url, study_name_for(cfg, dataset_path))
    return {"study": res.study_name, "params": res.best_params, "best_value": res.best_value, "mlflow_run_id": res.mlflow_run_id}


def best_params(settings: PlatformSettings, study_name: str) -> dict[str, Any]:
    import optuna

    return dict(optuna.load_study(study_name=study_name, storage=settings.optuna_storage_url).best_params)
