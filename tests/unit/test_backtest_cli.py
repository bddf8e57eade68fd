"""`tx engine run --mode backtest` through the real app: a backtest's journal does not wait for
the disk by default (no synchronous commit point in the whole run), and waits at every bar
when TX_ENGINE_BACKTEST_JOURNAL_DURABLE=true; both journals hold the same decisions. The
simulated terminal's line per order stays out of the log (the fills are in the journal).

The model is a real ONNX graph (softmax of one feature times a weight) over the trend
features the backtest world computes; the market is the simulator's."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _no_tx_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the settings each run gives (CliRunner's env adds, it does not remove)."""
    for name in list(os.environ):
        if name.startswith("TX_"):
            monkeypatch.delenv(name)


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    from feature_repo.pipeline.transforms import TREND_V1_FEATURES
    from titanovax.faults import bundle_manifest, tiny_onnx

    names = list(TREND_V1_FEATURES)
    w = np.zeros((len(names), 3), dtype=np.float32)
    w[names.index("ret_6")] = [-4000.0, 0.0, 4000.0]  # the last 6 bars' return: up → long
    data = tiny_onnx(w, "tx_backtest_journal_model").SerializeToString()
    d = tmp_path / "bundle"
    d.mkdir()
    (d / "model.onnx").write_bytes(data)
    manifest = {
        **bundle_manifest(data),
        "features": names,
        "feature_service": "trend_v1",
        "feature_view": "trend_fv",
        "symbols": ["EURUSD"],
    }
    (d / "manifest.json").write_text(json.dumps(manifest))
    return d


def _backtest(tmp_path: Path, bundle: Path, tag: str, durable: str | None) -> dict:
    from titanovax.cli import app

    env = {
        "TX_HOME": str(tmp_path / "home"),
        "TX_ENGINE_BUNDLE_DIR": str(bundle),
        "TX_SYMBOLS": "EURUSD",
        "TX_ENGINE_BACKTEST_JOURNAL": str(tmp_path / f"{tag}.sqlite"),
    }
    if durable is not None:
        env["TX_ENGINE_BACKTEST_JOURNAL_DURABLE"] = durable
    res = CliRunner().invoke(
        app,
        ["engine", "run", "--mode", "backtest", "--start", "2026-01-13", "--end", "2026-01-14"],
        env=env,
    )
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def _decisions(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute(
            "SELECT symbol, bar_close, decision, verdict, target_lots, reason_code "
            "FROM decisions ORDER BY bar_close"
        ).fetchall()


def test_backtest_journal_when_run_by_default_then_no_commit_waits_for_the_disk_and_durable_true_waits_every_bar(
    tmp_path: Path, bundle: Path
) -> None:
    relaxed = _backtest(tmp_path, bundle, "relaxed", None)
    assert relaxed["journal_durable"] is False
    assert relaxed["journal_sync_commits"] == 0
    assert relaxed["decisions"] == relaxed["bars"] == 288
    assert relaxed["verdicts"].get("sent", 0) > 0, relaxed["verdicts"]

    durable = _backtest(tmp_path, bundle, "durable", "true")
    assert durable["journal_durable"] is True
    assert durable["journal_sync_commits"] >= durable["decisions"]  # one flush per bar at least

    # the same decisions either way, read back by another connection after the run
    rows = _decisions(tmp_path / "relaxed.sqlite")
    assert len(rows) == relaxed["decisions"]
    assert rows == _decisions(tmp_path / "durable.sqlite")


def test_backtest_log_when_run_without_verbose_then_no_line_per_order_and_the_level_is_restored(
    tmp_path: Path, bundle: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    out = _backtest(tmp_path, bundle, "quiet", None)
    assert out["verdicts"].get("sent", 0) > 0  # orders were filled ...
    sim = [r for r in caplog.records if r.name == "engine.mt5.sim"]
    assert not [r for r in sim if r.levelno < logging.WARNING], sim[:3]  # ... not logged
    assert logging.getLogger("engine.mt5.sim").level == logging.NOTSET  # restored
