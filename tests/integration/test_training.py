"""Point-in-time dataset, training, ONNX parity, MLflow registry and the promotion gate."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from feature_repo.pipeline.transforms import FEATURE_NAMES
from tests.conftest import Platform
from training.config import ExperimentConfig, LabelConfig, SplitConfig
from training.dataset import LookAheadError, assert_point_in_time, build_dataset

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def small_config(min_confidence: float = 0.4) -> ExperimentConfig:
    return ExperimentConfig(
        name="trend_test",
        feature_service="trend_v1",
        label=LabelConfig(horizon_bars=6),
        split=SplitConfig(train_days=9, test_days=3, embargo_bars=6),
        model={"n_estimators": 60, "max_depth": 3, "learning_rate": 0.1, "tree_method": "hist"},
        decision={"min_confidence": min_confidence},  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def dataset(platform: Platform) -> pd.DataFrame:
    s = platform.settings
    return build_dataset(s, s.symbols, "M5", platform.start, platform.end, horizon=6)


def test_dataset_when_built_through_feast_then_every_row_is_point_in_time(dataset: pd.DataFrame, platform: Platform) -> None:
    assert len(dataset) > 2000
    assert (dataset["label_end"] > dataset["event_timestamp"]).all()
    assert dataset["label_end"].max() <= pd.Timestamp(platform.end)
    assert not dataset[list(FEATURE_NAMES)].isna().any().any()
    assert_point_in_time(dataset)


def test_dataset_when_features_are_shifted_one_bar_into_the_future_then_the_check_fails(dataset: pd.DataFrame) -> None:
    leaked = dataset.copy()
    for sym, idx in leaked.groupby("symbol").groups.items():
        leaked.loc[idx, list(FEATURE_NAMES)] = leaked.loc[idx, list(FEATURE_NAMES)].shift(-1).to_numpy()
        del sym
    leaked = leaked.dropna()
    with pytest.raises(LookAheadError):
        assert_point_in_time(leaked)


def test_dataset_features_equal_the_offline_rows_of_the_same_bar(dataset: pd.DataFrame, platform: Platform) -> None:
    from feature_repo.pipeline.store import features_for_range

    off = features_for_range(platform.settings, "EURUSD", "M5", platform.start, platform.end).set_index("event_timestamp")
    ds = dataset[dataset["symbol"] == "EURUSD"].set_index("event_timestamp")
    common = ds.index.intersection(off.index)
    assert len(common) == len(ds)
    np.testing.assert_allclose(ds.loc[common, list(FEATURE_NAMES)].to_numpy(float), off.loc[common, list(FEATURE_NAMES)].to_numpy(float), atol=1e-12)


def test_train_register_and_gate(platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> None:
    import mlflow
    from mlflow import MlflowClient

    from training.train import build_training_dataset, promote, train_and_register

    s = platform.settings.model_copy(update={"mlflow_tracking_uri": f"sqlite:///{tmp_path_factory.mktemp('mlf') / 'm.db'}"})
    as_of = platform.end - timedelta(days=2)  # Saturday after the second week
    cfg = small_config()
    path = build_training_dataset(s, cfg, as_of)
    res = train_and_register(s, cfg, path, as_of)

    assert res.parity_max_abs_diff <= 1e-5
    client = MlflowClient(s.tracking_uri, s.tracking_uri)
    mv = client.get_model_version(s.model_name, res.version)
    local = mlflow.artifacts.download_artifacts(f"models:/{s.model_name}/{res.version}", tracking_uri=s.tracking_uri)
    manifest = mlflow.models.Model.load(local).metadata["tx_manifest"]
    assert manifest["features"] == list(FEATURE_NAMES) and manifest["feature_service"] == "trend_v1"
    arts = {a.path for a in client.list_artifacts(mv.run_id, "plots")}
    assert {"plots/equity_curve.png", "plots/feature_importance.png"} <= arts

    # a challenger that never trades cannot beat always-flat: refused, nothing moves
    flat_cfg = small_config(min_confidence=1.0)
    flat = train_and_register(s, flat_cfg, path, as_of)
    refused = promote(s, flat.version)
    assert not refused.promoted and "does not beat always-flat" in refused.reason
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException):
        client.get_model_version_by_alias(s.model_name, "champion")
    assert str(client.get_model_version_by_alias(s.model_name, "challenger").version) == flat.version

    # the real model is promoted only if it beats always-flat after costs on its test window
    decision = promote(s, res.version)
    assert decision.promoted == (res.metrics["test_net_return"] > 0)
    if decision.promoted:
        assert str(client.get_model_version_by_alias(s.model_name, "champion").version) == res.version
    assert "gate" in client.get_model_version(s.model_name, res.version).tags
