"""backups: one online backup of the platform's state per day, then retention.

Wiring only: the task calls :func:`titanovax.backup.run` with the settings' sources (the
engine journal, the MLflow backend and artifacts, the Feast registry, the audit logs) and
returns the manifest's summary. The engine keeps trading while it runs (SQLite backup API /
``pg_dump`` in one snapshot); restoring is an operator's act (``tx backup restore``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow import sdk
from airflow.timetables.interval import CronDataIntervalTimetable

from titanovax.airflow_tasks import apply_airflow_config, notify_task_failure

DOC_MD = """
### backups

Daily at 02:30 UTC: `tx backup run` as a task. The backup lands in `TX_BACKUP_DIR`
(default `$TX_HOME/backups/<UTC timestamp>/`) with a manifest (files, sizes, sha256, row
counts); retention keeps the newest `TX_BACKUP_KEEP_LAST` and anything younger than
`TX_BACKUP_KEEP_DAYS`. Restore runbook: docs/operations-heal.md.
"""


@sdk.dag(
    dag_id="backups",
    schedule=CronDataIntervalTimetable("30 2 * * *", timezone="UTC"),
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,  # a missed night is not worth a backup of today's state stamped yesterday
    max_active_runs=1,
    tags=["ops"],
    default_args={
        "retries": 2,  # a busy database or disk; the backup is all-or-nothing
        "retry_delay": timedelta(minutes=5),
        "pre_execute": apply_airflow_config,
        "on_failure_callback": notify_task_failure,
    },
    doc_md=DOC_MD,
)
def backups() -> None:
    @sdk.task
    def backup() -> dict:
        from titanovax.backup import BackupSettings, Sources, backup_dir, run

        bs = BackupSettings()
        out = run(backup_dir(bs=bs), Sources.from_settings(bs=bs), bs)
        return {
            "id": out["id"],
            "path": out["path"],
            "files": len(out["files"]),
            "bytes": out["bytes"],
            "components": {k: v["kind"] for k, v in out["components"].items()},
            "pruned": out["pruned"],
        }

    backup()


dag = backups()
