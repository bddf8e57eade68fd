"""The decision policy: when a model's class probabilities become a trade, and when it abstains.

One pure function (numpy only) that the training backtest, serving's decision and the
engine's gate all call, so the three cannot drift apart (docs/execution-policy.md). The
policy travels in the bundle manifest under ``decision_policy``; a bundle without the key
behaves as before: the most probable class, flat below ``min_confidence``.

For one row, in order (the first rule that fails makes the row abstain, side 0):

1. ``abstain`` — the policy never trades (chosen when nothing beat flat on validation);
2. the most probable class is ``flat``;
3. its probability is below ``min_confidence``;
4. the margin ``p(side) - p(opposite side)`` is below ``min_margin``;
5. ``min_edge_cost_ratio > 0`` and both costs are known: the expected edge
   ``margin × edge_points`` is below ``min_edge_cost_ratio × cost_points``.

``edge_points`` is the expected move of a *sure* call (margin 1) over the label horizon, in the
unit of ``cost_points`` — ``edge_atr_mult × ATR``; ``cost_points`` is a round trip: spread +
commission + twice the one-side slippage. Rule 5 is skipped when either is unknown (serving
has no spread; the engine, which has it, applies the whole policy). ``min_margin`` and
``min_edge_cost_ratio`` may be overridden per regime state (``per_regime``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

CLASSES: tuple[str, ...] = ("short", "flat", "long")
_SIDE = {"short": -1, "flat": 0, "long": 1}
LABELS: Mapping[int, str] = {-1: "short", 0: "flat", 1: "long"}

#: Abstain reasons (journal ``reason_code`` of an abstaining bar is ``policy_abstain``).
ABSTAIN_ALWAYS = "policy_abstains"
MODEL_FLAT = "model_flat"
BELOW_CONFIDENCE = "below_confidence"
BELOW_MARGIN = "margin_below_min"
EDGE_BELOW_COST = "edge_below_cost"
REASONS: tuple[str, ...] = (
    ABSTAIN_ALWAYS,
    MODEL_FLAT,
    BELOW_CONFIDENCE,
    BELOW_MARGIN,
    EDGE_BELOW_COST,
)


#: The backtest's default costs (training.config.CostConfig): commission in return units.
DEFAULT_COST_MODEL: Mapping[str, float] = {
    "commission": 0.0,
    "slippage_spread_k": 0.25,
    "slippage_vol_k": 0.05,
}


class PolicyError(ValueError):
    """A ``decision_policy`` that does not satisfy the contract."""


def _number(raw: Mapping[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    v = raw.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= float(v) <= hi:
        raise PolicyError(f"decision_policy {key!r} must be a number in [{lo}, {hi}], got {v!r}")
    return float(v)


@dataclass(frozen=True)
class Thresholds:
    """The learned thresholds (globally, or for one regime state)."""

    min_margin: float = 0.0
    min_edge_cost_ratio: float = 0.0
    abstain: bool = False

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], where: str = "") -> Thresholds:
        if not isinstance(raw, Mapping):
            raise PolicyError(f"decision_policy{where} must be an object")
        ab = raw.get("abstain", False)
        if not isinstance(ab, bool):
            raise PolicyError(f"decision_policy{where} 'abstain' must be true or false")
        return cls(
            _number(raw, "min_margin", 0.0, 0.0, 1.0),
            _number(raw, "min_edge_cost_ratio", 0.0, 0.0, 1000.0),
            ab,
        )


@dataclass(frozen=True)
class DecisionPolicy:
    """A bundle's decision policy (manifest ``decision_policy``), validated.

    ``stats`` (fold statistics of the selection) is carried along, never used to decide."""

    min_confidence: float = 0.5
    min_margin: float = 0.0
    min_edge_cost_ratio: float = 0.0
    abstain: bool = False
    edge_atr_mult: float = 1.0
    # the mappings stay out of the hash (a dict has none): a policy sits in serving's frozen,
    # hashed BundleSpec (the request codec is cached per spec); equality still compares them
    per_regime: Mapping[int, Thresholds] = field(default_factory=dict, hash=False)
    chosen_on: str = "purged_validation_folds"
    # the backtest's cost model the thresholds were chosen with (return units / multipliers)
    cost_model: Mapping[str, float] = field(
        default_factory=lambda: dict(DEFAULT_COST_MODEL), hash=False
    )
    stats: Mapping[str, Any] = field(default_factory=dict, hash=False)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any] | DecisionPolicy) -> DecisionPolicy:
        if isinstance(raw, DecisionPolicy):
            return raw
        if not isinstance(raw, Mapping):
            raise PolicyError(f"decision_policy must be an object, got {type(raw).__name__}")
        base = Thresholds.from_mapping(raw)
        per = raw.get("per_regime") or {}
        if not isinstance(per, Mapping):
            raise PolicyError("decision_policy 'per_regime' must be an object {state: thresholds}")
        regimes: dict[int, Thresholds] = {}
        for k, v in per.items():
            try:
                state = int(k)
            except (TypeError, ValueError) as exc:
                raise PolicyError(f"decision_policy 'per_regime' key {k!r} is not a state") from exc
            regimes[state] = Thresholds.from_mapping(v, f".per_regime.{k}")
        stats = raw.get("stats") or {}
        cm = raw.get("cost_model") or {}
        if not isinstance(cm, Mapping):
            raise PolicyError("decision_policy 'cost_model' must be an object")
        cost_model = {k: _number(cm, k, d, 0.0, 1e6) for k, d in DEFAULT_COST_MODEL.items()}
        return cls(
            min_confidence=_number(raw, "min_confidence", 0.5, 0.0, 1.0),
            min_margin=base.min_margin,
            min_edge_cost_ratio=base.min_edge_cost_ratio,
            abstain=base.abstain,
            edge_atr_mult=_number(raw, "edge_atr_mult", 1.0, 0.0, 100.0),
            per_regime=regimes,
            chosen_on=str(raw.get("chosen_on", "purged_validation_folds")),
            cost_model=cost_model,
            stats=dict(stats) if isinstance(stats, Mapping) else {},
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["per_regime"] = {str(k): asdict(v) for k, v in self.per_regime.items()}
        d["stats"] = dict(self.stats)
        d["cost_model"] = dict(self.cost_model)
        return d

    def thresholds(self, regime: int | None) -> Thresholds:
        if regime is not None and int(regime) in self.per_regime:
            return self.per_regime[int(regime)]
        return Thresholds(self.min_margin, self.min_edge_cost_ratio, self.abstain)

    @property
    def needs_costs(self) -> bool:
        """Whether any rule of this policy compares edge with cost."""
        return self.min_edge_cost_ratio > 0 or any(
            t.min_edge_cost_ratio > 0 for t in self.per_regime.values()
        )


def as_policy(policy: Mapping[str, Any] | DecisionPolicy | None) -> DecisionPolicy | None:
    return None if policy is None else DecisionPolicy.from_mapping(policy)


def _arr(x: Any, n: int) -> np.ndarray | None:
    if x is None:
        return None
    a = np.asarray(x, dtype=float).reshape(-1)
    if a.size == 1 and n != 1:
        a = np.full(n, float(a[0]))
    if a.size != n:
        raise ValueError(f"expected {n} values, got {a.size}")
    return a


def policy_sides(
    proba: np.ndarray,
    policy: Mapping[str, Any] | DecisionPolicy | None,
    *,
    cost_points: Any = None,
    edge_points: Any = None,
    regime: Any = None,
    classes: Sequence[str] = CLASSES,
    min_confidence: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """Sides (-1/0/+1) and abstain reasons ("" when trading) of ``[N, C]`` probabilities.

    ``cost_points``, ``edge_points``, ``regime``: one value per row (or one for all), or None.
    ``min_confidence`` applies to a bundle without a policy (``policy=None``): today's rule."""
    p = np.asarray(proba, dtype=float)
    if p.ndim != 2 or p.shape[1] != len(classes):
        raise ValueError(f"probabilities must be [N, {len(classes)}], got {list(p.shape)}")
    n = len(p)
    pos = np.array([_SIDE[c] for c in classes], dtype=np.int64)
    best = p.argmax(axis=1)
    top = p[np.arange(n), best]
    side = pos[best].copy()
    reason = np.full(n, "", dtype=object)
    reason[side == 0] = MODEL_FLAT
    pol = as_policy(policy)
    conf = min_confidence if pol is None else pol.min_confidence
    low = (top < conf) & (side != 0)
    reason[low] = BELOW_CONFIDENCE
    side[low] = 0
    if pol is None:
        return side, reason
    i_long, i_short = list(classes).index("long"), list(classes).index("short")
    margin = np.where(side >= 0, p[:, i_long] - p[:, i_short], p[:, i_short] - p[:, i_long])
    reg = _arr(regime, n)
    mm = np.full(n, pol.min_margin)
    ratio = np.full(n, pol.min_edge_cost_ratio)
    ab = np.full(n, pol.abstain)
    if reg is not None and pol.per_regime:
        for state, t in pol.per_regime.items():
            m = reg == state
            mm[m], ratio[m], ab[m] = t.min_margin, t.min_edge_cost_ratio, t.abstain
    live = side != 0
    m = live & (margin < mm)
    reason[m], side[m] = BELOW_MARGIN, 0
    cost, edge = _arr(cost_points, n), _arr(edge_points, n)
    if cost is not None and edge is not None:
        live = side != 0
        m = live & (ratio > 0) & (margin * edge < ratio * cost)
        reason[m], side[m] = EDGE_BELOW_COST, 0
    reason[ab] = ABSTAIN_ALWAYS
    side[ab] = 0
    return side, reason


@dataclass(frozen=True)
class PolicyDecision:
    """One row's decision: the side, and why it abstains (``reason`` None when it trades)."""

    side: int
    reason: str | None
    detail: str


def decide_policy(
    probs: Sequence[float],
    policy: Mapping[str, Any] | DecisionPolicy | None,
    *,
    cost_points: float | None,
    edge_points: float | None,
    regime: int | None,
    classes: Sequence[str] = CLASSES,
    min_confidence: float = 0.5,
) -> PolicyDecision:
    """:func:`policy_sides` for one row, with a one-line explanation for the journal."""
    p = np.asarray(probs, dtype=float).reshape(1, -1)
    side, reason = policy_sides(
        p,
        policy,
        cost_points=None if cost_points is None else [cost_points],
        edge_points=None if edge_points is None else [edge_points],
        regime=None if regime is None else [regime],
        classes=classes,
        min_confidence=min_confidence,
    )
    s, r = int(side[0]), str(reason[0]) or None
    pol = as_policy(policy)
    if r is None or pol is None:
        return PolicyDecision(s, r, r or "")
    t = pol.thresholds(regime)
    pr = dict(zip(classes, p[0].tolist(), strict=True))
    top = max(pr, key=lambda c: pr[c])
    margin = abs(pr["long"] - pr["short"])
    detail = {
        ABSTAIN_ALWAYS: "the policy abstains (nothing beat flat on validation)",
        MODEL_FLAT: f"most probable class is flat ({pr['flat']:.3f})",
        BELOW_CONFIDENCE: f"p({top}) {pr[top]:.3f} < min_confidence {pol.min_confidence:g}",
        BELOW_MARGIN: f"margin {margin:.3f} < min_margin {t.min_margin:g}",
        EDGE_BELOW_COST: (
            f"edge {margin * (edge_points or 0.0):.2f} < {t.min_edge_cost_ratio:g} x cost "
            f"{cost_points or 0.0:.2f}"
        ),
    }[r]
    if regime is not None and int(regime) in pol.per_regime:
        detail += f" (regime {int(regime)})"
    return PolicyDecision(s, r, detail)


def apply_policy(
    probs: Sequence[float],
    policy: Mapping[str, Any] | DecisionPolicy | None,
    *,
    cost_points: float | None,
    edge_points: float | None,
    regime: int | None,
    classes: Sequence[str] = CLASSES,
    min_confidence: float = 0.5,
) -> int:
    """The side (-1 short, 0 abstain/flat, +1 long) of one row (CONTRACTS.md)."""
    return decide_policy(
        probs,
        policy,
        cost_points=cost_points,
        edge_points=edge_points,
        regime=regime,
        classes=classes,
        min_confidence=min_confidence,
    ).side


def round_trip_cost(spread: Any, slippage_per_side: Any, commission: float = 0.0) -> Any:
    """The cost the policy compares the edge with: spread + commission + two slippages
    (floats or per-row arrays)."""
    return spread + commission + 2.0 * slippage_per_side


def policy_cost_points(
    policy: DecisionPolicy, *, spread_points: float, vol_points: float, price_points: float
) -> float:
    """The round-trip cost in points with the policy's cost model, as the backtest charges it:
    spread + commission (return units × price) + 2 × (k_s × spread + k_v × volatility)."""
    cm = policy.cost_model
    slip = cm["slippage_spread_k"] * spread_points + cm["slippage_vol_k"] * vol_points
    return round_trip_cost(spread_points, slip, cm["commission"] * price_points)
