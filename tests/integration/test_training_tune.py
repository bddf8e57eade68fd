"""Optuna: two worker PROCESSES share one study in PostgreSQL; the study is logged to MLflow."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from feature_repo.pipeline.transforms import TREND_V1_FEATURES
from infra.settings import PlatformSettings
from training.config import ExperimentConfig

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DB = "tx_test_optuna"
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


def synthetic_dataset(path: Path, n: int = 3000) -> str:
    rng = np.random.default_rng(0)
    t = pd.date_range("2026-01-05 00:05", periods=n, freq="5min", tz="UTC")
    x = rng.normal(size=(n, len(TREND_V1_FEATURES)))
    score = x[:, 0] + rng.normal(0, 1, n)
    ds = pd.DataFrame(x, columns=list(TREND_V1_FEATURES))
    ds["symbol"] = "EURUSD"
    ds["event_timestamp"] = t
    ds["label_end"] = t + pd.Timedelta(minutes=30)
    ds["label"] = np.where(score > 0.6, 2, np.where(score < -0.6, 0, 1))
    ds.to_parquet(path, index=False)
    return str(path)


def test_tune_when_two_worker_processes_share_a_postgres_study_then_both_add_trials(pg_storage: str, tmp_path: Path) -> None:
    import mlflow
    import optuna

    from training.tune import tune

    s = PlatformSettings(home=tmp_path, optuna_storage=pg_storage, mlflow_tracking_uri=f"sqlite:///{tmp_path / 'm.db'}")
    cfg = ExperimentConfig(
        name="tune_test",
        feature_service="trend_v1",
        split={"start": "2026-01-05", "test_start": "2026-01-14", "end": "2026-01-16", "n_folds": 3, "embargo_bars": 6},  # type: ignore[arg-type]
        model={"n_estimators": 30},
    )
    res = tune(s, cfg, synthetic_dataset(tmp_path / "ds.parquet"), None, timeframe="M5", workers=2, n_trials=8)

    study = optuna.load_study(study_name=res.study_name, storage=pg_storage)
    pids = {t.user_attrs["pid"] for t in study.trials}
    assert len(study.trials) == 8
    assert len(pids) == 2 and os.getpid() not in pids  # two processes, neither of them this one
    assert res.best_value == pytest.approx(study.best_value) and set(res.best_params) >= {"max_depth", "learning_rate"}
    run = mlflow.MlflowClient(s.tracking_uri).get_run(str(res.mlflow_run_id))
    assert run.data.metrics["trials_total"] == 8 and "best.max_depth" in run.data.params
    assert any(k.startswith("importance.") for k in run.data.metrics)
