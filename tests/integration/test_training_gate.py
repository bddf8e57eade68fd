"""The promotion gate on real MLflow registry versions (real ONNX bundles, real aliases):
a worse challenger is refused, a better one promoted, every move audited, rollback works."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from titanovax.settings import PlatformSettings
from training.config import GateConfig
from training.export import check_parity, single_row_latency_us, xgb_to_onnx
from training.gate import decide, promote
from training.models import ModelData, XGBModel
from training.registry import RollbackError, audit_path, current_aliases, history, rollback

pytestmark = pytest.mark.integration

FEATURES = ["f0", "f1", "f2"]
N = 1500


def market(seed: int = 0) -> pd.DataFrame:
    """A window where f0 carries a noisy view of the next bar's return (as a feature would)."""
    rng = np.random.default_rng(seed)
    t = pd.date_range("2026-02-02 00:05", periods=N, freq="5min", tz="UTC")
    ret = rng.normal(0, 6e-4, N)
    return pd.DataFrame(
        {
            "symbol": "EURUSD",
            "event_timestamp": t,
            "ret_next": ret,
            "spread_ret": 5e-5,
            "f0": np.sign(ret) + rng.normal(0, 1.2, N),
            "f1": rng.normal(size=N),
            "f2": rng.normal(size=N),
        }
    )


def labels(ds: pd.DataFrame) -> np.ndarray:
    return np.where(ds["ret_next"] > 1e-4, 2, np.where(ds["ret_next"] < -1e-4, 0, 1))


def register(
    settings: PlatformSettings,
    model: XGBModel,
    window: pd.DataFrame,
    *,
    parity: float | None = None,
) -> str:
    import mlflow

    from training.train import ensure_experiment

    onnx_model = xgb_to_onnx(model, len(FEATURES))
    x = window[FEATURES].to_numpy(np.float32)
    manifest = {
        "model_name": settings.model_name,
        "feature_service": "trend_test",
        "features": FEATURES,
        "min_confidence": 0.4,
        "timeframe": "M5",
        "label_horizon": 6,  # the DM test's HAC lag: 5
        "symbols": ["EURUSD"],
        "test_range": [str(window["event_timestamp"].min()), str(window["event_timestamp"].max())],
        "costs": {"commission": 0.0, "slippage_spread_k": 0.0, "slippage_vol_k": 0.0},
        "parity_max_abs_diff": check_parity(model, onnx_model, x) if parity is None else parity,
        "onnx_latency_us": single_row_latency_us(onnx_model, x[0], n=50)["p50"],
    }
    mlflow.set_tracking_uri(settings.tracking_uri)
    with mlflow.start_run(experiment_id=ensure_experiment(settings)):
        info = mlflow.onnx.log_model(onnx_model, name="model", metadata={"tx_manifest": manifest})
        return str(mlflow.register_model(info.model_uri, settings.model_name).version)


def weak_champion_then_good(
    settings: PlatformSettings, models: dict[str, XGBModel], window: pd.DataFrame
) -> tuple[str, str]:
    """Register the weak model, make it champion by hand (an operator decision, audited too),
    then register the good one as the challenger; returns (bad, good) versions."""
    from training.registry import move_aliases

    bad = register(settings, models["bad"], window)
    move_aliases(
        settings,
        {"champion": bad},
        action="manual",
        version=bad,
        evidence={"why": "test setup"},
        actor="test",
    )
    return bad, register(settings, models["good"], window)


@pytest.fixture()
def settings(tmp_path: Path) -> PlatformSettings:
    return PlatformSettings(
        home=tmp_path,
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        model_name="tx_gate_test",
    )


@pytest.fixture(scope="module")
def models() -> dict[str, XGBModel]:
    train = market(seed=1)
    x, y = train[FEATURES].to_numpy(np.float32), labels(train)
    params = {"n_estimators": 40, "max_depth": 2, "learning_rate": 0.2}
    return {
        "good": XGBModel(params).fit(ModelData(x, None, y)),
        "bad": XGBModel(params).fit(
            ModelData(x, None, 2 - y)
        ),  # learnt the inverse: long when it should short
    }


def test_gate_when_challenger_is_worse_then_refused_and_set_as_challenger_with_an_audit_row(
    settings: PlatformSettings, models: dict[str, XGBModel]
) -> None:
    window = market(seed=2)
    good = register(settings, models["good"], window)
    first = promote(settings, good, window=window, actor="test")
    assert first.promoted, first.reason  # no champion yet: beats always-flat
    bad = register(settings, models["bad"], window)

    decision = promote(settings, bad, window=window, actor="test")

    assert not decision.promoted
    assert decision.evidence["sharpe_diff"] < 0
    from training.registry import client_for

    aliases = current_aliases(client_for(settings), settings.model_name)
    assert aliases == {"champion": good, "challenger": bad}
    rows = history(settings)
    assert [r["action"] for r in rows] == ["promote", "refuse→challenger"]
    last = rows[-1]
    assert last["actor"] == "test" and last["version"] == bad and last["after"]["champion"] == good
    assert "sharpe_diff_ci" in last["evidence"] and last["evidence"]["champion"] == good
    # the DM test is recorded whichever rule decides (default: bootstrap)
    assert last["evidence"]["sharpe_test"] == "bootstrap" and last["evidence"]["dm_lag"] == 5
    assert last["evidence"]["dm_stat"] < 0 and last["evidence"]["dm_p_value"] > 0.5
    assert any(
        k.startswith("audit.")
        for k in client_for(settings).get_model_version(settings.model_name, bad).tags
    )


def test_gate_when_challenger_is_better_then_promoted_old_champion_becomes_previous_and_rollback_restores_it(
    settings: PlatformSettings, models: dict[str, XGBModel]
) -> None:
    from training.registry import client_for

    window = market(seed=3)
    bad, good = weak_champion_then_good(settings, models, window)

    decision = promote(settings, good, window=window, actor="test")

    assert decision.promoted, decision.reason
    assert decision.evidence["sharpe_diff_ci"][0] > -0.5
    client = client_for(settings)
    assert current_aliases(client, settings.model_name) == {"champion": good, "previous": bad}

    rec = rollback(settings, actor="ops", reason="drill")
    assert current_aliases(client, settings.model_name) == {"champion": bad, "previous": good}
    assert (
        rec["action"] == "rollback"
        and rec["before"]["champion"] == good
        and rec["after"]["champion"] == bad
    )
    assert [r["action"] for r in history(settings)] == ["manual", "promote", "rollback"]
    assert len(audit_path(settings).read_text().splitlines()) == 3


def test_promote_when_the_version_already_is_champion_then_refused_and_no_audit_row(
    settings: PlatformSettings, models: dict[str, XGBModel]
) -> None:
    from training.gate import AlreadyChampion

    window = market(seed=5)
    v = register(settings, models["good"], window)
    assert promote(settings, v, window=window, actor="test").promoted

    with pytest.raises(AlreadyChampion, match="already is the champion"):
        promote(settings, v, window=window, actor="test")

    assert [r["action"] for r in history(settings)] == ["promote"]


def test_gate_when_parity_failed_then_refused_and_no_alias_moves(
    settings: PlatformSettings, models: dict[str, XGBModel]
) -> None:
    window = market(seed=4)
    v = register(settings, models["good"], window, parity=1e-3)
    decision = promote(settings, v, window=window, actor="test")
    from training.registry import client_for

    assert not decision.promoted and "parity" in decision.reason
    assert current_aliases(client_for(settings), settings.model_name) == {}
    with pytest.raises(RollbackError):
        rollback(settings)


def test_decide_when_drawdown_or_latency_is_worse_beyond_tolerance_then_refused() -> None:
    rng = np.random.default_rng(0)
    idx = pd.date_range("2026-01-01", periods=2000, freq="5min", tz="UTC")
    champ = pd.Series(rng.normal(1e-5, 1e-4, 2000), index=idx)
    chal = 3 * champ + 3e-5  # a better Sharpe, but three times the leverage: a deeper drawdown
    cfg = GateConfig(max_drawdown_tolerance=0.1)
    ok, reason, _ = decide(chal, champ, timeframe="M5", cfg=cfg, parity=1e-7, latency_us=100.0)
    assert not ok and "drawdown" in reason
    ok, reason, _ = decide(
        champ + 2e-5, champ, timeframe="M5", cfg=cfg, parity=1e-7, latency_us=100.0
    )
    assert ok, reason
    ok, reason, _ = decide(
        champ + 2e-5, champ, timeframe="M5", cfg=cfg, parity=1e-7, latency_us=1e6
    )
    assert not ok and "latency" in reason


def test_gate_when_sharpe_test_is_dm_then_a_better_challenger_is_promoted_a_worse_one_refused_and_dm_is_the_evidence(
    settings: PlatformSettings, models: dict[str, XGBModel]
) -> None:
    import json

    from training.registry import client_for

    window = market(seed=5)
    bad, good = weak_champion_then_good(settings, models, window)
    dm = GateConfig(sharpe_test="dm", dm_alpha=0.05)

    up = promote(settings, good, window=window, cfg=dm, actor="test")
    down = promote(settings, bad, window=window, cfg=dm, actor="test")

    assert up.promoted, up.reason
    assert "DM*" in up.reason and up.evidence["dm_p_value"] < 0.05 and up.evidence["dm_stat"] > 0
    assert not down.promoted and down.evidence["dm_stat"] < 0 and down.evidence["dm_p_value"] > 0.5
    client = client_for(settings)
    assert current_aliases(client, settings.model_name) == {
        "champion": good,
        "previous": bad,
        "challenger": bad,
    }
    rows = history(settings)
    assert [r["action"] for r in rows] == ["manual", "promote", "refuse→challenger"]
    assert rows[1]["evidence"]["sharpe_test"] == "dm" and rows[1]["evidence"]["dm_lag"] == 5
    tag = json.loads(client.get_model_version(settings.model_name, good).tags["gate"])
    assert tag["evidence"]["dm_p_value"] == pytest.approx(up.evidence["dm_p_value"])


def test_decide_when_sharpe_test_is_dm_then_significance_decides_and_bootstrap_stays_the_default() -> (
    None
):
    idx = pd.date_range("2026-01-01", periods=3000, freq="5min", tz="UTC")
    champ = pd.Series(np.random.default_rng(0).normal(1e-5, 1e-4, 3000), index=idx)

    def shifted(
        edge: float, noise: float, seed: int
    ) -> pd.Series:  # the champion's P&L, plus an edge, plus noise
        return champ + edge + np.random.default_rng(seed).normal(0.0, noise, len(champ))

    clearly_better, clearly_worse = shifted(1.2e-5, 5e-5, 1), shifted(-1.2e-5, 5e-5, 2)
    marginal = shifted(
        3e-8, 3e-6, 4
    )  # a hair better: non-inferior for the bootstrap, not significant for DM
    dm, boot = (
        GateConfig(sharpe_test="dm", max_drawdown_tolerance=1.0),
        GateConfig(max_drawdown_tolerance=1.0),
    )
    assert GateConfig().sharpe_test == "bootstrap"

    def run(ch: pd.Series, cfg: GateConfig) -> tuple[bool, str, dict]:
        return decide(
            ch, champ, timeframe="M5", cfg=cfg, parity=1e-7, latency_us=100.0, label_horizon=6
        )

    ok, reason, ev = run(clearly_better, dm)
    assert ok and "DM*" in reason, reason
    assert ev["dm_p_value"] < 1e-3 and ev["dm_lag"] == 5 and ev["sharpe_test"] == "dm"
    ok, reason, ev = run(clearly_worse, dm)
    assert not ok and ev["dm_p_value"] > 0.99
    ok, reason, ev = run(marginal, boot)
    assert ok and "CI" in reason, reason  # the lower CI bound is within the 0.5 tolerance
    assert ev["sharpe_diff"] > 0 and 0.1 < ev["dm_p_value"] < 0.5  # recorded, not deciding
    ok, reason, ev = run(marginal, dm)
    assert not ok and "Diebold-Mariano" in reason
    _, _, ev = decide(
        clearly_better,
        champ,
        timeframe="M5",
        cfg=GateConfig(sharpe_test="dm", dm_lag=0),
        parity=1e-7,
        latency_us=100.0,
        label_horizon=6,
    )
    assert ev["dm_lag"] == 0  # an explicit lag wins over the horizon rule
