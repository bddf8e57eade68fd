"""monitoring: the hourly monitoring loop, one task per check and one that records them.

Wiring only: each check task calls one entry of ``titanovax.monitor.CHECKS`` and passes its
rows on (XCom, JSON), so an operator sees per check in the Airflow UI whether it ran, how long
it took and, in its log, every verdict. ``record`` stores the rows (the results table that
``tx monitor results`` and the Prometheus exporter read), logs the MLflow run with the
Evidently report and calls the actions. A breach is a finding, not a task failure: the task
fails only when a check could not run at all.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow import sdk
from airflow.timetables.interval import CronDataIntervalTimetable

from titanovax.airflow_tasks import apply_airflow_config, notify_task_failure
from titanovax.monitor import CHECKS  # one task per registered check

DOC_MD = """
### monitoring

Hourly, at the end of each data interval (UTC):

1. **freshness**: lag of the lake, the offline and the online (Redis) store per symbol, in
   market time (a closed market is not stale);
2. **drift**: the champion's training reference sample vs the live window's features and
   model outputs (Evidently PSI/KS; HTML report);
3. **record**: rows into the results table (`tx monitor results`, job `monitor` in
   Prometheus), one MLflow run in experiment `monitoring`, then the actions.

Settings: `TX_MONITOR_*` (docs/monitoring.md). Param `checks` limits the run to some checks.
"""


def _run_check(name: str, data_interval_end: datetime | None, run_id: str | None) -> list[dict]:
    import logging

    from titanovax.monitor import MonitorContext, run_checks
    from titanovax.settings import PlatformSettings

    s = PlatformSettings()
    now = data_interval_end or datetime.now(UTC)
    work = s.home / "monitoring" / (run_id or f"{now:%Y%m%dT%H%M}").replace(":", "_")
    work.mkdir(parents=True, exist_ok=True)
    rows, took = run_checks(MonitorContext(s, now=now, work_dir=work), [name])
    log = logging.getLogger("airflow.task")
    for r in rows:
        if not r.subject.startswith(("feature:", "output:")):
            log.info("%s %s %s: %s", r.status.upper(), r.check, r.subject, r.detail)
    log.info("%s: %d rows in %.1f s", name, len(rows), took[name])
    return [{**r.to_dict(), "duration_s": took[name]} for r in rows]


@sdk.dag(
    dag_id="monitoring",
    schedule=CronDataIntervalTimetable("@hourly", timezone="UTC"),
    start_date=datetime(2024, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["monitoring"],
    default_args={
        "retries": 1,
        "retry_delay": timedelta(minutes=2),
        "pre_execute": apply_airflow_config,
        "on_failure_callback": notify_task_failure,
    },
    doc_md=DOC_MD,
)
def monitoring() -> None:
    @sdk.task
    def check(
        name: str, data_interval_end: datetime | None = None, run_id: str | None = None
    ) -> list[dict]:
        """One check of ``titanovax.monitor.CHECKS``; its verdicts are in the task log."""
        return _run_check(name, data_interval_end, run_id)

    @sdk.task(trigger_rule="all_done")
    def record(checked: list[list[dict] | None], data_interval_end: datetime | None = None) -> dict:
        """Every check's rows (a check task that failed contributes none) → table, MLflow,
        actions."""
        from titanovax.monitor import MonitorContext, result_from_dict
        from titanovax.monitor import record as record_rows
        from titanovax.settings import PlatformSettings

        s = PlatformSettings()
        rows = [dict(r) for part in checked if part for r in part]
        durations = {r["check"]: float(r.pop("duration_s", 0.0)) for r in rows}
        results = [result_from_dict(r) for r in rows]
        now = data_interval_end or datetime.now(UTC)
        mr = record_rows(MonitorContext(s, now=now), results, durations)
        return {
            "run_id": mr.run_id,
            "worst": mr.worst,
            "rows": len(results),
            "mlflow_run_id": mr.mlflow_run_id,
        }

    record([check.override(task_id=name)(name) for name in CHECKS])  # type: ignore[misc]


dag = monitoring()
