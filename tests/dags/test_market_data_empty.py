"""The market_data DAG under ``dag.test()`` when an interval has no bars: a closed market
(the weekend) skips the run with its reason; a symbol the source does not have fails it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import make_settings
from tests.dags.test_dags import RUNNER
from titanovax.airflow_env import airflow_env, ensure_airflow_db
from titanovax.settings import PROJECT_ROOT, PlatformSettings

pytestmark = [pytest.mark.dags, pytest.mark.slow]


def _run(s: PlatformSettings, logical_date: str, **env: str) -> tuple[dict, str]:
    ensure_airflow_db(s)
    full = {
        **os.environ,
        **airflow_env(s),
        "TX_HOME": str(s.home),
        "TX_REDIS_URL": str(s.redis_url),
        "TX_SYMBOLS": ",".join(s.symbols),
        "TX_TIMEFRAME": s.timeframe,
        **env,
    }
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, "dags.market_data", logical_date, "{}"],
        cwd=PROJECT_ROOT,
        env=full,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line, f"no result (rc={proc.returncode}):\n{proc.stderr[-4000:]}"
    return json.loads(line[len("RESULT ") :]), proc.stdout + proc.stderr


def test_market_data_when_the_interval_is_a_saturday_then_ingest_skips_with_the_reason(
    tmp_path: Path, redis_url: str
) -> None:
    s = make_settings(tmp_path / "home", redis_url, db=14, symbols=["EURUSD"])

    res, logs = _run(s, "2026-01-11T00:00:00")  # the interval is Saturday 2026-01-10

    assert res["state"] == "success", res
    assert set(res["tasks"].values()) == {"skipped"}, res
    assert "the market is closed (weekend)" in logs


def test_market_data_when_the_symbol_has_no_export_then_ingest_fails(
    tmp_path: Path, redis_url: str
) -> None:
    exports = tmp_path / "exports"
    exports.mkdir()
    (exports / "EURUSD_M5__only.csv").write_text(
        "time,open,high,low,close,tick_volume,spread,real_volume\n"
        "2026-01-07 10:00:00,1.1,1.2,1.0,1.15,10,12,0\n"
    )
    s = make_settings(tmp_path / "home", redis_url, db=14, symbols=["GBPUSD"])

    # the retries (2, doubling) wait 1 s and 2 s here instead of minutes
    res, logs = _run(
        s, "2026-01-08T00:00:00", TX_MT5_EXPORTS=str(exports), TX_DAG_RETRY_DELAY_S="1"
    )

    assert res["state"] == "failed", res
    assert res["tasks"]["ingest"] == "failed" and res["tasks"]["validate"] == "upstream_failed"
    assert "GBPUSD" in logs and "not found" in logs
