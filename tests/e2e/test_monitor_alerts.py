"""The monitoring alerts fire in a real Prometheus: `tx monitor run` finds a drift breach and a
stale lake, `tx monitor exporter` (a real process) serves the table, Prometheus scrapes it with
the project's rules; SIGKILLing the exporter fires TxMonitorExporterDown."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.e2e.observe_procs import TX, firing, process, prometheus, require_binaries, wait_for
from tests.integration.test_monitor_cli import AT, home  # noqa: F401  (fixture)
from titanovax.observe import RULES_DIR, ScrapeTarget, render_prometheus_config
from titanovax.redis_local import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.observe, pytest.mark.slow]


def test_monitor_alerts_when_drift_and_stale_lake_then_fire_and_exporter_kill_fires_down(
    home: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    require_binaries()
    from titanovax.cli import app

    res = CliRunner().invoke(app, ["monitor", "run", "--bundle", str(home / "bundle"), "--at", AT])
    assert res.exit_code == 1, res.output  # the breaches the alerts must show

    exp_port, prom_port = free_port(), free_port()
    env = {"PYTHONPATH": str(Path(__file__).parents[2])}
    with process(
        [TX, "monitor", "exporter", "--port", str(exp_port)], tmp_path / "exporter.log", env
    ) as exporter:
        cfg = render_prometheus_config(
            [ScrapeTarget("monitor", [f"127.0.0.1:{exp_port}"])],
            RULES_DIR,
            tmp_path / "prom",
            scrape_interval="1s",
            evaluation_interval="1s",
            for_override="2s",
        )
        with prometheus(cfg, prom_port, tmp_path) as prom:
            drift = wait_for(firing(prom, "TxMonitorDriftBreach"), 60, "TxMonitorDriftBreach")
            assert {a["labels"]["subject"] for a in drift} == {"features", "outputs"}
            stale = wait_for(firing(prom, "TxMonitorStoreStale"), 60, "TxMonitorStoreStale")
            assert {a["labels"]["subject"] for a in stale} == {"EURUSD/M5/lake"}
            # the run judged as of January: no run "for months" is what the rule sees too
            assert wait_for(firing(prom, "TxMonitorNotRunning"), 60, "TxMonitorNotRunning")
            os.killpg(exporter.pid, signal.SIGKILL)
            exporter.wait(10)
            down = wait_for(firing(prom, "TxMonitorExporterDown"), 60, "TxMonitorExporterDown")
            assert down[0]["labels"]["job"] == "monitor"
