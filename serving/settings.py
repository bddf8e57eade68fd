"""Settings of the serving deployable, all from ``TX_*`` environment variables.

Reading settings has no side effects: no folder is created and no connection opened.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Environment variable that names the BentoML model the service loads.
MODEL_TAG_ENV = "TX_SERVING_MODEL_TAG"
DEFAULT_MODEL_TAG = "tx_trend:latest"


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

    @property
    def base_url(self) -> str:
        return f"http://{self.serving_host}:{self.serving_port}"
