"""Optuna: two worker PROCESSES share one study in PostgreSQL; the study is logged to MLflow."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from feature_repo.pipeline.transforms import TREND_V1_FEATURES
from titanovax.settings import PlatformSettings
from training.config import ExperimentConfig

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# per process, so two test runs on one server never drop each other's database
DB = f"tx_test_optuna_{os.getpid()}"
ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


@pytest.fixture()
def pg_storage() -> Iterator[str]:
    sqlalchemy = pytest.importorskip("sqlalchemy")
    try:
        eng = sqlalchemy.create_engine(ADMIN, isolation_level="AUTOCOMMIT")
        with eng.connect() as c:
            c.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)"))
            c.execute(sqlalchemy.text(f"CREATE DATABASE {DB}"))
    except Exception as exc:  # no server here: say so
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 not usable: {exc}")
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{DB}"
    with eng.connect() as c:
        c.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)"))
    eng.dispose()


def _write_labelled(path: Path, ds: pd.DataFrame, score: np.ndarray, cut: float) -> str:
    """Give ``ds`` (one row per M5 bar from 2026-01-05) the dataset columns and the class of
    ``score`` (long above ``cut``, short below ``-cut``); write it to ``path``."""
    t = pd.date_range("2026-01-05 00:05", periods=len(ds), freq="5min", tz="UTC")
    ds["symbol"] = "EURUSD"
    ds["event_timestamp"] = t
    ds["label_end"] = t + pd.Timedelta(minutes=30)
    ds["label"] = np.where(score > cut, 2, np.where(score < -cut, 0, 1))
    ds.to_parquet(path, index=False)
    return str(path)


def synthetic_dataset(path: Path, n: int = 3000) -> str:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, len(TREND_V1_FEATURES)))
    score = x[:, 0] + rng.normal(0, 1, n)
    return _write_labelled(path, pd.DataFrame(x, columns=list(TREND_V1_FEATURES)), score, 0.6)


def test_tune_when_two_worker_processes_share_a_postgres_study_then_both_add_trials(
    pg_storage: str, tmp_path: Path
) -> None:
    import mlflow
    import optuna

    from training.tune import tune

    s = PlatformSettings(
        home=tmp_path,
        optuna_storage=pg_storage,
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'm.db'}",
    )
    cfg = ExperimentConfig(
        name="tune_test",
        feature_service="trend_v1",
        split={
            "start": "2026-01-05",
            "test_start": "2026-01-14",
            "end": "2026-01-16",
            "n_folds": 3,
            "embargo_bars": 6,
        },  # type: ignore[arg-type]
        model={"n_estimators": 30},
    )
    res = tune(
        s,
        cfg,
        synthetic_dataset(tmp_path / "ds.parquet"),
        None,
        timeframe="M5",
        workers=2,
        n_trials=8,
    )

    study = optuna.load_study(study_name=res.study_name, storage=pg_storage)
    pids = {t.user_attrs["pid"] for t in study.trials}
    assert len(study.trials) == 8
    assert len(pids) == 2 and os.getpid() not in pids  # two processes, neither of them this one
    assert res.best_value == pytest.approx(study.best_value) and set(res.best_params) >= {
        "max_depth",
        "learning_rate",
    }
    run = mlflow.MlflowClient(s.tracking_uri).get_run(str(res.mlflow_run_id))
    assert run.data.metrics["trials_total"] == 8 and "best.max_depth" in run.data.params
    assert any(k.startswith("importance.") for k in run.data.metrics)


# --- the ensemble: one study per member; the SQLite default storage shared by worker processes ---
def synthetic_v2_dataset(path: Path, n: int = 900) -> str:
    """trend_v2's shape: its 46 tabular features and the 64 x 9 bar sequence (flat, as stored)."""
    from feature_repo.pipeline.transforms import SEQ_CHANNELS, SEQ_FIELD, SEQ_LEN
    from training.dataset import service_inputs

    names, _ = service_inputs("trend_v2")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, len(names)))
    seq = rng.normal(size=(n, SEQ_LEN, len(SEQ_CHANNELS))).astype(np.float32)
    score = x[:, 0] + seq[:, -1, 0] + rng.normal(0, 1, n)
    ds = pd.DataFrame(x, columns=names)
    ds[SEQ_FIELD] = list(seq.reshape(n, -1))
    return _write_labelled(path, ds, score, 0.8)


def ensemble_config(xgb_trials: int, transformer_trials: int) -> ExperimentConfig:
    """A tiny ensemble: small XGBoost base, a transformer space of one-layer, 1-2 epoch nets."""
    return ExperimentConfig(
        name="tune_ens",
        feature_service="trend_v2",
        family="ensemble",
        split={
            "start": "2026-01-05",
            "test_start": "2026-01-07 12:00",
            "end": "2026-01-08 04:00",
            "n_folds": 3,
            "embargo_bars": 6,
        },  # type: ignore[arg-type]
        model={"n_estimators": 30, "n_jobs": 1},  # one thread: 2 shared cores here
        transformer={"batch_size": 128},  # type: ignore[arg-type]
        regime={"vol_feature": "vol_24", "trend_feature": "trend_t_48"},  # type: ignore[arg-type]
        # the synthetic rows carry no spread: nothing to learn an after-cost policy from
        decision={"policy": "legacy"},  # type: ignore[arg-type]
        tune={  # type: ignore[arg-type]
            "workers": 1,
            "n_trials": xgb_trials,
            "transformer": {
                "n_trials": transformer_trials,
                "d_model": [8, 16],
                "n_heads": [1, 2],
                "n_layers": [1, 1],
                "epochs": [1, 2],
            },
        },
    )


def test_tune_when_config_is_an_ensemble_then_the_transformer_has_its_own_study_logged_and_its_best_params_reach_the_final_model(
    tmp_path: Path,
) -> None:
    """The DAG's path, task by task: plan → worker → summarise (MLflow) → fit_step."""
    import pickle

    import mlflow
    import optuna

    from training.train import fit_step
    from training.tune import plan_workers, run_planned_worker, summarise

    s = PlatformSettings(
        home=tmp_path, timeframe="M5", mlflow_tracking_uri=f"sqlite:///{tmp_path / 'm.db'}"
    )
    cfg = ensemble_config(xgb_trials=2, transformer_trials=4)
    path = synthetic_v2_dataset(tmp_path / "ds.parquet")

    jobs = plan_workers(s, cfg, path)
    done = [run_planned_worker(s, cfg, job, None) for job in jobs]
    best = summarise(s, cfg, path, sum(done))
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(
        1
    )  # the final fit: one thread, as the tuning workers (2 shared cores here)
    try:
        wd = fit_step(
            s,
            cfg,
            path,
            None,
            params=best["params"] or None,
            transformer_params=best["transformer_params"] or None,
        )
    finally:
        torch.set_num_threads(threads)

    assert jobs == [
        {
            "study": "tune_ens-ds",
            "dataset_path": path,
            "worker": 0,
            "trials": {"xgboost": 2, "transformer": 4},
        }
    ]
    assert sum(done) == 6
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"  # the default storage
    assert sorted(st.study_name for st in optuna.get_all_study_summaries(storage)) == [
        "tune_ens-ds",
        "tune_ens-ds-transformer",
    ]
    tstudy = optuna.load_study(study_name="tune_ens-ds-transformer", storage=storage)
    assert len(tstudy.trials) == 4
    assert all(
        t.state == optuna.trial.TrialState.COMPLETE for t in tstudy.trials[:3]
    )  # the pruner's startup trials
    reported = max(len(t.intermediate_values) for t in tstudy.trials)
    assert reported >= 3  # one report per epoch and fold (3 folds)
    tp = best["transformer_params"]
    assert tp == tstudy.best_params and set(tp) == {
        "d_model",
        "n_heads",
        "n_layers",
        "dropout",
        "lr",
        "epochs",
    }
    assert tp["d_model"] % tp["n_heads"] == 0
    assert set(best["params"]) >= {"max_depth", "learning_rate"}

    with open(Path(wd) / "model.pkl", "rb") as f:
        model = pickle.load(f)
    for k, v in tp.items():  # the fitted transformer carries the study's best parameters
        assert getattr(model.transformer.cfg, k) == v
    for k, v in best["params"].items():
        assert model.xgb.params[k] == v
    assert model.transformer.cfg.batch_size == 128  # untuned fields stay the config's

    client = mlflow.MlflowClient(s.tracking_uri)
    trun = client.get_run(best["studies"]["transformer"]["mlflow_run_id"])
    assert (
        trun.data.tags["optuna.member"] == "transformer"
        and trun.data.tags["optuna.group"] == "tune_ens-ds"
    )
    assert trun.data.metrics["trials_total"] == 4 and trun.data.params["best.d_model"] == str(
        tp["d_model"]
    )
    assert any(k.startswith("importance.") for k in trun.data.metrics)
    assert {a.path for a in client.list_artifacts(trun.info.run_id, "optuna")} == {
        "optuna/trials.csv",
        "optuna/best.json",
    }
    xrun = client.get_run(best["studies"]["xgboost"]["mlflow_run_id"])
    assert xrun.data.tags["optuna.member"] == "xgboost" and xrun.data.metrics["trials_total"] == 2


def test_tune_when_two_worker_processes_share_the_default_sqlite_studies_then_both_add_trials_to_each(
    tmp_path: Path,
) -> None:
    import optuna

    from training.tune import tune

    s = PlatformSettings(
        home=tmp_path, mlflow_tracking_uri=f"sqlite:///{tmp_path / 'm.db'}"
    )  # no optuna_storage: SQLite file
    cfg = ensemble_config(xgb_trials=6, transformer_trials=4)
    res = tune(
        s,
        cfg,
        synthetic_v2_dataset(tmp_path / "ds.parquet", n=700),
        None,
        timeframe="M5",
        workers=2,
    )

    assert s.optuna_storage_url == f"sqlite:///{tmp_path / 'optuna.db'}"
    for name, n in (("tune_ens-ds", 6), ("tune_ens-ds-transformer", 4)):
        study = optuna.load_study(study_name=name, storage=s.optuna_storage_url)
        pids = {t.user_attrs["pid"] for t in study.trials}
        assert len(study.trials) == n, name
        assert len(pids) == 2 and os.getpid() not in pids, (
            name
        )  # two processes, neither of them this one
    assert res.member == "xgboost" and res.n_trials == 6 and res.transformer is not None
    assert res.transformer.study_name == "tune_ens-ds-transformer" and res.transformer.n_trials == 4
    assert res.to_dict()["transformer"]["best_params"] == res.transformer.best_params
