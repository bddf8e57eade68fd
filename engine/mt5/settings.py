"""Settings of the MT5 gateway, from ``TX_MT5_*`` (and the broker time rule from ``TX_BROKER_*``).

Every variable is documented in ``.env.example``. Secrets have no default: ``TX_MT5_PASSWORD``
is a :class:`~pydantic.SecretStr` (never printed, never logged). ``TX_MT5_HOST``/``TX_MT5_PORT``
(the older names) still set the bridge address when ``TX_MT5_BRIDGE_*`` are unset.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from engine.mt5.slippage import SlippageProcess, parse_sessions

__all__ = ["MT5Settings", "SimSlippageSettings"]


class MT5Settings(BaseSettings):
    """How to reach the terminal: ``mode`` picks the adapter (see :mod:`engine.mt5.gateway`)."""

    model_config = SettingsConfigDict(env_prefix="TX_MT5_", extra="ignore", populate_by_name=True)

    mode: Literal["sim", "native", "bridge"] = Field(
        default="sim",
        description="sim: simulated terminal; native: MetaTrader5 module (Windows); bridge: mt5linux.",
    )
    login: int | None = Field(default=None, description="Trading account number (native, bridge).")
    password: SecretStr | None = Field(default=None, description="Account password; no default.")
    server: str | None = Field(
        default=None, description="Trade server name, as the terminal shows it."
    )
    path: str | None = Field(
        default=None, description="Path of terminal64.exe (native; bridge: on the server)."
    )
    timeout_ms: int | None = Field(
        default=None, description="initialize() timeout in milliseconds."
    )
    bridge_host: str = Field(
        default="127.0.0.1",
        validation_alias=AliasChoices("TX_MT5_BRIDGE_HOST", "TX_MT5_HOST"),
        description="mt5linux server host.",
    )
    bridge_port: int = Field(
        default=18812,
        validation_alias=AliasChoices("TX_MT5_BRIDGE_PORT", "TX_MT5_PORT"),
        description="mt5linux server port.",
    )
    bridge_timeout_s: float = Field(
        default=30.0,
        description="Deadline of every bridge step, seconds: the TCP connect, the handshake of "
        "every (re)connect, each call.",
    )
    reconnect_attempts: int = Field(
        default=5,
        ge=1,
        description="Tries per call before giving up; a link that timed out (a frozen "
        "terminal) is not tried again within the call: the next call reconnects.",
    )
    reconnect_base_s: float = Field(
        default=0.5, ge=0, description="First reconnect delay, seconds."
    )
    reconnect_max_s: float = Field(
        default=30.0, ge=0, description="Largest reconnect delay, seconds."
    )
    broker_tz: str | None = Field(
        default=None,
        validation_alias=AliasChoices("TX_BROKER_TZ"),
        description="Broker server time rule: fixed:+2 | ny-close | tz:<IANA zone>[+h].",
    )
    broker_utc_offset_hours: int = Field(
        default=2,
        validation_alias=AliasChoices("TX_BROKER_UTC_OFFSET_HOURS"),
        description="Fixed broker offset, used when TX_BROKER_TZ is unset.",
    )

    def password_value(self) -> str | None:
        """The password in clear, for ``initialize`` only."""
        return self.password.get_secret_value() if self.password is not None else None


class SimSlippageSettings(BaseSettings):
    """The simulated terminal's slippage process, from ``TX_SIM_SLIPPAGE_*`` (see
    :mod:`engine.mt5.slippage`). Off by default: the simulator then fills at the quote, as
    before."""

    model_config = SettingsConfigDict(env_prefix="TX_SIM_SLIPPAGE_", extra="ignore")

    enabled: bool = Field(
        default=False, description="Draw state-dependent slippage for simulated fills."
    )
    base_points: float = Field(default=0.0, ge=0, description="Constant part, points.")
    spread_k: float = Field(default=0.25, ge=0, description="Points per point of spread.")
    vol_k: float = Field(
        default=0.05, ge=0, description="Points per point of recent volatility (stdev of returns)."
    )
    vol_window: int = Field(default=24, ge=2, description="Returns in the volatility window.")
    impact_points: float = Field(
        default=2.0, ge=0, description="Impact, points at volume = depth_lots (sqrt in size)."
    )
    depth_lots: float = Field(default=5.0, gt=0, description="Depth at the touch, lots.")
    sessions: str = Field(
        default="21-22:2.5,23-6:1.5",
        description="Hour-of-day (UTC) multipliers 'H1-H2:mult,...'; other hours 1.",
    )
    noise_sigma: float = Field(
        default=0.5, ge=0, description="Sigma of the mean-1 lognormal random factor."
    )
    seed: int = Field(default=0, description="Seed of the random part.")
    requote: bool = Field(
        default=True, description="Answer 10004 REQUOTE when a draw exceeds the deviation."
    )

    @field_validator("sessions")
    @classmethod
    def _sessions(cls, v: str) -> str:
        parse_sessions(v)  # ValueError naming the bad part
        return v

    def process(self) -> SlippageProcess | None:
        """The configured process, or ``None`` when disabled."""
        if not self.enabled:
            return None
        return SlippageProcess(
            base_points=self.base_points,
            spread_k=self.spread_k,
            vol_k=self.vol_k,
            vol_window=self.vol_window,
            impact_points=self.impact_points,
            depth_lots=self.depth_lots,
            sessions=self.sessions,
            noise_sigma=self.noise_sigma,
            seed=self.seed,
            requote=self.requote,
        )
