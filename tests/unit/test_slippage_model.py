"""The learned slippage model on fills journaled by the engine's own order path against the
simulated terminal's state-dependent slippage process: held-out calibration of each quantile,
the learned model against the fixed formula, the gate's rules, the fallback when nothing is
promoted, and the engine's edge gate charging the estimator."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.config import ExecutionConfig
from engine.slippage_model import (
    FixedSlippage,
    LearnedSlippage,
    SlippageEstimator,
    load_slippage_estimator,
)
from tests.unit.faults import MONDAY_0800, ScriptedModel, make_engine, sim_terminal
from training.slippage import (
    FitConfig,
    evaluate,
    fills_frame,
    gate,
    read_fills,
    simulate_fills,
    train_model,
)

pytestmark = pytest.mark.unit

TOLERANCE = 0.05  # |empirical coverage - q| on the held-out fills
N_FILLS = 10_000  # 25 % held out: 2,500 fills


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """10,000 fills through OrderExecutor → the simulated terminal (slippage process on, two
    venues), fitted on the oldest 75 %, evaluated on the newest 25 %."""
    d = tmp_path_factory.mktemp("slip")
    out = simulate_fills(d / "fills.sqlite", N_FILLS, seed=11)
    df = fills_frame(read_fills(d / "fills.sqlite"))
    cfg = FitConfig(rounds=200)
    model, _train, test = train_model(df, cfg, d / "model")
    return {
        "sim": out,
        "df": df,
        "model": model,
        "model_dir": d / "model",
        "test": test,
        "ev": evaluate(model, test, cfg),
    }


def test_simulated_fills_when_sent_through_the_executor_then_each_is_journaled_with_its_state(
    fitted: dict[str, Any],
) -> None:
    df = fitted["df"]
    assert fitted["sim"]["filled"] == N_FILLS and fitted["sim"]["failed"] == 0
    assert len(df) == N_FILLS and df.attrs["excluded"] == 0
    assert set(df["venue"]) == {"sim:50000001", "sim:50000002"}
    assert set(df["side"]) == {"buy", "sell"} and df["hour_utc"].nunique() == 24
    assert (df["slippage_points"] >= 0).all() and (df["spread_points"] > 0).all()
    assert (df["volatility_points"] > 0).all() and df["volume"].nunique() >= 8
    # the process is state-dependent: the rollover and big orders slip more
    roll = df[df["hour_utc"].isin([21, 22])]["slippage_points"].mean()
    day = df[df["hour_utc"].between(8, 16)]["slippage_points"].mean()
    assert roll > 1.5 * day


def test_quantiles_when_evaluated_on_held_out_fills_then_coverage_is_within_tolerance(
    fitted: dict[str, Any],
) -> None:
    ev = fitted["ev"]
    assert ev["n_test"] >= 2000
    for r in ev["quantiles"]:
        assert abs(r["coverage"] - r["q"]) <= TOLERANCE, r
        assert abs(r["coverage_raw"] - r["q"]) <= 2 * TOLERANCE, r  # whole points: coarser


def test_learned_model_when_the_process_is_state_dependent_then_it_beats_the_fixed_formula(
    fitted: dict[str, Any],
) -> None:
    ev = fitted["ev"]
    for r in ev["quantiles"]:
        assert r["pinball"] < r["fixed_pinball"], r
    assert ev["pinball_mean"] < 0.8 * ev["fixed_pinball_mean"]
    assert ev["mae_mean"] < ev["fixed_mae"]
    assert abs(ev["bias_mean"]) < 0.5 < abs(ev["fixed_bias"])  # the formula misses impact
    assert gate(ev, FitConfig())["promote"] is True


def test_learned_model_when_asked_then_it_follows_size_session_and_venue(
    fitted: dict[str, Any],
) -> None:
    m: LearnedSlippage = fitted["model"]
    base = {
        "symbol": "EURUSD",
        "venue": "sim:50000001",
        "side": "buy",
        "spread_points": 11.0,
        "vol_points": 25.0,
    }
    small = m.points(**base, volume=0.1, hour=12)
    big = m.points(**base, volume=20.0, hour=12)
    rollover = m.points(**base, volume=0.1, hour=21)
    other_venue = m.points(**{**base, "venue": "sim:50000002"}, volume=0.1, hour=12)
    # (the rollover is x2.5 in the process, but its spreads are 3x wider in this market: a
    # rollover with a day spread lies outside the fills, so the ratio is asked loosely)
    assert big > small + 2 and rollover > 1.5 * small and other_venue > small + 0.5
    q = m.quantiles(**base, volume=1.0, hour=12)
    assert q[0.1] < q[0.5] < q[0.9]
    assert isinstance(m, SlippageEstimator)


@pytest.mark.parametrize(
    ("change", "promote", "reason"),
    [
        ({}, True, "coverage within"),
        ({"pinball_mean": 3.0}, False, "not below the fixed formula"),
        ({"max_coverage_error": 0.08}, False, "coverage off by 0.080"),
        ({"n_test": 50}, False, "50 held-out fills < 200"),
    ],
)
def test_gate_when_evaluation_varies_then_it_promotes_only_a_calibrated_better_model(
    change: dict[str, Any], promote: bool, reason: str
) -> None:
    ev = {
        "n_test": 2500,
        "pinball_mean": 1.3,
        "fixed_pinball_mean": 2.7,
        "max_coverage_error": 0.02,
    }
    out = gate({**ev, **change}, FitConfig())
    assert out["promote"] is promote and reason in out["reason"]


def test_loader_when_no_model_folder_then_the_fixed_formula(tmp_path: Path) -> None:
    assert load_slippage_estimator(None) == FixedSlippage()
    est = load_slippage_estimator(tmp_path / "nothing-pulled-here")
    assert isinstance(est, FixedSlippage)
    assert est.points(
        symbol="EURUSD",
        venue="sim:1",
        side="buy",
        volume=1,
        spread_points=12,
        vol_points=20,
        hour=3,
    ) == pytest.approx(0.25 * 12 + 0.05 * 20)


def test_loader_when_the_model_files_are_broken_then_the_fixed_formula(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text('{"features": ["spread_points"], "quantiles": [0.5]}')
    (tmp_path / "mean.ubj").write_bytes(b"not a booster")
    assert isinstance(load_slippage_estimator(tmp_path), FixedSlippage)


def test_loader_when_a_model_folder_exists_then_it_is_loaded_once_and_cached(
    fitted: dict[str, Any], tmp_path: Path
) -> None:
    import shutil

    shutil.copytree(fitted["model_dir"], tmp_path / "m")
    est = load_slippage_estimator(tmp_path / "m")
    assert isinstance(est, LearnedSlippage)
    t0 = time.perf_counter()
    assert load_slippage_estimator(tmp_path / "m") is est  # not read again per order
    assert time.perf_counter() - t0 < 0.01
    assert load_slippage_estimator(tmp_path / "m", reload=True) is not est


# --- the engine's edge gate ----------------------------------------------------------------
STRONG = {"short": 0.0, "flat": 0.05, "long": 0.95}


def _gate_engine(tmp_path: Path, slippage: SlippageEstimator | None) -> tuple[list[int], Any]:
    now = [MONDAY_0800]
    e = make_engine(
        tmp_path,
        now,
        terminal=sim_terminal(now),
        model=ScriptedModel(1, STRONG),
        execution=ExecutionConfig(min_edge_cost_ratio=1.0, retry_backoff_s=0.0),
    )
    e.slippage = slippage
    return now, e


def test_engine_gate_when_the_estimator_prices_slippage_high_then_refuses_edge_below_cost(
    tmp_path: Path,
) -> None:
    now, e = _gate_engine(tmp_path / "a", FixedSlippage(spread_k=0.0, vol_k=50.0))
    rec = e.on_bar("EURUSD", now[0])
    assert rec is not None and rec.verdict == "refused" and rec.reason_code == "edge_below_cost"
    # the same bar and model with a cheap estimate trades
    now, e = _gate_engine(tmp_path / "b", FixedSlippage(spread_k=0.0, vol_k=0.0))
    rec = e.on_bar("EURUSD", now[0])
    assert rec is not None and rec.verdict == "sent"


def test_engine_gate_when_estimator_set_then_it_is_asked_with_the_fill_state(
    tmp_path: Path, fitted: dict[str, Any]
) -> None:
    from engine.execution import FILL_VOL_WINDOW
    from engine.mt5 import protocol as mt5
    from engine.sizing import return_volatility
    from engine.slippage_model import gate_cost_points

    m: LearnedSlippage = fitted["model"]
    now, e = _gate_engine(tmp_path, m)
    term = e.terminal
    info, tick = term.symbol_info("EURUSD"), term.symbol_info_tick("EURUSD")
    spread = (tick.ask - tick.bid) / info.point
    rates = term.copy_rates_from_pos("EURUSD", mt5.TIMEFRAME_M5, 1, FILL_VOL_WINDOW + 1)
    vol = return_volatility(rates["close"], FILL_VOL_WINDOW) * tick.ask / info.point
    expected = spread + m.points(
        symbol="EURUSD",
        venue=e.executor.venue,
        side="buy",
        volume=e.sizing.fixed_lots,
        spread_points=spread,
        vol_points=vol,
        hour=(MONDAY_0800 // 3600) % 24,
    )
    assert gate_cost_points(e, "EURUSD", 1, spread) == pytest.approx(expected)
    assert expected > spread + 1  # the model charges something beyond the spread
    assert e.on_bar("EURUSD", now[0]).verdict == "sent"  # type: ignore[union-attr]


def test_engine_gate_when_the_estimator_fails_then_the_fixed_formula_prices_the_order(
    tmp_path: Path,
) -> None:
    from engine.slippage_model import gate_cost_points

    class Broken:
        def points(self, **_: Any) -> float:
            return float("nan")

    _now, e = _gate_engine(tmp_path, Broken())  # type: ignore[arg-type]
    cost = gate_cost_points(e, "EURUSD", 1, 12.0)
    assert cost >= 12.0 + 0.25 * 12.0 and np.isfinite(cost)
