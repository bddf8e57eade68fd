"""Both DAGs under ``dag.test()`` on a migrated SQLite Airflow metadata DB.

Each DAG runs in a subprocess so Airflow reads this test's AIRFLOW_HOME and TX_* settings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from tests.conftest import Platform, make_settings
from titanovax.airflow_env import airflow_env, ensure_airflow_db
from titanovax.settings import PROJECT_ROOT

pytestmark = [pytest.mark.dags, pytest.mark.slow]

RUNNER = """
import json, sys
from datetime import datetime, timezone
from importlib import import_module
dag = import_module(sys.argv[1]).dag
conf = json.loads(sys.argv[3])
dr = dag.test(logical_date=datetime.fromisoformat(sys.argv[2]).replace(tzinfo=timezone.utc), run_conf=conf or None)
tis = {ti.task_id: str(ti.state) for ti in dr.get_task_instances()}
print("RESULT " + json.dumps({"state": str(dr.state), "tasks": tis, "start": str(dr.data_interval_start), "end": str(dr.data_interval_end)}))
"""


def run_dag(settings, module: str, logical_date: str, conf: dict | None = None) -> dict:
    ensure_airflow_db(settings)
    env = {
        **os.environ,
        **airflow_env(settings),
        "TX_HOME": str(settings.home),
        "TX_REDIS_URL": settings.redis_url,
        "TX_SYMBOLS": ",".join(settings.symbols),
        "TX_TIMEFRAME": settings.timeframe,
    }
    if settings.mlflow_tracking_uri:
        env["TX_MLFLOW_TRACKING_URI"] = settings.mlflow_tracking_uri
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, module, logical_date, json.dumps(conf or {})],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line and json.loads(line[len("RESULT ") :])["state"] != "success":
        print(proc.stderr[-8000:])  # shown by pytest on failure
    assert line, (
        f"dag.test gave no result (rc={proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    )
    return json.loads(line[len("RESULT ") :])


def test_market_data_dag_when_run_for_a_day_then_every_task_succeeds_and_redis_has_the_bars(
    tmp_path: Path, redis_url: str
) -> None:
    from feature_repo.pipeline.store import feast_apply

    s = make_settings(tmp_path, redis_url, db=5, symbols=["EURUSD"])
    feast_apply(s)
    # Airflow 3 runs the complete data interval that ends at the given date
    first = run_dag(s, "dags.market_data", "2026-01-07T00:00:00")
    again = run_dag(s, "dags.market_data", "2026-01-08T00:00:00")
    for res in (first, again):
        assert res["state"] == "success", res
        assert set(res["tasks"]) == {"ingest", "validate", "features", "materialize"}
        assert set(res["tasks"].values()) == {"success"}
    assert first["start"].startswith("2026-01-06") and first["end"].startswith("2026-01-07")
    from tests.integration.test_market_data import _reader

    row = _reader(s).read("EURUSD")
    assert row.event_time == pytest.approx(
        1767830400
    )  # 2026-01-08 00:00 UTC: close of the day's last bar


def test_train_and_promote_dag_when_run_as_of_a_saturday_then_a_version_is_registered_and_gated(
    platform: Platform, tmp_path: Path
) -> None:
    s = platform.settings.model_copy(
        update={
            "mlflow_tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "home": platform.settings.home,
        }
    )
    cfg = yaml.safe_load((PROJECT_ROOT / "training" / "configs" / "trend_v1.yaml").read_text())
    cfg["split"].update(train_days=9, test_days=3)
    cfg["model"].update(n_estimators=60)
    cfg["tune"] = {
        "enabled": True,
        "workers": 2,
        "n_trials": 2,
    }  # two mapped tune tasks, one trial each
    path = tmp_path / "trend_small.yaml"
    path.write_text(yaml.safe_dump(cfg))
    as_of = platform.end - timedelta(days=2)  # a Saturday: the weekly interval ends there
    res = run_dag(
        s, "dags.train_and_promote", as_of.strftime("%Y-%m-%dT%H:%M:%S"), {"experiment": str(path)}
    )
    assert res["end"].startswith(as_of.strftime("%Y-%m-%d")), res
    assert res["state"] == "success", res
    stages = (
        "dataset",
        "tune_plan",
        "tune",
        "tuned",
        "fit",
        "backtest",
        "export",
        "register",
        "gate",
        "promote",
        "reload_serving",
    )
    assert res["tasks"] == dict.fromkeys(stages, "success")
    from mlflow import MlflowClient

    client = MlflowClient(s.tracking_uri, s.tracking_uri)
    versions = client.search_model_versions(f"name='{s.model_name}'")
    assert len(versions) == 1 and "gate" in versions[0].tags
    import optuna

    studies = optuna.get_all_study_summaries(f"sqlite:///{s.home / 'optuna.db'}")
    assert [st.n_trials for st in studies] == [2]
