"""The slippage model in a private MLflow registry (SQLite under tmp): each fit is a run of
experiment ``slippage`` and a version of ``tx_slippage``; the gate moves ``champion``
(the old one becomes ``previous``), every move audited like the trading model's; the engine
and the training backtest load the champion, and fall back to the formula without one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.slippage_model import FixedSlippage, LearnedSlippage, load_slippage_estimator
from titanovax.settings import PlatformSettings
from training.registry import audit_path, history
from training.slippage import (
    EXPERIMENT,
    FitConfig,
    champion_dir,
    fit_from_journal,
    load_champion,
    simulate_fills,
    slippage_settings,
)

pytestmark = pytest.mark.integration

CFG = FitConfig(rounds=120)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> dict:
    home = tmp_path_factory.mktemp("home")
    s = PlatformSettings(home=home)
    journal = home / "fills.sqlite"
    simulate_fills(journal, 6000, seed=5)
    first = fit_from_journal(s, journal, CFG)
    simulate_fills(journal, 2000, seed=6)  # a week later: newer fills after the first ones
    second = fit_from_journal(s, journal, CFG)
    return {"settings": s, "journal": journal, "first": first, "second": second}


def test_fit_when_the_gate_passes_then_versions_are_registered_and_champion_moves(
    registry: dict,
) -> None:
    from mlflow import MlflowClient

    s: PlatformSettings = registry["settings"]
    first, second = registry["first"], registry["second"]
    assert (first.version, second.version) == ("1", "2")
    assert first.promoted and second.promoted, (first.decision, second.decision)
    assert second.aliases == {"champion": "2", "previous": "1"}
    client = MlflowClient(s.tracking_uri)
    run = client.get_run(second.run_id)
    assert client.get_experiment(run.info.experiment_id).name == EXPERIMENT
    for q in ("0.1", "0.5", "0.9"):
        assert abs(run.data.metrics[f"coverage_q{q}"] - float(q)) <= 0.05
        assert run.data.metrics[f"pinball_q{q}"] < run.data.metrics[f"fixed_pinball_q{q}"]
    mv = client.get_model_version("tx_slippage", "2")
    assert json.loads(mv.tags["gate"])["promote"] is True


def test_alias_moves_when_promoted_then_each_is_audited_with_its_evidence(registry: dict) -> None:
    s = slippage_settings(registry["settings"])
    rows = history(s)
    assert [r["action"] for r in rows] == ["promote", "promote"]
    assert rows[0]["before"] == {} and rows[0]["after"] == {"champion": "1"}
    assert rows[1]["before"] == {"champion": "1"}
    assert rows[1]["after"] == {"champion": "2", "previous": "1"}
    ev = rows[1]["evidence"]
    assert ev["pinball_mean"] < ev["fixed_pinball_mean"] and set(ev["coverage"]) == {
        "q0.1",
        "q0.5",
        "q0.9",
    }
    assert audit_path(s).is_file()
    # the trading model's history is not mixed with it
    assert history(registry["settings"]) == []


def test_loader_when_a_champion_exists_then_the_learned_model_answers(registry: dict) -> None:
    # fit pulled the champion into $TX_HOME/slippage/champion (the engine's default folder)
    est = load_slippage_estimator(champion_dir(registry["settings"]), reload=True)
    assert isinstance(est, LearnedSlippage) and est.version == "2"
    assert isinstance(load_champion(registry["settings"]), LearnedSlippage)
    order = {
        "symbol": "EURUSD",
        "venue": "sim:50000001",
        "side": "sell",
        "spread_points": 11.0,
        "vol_points": 25.0,
        "hour": 12,
    }
    assert est.points(**order, volume=20.0) > est.points(**order, volume=0.1) > 0
    import mlflow.pyfunc

    py = mlflow.pyfunc.load_model("models:/tx_slippage@champion")
    x = pd.DataFrame([np.zeros(len(est.features))], columns=est.features)
    x.loc[0, ["spread_points", "vol_points", "volume", "hour_utc"]] = [11.0, 25.0, 1.0, 12.0]
    out = py.predict(x)
    assert list(out.columns) == ["mean", "q0.1", "q0.5", "q0.9"]
    assert out["q0.1"][0] < out["q0.5"][0] < out["q0.9"][0]


def test_engine_when_slippage_model_setting_is_on_then_it_loads_the_champion_once(
    registry: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.app import engine_slippage
    from engine.config import EngineSettings
    from training.slippage import pull_champion

    s: PlatformSettings = registry["settings"]
    monkeypatch.setenv("TX_HOME", str(s.home))
    monkeypatch.delenv("TX_ENGINE_SLIPPAGE_MODEL_DIR", raising=False)
    monkeypatch.setenv("TX_ENGINE_SLIPPAGE_MODEL", "true")
    est = engine_slippage(EngineSettings())  # default folder: $TX_HOME/slippage/champion
    assert isinstance(est, LearnedSlippage) and est.version == "2"
    monkeypatch.setenv("TX_ENGINE_SLIPPAGE_MODEL", "false")
    assert engine_slippage(EngineSettings()) is None  # the old formula, unchanged
    # another host: `tx slippage pull 1 --out DIR`, TX_ENGINE_SLIPPAGE_MODEL_DIR=DIR
    monkeypatch.setenv("TX_ENGINE_SLIPPAGE_MODEL", "true")
    pull_champion(s, tmp_path / "pulled", "1")
    monkeypatch.setenv("TX_ENGINE_SLIPPAGE_MODEL_DIR", str(tmp_path / "pulled"))
    est = engine_slippage(EngineSettings())
    assert isinstance(est, LearnedSlippage) and est.version == "1"
    monkeypatch.setenv("TX_ENGINE_SLIPPAGE_MODEL_DIR", str(tmp_path / "never-pulled"))
    assert isinstance(engine_slippage(EngineSettings()), FixedSlippage)


def test_backtest_costs_when_champion_is_asked_then_learned_slippage_else_the_formula(
    registry: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training.backtest import EstimatorSlippage, SpreadVolSlippage, slippage_for_costs
    from training.config import CostConfig

    monkeypatch.setenv("TX_MLFLOW_TRACKING_URI", registry["settings"].tracking_uri)
    assert isinstance(slippage_for_costs(CostConfig()), SpreadVolSlippage)  # default: formula
    learned = slippage_for_costs(CostConfig(slippage_model="champion", slippage_volume=5.0))
    assert isinstance(learned, EstimatorSlippage)
    # a day of EURUSD bars: 11-point spread at 1.1 (point 1e-5), rollover spreads 3x wider
    t = pd.date_range("2026-02-02 00:05", periods=288, freq="5min", tz="UTC")
    spread_pts = np.where(t.hour.isin([21, 22]), 33.0, 11.0)
    ds = pd.DataFrame(
        {
            "symbol": "EURUSD",
            "event_timestamp": t,
            "spread_points": spread_pts,
            "spread_ret": spread_pts * 1e-5 / 1.1,
            "ret_next": np.random.default_rng(0).normal(0, 2e-4, len(t)),
        }
    )
    per_unit = learned(ds)
    fixed = SpreadVolSlippage()(ds)
    assert per_unit.shape == fixed.shape and np.isfinite(per_unit).all()
    # in return units: a few points of 1e-5 on a 1.1 price, more in the rollover
    assert 1e-5 < np.median(per_unit) < 2e-4
    assert per_unit[t.hour == 21].mean() > per_unit[t.hour == 12].mean()
    # a registry without a champion: the formula
    monkeypatch.setenv("TX_MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'none.db'}")
    assert isinstance(slippage_for_costs({"slippage_model": "champion"}), SpreadVolSlippage)


def test_engine_reload_when_a_new_champion_is_pulled_then_the_gate_uses_it(
    registry: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.app import build_engine
    from engine.config import EngineSettings
    from engine.journal import Journal
    from tests.unit.faults import MONDAY_0800, ClockFeatures, ScriptedModel, sim_terminal
    from training.slippage import pull_champion

    s: PlatformSettings = registry["settings"]
    folder = tmp_path / "slip"
    pull_champion(s, folder, "1")
    monkeypatch.setenv("TX_ENGINE_SLIPPAGE_MODEL", "true")
    monkeypatch.setenv("TX_ENGINE_SLIPPAGE_MODEL_DIR", str(folder))
    now = [MONDAY_0800]
    engine = build_engine(
        EngineSettings(),
        terminal=sim_terminal(now),
        features=ClockFeatures(now),
        model=ScriptedModel(1),
        clock=lambda: float(now[0]),
        journal=Journal(tmp_path / "j.sqlite"),
        sleep=lambda _s: None,
    )
    assert engine.slippage.version == "1"
    pull_champion(s, folder, "champion")  # the operator pulls the new champion (v2)
    info = engine.reload(actor="test", reason="new slippage champion")
    assert info["slippage"] == "tx_slippage v2" and engine.slippage.version == "2"
