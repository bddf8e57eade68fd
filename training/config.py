"""Versioned experiment configs (YAML) with explicit chronological ranges.

A config names its feature service, labels, costs, walk-forward scheme, model family, tuning
space and promotion gate. Ranges are either explicit (``split.start``/``test_start``/``end``)
or relative to an ``as_of`` time given by the CLI or the DAG's data interval.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, model_validator

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class LabelConfig(BaseModel):
    horizon_bars: int = Field(6, ge=1)
    cost_multiplier: float = Field(1.0, ge=0)
    commission: float = Field(
        0.0, ge=0, description="round-trip commission in return units (7e-5 = 7 USD per 100k)"
    )
    method: Literal["fixed", "triple_barrier"] = "fixed"
    tp: float = Field(1.5, gt=0, description="take-profit barrier in barrier units")
    sl: float = Field(1.5, gt=0, description="stop-loss barrier in barrier units")
    barrier_unit: Literal["atr", "vol"] = "atr"
    barrier_window: int = Field(14, ge=2)


class SplitConfig(BaseModel):
    train_days: int = Field(24, ge=1)
    test_days: int = Field(6, ge=1)
    embargo_bars: int = Field(6, ge=0)
    n_folds: int = Field(
        3,
        ge=1,
        description="walk-forward folds inside the training window (tuning, ensemble weights)",
    )
    scheme: Literal["expanding", "rolling"] = "expanding"
    # explicit chronological ranges (UTC); when set they win over as_of-relative days
    start: datetime | None = None
    test_start: datetime | None = None
    end: datetime | None = None

    @model_validator(mode="after")
    def _ordered(self) -> SplitConfig:
        given = [d for d in (self.start, self.test_start, self.end) if d is not None]
        if given and len(given) != 3:
            raise ValueError("split.start, split.test_start and split.end go together")
        if given and not (self.start < self.test_start < self.end):  # type: ignore[operator]
            raise ValueError("split ranges must be chronological: start < test_start < end")
        return self


class CostConfig(BaseModel):
    """Backtest costs beyond the bar's spread (return units)."""

    commission: float = Field(0.0, ge=0, description="round-trip commission")
    slippage_spread_k: float = Field(
        0.25, ge=0, description="slippage per unit traded = k * spread + ..."
    )
    slippage_vol_k: float = Field(0.05, ge=0, description="... + k * recent one-bar volatility")
    slippage_model: Literal["fixed", "champion"] = Field(
        "fixed",
        description="'champion': charge the promoted learned slippage model (tx_slippage) in "
        "place of the formula above, which stays the fallback when none is promoted",
    )
    slippage_volume: float = Field(
        0.1, gt=0, description="lots per trade the learned slippage model is asked about"
    )
    swap_long_per_day: float = 0.0
    swap_short_per_day: float = 0.0


class TransformerConfig(BaseModel):
    d_model: int = Field(32, ge=8)
    n_heads: int = Field(4, ge=1)
    n_layers: int = Field(2, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    epochs: int = Field(4, ge=1)
    batch_size: int = Field(256, ge=8)
    lr: float = Field(2e-3, gt=0)
    seed: int = 7


class RegimeConfig(BaseModel):
    vol_feature: str = "vol_24"
    trend_feature: str = "sma_ratio_12_48"


class TransformerSearchConfig(BaseModel):
    """The transformer member's Optuna search space (ensemble family only). Every ``d_model``
    choice must be divisible by every ``n_heads`` choice (attention splits d_model by heads)."""

    n_trials: int | None = Field(
        None, ge=0, description="trials of the transformer study; None: tune.n_trials, 0: not tuned"
    )
    d_model: list[int] = Field(default_factory=lambda: [16, 32, 64])
    n_heads: list[int] = Field(default_factory=lambda: [1, 2, 4])
    n_layers: tuple[int, int] = (1, 3)
    dropout: tuple[float, float] = (0.0, 0.3)
    lr: tuple[float, float] = (3e-4, 1e-2)
    epochs: tuple[int, int] = (1, 4)

    @model_validator(mode="after")
    def _valid_space(self) -> TransformerSearchConfig:
        if not self.d_model or not self.n_heads:
            raise ValueError("tune.transformer.d_model and n_heads need at least one choice")
        if min(self.d_model) < 8 or min(self.n_heads) < 1:
            raise ValueError("tune.transformer: d_model >= 8 and n_heads >= 1")
        bad = [(d, h) for d in self.d_model for h in self.n_heads if d % h]
        if bad:
            raise ValueError(
                f"tune.transformer: every d_model must be divisible by every n_heads; not {bad}"
            )
        for name in ("n_layers", "dropout", "lr", "epochs"):
            lo, hi = getattr(self, name)
            if not lo <= hi:
                raise ValueError(f"tune.transformer.{name}: low {lo} > high {hi}")
        if (
            self.n_layers[0] < 1
            or self.epochs[0] < 1
            or self.lr[0] <= 0
            or not 0 <= self.dropout[0] <= self.dropout[1] < 1
        ):
            raise ValueError("tune.transformer: n_layers, epochs >= 1; lr > 0; 0 <= dropout < 1")
        return self


class TuneConfig(BaseModel):
    enabled: bool = True
    workers: int = Field(2, ge=1, description="parallel workers (DAG mapped tasks / processes)")
    n_trials: int = Field(
        12,
        ge=1,
        description="trials of the XGBoost study (and of the transformer's unless set there)",
    )
    metric: Literal["log_loss"] = "log_loss"
    seed: int = 11
    transformer: TransformerSearchConfig = TransformerSearchConfig()


class GateConfig(BaseModel):
    ci: float = Field(
        0.9, gt=0, lt=1, description="two-sided bootstrap CI level of the Sharpe difference"
    )
    sharpe_ci_tolerance: float = Field(
        0.5,
        ge=0,
        description="promote only if the CI's lower bound of (challenger - champion) Sharpe > -tolerance",
    )
    min_sharpe_gain: float = Field(
        0.0, description="and the point estimate of the difference > this"
    )
    max_drawdown_tolerance: float = Field(
        0.25, ge=0, description="challenger maxDD <= champion maxDD * (1 + tol)"
    )
    latency_budget_us: float = Field(2000.0, gt=0, description="single-row ONNX p50 budget")
    n_boot: int = Field(500, ge=50)
    seed: int = 5
    sharpe_test: Literal["bootstrap", "dm"] = Field(
        "bootstrap",
        description="which significance rule decides: the bootstrap CI of the Sharpe difference (non-inferiority "
        "within sharpe_ci_tolerance) or the one-sided Diebold-Mariano test on per-bar P&L (p < dm_alpha)",
    )
    dm_alpha: float = Field(
        0.1, gt=0, lt=1, description="dm: promote only if P(challenger not better) p-value < this"
    )
    dm_lag: int | None = Field(None, ge=0, description="DM Newey-West lag; None: label horizon - 1")


class DecisionConfig(BaseModel):
    """How probabilities become trades (docs/execution-policy.md)."""

    min_confidence: float = Field(0.45, ge=0, le=1)
    policy: Literal["learned", "legacy"] = Field(
        "learned",
        description="learned: thresholds chosen on the purged validation folds of the training "
        "window by after-cost P&L (manifest decision_policy); legacy: argmax >= min_confidence",
    )
    margin_grid: list[float] = Field(
        default_factory=lambda: [0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4],
        description="candidate min_margin values (p(side) - p(opposite side))",
    )
    edge_cost_grid: list[float] = Field(
        default_factory=lambda: [0.0, 0.5, 1.0, 2.0, 3.0],
        description="candidate min_edge_cost_ratio values (expected edge / round-trip cost)",
    )
    edge_atr_mult: float = Field(
        1.0, gt=0, description="expected move of a sure call over the label horizon, in ATR14"
    )
    per_regime: bool = Field(
        True, description="try per-regime-state overrides when the model has a regime classifier"
    )
    policy_folds: int | None = Field(
        None, ge=1, description="validation folds for the policy (default: split.n_folds)"
    )


class ExperimentConfig(BaseModel):
    name: str
    feature_service: str
    family: Literal["xgboost", "ensemble"] = "xgboost"
    label: LabelConfig = LabelConfig()
    split: SplitConfig = SplitConfig()
    costs: CostConfig = CostConfig()
    model: dict[str, Any] = Field(default_factory=dict, description="XGBoost parameters")
    transformer: TransformerConfig = TransformerConfig()
    regime: RegimeConfig = RegimeConfig()
    tune: TuneConfig = TuneConfig()
    gate: GateConfig = GateConfig()
    decision: DecisionConfig = DecisionConfig()

    @model_validator(mode="after")
    def _embargo_covers_horizon(self) -> ExperimentConfig:
        if self.split.embargo_bars < self.label.horizon_bars:
            raise ValueError(
                f"split.embargo_bars ({self.split.embargo_bars}) must be >= label.horizon_bars "
                f"({self.label.horizon_bars}): train labels would overlap the test window"
            )
        return self

    def ranges(self, as_of: datetime | None = None) -> dict[str, tuple[datetime, datetime]]:
        """Chronological train and test windows: the explicit ones, else ending at ``as_of``."""
        sp = self.split
        if sp.start is not None and sp.test_start is not None and sp.end is not None:
            s, t, e = (
                d.replace(tzinfo=UTC) if d.tzinfo is None else d.astimezone(UTC)
                for d in (sp.start, sp.test_start, sp.end)
            )
            return {"train": (s, t), "test": (t, e)}
        if as_of is None:
            raise ValueError(f"config {self.name} has no explicit split ranges: give as_of")
        end = as_of.astimezone(UTC)
        test_start = end - timedelta(days=sp.test_days)
        train_start = test_start - timedelta(days=sp.train_days)
        return {"train": (train_start, test_start), "test": (test_start, end)}


def load_config(name_or_path: str | Path) -> ExperimentConfig:
    path = Path(name_or_path)
    if not path.suffix:
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    with open(path) as f:
        return ExperimentConfig.model_validate(yaml.safe_load(f))
