"""Settings of the MT5 gateway, from ``TX_MT5_*`` (and the broker time rule from ``TX_BROKER_*``).

Every variable is documented in ``.env.example``. Secrets have no default: ``TX_MT5_PASSWORD``
is a :class:`~pydantic.SecretStr` (never printed, never logged). ``TX_MT5_HOST``/``TX_MT5_PORT``
(the older names) still set the bridge address when ``TX_MT5_BRIDGE_*`` are unset.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["MT5Settings"]


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
