"""Point-in-time dataset, training, ONNX parity, MLflow registry and the promotion gate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from feature_repo.pipeline.transforms import SEQ_CHANNELS, SEQ_LEN, TREND_V1_FEATURES
from tests.conftest import Platform
from titanovax.settings import PlatformSettings
from training.config import ExperimentConfig, LabelConfig, SplitConfig
from training.dataset import LookAheadError, assert_point_in_time, build_dataset

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PRICE_V1 = [f for f in TREND_V1_FEATURES if f not in ("hour_sin", "hour_cos")]


def lake_checks(platform: Platform) -> dict[str, object]:
    """What :func:`assert_point_in_time` needs to check a dataset against the platform's lake."""
    from feature_repo.pipeline import lake
    from feature_repo.pipeline.store import lookback, symbol_point

    s = platform.settings
    bars = {
        sym: lake.read_bars(s.lake_dir, sym, "M5", platform.start - lookback("M5"), platform.end)
        for sym in s.symbols
    }
    return {"bars": bars, "horizon": 6, "points": {k: symbol_point(s, k) for k in bars}}


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


def test_dataset_when_built_through_feast_then_every_row_is_point_in_time(
    dataset: pd.DataFrame, platform: Platform
) -> None:
    assert len(dataset) > 2000
    assert (dataset["label_end"] > dataset["event_timestamp"]).all()
    assert dataset["label_end"].max() <= pd.Timestamp(platform.end)
    assert not dataset[list(TREND_V1_FEATURES)].isna().any().any()
    assert_point_in_time(dataset, **lake_checks(platform))  # type: ignore[arg-type]


def test_dataset_when_price_features_come_from_the_next_bar_then_the_check_fails(
    dataset: pd.DataFrame, platform: Platform
) -> None:
    """Only the price columns move (the close-hour encodings stay the row's own), so it is the
    check against the lake's bars, not the timestamps, that must see it."""
    leaked = dataset.copy()
    for _, idx in leaked.groupby("symbol").groups.items():
        leaked.loc[idx, PRICE_V1] = leaked.loc[idx, PRICE_V1].shift(-1).to_numpy()
    leaked = leaked.dropna(subset=PRICE_V1)

    with pytest.raises(LookAheadError, match="is not the value the lake gives"):
        assert_point_in_time(leaked, **lake_checks(platform))  # type: ignore[arg-type]


def test_dataset_when_ret_next_is_the_bars_own_return_then_the_check_fails(
    dataset: pd.DataFrame, platform: Platform
) -> None:
    leaked = dataset.copy()
    for _, idx in leaked.groupby("symbol").groups.items():
        leaked.loc[idx, "ret_next"] = leaked.loc[idx, "ret_next"].shift(1).to_numpy()
    leaked = leaked.dropna(subset=["ret_next"])

    with pytest.raises(LookAheadError, match="ret_next"):
        assert_point_in_time(leaked, **lake_checks(platform))  # type: ignore[arg-type]


def test_dataset_features_equal_the_offline_rows_of_the_same_bar(
    dataset: pd.DataFrame, platform: Platform
) -> None:
    from feature_repo.pipeline.store import features_for_range

    off = features_for_range(
        platform.settings, "EURUSD", "M5", platform.start, platform.end
    ).set_index("event_timestamp")
    ds = dataset[dataset["symbol"] == "EURUSD"].set_index("event_timestamp")
    common = ds.index.intersection(off.index)
    assert len(common) == len(ds)
    np.testing.assert_allclose(
        ds.loc[common, list(TREND_V1_FEATURES)].to_numpy(float),
        off.loc[common, list(TREND_V1_FEATURES)].to_numpy(float),
        atol=1e-12,
    )


def check_monitoring_reference(
    s: PlatformSettings, manifest: dict[str, Any], local: Path, bundle_dir: Path, version: str
) -> None:
    """Contract C1: trained_at, reference_stats and the reference sample, in the MLflow model
    and in the pulled bundle; the reference is the training split only (look-ahead safe)."""
    from training.registry import pull_bundle

    trained_at = datetime.fromisoformat(manifest["trained_at"])
    assert trained_at.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - trained_at) < timedelta(minutes=30)
    stats = manifest["reference_stats"]
    assert sorted(stats) == sorted(manifest["features"])  # YAML/JSON sort the keys
    for q in stats.values():
        assert list(q) == ["q01", "q25", "q50", "q75", "q99"]
        assert q["q01"] <= q["q25"] <= q["q50"] <= q["q75"] <= q["q99"]
    assert manifest["reference_sample"] == "reference_sample.parquet"
    assert (local / "reference_sample.parquet").is_file()  # next to model.onnx in MLflow

    pull_bundle(s, version, bundle_dir)
    ref = pd.read_parquet(bundle_dir / "reference_sample.parquet")
    assert 200 <= len(ref) <= 5000
    assert {*manifest["features"], "p_short", "p_flat", "p_long"} <= set(ref.columns)
    probs = ref[["p_short", "p_flat", "p_long"]].to_numpy()
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    lo, hi = (pd.Timestamp(t) for t in manifest["train_range"])
    ts = pd.to_datetime(ref["event_timestamp"], utc=True)
    assert ts.min() >= lo and ts.max() < hi, (ts.min(), ts.max(), lo, hi)
    assert ts.max() < pd.Timestamp(manifest["test_range"][0])
    # the quantiles are of the training split: the sample's medians sit inside them
    for f in manifest["features"]:
        assert stats[f]["q01"] <= float(ref[f].median()) <= stats[f]["q99"]


def test_train_register_and_gate(
    platform: Platform, tmp_path_factory: pytest.TempPathFactory
) -> None:
    import mlflow
    from mlflow import MlflowClient

    from training.train import build_training_dataset, promote, train_and_register

    s = platform.settings.model_copy(
        update={"mlflow_tracking_uri": f"sqlite:///{tmp_path_factory.mktemp('mlf') / 'm.db'}"}
    )
    as_of = platform.end - timedelta(days=2)  # Saturday after the second week
    cfg = small_config()
    path = build_training_dataset(s, cfg, as_of)
    res = train_and_register(s, cfg, path, as_of)

    assert res.parity_max_abs_diff <= 1e-5
    client = MlflowClient(s.tracking_uri, s.tracking_uri)
    mv = client.get_model_version(s.model_name, res.version)
    local = mlflow.artifacts.download_artifacts(
        f"models:/{s.model_name}/{res.version}", tracking_uri=s.tracking_uri
    )
    manifest = mlflow.models.Model.load(local).metadata["tx_manifest"]
    assert (
        manifest["features"] == list(TREND_V1_FEATURES)
        and manifest["feature_service"] == "trend_v1"
    )
    arts = {a.path for a in client.list_artifacts(mv.run_id, "plots")}
    assert {"plots/equity_curve.png", "plots/feature_importance.png"} <= arts
    check_monitoring_reference(
        s, manifest, Path(local), tmp_path_factory.mktemp("bundle"), res.version
    )

    # a challenger that never trades cannot beat always-flat: refused, nothing moves
    flat_cfg = small_config(min_confidence=1.0)
    flat = train_and_register(s, flat_cfg, path, as_of)
    refused = promote(s, flat.version)
    assert not refused.promoted and "does not beat always-flat" in refused.reason
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException):
        client.get_model_version_by_alias(s.model_name, "champion")
    assert (
        str(client.get_model_version_by_alias(s.model_name, "challenger").version) == flat.version
    )

    # the real model, on this fixed market (seed 7, two weeks of EURUSD + GBPUSD M5), is known to
    # beat always-flat after costs on its test window: promoted, and the alias moves to it
    decision = promote(s, res.version)
    assert decision.promoted, decision.evidence
    assert decision.evidence["challenger_net_return"] > 0, decision.evidence
    assert str(client.get_model_version_by_alias(s.model_name, "champion").version) == res.version
    assert "gate" in client.get_model_version(s.model_name, res.version).tags
    from training.registry import history

    assert [r["version"] for r in history(s)] == [flat.version, res.version]


def test_dataset_when_built_for_trend_v2_then_sequences_end_at_their_own_bar(
    platform: Platform,
) -> None:
    from training.dataset import sequence_tensor, service_inputs

    s = platform.settings
    ds = build_dataset(
        s,
        s.symbols,
        "M5",
        platform.start + timedelta(days=7),
        platform.end,
        horizon=6,
        feature_service="trend_v2",
    )
    names, has_seq = service_inputs("trend_v2")
    assert has_seq and len(names) > 40 and len(ds) > 1000
    assert sequence_tensor(ds).shape == (len(ds), SEQ_LEN, len(SEQ_CHANNELS))
    checks = {**lake_checks(platform), "feature_service": "trend_v2"}
    assert_point_in_time(ds, **checks)  # type: ignore[arg-type]
    # the next bar's sequence, with this row's close-hour channels kept: only the bars can tell
    hours = [SEQ_CHANNELS.index("hour_sin"), SEQ_CHANNELS.index("hour_cos")]
    ds = ds.sort_values(["symbol", "event_timestamp"]).reset_index(drop=True)
    seq = sequence_tensor(ds)
    ahead = seq.copy()
    sym = ds["symbol"].to_numpy()
    same = np.r_[sym[1:] == sym[:-1], False]
    ahead[:-1] = seq[1:]
    ahead[:, :, hours] = seq[:, :, hours]
    shifted = ds.assign(seq=list(ahead.reshape(len(ds), -1)))[same]
    with pytest.raises(LookAheadError, match="seq"):
        assert_point_in_time(shifted, **checks)  # type: ignore[arg-type]


def test_train_ensemble_when_trend_v2_then_one_onnx_graph_with_sequence_is_registered(
    platform: Platform, tmp_path_factory: pytest.TempPathFactory
) -> None:
    import mlflow

    from training.config import TransformerConfig
    from training.train import build_training_dataset, train_and_register

    s = platform.settings.model_copy(
        update={"mlflow_tracking_uri": f"sqlite:///{tmp_path_factory.mktemp('mlf2') / 'm.db'}"}
    )
    cfg = small_config().model_copy(
        update={
            "name": "trend_v2_test",
            "feature_service": "trend_v2",
            "family": "ensemble",
            "transformer": TransformerConfig(d_model=16, n_heads=2, n_layers=1, epochs=1),
            "split": SplitConfig(train_days=6, test_days=3, embargo_bars=6, n_folds=2),
        }
    )
    as_of = platform.end - timedelta(days=2)
    tuned = {"d_model": 8, "n_heads": 1, "lr": 0.004}  # as a transformer study's best would arrive
    res = train_and_register(
        s, cfg, build_training_dataset(s, cfg, as_of), as_of, transformer_params=tuned
    )
    assert res.parity_max_abs_diff <= 1e-5
    local = mlflow.artifacts.download_artifacts(
        f"models:/{s.model_name}/{res.version}", tracking_uri=s.tracking_uri
    )
    m = mlflow.models.Model.load(local).metadata["tx_manifest"]
    assert {k: m["model_params"]["transformer"][k] for k in tuned} == tuned and m["model_params"][
        "transformer"
    ]["n_layers"] == 1
    assert (
        mlflow.MlflowClient(s.tracking_uri).get_run(res.run_id).data.params["transformer.d_model"]
        == "8"
    )
    assert m["sequence"] == {
        "input_name": "sequence",
        "feature_view": "bar_sequence_fv",
        "field": "seq",
        "seq_len": SEQ_LEN,
        "channels": list(SEQ_CHANNELS),
    }
    assert (
        m["feature_views"] == ["trend_v2_fv", "bar_sequence_fv"]
        and len(m["ensemble_weights"]["by_regime_state"]) == 4
    )
    for key in (
        "bundle_sha256",
        "lake_snapshot",
        "git_commit",
        "onnx_latency_us",
        "thresholds",
        "train_range",
        "test_range",
    ):
        assert m[key], key
    for k in (
        "test_sharpe_ci_low",
        "baseline_buy_and_hold_net_return",
        "baseline_momentum_sharpe",
        "test_profit_factor",
    ):
        assert k in res.metrics
