"""market_data: ingest → validate → features → materialise, one run per data interval.

Wiring only: every task calls one function of ``feature_repo.pipeline`` with its data
interval and passes references (counts, paths) on. Intraday timeframes run daily.
"""

from __future__ import annotations

import os
from datetime import datetime

from airflow import sdk
from airflow.timetables.interval import CronDataIntervalTimetable


@sdk.dag(
    dag_id="market_data",
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
    # history to backfill: with TX_DAG_CATCHUP=true the scheduler runs every missed daily
    # interval since TX_DAG_START_DATE (or use `airflow backfill create --dag-id market_data`)
    start_date=datetime.fromisoformat(os.environ.get("TX_DAG_START_DATE", "2024-01-01")),
    catchup=os.environ.get("TX_DAG_CATCHUP", "false").lower() in ("1", "true", "yes"),
    max_active_runs=1,
    tags=["data"],
    default_args={"retries": 0},
)
def market_data() -> None:
    @sdk.task
    def ingest(
        data_interval_start: datetime | None = None, data_interval_end: datetime | None = None
    ) -> list[dict]:
        """No bars at all: a skip when the market was closed (weekend, holiday), else an
        error (an unknown symbol, an export that ends before the interval)."""
        from airflow.sdk.exceptions import AirflowSkipException

        from feature_repo.pipeline.ingest import NoBarsError, check_ingested
        from feature_repo.pipeline.ingest import ingest as ingest_interval
        from titanovax.settings import PlatformSettings

        s = PlatformSettings()
        results = [
            ingest_interval(s, sym, s.timeframe, data_interval_start, data_interval_end)  # type: ignore[arg-type]
            for sym in s.symbols
        ]
        try:
            check_ingested(results)
        except NoBarsError as exc:
            if exc.expected:
                raise AirflowSkipException(str(exc)) from exc
            raise
        return [r.to_dict() for r in results]

    @sdk.task
    def validate(
        staged: list[dict],
        data_interval_start: datetime | None = None,
        data_interval_end: datetime | None = None,
    ) -> list[dict]:
        """Hard failures quarantine the day and fail this task (downstream does not run);
        soft failures are logged as warnings and the bars proceed (TX_VALIDATION_SEVERITY)."""
        from feature_repo.pipeline.validate import validate_symbols
        from titanovax.settings import PlatformSettings

        s = PlatformSettings()
        return validate_symbols(s, s.symbols, s.timeframe, data_interval_start, data_interval_end)  # type: ignore[arg-type]

    @sdk.task
    def features(
        validated: list[dict],
        data_interval_start: datetime | None = None,
        data_interval_end: datetime | None = None,
    ) -> list[dict]:
        from feature_repo.pipeline.store import build_features
        from titanovax.settings import PlatformSettings

        s = PlatformSettings()
        return [
            build_features(s, sym, s.timeframe, data_interval_start, data_interval_end).to_dict()
            for sym in s.symbols
        ]  # type: ignore[arg-type]

    @sdk.task
    def materialize(
        built: list[dict],
        data_interval_start: datetime | None = None,
        data_interval_end: datetime | None = None,
    ) -> int:
        from feature_repo.pipeline.store import materialize as materialize_interval
        from titanovax.settings import PlatformSettings

        s = PlatformSettings()
        materialize_interval(s, data_interval_start, data_interval_end, s.timeframe)  # type: ignore[arg-type]
        return sum(b["rows"] for b in built)

    materialize(features(validate(ingest())))


dag = market_data()

if __name__ == "__main__":
    dag.test()
