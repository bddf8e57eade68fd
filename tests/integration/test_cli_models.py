"""`tx models train|promote|pull` and `tx engine run --mode backtest`, through the real app:
the version carries its signature, input example, dataset, commit and a readable
description; promote --json prints only JSON; a pulled bundle backtests without serving."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tests.conftest import Platform
from titanovax.redis_local import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SMALL = {
    "name": "trend_cli_test",
    "feature_service": "trend_v1",
    "label": {"horizon_bars": 6},
    "split": {"train_days": 9, "test_days": 3, "embargo_bars": 6},
    "model": {"n_estimators": 60, "max_depth": 3, "learning_rate": 0.1, "tree_method": "hist"},
    "decision": {"min_confidence": 0.4},
}


@pytest.fixture
def cli_env(platform: Platform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in list(os.environ):
        if name.startswith("TX_"):
            monkeypatch.delenv(name)
    s = platform.settings
    monkeypatch.setenv("TX_HOME", str(s.home))
    # no TX_REDIS_URL: training, the registry, pulls and backtests touch only offline data
    monkeypatch.setenv("TX_SYMBOLS", ",".join(s.symbols))
    monkeypatch.setenv("TX_TIMEFRAME", s.timeframe)
    monkeypatch.setenv("TX_MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("TX_SERVING_URL", f"http://127.0.0.1:{free_port()}")  # nothing serves
    monkeypatch.setenv("TX_JOURNAL_PATH", str(tmp_path / "journal.sqlite"))
    cfg = tmp_path / "small.yaml"
    cfg.write_text(yaml.safe_dump(SMALL))
    return cfg


def test_models_train_promote_pull_and_backtest_when_run_through_tx_without_redis_then_each_step_is_recorded_and_used(
    cli_env: Path, platform: Platform
) -> None:
    from mlflow import MlflowClient

    from titanovax.cli import app
    from titanovax.settings import PlatformSettings
    from training.registry import move_aliases
    from training.train import git_commit

    runner = CliRunner()
    s = PlatformSettings()
    assert s.redis_url is None

    # offline feature work: apply and point-in-time reads need no online store
    assert runner.invoke(app, ["features", "apply"]).exit_code == 0
    res = runner.invoke(
        app,
        [
            "features",
            "get",
            "--start",
            "2026-01-13",
            "--end",
            "2026-01-14",
            "--out",
            str(cli_env.with_suffix(".parquet")),
        ],
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["rows"] == 2 * 288

    # train: a registered version with signature, input example, dataset, commit, description
    res = runner.invoke(app, ["models", "train", "--config", str(cli_env), "--as-of", "2026-01-17"])
    assert res.exit_code == 0, res.output
    trained = json.loads(res.stdout)
    version = trained["version"]
    client = MlflowClient(s.tracking_uri, s.tracking_uri)
    mv = client.get_model_version(s.model_name, version)
    run = client.get_run(mv.run_id)
    assert run.data.tags["mlflow.source.git.commit"] == git_commit()
    (ds_input,) = run.inputs.dataset_inputs
    tags = {t.key: t.value for t in ds_input.tags}
    assert tags["mlflow.data.context"] == "training"
    assert tags["feature_service"] == "trend_v1" and len(tags["lake_snapshot"]) == 64
    assert tags["range"].startswith("2026-01-05")
    import mlflow

    info = mlflow.models.get_model_info(mv.source)
    assert info.signature is not None and info.saved_input_example_info is not None
    assert info.signature.inputs.input_names() == ["input"]  # the ONNX graph's input
    assert info.signature.outputs.input_names() == ["probabilities"]
    assert "trained on 2026-01-05" in mv.description and "Not run yet" in mv.description

    # promote --json: stdout is one JSON document; the gate verdict lands in the description
    res = runner.invoke(app, ["models", "promote", version, "--json"])
    decision = json.loads(res.stdout)
    assert res.exit_code == (0 if decision["promoted"] else 1)
    described = client.get_model_version(s.model_name, version).description
    assert "### Promotion gate" in described and decision["reason"] in described
    assert "Not run yet" not in described
    if not decision["promoted"]:
        move_aliases(s, {"champion": version}, action="test", version=version, evidence={})

    # pull: the champion's bundle, hash-checked, where the backtest looks for it
    res = runner.invoke(app, ["models", "pull", "champion"])
    assert res.exit_code == 0, res.output
    bundle = s.home / "bundles" / "champion"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["model_version"] == version
    assert (
        hashlib.sha256((bundle / "model.onnx").read_bytes()).hexdigest()
        == manifest["bundle_sha256"]
    )
    # ... with the XGBoost member's native booster (docs/explanations.md): TreeSHAP adds up
    assert manifest["native_booster"] == "xgb_booster.ubj"
    assert manifest["explanation_outputs"]["members"] == [
        {"name": "xgb", "probabilities": "probabilities"}
    ]
    import numpy as np
    import xgboost as xgb

    booster = xgb.Booster(model_file=str(bundle / "xgb_booster.ubj"))
    dm = xgb.DMatrix(np.random.default_rng(0).normal(size=(4, len(manifest["features"]))))
    contribs = booster.predict(dm, pred_contribs=True)
    np.testing.assert_allclose(
        contribs.sum(axis=-1), booster.predict(dm, output_margin=True), atol=1e-4
    )

    # backtest with no serving: the pulled bundle scores every bar in-process
    res = runner.invoke(
        app,
        ["engine", "run", "--mode", "backtest", "--start", "2026-01-15", "--end", "2026-01-16"],
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["bars"] > 0 and out["decisions"] > 0
    assert "serving_unavailable" not in out["refusals"], out["refusals"]


def test_data_backfill_when_run_through_tx_then_stdout_is_one_summary_line_of_counts(
    cli_env: Path, platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    from titanovax.cli import app

    monkeypatch.setenv("TX_REDIS_URL", str(platform.settings.redis_url))

    # re-running a day of the platform's span is idempotent (same bytes, no duplicates)
    res = CliRunner().invoke(
        app, ["data", "backfill", "--start", "2026-01-12", "--end", "2026-01-13"]
    )

    assert res.exit_code == 0, res.output
    assert "\x1b[" not in res.output  # Feast's coloured materialise output stays out
    assert re.fullmatch(
        r"backfilled 1 days of EURUSD,GBPUSD M5: 576 bars ingested, 576 passed, "
        r"0 quarantined, [1-9]\d* feature rows, materialised\n",
        res.stdout,
    ), res.stdout
