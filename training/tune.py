"""Optuna tuning of the model members on purged walk-forward folds of the training window.

**One study per member, sharing one storage.** The XGBoost member is tuned in the study
``<study>`` (the name it always had, so ``tx models train --study <study>`` and existing studies keep
working); for the ``ensemble`` family the transformer member is tuned in its own study
``<study>-transformer``. Each member's objective is its own mean validation log loss over the
same purged folds, so its importances are about its own parameters, a cheap XGBoost trial never
waits for a transformer fit, and each study is pruned on comparable steps. (A joint,
member-prefixed space scoring the fitted ensemble would have needed a full ensemble fit, with
its inner validation fold, per trial and fold.) The ensemble's per-regime weights are not
tuned: they are fitted on the last fold when the final model is trained (:mod:`training.models`).

* Sampler: TPE. Pruner: :class:`optuna.pruners.MedianPruner` on the validation log loss — the
  XGBoost trial reports the running mean after each fold (step = fold); the transformer trial
  reports after every epoch (step = ``fold * max_epochs + epoch``, the value is the mean of the
  finished folds and the current fold's loss at that epoch), so a poor configuration stops
  after one epoch instead of a whole fold.
* Search spaces: :func:`search_space` (XGBoost) and :func:`transformer_space` (bounds in the
  config's ``tune.transformer``; ``n_heads`` and ``d_model`` are chosen from sets in which every
  ``d_model`` is divisible by every ``n_heads``). ``tune.transformer.n_trials`` sets the
  transformer study's trials (default: ``tune.n_trials``; 0 turns it off).
* Storage: ``TX_OPTUNA_STORAGE`` (default SQLite under ``TX_HOME``; PostgreSQL when set). Several
  workers — ``tx models tune --workers N`` processes or the DAG's mapped tasks — share the studies by
  name: each worker runs its share of every member's trials (XGBoost first, then the
  transformer). Workers use one thread each (XGBoost ``n_jobs=1``, ``torch.set_num_threads(1)``).
* :func:`log_study` records each study — best trial, importances, ``trials.csv`` — in its own
  MLflow run of ``<experiment>_tuning`` (tags ``optuna.member`` and ``optuna.group``).
* The best parameters flow into the final fit: :func:`summarise` (DAG) returns ``params``
  (XGBoost) and ``transformer_params``; :func:`best_member_params` does it for ``tx models train --study``.

Only the training window is used: the test window stays unseen.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from titanovax.settings import PlatformSettings, utc
from training.config import ExperimentConfig, TransformerSearchConfig

log = logging.getLogger(__name__)

XGBOOST, TRANSFORMER = "xgboost", "transformer"


# --- search spaces and objectives --------------------------------------------------------------
def search_space(trial: Any) -> dict[str, Any]:
    """The XGBoost member's space."""
    return {
        "n_estimators": trial.suggest_int("n_estimators", 50, 300, step=25),
        "max_depth": trial.suggest_int("max_depth", 2, 6),
        "learning_rate": trial.suggest_float("learning_rate", 0.02, 0.3, log=True),
        "subsample": trial.suggest_float("subsample", 0.5, 1.0),
        "colsample_bytree": trial.suggest_float("colsample_bytree", 0.5, 1.0),
        "min_child_weight": trial.suggest_float("min_child_weight", 1.0, 20.0, log=True),
        "reg_lambda": trial.suggest_float("reg_lambda", 0.1, 10.0, log=True),
    }


def transformer_space(trial: Any, sp: TransformerSearchConfig) -> dict[str, Any]:
    """The transformer member's space (``TransformerConfig`` fields; batch size and seed stay)."""
    return {
        "d_model": trial.suggest_categorical("d_model", list(sp.d_model)),
        "n_heads": trial.suggest_categorical("n_heads", list(sp.n_heads)),
        "n_layers": trial.suggest_int("n_layers", *sp.n_layers),
        "dropout": trial.suggest_float("dropout", *sp.dropout),
        "lr": trial.suggest_float("lr", *sp.lr, log=True),
        "epochs": trial.suggest_int("epochs", *sp.epochs),
    }


def _log_loss(p: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-7, 1))))


def _folds(train: pd.DataFrame, cfg: ExperimentConfig, timeframe: str) -> list[Any]:
    from training.splits import walk_forward_folds
    from training.train import _embargo

    folds = walk_forward_folds(
        train,
        n_folds=cfg.split.n_folds,
        embargo=_embargo(cfg, timeframe),
        scheme=cfg.split.scheme,
        min_train_rows=50,
    )
    if not folds:
        raise ValueError("no walk-forward fold has enough training rows")
    return folds


def objective(trial: Any, train: pd.DataFrame, cfg: ExperimentConfig, timeframe: str) -> float:
    """XGBoost: mean validation log loss over the purged walk-forward folds (a plain function)."""
    import optuna

    from training.models import XGBModel
    from training.train import model_data

    params = {**cfg.model, **search_space(trial)}
    trial.set_user_attr("pid", os.getpid())
    data = model_data(train, cfg.feature_service)
    losses = []
    for step, f in enumerate(_folds(train, cfg, timeframe)):
        m = XGBModel({**params, "n_jobs": 1}).fit(data.take(f.train))
        va = data.take(f.test)
        losses.append(_log_loss(m.predict_proba(va), va.labels()))
        trial.report(float(np.mean(losses)), step)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return float(np.mean(losses))


def transformer_objective(
    trial: Any, train: pd.DataFrame, cfg: ExperimentConfig, timeframe: str
) -> float:
    """Transformer: mean validation log loss over the same folds, reported after every epoch."""
    import optuna

    from training.models import TransformerModel
    from training.train import model_data, transformer_config

    sp = cfg.tune.transformer
    tcfg = transformer_config(cfg, transformer_space(trial, sp))
    trial.set_user_attr("pid", os.getpid())
    data = model_data(train, cfg.feature_service)
    if data.seq is None:
        raise ValueError(
            f"feature service {cfg.feature_service} has no sequence: nothing to tune the transformer on"
        )
    per_fold = sp.epochs[1]  # steps reserved per fold, so step numbers mean the same in every trial
    losses: list[float] = []
    for k, f in enumerate(_folds(train, cfg, timeframe)):
        va = data.take(f.test)
        y = va.labels()
        last: list[float] = []

        def report(
            epoch: int,
            model: TransformerModel,
            k: int = k,
            va: Any = va,
            y: np.ndarray = y,
            last: list[float] = last,
        ) -> None:
            last.append(_log_loss(model.predict_proba(va), y))
            trial.report(float(np.mean([*losses, last[-1]])), k * per_fold + epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

        TransformerModel(tcfg).fit(data.take(f.train), on_epoch=report)
        losses.append(last[-1])
    return float(np.mean(losses))


OBJECTIVES: dict[str, Callable[[Any, pd.DataFrame, ExperimentConfig, str], float]] = {
    XGBOOST: objective,
    TRANSFORMER: transformer_objective,
}


# --- studies -----------------------------------------------------------------------------------
def open_study(storage: str, study_name: str, seed: int = 11, member: str = XGBOOST) -> Any:
    import optuna

    return optuna.create_study(
        study_name=study_name,
        storage=storage,
        direction="minimize",
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=4),
        # the transformer's first step is its first epoch: too early to judge
        pruner=optuna.pruners.MedianPruner(
            n_startup_trials=3, n_warmup_steps=1 if member == TRANSFORMER else 0
        ),
        load_if_exists=True,
    )


def study_name_for(cfg: ExperimentConfig, dataset_path: str) -> str:
    return f"{cfg.name}-{Path(dataset_path).stem}"


def member_study(base: str, member: str) -> str:
    """The study of one member: ``<base>`` for XGBoost, ``<base>-<member>`` otherwise."""
    return base if member == XGBOOST else f"{base}-{member}"


def member_trials(cfg: ExperimentConfig, n_trials: int | None = None) -> dict[str, int]:
    """Trials per member study (``n_trials`` overrides every member's); tuning on or off is the
    caller's business. trend_v1 (xgboost family): ``{"xgboost": n}`` as before."""
    out = {XGBOOST: n_trials or cfg.tune.n_trials}
    if cfg.family == "ensemble":
        t = cfg.tune.transformer.n_trials
        n = n_trials or (cfg.tune.n_trials if t is None else t)
        if n:
            out[TRANSFORMER] = n
    return out


def open_member_studies(
    storage: str, name: str, cfg: ExperimentConfig, totals: dict[str, int], workers: int
) -> list[dict[str, int]]:
    """Create each member study of ``totals`` (member → trials) once, before the workers race
    to; returns each worker's share of every study's trials."""
    for member in totals:
        open_study(storage, member_study(name, member), cfg.tune.seed, member)
    return [
        {m: n // workers + (1 if i < n % workers else 0) for m, n in totals.items()}
        for i in range(workers)
    ]


def _train_rows(
    cfg: ExperimentConfig, dataset_path: str, as_of: datetime | None, timeframe: str
) -> pd.DataFrame:
    from training.train import split_dataset

    ds = pd.read_parquet(dataset_path)
    train, _ = split_dataset(ds, cfg, as_of, timeframe)
    return train


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Workers run side by side: one intra-op thread each (restored after, for in-process use)."""
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def tune_worker(
    storage: str,
    study_name: str,
    cfg: ExperimentConfig,
    dataset_path: str,
    as_of: datetime | None,
    timeframe: str,
    trials: dict[str, int],
    worker: int = 0,
) -> int:
    """Run this worker's share of each member study (``trials``: member → trials) in this
    process; ``study_name`` is the base name. Returns trials finished."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    todo = {m: n for m, n in trials.items() if n}
    train = _train_rows(cfg, dataset_path, as_of, timeframe)
    for member, n in todo.items():
        name = member_study(study_name, member)
        study = open_study(storage, name, seed=cfg.tune.seed + worker, member=member)
        fn = OBJECTIVES[member]
        with _one_torch_thread() if member == TRANSFORMER else nullcontext():
            study.optimize(lambda t, fn=fn: fn(t, train, cfg, timeframe), n_trials=n, catch=())
        log.info("worker %d: %d trials done in study %s", worker, n, name)
    return sum(todo.values())


def _worker_main(args: tuple[Any, ...]) -> int:
    storage, study_name, cfg_json, dataset_path, as_of, timeframe, trials, worker = args
    cfg = ExperimentConfig.model_validate(cfg_json)
    return tune_worker(
        storage,
        study_name,
        cfg,
        dataset_path,
        datetime.fromisoformat(as_of) if as_of else None,
        timeframe,
        trials,
        worker,
    )


@dataclass
class TuneResult:
    """One member study's outcome; the XGBoost result carries the transformer's in ``transformer``."""

    study_name: str
    storage: str
    n_trials: int
    best_value: float
    best_params: dict[str, Any]
    mlflow_run_id: str | None
    member: str = XGBOOST
    transformer: TuneResult | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["storage"] = redact(self.storage)
        if self.transformer is not None:
            d["transformer"] = self.transformer.to_dict()
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
    """``workers`` processes share each member study (``n_trials`` per study, default the
    config's); then log the studies to MLflow. Returns the XGBoost study's result, with the
    transformer's (ensemble family) in ``.transformer``."""
    tf = timeframe or settings.timeframe
    storage = settings.optuna_storage_url
    name = study_name or study_name_for(cfg, dataset_path)
    totals = member_trials(cfg, n_trials)
    shares = open_member_studies(storage, name, cfg, totals, workers)
    cfg_json = cfg.model_dump(mode="json")
    when = utc(as_of).isoformat() if as_of else None
    args = [
        (storage, name, cfg_json, dataset_path, when, tf, share, i)
        for i, share in enumerate(shares)
    ]
    args = [a for a in args if any(a[6].values())]
    if len(args) == 1:
        _worker_main(args[0])
    else:
        ctx = mp.get_context("spawn")
        with ctx.Pool(len(args)) as pool:
            pool.map(_worker_main, args)
    res = log_study(settings, storage, member_study(name, XGBOOST), member=XGBOOST, group=name)
    if TRANSFORMER in totals:
        res.transformer = log_study(
            settings, storage, member_study(name, TRANSFORMER), member=TRANSFORMER, group=name
        )
    return res


def log_study(
    settings: PlatformSettings,
    storage: str,
    study_name: str,
    *,
    member: str = XGBOOST,
    group: str | None = None,
) -> TuneResult:
    """Record one study in MLflow: best trial's params and value, importances, all trials."""
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
        mlflow.set_tags(
            {
                "optuna.study": study_name,
                "optuna.storage": redact(storage),
                "optuna.member": member,
                "optuna.group": group or study_name,
            }
        )
        mlflow.log_params({f"best.{k}": v for k, v in study.best_params.items()})
        mlflow.log_metrics(
            {
                "best_value_log_loss": float(study.best_value),
                "trials_total": float(len(study.trials)),
                "trials_complete": float(len(done)),
                "trials_pruned": float(
                    sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
                ),
                **{f"importance.{k}": float(v) for k, v in importances.items()},
            }
        )
        with tempfile.TemporaryDirectory() as tmp:
            df = study.trials_dataframe()
            df.to_csv(Path(tmp) / "trials.csv", index=False)
            (Path(tmp) / "best.json").write_text(
                json.dumps(
                    {
                        "member": member,
                        "params": study.best_params,
                        "value": study.best_value,
                        "importances": importances,
                    },
                    indent=1,
                )
            )
            mlflow.log_artifact(str(Path(tmp) / "trials.csv"), artifact_path="optuna")
            mlflow.log_artifact(str(Path(tmp) / "best.json"), artifact_path="optuna")
    return TuneResult(
        study_name,
        storage,
        len(study.trials),
        float(study.best_value),
        dict(study.best_params),
        run.info.run_id,
        member,
    )


# --- the DAG's steps ---------------------------------------------------------------------------
def plan_workers(
    settings: PlatformSettings, cfg: ExperimentConfig, dataset_path: str
) -> list[dict[str, Any]]:
    """One job per worker (the DAG maps over it), each with its share of every member study's
    trials; creates the studies first. With tuning disabled the jobs carry zero trials and the
    workers pass straight through."""
    name = study_name_for(cfg, dataset_path)
    totals = member_trials(cfg) if cfg.tune.enabled else {}
    shares = open_member_studies(settings.optuna_storage_url, name, cfg, totals, cfg.tune.workers)
    return [
        {"study": name, "dataset_path": dataset_path, "worker": i, "trials": share}
        for i, share in enumerate(shares)
    ]


def run_planned_worker(
    settings: PlatformSettings, cfg: ExperimentConfig, job: dict[str, Any], as_of: datetime | None
) -> int:
    trials = {m: int(n) for m, n in job["trials"].items()}
    if not any(trials.values()):
        log.info("tuning disabled for %s: worker %d has nothing to do", cfg.name, job["worker"])
        return 0
    return tune_worker(
        settings.optuna_storage_url,
        job["study"],
        cfg,
        job["dataset_path"],
        utc(as_of) if as_of else None,
        settings.timeframe,
        trials,
        int(job["worker"]),
    )


def summarise(
    settings: PlatformSettings, cfg: ExperimentConfig, dataset_path: str, trials_done: int
) -> dict[str, Any]:
    """Log each member study to MLflow and return the best parameters for the final fit:
    ``params`` (XGBoost) and ``transformer_params`` ({} for a member not tuned, or tuning off)."""
    if not trials_done:
        return {"study": None, "params": {}, "transformer_params": {}, "studies": {}}
    name = study_name_for(cfg, dataset_path)
    storage = settings.optuna_storage_url
    results = {
        m: log_study(settings, storage, member_study(name, m), member=m, group=name)
        for m in member_trials(cfg)
    }
    xgb = results[XGBOOST]
    return {
        "study": xgb.study_name,
        "params": xgb.best_params,
        "best_value": xgb.best_value,
        "mlflow_run_id": xgb.mlflow_run_id,
        "transformer_params": results[TRANSFORMER].best_params if TRANSFORMER in results else {},
        "studies": {
            m: {
                "study": r.study_name,
                "n_trials": r.n_trials,
                "best_value": r.best_value,
                "mlflow_run_id": r.mlflow_run_id,
            }
            for m, r in results.items()
        },
    }


def best_params(settings: PlatformSettings, study_name: str) -> dict[str, Any]:
    import optuna

    return dict(
        optuna.load_study(study_name=study_name, storage=settings.optuna_storage_url).best_params
    )


def best_member_params(
    settings: PlatformSettings, cfg: ExperimentConfig, study_name: str
) -> dict[str, dict[str, Any]]:
    """Best parameters of each member study under the base name ``study_name`` (the XGBoost
    study must exist; the transformer's is used when the family is ensemble and it exists)."""
    out = {XGBOOST: best_params(settings, study_name)}
    if cfg.family == "ensemble":
        try:
            out[TRANSFORMER] = best_params(settings, member_study(study_name, TRANSFORMER))
        except (KeyError, ValueError) as exc:  # no such study / no completed trial
            log.info(
                "no transformer study for %s (%s): the config's transformer parameters stay",
                study_name,
                exc,
            )
    return out
