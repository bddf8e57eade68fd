"""Airflow wiring for local runs: environment, and a migrated SQLite metadata DB."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from titanovax.settings import PROJECT_ROOT, PlatformSettings


def airflow_env(settings: PlatformSettings) -> dict[str, str]:
    home = settings.airflow_home
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": os.environ.get(
            "AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING"
        ),
    }


def ensure_airflow_db(settings: PlatformSettings) -> bool:
    """Run ``airflow db migrate`` once per home (a marker records it). Returns True if it ran."""
    home = settings.airflow_home
    marker = home / ".migrated"
    if marker.exists() and (home / "airflow.db").exists():
        return False
    home.mkdir(parents=True, exist_ok=True)
    airflow = Path(sys.executable).with_name("airflow")
    env = {**os.environ, **airflow_env(settings)}
    proc = subprocess.run(
        [str(airflow), "db", "migrate"], env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"airflow db migrate failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        )
    marker.write_text("ok\n")
    return True
