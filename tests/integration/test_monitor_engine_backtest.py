"""The whole door of live versus expected: `tx models train` writes ``expected_pnl`` from the
test window, `tx models pull` + `tx engine run --mode backtest` replays that same window through
the real engine on the simulated terminal (its journal holds the decisions and the fills), and
the check, reading that journal and the lake, finds the engine inside its own backtest."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tests.conftest import Platform
from titanovax.redis_local import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SMALL = {
    "name": "trend_monitor_test",
    "feature_service": "trend_v1",
    "label": {"horizon_bars": 6},
    "split": {"train_days": 9, "test_days": 3, "embargo_bars": 6},
    "model": {"n_estimators": 60, "max_depth": 3, "learning_rate": 0.1, "tree_method": "hist"},
    "decision": {"min_confidence": 0.4},
}


def test_live_vs_expected_when_the_engine_replays_the_test_window_then_it_is_inside_its_backtest(
    platform: Platform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from titanovax.cli import app
    from titanovax.settings import PlatformSettings
    from training.monitor.performance import live_vs_expected
    from training.registry import move_aliases

    for name in list(os.environ):
        if name.startswith("TX_"):
            monkeypatch.delenv(name)
    s0 = platform.settings
    monkeypatch.setenv("TX_HOME", str(s0.home))
    monkeypatch.setenv("TX_SYMBOLS", ",".join(s0.symbols))
    monkeypatch.setenv("TX_TIMEFRAME", s0.timeframe)
    monkeypatch.setenv("TX_MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("TX_SERVING_URL", f"http://127.0.0.1:{free_port()}")  # nothing serves
    monkeypatch.setenv("TX_ENGINE_BACKTEST_JOURNAL", str(tmp_path / "backtest.sqlite"))
    monkeypatch.setenv("TX_ENGINE_STOP_ATR_MULT", "0")  # positions move on decisions only
    cfg = tmp_path / "small.yaml"
    cfg.write_text(yaml.safe_dump(SMALL))
    runner = CliRunner()
    s = PlatformSettings()

    res = runner.invoke(app, ["models", "train", "--config", str(cfg), "--as-of", "2026-01-17"])
    assert res.exit_code == 0, res.output
    version = json.loads(res.stdout)["version"]
    move_aliases(s, {"champion": version}, action="test", version=version, evidence={})
    assert runner.invoke(app, ["models", "pull", "champion"]).exit_code == 0
    manifest = json.loads((s.home / "bundles" / "champion" / "manifest.json").read_text())
    expected = manifest["expected_pnl"]
    start, end = (t[:16] for t in manifest["test_range"])

    res = runner.invoke(
        app, ["engine", "run", "--mode", "backtest", "--start", start, "--end", end]
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["verdicts"].get("sent", 0) > 0, out

    [r] = live_vs_expected(
        journal_target=tmp_path / "backtest.sqlite",
        scope=out["journal_scope"],
        manifest=manifest,
        lake_root=s.lake_dir,
    )
    print(r.detail, r.metrics, r.evidence.get("cost_sources"), expected["n_bars"])
    assert r.status == "ok", (r.detail, r.metrics, out)
    assert r.evidence["cost_sources"].get("fills", 0) > 0  # costs from the journal's fills
    assert r.metrics["live_bars"] >= 0.9 * expected["n_bars"]
