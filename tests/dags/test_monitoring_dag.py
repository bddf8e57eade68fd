"""The monitoring DAG under ``dag.test()``: one task per check, then ``record`` stores the rows
and logs the MLflow run (same harness as tests/dags/test_dags.py)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import make_settings
from tests.dags.test_dags import run_dag

pytestmark = [pytest.mark.dags, pytest.mark.slow]


def test_monitoring_dag_when_run_for_an_hour_then_each_check_is_a_task_and_results_are_stored(
    tmp_path: Path, redis_url: str
) -> None:
    from mlflow import MlflowClient

    from titanovax.monitor import CHECKS, query_results

    s = make_settings(tmp_path, redis_url, db=6, symbols=["EURUSD"])
    lake = s.lake_dir / "symbol=EURUSD" / "timeframe=M5" / "date=2026-01-14"
    lake.mkdir(parents=True)
    closes = pd.date_range(end="2026-01-14T11:55", periods=6, freq="5min", tz="UTC")
    pd.DataFrame({"close_time": closes}).to_parquet(lake / "bars.parquet")

    res = run_dag(s, "dags.monitoring", "2026-01-14T12:00:00")
    assert res["state"] == "success", res
    assert res["tasks"] == {**dict.fromkeys(CHECKS, "success"), "record": "success"}
    assert res["end"].startswith("2026-01-14 12:00"), res

    rows = {(r["check"], r["subject"]): r for r in query_results(s.monitor_db, limit=100)}
    assert rows[("freshness", "EURUSD/M5/lake")]["status"] == "ok"
    assert rows[("freshness", "EURUSD/M5/offline")]["status"] == "breach"  # no rows at all
    assert rows[("freshness", "EURUSD/M5/online")]["status"] == "breach"  # Redis has no row
    assert rows[("drift", "champion")]["status"] == "skipped"  # nothing registered yet
    assert {r["at"] for r in rows.values()} == {"2026-01-14T12:00:00+00:00"}
    assert len({r["run_id"] for r in rows.values()}) == 1

    client = MlflowClient(s.tracking_uri)
    exp = client.get_experiment_by_name("monitoring")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].data.params["freshness.worst"] == "breach"
