"""The market_data DAG under ``dag.test()`` when validation fails hard or soft.

A validation config whose spread limit every synthetic bar exceeds turns clean bars into a
"spread spike" on every row: as a hard rule the validate task must fail (and nothing
downstream runs); as a soft rule the run succeeds and the rows are flagged in the lake.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from feature_repo.pipeline import lake
from tests.conftest import make_settings
from tests.dags.test_dags import run_dag

pytestmark = [pytest.mark.dags, pytest.mark.slow]


@pytest.mark.parametrize("severity", ["hard", "soft"])
def test_market_data_dag_when_validation_fails_then_hard_fails_the_task_and_soft_proceeds(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch, severity: str
) -> None:
    from feature_repo.pipeline.store import feast_apply

    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  spread_spike:\n    ratio: 0.0\n    min_points: -1000\n")
    monkeypatch.setenv("TX_VALIDATION_CONFIG", str(rules))
    monkeypatch.setenv("TX_VALIDATION_SEVERITY", f"spread_spike={severity}")
    s = make_settings(tmp_path / "home", redis_url, db=13, symbols=["EURUSD"])
    feast_apply(s)

    res = run_dag(s, "dags.market_data", "2026-01-07T00:00:00")

    day = lake.partition_dir(s.lake_dir, "EURUSD", "M5", date(2026, 1, 6))
    if severity == "hard":
        assert res["state"] == "failed", res
        assert res["tasks"]["ingest"] == "success" and res["tasks"]["validate"] == "failed"
        assert (
            res["tasks"]["features"] == "upstream_failed"
            and res["tasks"]["materialize"] == "upstream_failed"
        )
        qdir = lake.partition_dir(s.quarantine_dir, "EURUSD", "M5", date(2026, 1, 6))
        assert (qdir / "rejected.parquet").exists() and not day.exists()
    else:
        assert res["state"] == "success", res
        assert set(res["tasks"].values()) == {"success"}
        assert (day / "flags.parquet").exists() and not s.quarantine_dir.exists()
