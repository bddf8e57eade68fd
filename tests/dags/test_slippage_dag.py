"""The ``slippage_model`` DAG under ``dag.test()`` (subprocess, SQLite Airflow metadata DB):
simulated fills through the engine's order path, then the fit registers ``tx_slippage`` and
the gate promotes it, audited."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.dags.test_dags import run_dag
from titanovax.settings import PlatformSettings
from training.registry import history
from training.slippage import slippage_settings

pytestmark = [pytest.mark.dags, pytest.mark.slow]


def test_slippage_dag_when_run_with_simulated_fills_then_the_model_is_registered_and_promoted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Arrange: a fresh home (its own MLflow store and audit log)
    for k in ("TX_JOURNAL_URL", "TX_JOURNAL_PATH", "TX_MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(k, raising=False)
    settings = PlatformSettings(home=tmp_path / "home", redis_url="redis://127.0.0.1:6379/15")

    # Act
    res = run_dag(settings, "dags.slippage_model", "2026-12-07T03:00:00", {"simulate_n": 4000})

    # Assert: both tasks ran; the fills journal exists; v1 is champion, audited
    assert res["state"] == "success", res
    assert res["tasks"] == {"simulate": "success", "fit": "success"}
    assert (settings.home / "slippage" / "fills.sqlite").is_file()
    rows = history(slippage_settings(settings))
    assert [(r["action"], r["after"]) for r in rows] == [("promote", {"champion": "1"})]


def test_slippage_dag_when_the_journal_has_no_fills_then_fit_is_skipped_not_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a fresh stack runs the latest weekly interval at once, before the engine made any fill:
    # that is no failure (no alert), and no model is registered
    for k in ("TX_JOURNAL_URL", "TX_JOURNAL_PATH", "TX_MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(k, raising=False)
    settings = PlatformSettings(home=tmp_path / "home", redis_url="redis://127.0.0.1:6379/15")
    journal = tmp_path / "journal.sqlite"

    res = run_dag(settings, "dags.slippage_model", "2026-12-07T03:00:00", {"journal": str(journal)})

    assert res["tasks"] == {"simulate": "success", "fit": "skipped"}, res
    assert res["state"] == "success", res
    assert history(slippage_settings(settings)) == []
