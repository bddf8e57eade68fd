"""Choose a model's decision policy on the purged validation folds of its training window.

The thresholds of :mod:`engine.policy` (minimum probability margin, minimum expected edge over
the round-trip cost, optionally per regime state) are picked on a small grid by the after-cost
P&L of out-of-fold predictions:

1. the training window — and only it: the caller passes the purged training split — is cut
   into purged, embargoed walk-forward folds (:func:`training.splits.walk_forward_folds`);
2. for each fold a fresh model of the config's recipe is fitted on the fold's training rows and
   predicts its validation rows;
3. every candidate policy is applied to those predictions and scored with the backtest's own
   P&L (:func:`training.backtest.pnl_frame`, same costs), summed over the folds;
4. the best total wins. Ties go to the more conservative candidate: "always abstain" first,
   then larger thresholds; the old rule (trade the top class at ``min_confidence``) comes
   last, so it is chosen only when it strictly beats every other candidate;
5. with a regime classifier (the ensemble), one pass tries per-state overrides and keeps one
   only when it strictly improves the validation total.

The test window is never an argument here: the chosen policy cannot depend on it
(tests/unit/test_decision_policy.py poisons it to prove that).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from engine.policy import DecisionPolicy, Thresholds, policy_sides, round_trip_cost
from training.backtest import Costs, SpreadVolSlippage, _spread_rel, pnl_frame, portfolio_pnl

log = logging.getLogger(__name__)

CHOSEN_ON = "purged_validation_folds"


@dataclass(frozen=True)
class _Fixed:
    """A slippage 'model' that returns precomputed per-row values (the backtest's own, computed
    once per fold instead of once per candidate)."""

    values: np.ndarray

    def __call__(self, ds: pd.DataFrame) -> np.ndarray:
        return self.values


@dataclass
class FoldPredictions:
    """Out-of-fold predictions of one validation fold."""

    k: int
    rows: pd.DataFrame  # the fold's validation rows (dataset columns)
    proba: np.ndarray
    regime: np.ndarray | None = None


def cost_edge(
    ds: pd.DataFrame, costs: Costs, edge_atr_mult: float
) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-row round-trip cost and sure-call move, in return units (the policy's inputs).

    Cost: the bar's spread + commission + twice the backtest's slippage estimate; move:
    ``edge_atr_mult × atr_14_rel`` (ATR14 / close; None when the dataset has no such column)."""
    spread = _spread_rel(ds)
    slip = costs.slippage(ds) if costs.slippage is not None else np.zeros(len(ds))
    cost = round_trip_cost(spread, np.asarray(slip, dtype=float), costs.commission)
    move = edge_atr_mult * ds["atr_14_rel"].to_numpy(dtype=float) if "atr_14_rel" in ds else None
    return np.asarray(cost, dtype=float), move


def policy_positions(
    ds: pd.DataFrame,
    proba: np.ndarray,
    policy: DecisionPolicy | dict[str, Any] | None,
    costs: Costs,
    *,
    min_confidence: float = 0.5,
    regime: np.ndarray | None = None,
) -> np.ndarray:
    """Positions of ``proba`` over ``ds`` under ``policy`` (None: the old rule)."""
    pol = None if policy is None else DecisionPolicy.from_mapping(policy)
    cost, move = cost_edge(ds, costs, pol.edge_atr_mult if pol else 1.0)
    side, _ = policy_sides(
        proba,
        pol,
        cost_points=cost,
        edge_points=move,
        regime=regime,
        min_confidence=min_confidence,
    )
    return side


def manifest_regime(manifest: dict[str, Any], ds: pd.DataFrame) -> np.ndarray | None:
    """Regime states of ``ds`` from a bundle manifest's regime thresholds (the ensemble's
    :class:`training.models.RegimeClassifier` rule); None for a bundle without one."""
    r = (manifest.get("thresholds") or {}).get("regime")
    if not r:
        return None
    vol = ds[r["vol_feature"]].to_numpy(np.float32) > np.float32(r["vol_threshold"])
    trend = np.abs(ds[r["trend_feature"]].to_numpy(np.float32)) > np.float32(
        r["abs_trend_threshold"]
    )
    return 2 * vol.astype(np.int64) + trend.astype(np.int64)


def oof_predictions(
    train: pd.DataFrame,
    cfg: Any,
    timeframe: str,
    params: dict[str, Any] | None = None,
    transformer_params: dict[str, Any] | None = None,
) -> list[FoldPredictions]:
    """Fit the config's recipe on each purged fold of ``train``; predict its validation rows."""
    from training.models import EnsembleModel
    from training.splits import walk_forward_folds
    from training.train import _embargo, fit_model, make_model, model_data

    n = cfg.decision.policy_folds or cfg.split.n_folds
    folds = walk_forward_folds(
        train,
        n_folds=n,
        embargo=_embargo(cfg, timeframe),
        scheme=cfg.split.scheme,
        min_train_rows=200,
    )
    if not folds:
        raise ValueError("too little training data for a policy validation fold")
    out = []
    for f in folds:
        model = fit_model(
            make_model(cfg, params, transformer_params),
            train.iloc[f.train].reset_index(drop=True),
            cfg,
            timeframe,
        )
        rows = train.iloc[f.test].reset_index(drop=True)
        data = model_data(rows, cfg.feature_service)
        regime = model.regime.predict(data) if isinstance(model, EnsembleModel) else None
        out.append(FoldPredictions(f.k, rows, np.asarray(model.predict_proba(data)), regime))
        log.info("policy fold %d: %d train rows, %d validation rows", f.k, len(f.train), len(rows))
    return out


@dataclass
class _Prepared:
    fold: FoldPredictions
    costs: Costs
    cost: np.ndarray
    move: np.ndarray | None


def _score(
    prep: list[_Prepared], pol: DecisionPolicy, timeframe: str
) -> tuple[float, list[dict[str, float]]]:
    total, per = 0.0, []
    for p in prep:
        side, _ = policy_sides(
            p.fold.proba,
            pol,
            cost_points=p.cost,
            edge_points=p.move,
            regime=p.fold.regime,
        )
        fr = pnl_frame(p.fold.rows, side, timeframe, p.costs)
        net = float(portfolio_pnl(fr).sum())
        total += net
        per.append(
            {
                "net": net,
                "trades": float((fr["turnover"] > 0).sum()),
                "exposure": float(np.mean(side != 0)) if len(side) else 0.0,
            }
        )
    return total, per


def candidates(margins: list[float], ratios: list[float], with_edge: bool) -> list[Thresholds]:
    """Abstain first, larger thresholds before smaller, the old rule (0, 0) last."""
    rs = sorted(set(ratios if with_edge else [0.0]), reverse=True)
    grid = [
        Thresholds(m, r)
        for m in sorted(set(margins), reverse=True)
        for r in rs
        if not (m == 0 and r == 0)
    ]
    return [Thresholds(abstain=True), *grid, Thresholds(0.0, 0.0)]


def choose_policy(
    folds: list[FoldPredictions],
    *,
    costs: Costs,
    timeframe: str,
    min_confidence: float,
    margin_grid: list[float],
    edge_cost_grid: list[float],
    edge_atr_mult: float = 1.0,
    per_regime: bool = True,
) -> DecisionPolicy:
    """The candidate with the best after-cost validation P&L, with its fold statistics."""
    if not folds:
        raise ValueError("no validation folds to choose a policy on")
    prep = []
    for f in folds:
        slip = costs.slippage(f.rows) if costs.slippage is not None else np.zeros(len(f.rows))
        fixed = replace(costs, slippage=_Fixed(np.asarray(slip, dtype=float)))
        cost, move = cost_edge(f.rows, fixed, edge_atr_mult)
        prep.append(_Prepared(f, fixed, cost, move))
    with_edge = all(p.move is not None for p in prep)
    cost_model = {
        "commission": float(costs.commission),
        "slippage_spread_k": 0.0,
        "slippage_vol_k": 0.0,
    }
    if isinstance(costs.slippage, SpreadVolSlippage):
        cost_model["slippage_spread_k"] = float(costs.slippage.spread_k)
        cost_model["slippage_vol_k"] = float(costs.slippage.vol_k)
    base = DecisionPolicy(
        min_confidence=min_confidence, edge_atr_mult=edge_atr_mult, cost_model=cost_model
    )
    cands = candidates(margin_grid, edge_cost_grid, with_edge)
    scores = []
    best, best_score, best_per = base, -np.inf, []
    for t in cands:
        pol = replace(
            base,
            min_margin=t.min_margin,
            min_edge_cost_ratio=t.min_edge_cost_ratio,
            abstain=t.abstain,
        )
        s, per = _score(prep, pol, timeframe)
        scores.append((t, s, sum(f["trades"] for f in per)))
        if s > best_score:  # strict: ties keep the earlier, more conservative candidate
            best, best_score, best_per = pol, s, per
    legacy_score, legacy_per = _score(prep, base, timeframe)
    regimes_tried: list[int] = []
    if per_regime and all(p.fold.regime is not None for p in prep):
        states = sorted({int(s) for p in prep for s in np.unique(p.fold.regime)})  # type: ignore[arg-type]
        for state in states:
            regimes_tried.append(state)
            for t in cands:
                pol = replace(best, per_regime={**best.per_regime, state: t})
                s, per = _score(prep, pol, timeframe)
                if s > best_score + 1e-12:
                    best, best_score, best_per = pol, s, per
    fold_stats = [
        {
            "k": p.fold.k,
            "start": str(p.fold.rows["event_timestamp"].min()),
            "end": str(p.fold.rows["event_timestamp"].max()),
            "rows": len(p.fold.rows),
            "net_chosen": c["net"],
            "trades_chosen": c["trades"],
            "exposure_chosen": c["exposure"],
            "net_legacy": lg["net"],
            "trades_legacy": lg["trades"],
        }
        for p, c, lg in zip(prep, best_per, legacy_per, strict=True)
    ]
    top = sorted(scores, key=lambda ts: -ts[1])[:5]
    trading = [ts for ts in scores if ts[2] > 0]
    best_trading = max(trading, key=lambda ts: ts[1]) if trading else None
    stats = {
        "folds": fold_stats,
        "valid_net_chosen": best_score,
        "valid_net_legacy": legacy_score,
        "candidates": len(cands),
        "edge_rule_available": with_edge,
        "regimes_tried": regimes_tried,
        "top": [
            {
                "min_margin": t.min_margin,
                "min_edge_cost_ratio": t.min_edge_cost_ratio,
                "abstain": t.abstain,
                "net": s,
                "trades": n,
            }
            for t, s, n in top
        ],
        # the best candidate that trades at all on validation (what abstaining was weighed against)
        "best_trading": None
        if best_trading is None
        else {
            "min_margin": best_trading[0].min_margin,
            "min_edge_cost_ratio": best_trading[0].min_edge_cost_ratio,
            "net": best_trading[1],
            "trades": best_trading[2],
        },
    }
    chosen = replace(best, chosen_on=CHOSEN_ON, stats=stats)
    log.info(
        "decision policy: %s (validation net %.4f vs old rule %.4f over %d folds)",
        describe(chosen),
        best_score,
        legacy_score,
        len(folds),
    )
    return chosen


def describe(pol: DecisionPolicy | None) -> str:
    """One line: what the policy does."""
    if pol is None:
        return "old rule (top class at min_confidence)"

    def one(t: Thresholds) -> str:
        if t.abstain:
            return "abstain"
        if t.min_margin == 0 and t.min_edge_cost_ratio == 0:
            return "trade top class"
        return f"margin>={t.min_margin:g}, edge>={t.min_edge_cost_ratio:g}xcost"

    s = one(pol.thresholds(None))
    if pol.per_regime:
        s += "; " + ", ".join(f"regime {k}: {one(v)}" for k, v in sorted(pol.per_regime.items()))
    return s


def learn_policy(
    train: pd.DataFrame,
    cfg: Any,
    timeframe: str,
    costs: Costs,
    params: dict[str, Any] | None = None,
    transformer_params: dict[str, Any] | None = None,
    *,
    min_confidence: float | None = None,
    folds: list[FoldPredictions] | None = None,
) -> DecisionPolicy:
    """Out-of-fold predictions on ``train`` (the purged training split only) → the policy.
    ``folds``: those predictions already made (:func:`oof_predictions` of the same ``train``),
    to choose policies under several cost models without refitting the folds."""
    dc = cfg.decision
    if folds is None:
        folds = oof_predictions(train, cfg, timeframe, params, transformer_params)
    return choose_policy(
        folds,
        costs=costs,
        timeframe=timeframe,
        min_confidence=dc.min_confidence if min_confidence is None else min_confidence,
        margin_grid=list(dc.margin_grid),
        edge_cost_grid=list(dc.edge_cost_grid),
        edge_atr_mult=dc.edge_atr_mult,
        per_regime=dc.per_regime,
    )
