"""The monitoring results table on both backends the platform uses (SQLite under TX_HOME,
PostgreSQL with TX_MONITOR_DB_URL): rows round-trip, newest first, per check, newest run, and
the Prometheus collector's newest row per (check, subject)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from titanovax.monitor import (
    MonitorResultsCollector,
    latest_per_subject,
    query_results,
    store_results,
)
from training.monitor.result import CheckResult

pytestmark = pytest.mark.integration

T0 = datetime(2026, 1, 14, 12, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'sub' / 'monitoring.db'}"
        return
    from tests.pg import database_name, scratch_database

    name = database_name("monitor_store")
    with scratch_database(name) as url:
        try:
            yield url.replace("postgresql://", "postgresql+psycopg://")
        finally:
            from titanovax.monitor import _ENGINES

            for engine_url, (eng, _t) in list(_ENGINES.items()):
                if name in engine_url:  # the store's pooled engine holds sessions open
                    eng.dispose()
                    del _ENGINES[engine_url]


def _row(check: str, subject: str, status: str, at: datetime, **metrics: float) -> CheckResult:
    return CheckResult(check, subject, status, f"{subject} {status}", at, metrics, {"k": [1, 2]})  # type: ignore[arg-type]


def test_results_when_stored_then_queried_newest_first_per_check_and_per_run(db_url: str) -> None:
    store_results(db_url, "run1", [_row("freshness", "EURUSD/M5/lake", "ok", T0, lag_seconds=60.0)])
    later = T0 + timedelta(hours=1)
    store_results(
        db_url,
        "run2",
        [
            _row("freshness", "EURUSD/M5/lake", "breach", later, lag_seconds=9e5),
            _row("drift", "features", "warn", later, drift_share=0.4),
        ],
    )
    rows = query_results(db_url)
    assert [(r["run_id"], r["check"], r["status"]) for r in rows] == [
        ("run2", "drift", "warn"),
        ("run2", "freshness", "breach"),
        ("run1", "freshness", "ok"),
    ]
    assert rows[0]["at"] == later.isoformat() and rows[0]["evidence"] == {"k": [1, 2]}
    assert [r["run_id"] for r in query_results(db_url, check="freshness")] == ["run2", "run1"]
    assert len(query_results(db_url, limit=1)) == 1
    assert {r["run_id"] for r in query_results(db_url, latest_run_only=True)} == {"run2"}

    newest = {(r["check"], r["subject"]): r["status"] for r in latest_per_subject(db_url)}
    assert newest == {("freshness", "EURUSD/M5/lake"): "breach", ("drift", "features"): "warn"}
    fams = {f.name: f for f in MonitorResultsCollector(db_url).collect()}
    status = {tuple(s.labels.values()): s.value for s in fams["tx_monitor_check_status"].samples}
    assert status == {("freshness", "EURUSD/M5/lake"): 2.0, ("drift", "features"): 1.0}
    assert fams["tx_monitor_last_run_timestamp_seconds"].samples[0].value == later.timestamp()


def test_collector_when_database_unreachable_then_db_up_zero() -> None:
    fams = list(MonitorResultsCollector("postgresql+psycopg://nobody@127.0.0.1:1/none").collect())
    assert [(f.name, f.samples[0].value) for f in fams] == [("tx_monitor_db_up", 0.0)]
