"""Settings of the serving deployable, all from ``TX_*`` environment variables.

Reading settings has no side effects: no folder is created and no connection opened.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Environment variable that names the BentoML model the service loads.
MODEL_TAG_ENV = "TX_SERVING_MODEL_TAG"
#: Environment variable that names the challenger's BentoML model (empty: no shadow).
CHALLENGER_TAG_ENV = "TX_SERVING_CHALLENGER_TAG"
TOKEN_ENV = "TX_SERVING_TOKEN"
ALLOW_NO_AUTH_ENV = "TX_SERVING_ALLOW_NO_AUTH"
DEFAULT_MODEL_TAG = "tx_trend:latest"


class AuthConfigError(RuntimeError):
    """No ``TX_SERVING_TOKEN`` and no explicit ``TX_SERVING_ALLOW_NO_AUTH=true``."""


class ServingSettings(BaseSettings):
    """Where the model comes from (MLflow) and where and how it is served (BentoML)."""

    model_config = SettingsConfigDict(env_prefix="TX_", env_file=None, extra="ignore")

    mlflow_tracking_uri: str = Field(
        default="sqlite:///.tx/mlflow.db",
        description="MLflow tracking and registry store the bundle is imported from.",
    )
    model_name: str = Field(default="tx_trend", description="Registered MLflow model name.")
    model_alias: str = Field(default="champion", description="Registry alias that is served.")
    serving_host: str = "127.0.0.1"
    serving_port: int = Field(default=3000, ge=1, le=65535)
    serving_model_tag: str = Field(
        default=DEFAULT_MODEL_TAG,
        description="BentoML model tag the service loads (env TX_SERVING_MODEL_TAG). Prefer "
        "the exact tag returned by the import over ':latest'.",
    )
    bentoml_home: str = Field(
        default=".tx/bentoml", description="BentoML home (model store); exported as BENTOML_HOME."
    )
    home: Path = Field(
        default=Path(".tx"), description="Platform home (TX_HOME); the shadow log lives under it."
    )
    serving_challenger_tag: str = Field(
        default="",
        description="BentoML model tag of the challenger scored in shadow (env "
        "TX_SERVING_CHALLENGER_TAG); empty: no shadow until a reload finds one.",
    )
    serving_challenger_alias: str = Field(
        default="challenger",
        description="Registry alias whose version is scored in shadow; empty: no shadow.",
    )
    serving_token: SecretStr | None = Field(
        default=None,
        description="Bearer token required on every endpoint but /healthz. No default: "
        "unset, the server refuses to start unless TX_SERVING_ALLOW_NO_AUTH=true.",
    )
    serving_allow_no_auth: bool = Field(
        default=False,
        description="Local development only: serve without a token when none is set.",
    )
    serving_reload_interval_s: float = Field(
        default=30.0,
        ge=0.0,
        description="Seconds between registry polls for moved aliases (hot reload); 0: off "
        "(POST /v1/admin/reload still works).",
    )
    serving_shadow_log: Path | None = Field(
        default=None,
        description="Append-only JSONL of champion vs challenger results; default "
        "<TX_HOME>/serving/shadow.jsonl.",
    )
    serving_shadow_queue: int = Field(
        default=10_000,
        ge=1,
        description="Shadow requests waiting to be scored before new ones are dropped.",
    )

    @property
    def base_url(self) -> str:
        return f"http://{self.serving_host}:{self.serving_port}"

    @property
    def shadow_log_path(self) -> Path:
        return self.serving_shadow_log or self.home / "serving" / "shadow.jsonl"

    def require_token(self) -> str | None:
        """The token to enforce, or ``None`` when auth is explicitly switched off.

        Raises:
            AuthConfigError: no token and ``serving_allow_no_auth`` is not set.
        """
        if self.serving_token is not None and self.serving_token.get_secret_value():
            return self.serving_token.get_secret_value()
        if self.serving_allow_no_auth:
            return None
        raise AuthConfigError(
            f"{TOKEN_ENV} is not set: set a token (clients send 'Authorization: Bearer "
            f"<token>'), or {ALLOW_NO_AUTH_ENV}=true for local development without auth"
        )
