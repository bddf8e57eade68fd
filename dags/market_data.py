"""market_data: ingest → validate → features → materialise, one run per data interval.

Wiring only: every task calls one function of ``feature_repo.pipeline`` with its data
interval and passes references (counts, paths) on. Intraday timeframes run daily.
``materialize`` updates the feature asset that schedules ``train_and_promote``.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

from airflow import sdk
from airflow.timetables.interval import CronDataIntervalTimetable

from titanovax.airflow_tasks import (
    FEATURES_ASSET_NAME,
    FEATURES_ASSET_URI,
    apply_airflow_config,
    notify_task_failure,
)
from titanovax.settings import DagSettings

FEATURES = sdk.Asset(name=FEATURES_ASSET_NAME, uri=FEATURES_ASSET_URI)

DOC_MD = """
### market_data

One run per **daily data interval** (UTC), for every symbol of `TX_SYMBOLS` at `TX_TIMEFRAME`:

1. **ingest** the interval's closed bars from the MT5 terminal (`TX_MT5_MODE`) into staging;
2. **validate** them with the Great Expectations suites: a hard failure quarantines the day
   and fails the run (no retry: the data, not the network, is wrong), soft flags warn;
3. **features**: the one feature code path writes the offline store;
4. **materialize** to the online store (Redis) with a small overlap, and update the asset
   `tx_trend_features`, which schedules `train_and_promote`.

Settings: Connections `tx_redis`, `tx_postgres`, `tx_mlflow` and Variable `tx_serving_url`
override `TX_REDIS_URL`, `TX_OPTUNA_STORAGE`, `TX_MLFLOW_TRACKING_URI`, `TX_SERVING_URL`.
A failed task is logged and posted to `TX_DAG_FAILURE_WEBHOOK_URL` (docs/stack.md).
"""

_dag_settings = DagSettings()  # validated: TX_DAG_CATCHUP=maybe is an import error, not false


@sdk.dag(
    dag_id="market_data",
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
    # history to backfill: with TX_DAG_CATCHUP=true the scheduler runs every missed daily
    # interval since TX_DAG_START_DATE (or use `airflow backfill create --dag-id market_data`)
    start_date=datetime.combine(_dag_settings.dag_start_date, time(), UTC),
    catchup=_dag_settings.dag_catchup,
    max_active_runs=1,
    tags=["data"],
    default_args={
        "retries": 2,  # terminal and Redis hiccups; validate opts out (its failures are data)
        "retry_delay": timedelta(seconds=_dag_settings.dag_retry_delay_s),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=10),
        "pre_execute": apply_airflow_config,
        "on_failure_callback": notify_task_failure,
    },
    doc_md=DOC_MD,
    params={
        "validation": sdk.Param(
            "as_configured",
            type="string",
            enum=["as_configured", "strict"],
            description="as_configured: TX_VALIDATION_SEVERITY decides; strict: every rule is hard",
        ),
    },
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

    @sdk.task(retries=0)
    def validate(
        staged: list[dict],
        data_interval_start: datetime | None = None,
        data_interval_end: datetime | None = None,
        params: dict | None = None,
    ) -> list[dict]:
        """Hard failures quarantine the day and fail this task (downstream does not run);
        soft failures are logged as warnings and the bars proceed (TX_VALIDATION_SEVERITY)."""
        from feature_repo.pipeline.validate import validate_symbols
        from titanovax.settings import PlatformSettings

        s = PlatformSettings()
        if (params or {}).get("validation") == "strict":
            s = s.model_copy(update={"validation_severity": "*=hard"})
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

    @sdk.task(outlets=[FEATURES])
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
