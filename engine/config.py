"""Engine settings (from ``TX_*``) and frozen risk limits."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


@dataclass(frozen=True)
class RiskLimits:
    """Limits the risk layer enforces; frozen so nothing changes them mid-run."""

    max_position_lots: float = 1.0
    kill_switch: bool = False


class EngineSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TX_", extra="ignore")

    mode: Literal["live", "paper", "backtest"] = Field(default="paper", alias="TX_ENGINE_MODE")
    mt5_mode: Literal["sim", "native", "bridge"] = "sim"
    mt5_host: str = "127.0.0.1"
    mt5_port: int = 18812
    mt5_login: int | None = None
    mt5_password: str | None = None
    mt5_server: str | None = None
    redis_url: str = "redis://127.0.0.1:6379/0"
    feast_project: str = "titanovax"
    feature_view: str = "trend_fv"
    serving_url: str = "http://127.0.0.1:3000"
    serving_timeout_s: float = 0.5
    journal_path: Path = Path(".tx/engine/journal.sqlite")
    # comma-separated in the environment: TX_SYMBOLS=EURUSD,GBPUSD
    symbols: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["EURUSD"])
    timeframe: str = "M5"
    lots: float = Field(default=0.1, alias="TX_ENGINE_LOTS")
    magic: int = Field(default=20260101, alias="TX_ENGINE_MAGIC")
    max_position_lots: float = Field(default=1.0, alias="TX_RISK_MAX_POSITION_LOTS")
    kill_switch: bool = Field(default=False, alias="TX_RISK_KILL_SWITCH")
    broker_utc_offset_hours: int = 2

    @field_validator("symbols", mode="before")
    @classmethod
    def _split(cls, v: object) -> object:
        if isinstance(v, str) and not v.startswith("["):
            return [s.strip().upper() for s in v.split(",") if s.strip()]
        return v

    def risk_limits(self) -> RiskLimits:
        return RiskLimits(max_position_lots=self.max_position_lots, kill_switch=self.kill_switch)
