"""The ``backups`` DAG under ``dag.test()`` (subprocess, SQLite Airflow metadata DB): its
task takes a real backup of a home with a SQLite journal and an audit log, and a second run
applies retention."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

import pytest

from tests.dags.test_dags import run_dag
from titanovax.backup import list_backups
from titanovax.settings import PlatformSettings

pytestmark = [pytest.mark.dags, pytest.mark.slow]


def test_backups_dag_when_run_then_a_verified_backup_lands_and_retention_applies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Arrange: a home with a journal and an audit log; keep only the newest backup
    home = tmp_path / "home"
    (home / "engine").mkdir(parents=True)
    with contextlib.closing(sqlite3.connect(home / "engine" / "journal.sqlite")) as db:
        db.execute("CREATE TABLE decisions (id INTEGER PRIMARY KEY, v TEXT)")
        with db:
            db.executemany("INSERT INTO decisions (v) VALUES (?)", [("x",)] * 30)
    (home / "registry").mkdir()
    (home / "registry" / "alias_audit.jsonl").write_text(json.dumps({"alias": "champion"}) + "\n")
    for k in ("TX_JOURNAL_URL", "TX_JOURNAL_PATH", "TX_MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("TX_BACKUP_KEEP_LAST", "1")
    monkeypatch.setenv("TX_BACKUP_KEEP_DAYS", "0")
    settings = PlatformSettings(home=home, redis_url="redis://127.0.0.1:6379/15")

    # Act: two runs of the DAG
    first = run_dag(settings, "dags.backups", "2026-12-05T02:30:00")
    second = run_dag(settings, "dags.backups", "2026-12-06T02:30:00")

    # Assert: both succeeded; one backup left (retention), with the journal's rows
    assert first["state"] == second["state"] == "success", (first, second)
    assert first["tasks"] == {"backup": "success"}
    backups = list_backups(home / "backups")
    assert len(backups) == 1
    assert backups[0]["components"]["journal"] == "sqlite"
    assert backups[0]["components"]["audit"] == "files"
    manifest = json.loads((Path(backups[0]["path"]) / "manifest.json").read_text())
    assert manifest["components"]["journal"]["row_counts"] == {"decisions": 30}
