"""`tx monitor run / results / exporter` through the CLI: a real bundle (ONNX + reference
sample), drifted live rows in the offline store, a stale lake; the results table, the MLflow
run with the Evidently report, and Prometheus text from the exporter process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from tests.integration.test_monitor_drift import FEATURES, make_bundle

pytestmark = pytest.mark.integration

AT = "2026-01-14T12:00"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    for k in [k for k in os.environ if k.startswith("TX_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("TX_HOME", str(h))
    monkeypatch.setenv("TX_SYMBOLS", "EURUSD")
    monkeypatch.setenv("DO_NOT_TRACK", "1")
    # live rows of the last day, every feature shifted: the drift check must breach
    rng = np.random.default_rng(9)
    ts = pd.date_range("2026-01-13T12:05", "2026-01-14T12:00", freq="5min", tz="UTC")
    live = pd.DataFrame(rng.normal(size=(len(ts), len(FEATURES))) + 1.5, columns=FEATURES)
    live.insert(0, "event_timestamp", ts)
    live.insert(0, "symbol", "EURUSD")
    off = h / "offline" / "trend_features"
    off.mkdir(parents=True)
    for day, part in live.groupby(live["event_timestamp"].dt.date):
        part.to_parquet(off / f"EURUSD_M5_{day}.parquet", index=False)
    # the lake stopped on Monday: stale by Wednesday noon
    lake = h / "lake" / "symbol=EURUSD" / "timeframe=M5" / "date=2026-01-12"
    lake.mkdir(parents=True)
    pd.DataFrame(
        {"close_time": pd.date_range(end="2026-01-12T00:00", periods=3, freq="5min", tz="UTC")}
    ).to_parquet(lake / "bars.parquet")
    make_bundle(h / "bundle")
    return h


def test_monitor_when_run_through_tx_then_results_mlflow_and_metrics_agree(home: Path) -> None:
    from mlflow import MlflowClient

    from titanovax.cli import app
    from titanovax.settings import PlatformSettings

    runner = CliRunner()
    t0 = time.perf_counter()
    res = runner.invoke(
        app, ["monitor", "run", "--bundle", str(home / "bundle"), "--at", AT, "--json"]
    )
    took = time.perf_counter() - t0
    assert res.exit_code == 1, res.output  # a breach: exit 1
    out = json.loads(res.stdout)
    by = {(r["check"], r["subject"]): r for r in out["results"]}
    assert by[("drift", "features")]["status"] == "breach"
    assert by[("freshness", "EURUSD/M5/lake")]["status"] == "breach"
    assert by[("freshness", "EURUSD/M5/offline")]["status"] == "ok"
    assert by[("freshness", "EURUSD/M5/online")]["status"] == "skipped"  # no TX_REDIS_URL
    assert took < 60, took

    # the results table answers `tx monitor results`
    res = runner.invoke(app, ["monitor", "results", "--check", "drift", "--latest", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert {r["subject"] for r in rows} >= {"features", "outputs", "feature:f0"}
    assert all(r["run_id"] == out["run_id"] for r in rows)
    text = runner.invoke(app, ["monitor", "results", "--limit", "3"]).stdout
    assert len(text.strip().splitlines()) == 3

    # one MLflow run in `monitoring`, with per-check metrics and the Evidently report
    s = PlatformSettings()
    client = MlflowClient(s.tracking_uri)
    run = client.get_run(out["mlflow_run_id"])
    assert client.get_experiment(run.info.experiment_id).name == "monitoring"
    assert run.data.params["drift.worst"] == "breach"
    assert run.data.metrics["drift.features.drift_share"] == 1.0
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "reports")}
    assert arts == {"reports/drift_report.html"}

    # a freshness-only run: the lake is still stale, exit 1; only that check's rows are new
    res = runner.invoke(app, ["monitor", "run", "--check", "freshness", "--at", AT])
    assert res.exit_code == 1 and "breach   freshness  EURUSD/M5/lake" in res.stdout, res.output

    # the exporter serves the newest verdicts for Prometheus
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "titanovax.cli", "monitor", "exporter", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        import httpx

        body = ""
        for _ in range(100):
            try:
                body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert 'tx_monitor_check_status{check="drift",subject="features"} 2.0' in body, body
        assert 'tx_monitor_check_status{check="freshness",subject="EURUSD/M5/online"} -1.0' in body
        assert 'tx_monitor_drift_share{side="features"} 1.0' in body
        assert (
            'tx_monitor_freshness_lag_seconds{store="lake",symbol="EURUSD",timeframe="M5"}' in body
        )
        from prometheus_client.parser import text_string_to_metric_families

        last = {
            f.name: f.samples[0].value
            for f in text_string_to_metric_families(body)
            if f.name == "tx_monitor_last_run_timestamp_seconds"
        }
        assert last == {
            "tx_monitor_last_run_timestamp_seconds": pd.Timestamp(AT, tz="UTC").timestamp()
        }
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)


def test_monitor_when_check_unknown_then_one_line_and_exit_2(home: Path) -> None:
    from titanovax.cli import app

    res = CliRunner().invoke(app, ["monitor", "run", "--check", "nope"])
    assert res.exit_code == 2
    assert (
        res.stderr.strip().splitlines()
        == ["error: unknown check nope (known: freshness, drift; see `tx monitor run --help`)"]
        or "unknown check nope" in res.output
    )
    res = CliRunner().invoke(app, ["monitor", "run", "--bundle", str(home)])
    assert res.exit_code == 2 and "has no manifest.json" in res.output


def test_monitor_help_lists_the_commands() -> None:
    from titanovax.cli import app

    res = CliRunner().invoke(app, ["monitor", "--help"])
    assert res.exit_code == 0
    assert all(c in res.stdout for c in ("run", "results", "exporter"))
