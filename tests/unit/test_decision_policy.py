"""The decision policy (engine/policy.py, training/policy.py; docs/execution-policy.md).

Chosen on the purged validation folds of the training window only (the test window is
poisoned and the chosen policy does not move), applied by one function in the training
backtest, serving's decision and the engine's gate (same probabilities → same sides), and an
abstaining bar is journaled as its own verdict with its reason."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from engine.config import RiskLimits
from engine.features import FeatureRow
from engine.mt5 import protocol as mt5
from engine.policy import (
    BELOW_MARGIN,
    EDGE_BELOW_COST,
    DecisionPolicy,
    PolicyError,
    apply_policy,
    decide_policy,
    policy_cost_points,
    policy_sides,
)
from engine.serving_client import Prediction
from engine.sizing import atr, return_volatility
from feature_repo.pipeline.transforms import TREND_V1_FEATURES
from serving.preprocess import ManifestError, bundle_spec, decide
from tests.unit.faults import MONDAY_0800, make_engine, sim_terminal
from training.backtest import Costs, SpreadVolSlippage, positions_from_proba
from training.policy import candidates, policy_positions

pytestmark = pytest.mark.unit

CLASSES = ("short", "flat", "long")


# --- the pure function -------------------------------------------------------------------------
def test_policy_when_absent_then_sides_are_the_old_argmax_at_min_confidence() -> None:
    rng = np.random.default_rng(1)
    p = rng.dirichlet([1, 1, 1], size=500)
    side, _ = policy_sides(p, None, min_confidence=0.45)
    assert np.array_equal(side, positions_from_proba(p, 0.45))


def test_policy_when_margin_is_small_then_it_abstains_with_the_margin_reason() -> None:
    pol = {"min_margin": 0.2, "min_confidence": 0.4}
    d = decide_policy([0.35, 0.2, 0.45], pol, cost_points=None, edge_points=None, regime=None)
    assert (d.side, d.reason) == (0, BELOW_MARGIN) and "margin 0.100 < min_margin 0.2" in d.detail
    assert apply_policy([0.1, 0.2, 0.7], pol, cost_points=None, edge_points=None, regime=None) == 1


def test_policy_when_edge_does_not_pay_the_round_trip_then_it_abstains_and_without_costs_it_trades() -> (
    None
):
    pol = {"min_margin": 0.0, "min_edge_cost_ratio": 2.0, "min_confidence": 0.4}
    probs = [0.1, 0.3, 0.6]  # margin 0.5
    assert decide_policy(probs, pol, cost_points=10, edge_points=30, regime=None).reason == (
        EDGE_BELOW_COST  # edge 15 < 2 x 10
    )
    assert apply_policy(probs, pol, cost_points=10, edge_points=50, regime=None) == 1
    assert apply_policy(probs, pol, cost_points=None, edge_points=None, regime=None) == 1


def test_policy_when_a_regime_has_an_override_then_it_applies_only_in_that_regime() -> None:
    pol = {"min_margin": 0.0, "per_regime": {"3": {"abstain": True}}, "min_confidence": 0.4}
    probs = [0.1, 0.2, 0.7]
    assert apply_policy(probs, pol, cost_points=None, edge_points=None, regime=2) == 1
    d = decide_policy(probs, pol, cost_points=None, edge_points=None, regime=3)
    assert d.side == 0 and d.reason == "policy_abstains" and "(regime 3)" in d.detail


@pytest.mark.parametrize(
    "bad",
    [
        {"min_margin": 1.5},
        {"min_edge_cost_ratio": -1},
        {"abstain": "yes"},
        {"per_regime": {"x": {}}},
    ],
)
def test_policy_when_malformed_then_a_clear_error(bad: dict[str, Any]) -> None:
    with pytest.raises(PolicyError, match="decision_policy"):
        DecisionPolicy.from_mapping(bad)


def test_candidates_put_abstain_first_and_the_old_rule_last() -> None:
    c = candidates([0.0, 0.1], [0.0, 1.0], with_edge=True)
    assert c[0].abstain and (c[-1].min_margin, c[-1].min_edge_cost_ratio) == (0.0, 0.0)
    assert sum(1 for t in c if not t.abstain and t.min_margin == t.min_edge_cost_ratio == 0) == 1


# --- (1) chosen on the validation folds only ---------------------------------------------------
def _dataset(n: int = 2600, seed: int = 5) -> pd.DataFrame:
    """M5 rows of one symbol with a weak signal in the first feature, after-cost returns."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(TREND_V1_FEATURES)))
    t = pd.date_range("2026-01-05 00:05", periods=n, freq="5min", tz="UTC")
    ds = pd.DataFrame(x, columns=list(TREND_V1_FEATURES))
    ds["atr_14_rel"] = 0.0015 * np.exp(0.2 * x[:, 4])
    score = x[:, 0] + rng.normal(0, 1.0, n)
    ds["symbol"] = "EURUSD"
    ds["event_timestamp"] = t
    ds["label_end"] = t + pd.Timedelta(minutes=30)
    ds["label"] = np.where(score > 0.6, 2, np.where(score < -0.6, 0, 1))
    ds["ret_next"] = 0.0004 * np.tanh(x[:, 0]) + rng.normal(0, 0.001, n)
    ds["spread_ret"] = 0.00008
    return ds


def _cfg(tmp: Path) -> Any:
    from training.config import DecisionConfig, ExperimentConfig, SplitConfig

    return ExperimentConfig(
        name="policy_t",
        feature_service="trend_v1",
        model={"n_estimators": 25, "max_depth": 3, "learning_rate": 0.2},
        split=SplitConfig(
            start="2026-01-05T00:00:00Z",
            test_start="2026-01-12T00:00:00Z",
            end="2026-01-15T00:00:00Z",
            n_folds=3,
        ),
        decision=DecisionConfig(min_confidence=0.4),
    )


def _policy_of(tmp: Path, ds: pd.DataFrame, name: str) -> dict[str, Any]:
    from titanovax.settings import PlatformSettings
    from training.train import POLICY_FILE, fit_step

    path = tmp / f"{name}.parquet"
    ds.to_parquet(path, index=False)
    settings = PlatformSettings(home=tmp / name)
    wd = fit_step(settings, _cfg(tmp), str(path), None, "M5")
    return json.loads((Path(wd) / POLICY_FILE).read_text())


def test_policy_when_the_test_window_is_poisoned_then_fit_step_chooses_the_identical_policy(
    tmp_path: Path,
) -> None:
    clean = _dataset()
    test_start = pd.Timestamp("2026-01-12", tz="UTC")
    poisoned = clean.copy()
    te = poisoned["event_timestamp"] >= test_start
    assert te.sum() >= 50 and (~te).sum() >= 1500
    # every column a policy could learn from, in the test window: labels flipped, returns
    # huge and in favour of the labels, spreads and ATR absurd, features NaN
    poisoned.loc[te, "label"] = 2 - poisoned.loc[te, "label"]
    poisoned.loc[te, "ret_next"] = 5.0
    poisoned.loc[te, "spread_ret"] = np.nan
    poisoned.loc[te, "atr_14_rel"] = 1e9
    poisoned.loc[te, [f for f in TREND_V1_FEATURES if f != "atr_14_rel"]] = np.nan

    a = _policy_of(tmp_path, clean, "clean")
    b = _policy_of(tmp_path, poisoned, "poisoned")

    assert a["chosen_on"] == "purged_validation_folds"
    assert a == b  # thresholds and every fold statistic
    folds = a["stats"]["folds"]
    assert len(folds) == 3 and all(pd.Timestamp(f["end"]) < test_start for f in folds)
    assert np.isfinite(a["stats"]["valid_net_chosen"]) and np.isfinite(
        a["stats"]["valid_net_legacy"]
    )
    # the chosen policy beats (or ties, conservatively) the old rule on validation
    assert a["stats"]["valid_net_chosen"] >= a["stats"]["valid_net_legacy"]


# --- (2) one function in the backtest, serving and the engine ---------------------------------
def _manifest(policy: dict[str, Any]) -> dict[str, Any]:
    return {
        "features": ["f0", "f1"],
        "classes": list(CLASSES),
        "positions": [-1, 0, 1],
        "min_confidence": 0.5,
        "decision_policy": policy,
    }


class _ServedModel:
    """Answers each bar's probabilities the way serving does: serving's own ``decide`` on the
    bundle's manifest, the wire policy and the regime in the explanation."""

    def __init__(self, proba: np.ndarray, regime: np.ndarray, manifest: dict[str, Any]) -> None:
        self.proba, self.regime = proba, regime
        self.spec = bundle_spec(manifest)
        self.i = 0

    def predict(self, row: FeatureRow) -> Prediction:
        p, r = self.proba[self.i], int(self.regime[self.i])
        self.i += 1
        d = decide(p[None, :], self.spec, np.array([r]))[0]
        return Prediction(
            "9",
            d.position,
            d.label,
            dict(zip(CLASSES, p.tolist(), strict=True)),
            "abc",
            "serving",
            d.confidence,
            {"regime": {"state": r, "probabilities": []}, "members": []},
            self.spec.policy_wire,
        )


def _terminal_costs(term: Any, pol: DecisionPolicy) -> tuple[float, float]:
    """The round-trip cost and sure-call move, in points, from what the terminal shows."""
    info, tick = term.symbol_info("EURUSD"), term.symbol_info_tick("EURUSD")
    rates = term.copy_rates_from_pos("EURUSD", mt5.TIMEFRAME_M5, 1, 26)
    close = float(rates["close"][-1])
    cost = policy_cost_points(
        pol,
        spread_points=(tick.ask - tick.bid) / info.point,
        vol_points=return_volatility(rates["close"]) * close / info.point,
        price_points=close / info.point,
    )
    return cost, pol.edge_atr_mult * atr(rates, 14) / info.point


@pytest.mark.parametrize("ratio", [0.0, 1.0])
def test_policy_when_the_same_probabilities_go_through_backtest_serving_and_engine_then_the_sides_agree(
    tmp_path: Path, ratio: float
) -> None:
    rng = np.random.default_rng(11)
    n = 40
    proba = rng.dirichlet([2, 1, 2], size=n)
    regime = rng.integers(0, 4, size=n)
    policy = {
        "min_confidence": 0.4,
        "min_margin": 0.1,
        "min_edge_cost_ratio": ratio,
        "per_regime": {"2": {"min_margin": 0.3, "min_edge_cost_ratio": ratio}},
        "cost_model": {"commission": 0.0, "slippage_spread_k": 0.25, "slippage_vol_k": 0.05},
    }
    pol = DecisionPolicy.from_mapping(policy)
    now = [MONDAY_0800]
    term = sim_terminal(now)
    model = _ServedModel(proba, regime, _manifest(policy))
    # risk rules that would refuse for their own reasons (loss streaks) stay out of the way
    limits = RiskLimits(max_consecutive_losses=0, daily_loss_limit=0, max_drawdown=0)
    e = make_engine(tmp_path, now, terminal=term, model=model, limits=limits)
    engine_sides, costs, moves, served = [], [], [], []
    for _ in range(n):
        c, m = _terminal_costs(term, pol)
        costs.append(c)
        moves.append(m)
        rec = e.on_bar("EURUSD", now[0])
        assert rec is not None
        assert rec.verdict in ("sent", "hold", "abstain"), rec.reason
        engine_sides.append(int(np.sign(e._net_lots("EURUSD"))))
        now[0] += 300
    served = [d.position for d in decide(proba, bundle_spec(_manifest(policy)), regime)]

    # the training backtest's positions (training.policy.policy_positions, as backtest_step),
    # with the engine's costs expressed as a dataset: spread_ret, slippage, atr_14_rel
    ds = pd.DataFrame(
        {
            "spread_ret": np.asarray(costs),  # round trip already: no extra slippage below
            "atr_14_rel": np.asarray(moves),
            "symbol": "EURUSD",
            "ret_next": 0.0,
        }
    )
    backtest_sides = policy_positions(ds, proba, policy, Costs(), regime=regime)
    expected, _ = policy_sides(proba, pol, cost_points=costs, edge_points=moves, regime=regime)
    assert np.array_equal(backtest_sides, expected)
    assert engine_sides == expected.tolist()
    if ratio == 0:
        assert served == expected.tolist()  # serving knows no spread: no edge rule to skip
    else:  # serving leaves the edge rule to the engine; it bit on some bars
        margin_only, _ = policy_sides(proba, pol, regime=regime)
        assert served == margin_only.tolist()
        assert (margin_only != expected).any()
    assert 0 < int((expected != 0).sum()) < n  # some trades, some abstentions


# --- (3) abstain is journaled ------------------------------------------------------------------
def test_policy_when_it_abstains_then_the_bar_is_journaled_as_abstain_with_its_reason(
    tmp_path: Path,
) -> None:
    policy = {"min_confidence": 0.4, "min_margin": 0.3}
    proba = np.array([[0.30, 0.25, 0.45], [0.05, 0.15, 0.80], [0.30, 0.25, 0.45]])
    now = [MONDAY_0800]
    e = make_engine(
        tmp_path, now, model=_ServedModel(proba, np.zeros(3, dtype=int), _manifest(policy))
    )
    recs = []
    for _ in range(3):
        recs.append(e.on_bar("EURUSD", now[0]))
        now[0] += 300
    assert [r.verdict for r in recs] == ["abstain", "sent", "sent"]  # type: ignore[union-attr]
    row = e.journal.decision("EURUSD", MONDAY_0800)
    assert row is not None and row["verdict"] == "abstain"
    assert row["reason_code"] == "policy_abstain"
    assert "margin_below_min: margin 0.150 < min_margin 0.3" in row["reason"]
    assert row["decision"] == "flat"
    # abstaining with a position open closes it: the backtest's flat position
    last = e.journal.decision("EURUSD", MONDAY_0800 + 600)
    assert last is not None and "policy_abstain" in last["reason"] and e._net_lots("EURUSD") == 0
    assert e.journal.reason_counts().get("policy_abstain") == 1
    from engine.explain import explain_row

    text = " ".join(explain_row(row)["lines"])
    assert "Decision policy: ABSTAIN (flat on purpose): margin_below_min" in text


def test_serving_when_the_manifest_policy_is_malformed_then_the_bundle_is_refused() -> None:
    with pytest.raises(ManifestError, match="min_margin"):
        bundle_spec(_manifest({"min_margin": 2}))


def test_backtest_slippage_is_the_policy_cost_model_default() -> None:
    s = SpreadVolSlippage()
    assert DecisionPolicy().cost_model == {
        "commission": 0.0,
        "slippage_spread_k": s.spread_k,
        "slippage_vol_k": s.vol_k,
    }


def test_gate_when_the_bundle_has_a_policy_then_its_positions_are_the_policy_sides_of_the_graph() -> (
    None
):
    """The promotion gate scores a bundle's test window with the bundle's policy (the same
    ``policy_positions`` as backtest_step), and an older bundle with the old rule."""
    from training.export import model_to_onnx, onnx_predict, onnx_session
    from training.gate import Bundle, bundle_positions, costs_from_manifest
    from training.models import ModelData, XGBModel

    ds = _dataset(1500)
    feats = list(TREND_V1_FEATURES)
    model = XGBModel({"n_estimators": 20, "max_depth": 3}).fit(
        ModelData(ds[feats].to_numpy(np.float32), None, ds["label"].to_numpy())
    )
    graph = model_to_onnx(model, len(feats))
    policy = {"min_confidence": 0.4, "min_margin": 0.15, "min_edge_cost_ratio": 1.0}
    manifest = {"features": feats, "min_confidence": 0.4, "costs": {"commission": 0.0}}
    proba = onnx_predict(onnx_session(graph), ds[feats].to_numpy(np.float32))
    old = bundle_positions(Bundle("1", manifest, graph.SerializeToString()), ds)
    new = bundle_positions(
        Bundle("2", {**manifest, "decision_policy": policy}, graph.SerializeToString()), ds
    )
    assert np.array_equal(old, positions_from_proba(proba, 0.4))
    expected = policy_positions(ds, proba, policy, costs_from_manifest(manifest))
    assert np.array_equal(new, expected)
    assert (new != old).any() and (new != 0).any()


def test_bundle_spec_with_a_per_regime_policy_when_serving_builds_its_codec_then_it_is_hashable() -> (
    None
):
    # serving caches its request codec per (frozen, hashed) BundleSpec: a policy with
    # per-regime thresholds, a cost model and fold stats once made serving fail to start
    # ("unhashable type: 'dict'")
    from serving.request import codec_for

    policy = {
        "min_margin": 0.1,
        "per_regime": {"2": {"min_margin": 0.3, "abstain": False}},
        "cost_model": {"commission": 0.0, "slippage_spread_k": 0.25, "slippage_vol_k": 0.05},
        "stats": {"folds": [{"valid_net": 0.01}]},
    }
    spec = bundle_spec(_manifest(policy))
    assert hash(spec) == hash(bundle_spec(_manifest(policy)))
    assert spec == bundle_spec(_manifest(policy))
    assert spec != bundle_spec(_manifest({**policy, "per_regime": {}}))
    assert codec_for(spec) is codec_for(bundle_spec(_manifest(policy)))
