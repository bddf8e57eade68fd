"""Versioned experiment configs (YAML) with explicit chronological ranges."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, model_validator

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class LabelConfig(BaseModel):
    horizon_bars: int = Field(6, ge=1)
    cost_multiplier: float = Field(1.0, ge=0)


class SplitConfig(BaseModel):
    train_days: int = Field(24, ge=1)
    test_days: int = Field(6, ge=1)
    embargo_bars: int = Field(6, ge=0)


class DecisionConfig(BaseModel):
    min_confidence: float = Field(0.45, ge=0, le=1)


class ExperimentConfig(BaseModel):
    name: str
    feature_service: str
    label: LabelConfig = LabelConfig()
    split: SplitConfig = SplitConfig()
    model: dict[str, Any] = Field(default_factory=dict)
    decision: DecisionConfig = DecisionConfig()

    @model_validator(mode="after")
    def _embargo_covers_horizon(self) -> ExperimentConfig:
        if self.split.embargo_bars < self.label.horizon_bars:
            raise ValueError(
                f"split.embargo_bars ({self.split.embargo_bars}) must be >= label.horizon_bars "
                f"({self.label.horizon_bars}): train labels would overlap the test window"
            )
        return self

    def ranges(self, as_of: datetime) -> dict[str, tuple[datetime, datetime]]:
        """Chronological train and test windows ending at ``as_of`` (UTC)."""
        end = as_of.astimezone(UTC)
        test_start = end - timedelta(days=self.split.test_days)
        train_start = test_start - timedelta(days=self.split.train_days)
        return {"train": (train_start, test_start), "test": (test_start, end)}


def load_config(name_or_path: str | Path) -> ExperimentConfig:
    path = Path(name_or_path)
    if not path.suffix:
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    with open(path) as f:
        return ExperimentConfig.model_validate(yaml.safe_load(f))
