"""Settings of the platform deployable (dags/, feature_repo/, training/), all from ``TX_*``.

Every variable is documented in ``.env.example``. Reading settings has no side effects: no
folder is created and no connection opened until a function that needs one asks.
"""

from __future__ import annotations

import difflib
import os
import re
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlparse

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent
FEATURE_REPO = PROJECT_ROOT / "feature_repo"


class DagSettings(BaseSettings):
    """What the market_data DAG file reads when it is parsed (kept apart: no heavy import)."""

    model_config = SettingsConfigDict(env_prefix="TX_", env_file=None, extra="ignore")

    dag_start_date: date = Field(
        default=date(2024, 1, 1), description="First daily interval of the market_data DAG."
    )
    dag_catchup: bool = Field(
        default=False,
        description="Whether the scheduler runs every missed interval since TX_DAG_START_DATE "
        "(true/false; anything else, e.g. 'maybe', is an error).",
    )
    dag_retry_delay_s: float = Field(
        default=60.0,
        gt=0,
        description="First retry delay of market_data's tasks (doubling, at most 10 min): "
        "terminal and Redis hiccups get time to pass.",
    )


class PlatformSettings(DagSettings):
    """Infrastructure settings of the platform. Experiments live in versioned YAML instead."""

    model_config = SettingsConfigDict(env_prefix="TX_", env_file=None, extra="ignore")

    home: Path = Field(
        default=PROJECT_ROOT / ".tx",
        description="Root of all local state: bar lake, quarantine, offline features, "
        "Feast registry, MLflow store, Airflow home, engine journal.",
    )
    redis_url: str | None = Field(
        default=None,
        description="Online store. Unset: the run starts a private redis-server on a free port.",
    )
    mt5_mode: Literal["sim", "native", "bridge"] = "sim"
    mt5_exports: Path | None = Field(
        default=None,
        description="Folder of MT5 CSV exports to replay instead of the synthetic market.",
    )
    mt5_spread_source: str | None = Field(
        default=None,
        description="Where the spread of an export without a spread column comes from: "
        "constant:N (points) | symbol_info. Unset: such a file is refused.",
    )
    mt5_tick_volume_source: str | None = Field(
        default=None,
        description="Where the tick volume of an export without a tick_volume column comes "
        "from: constant:N. Unset: such a file is refused.",
    )
    # comma-separated in the environment: TX_SYMBOLS=EURUSD,GBPUSD
    symbols: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["EURUSD"])
    timeframe: str = "M5"
    broker_utc_offset_hours: int = Field(
        default=2, description="Broker server time minus UTC, in hours (fixed offset)."
    )
    broker_tz: str | None = Field(
        default=None,
        description="Broker server time rule (engine/mt5/brokertime.py): fixed:+2 | ny-close | eet | "
        "tz:<zone>[+h]. Unset: fixed TX_BROKER_UTC_OFFSET_HOURS.",
    )
    synthetic_seed: int = 7
    validation_config: Path | None = Field(
        default=None,
        description="YAML merged over feature_repo/pipeline/validation_rules.yaml (rule severities and thresholds).",
    )
    validation_severity: str = Field(
        default="",
        description="Per-rule severity overrides, e.g. 'price_jump=hard,frozen_prices=off' ('*=hard': every rule).",
    )
    feast_project: str = "titanovax"
    mlflow_tracking_uri: str | None = Field(
        default=None,
        description="Default: sqlite:///<home>/mlflow.db with artifacts under <home>/mlartifacts.",
    )
    mlflow_experiment: str = "tx_trend"
    model_name: str = "tx_trend"
    # --- training (owner: training) ---
    optuna_storage: str | None = Field(
        default=None,
        description="Optuna study storage; default sqlite:///<home>/optuna.db. PostgreSQL: "
        "postgresql+psycopg://postgres@127.0.0.1:5432/<db> (shared by every tuning worker).",
    )
    serving_url: str | None = Field(
        default=None, description="Serving base URL the train DAG asks to reload after a promotion."
    )
    serving_token: str | None = Field(
        default=None, description="Bearer token for serving's admin reload (secret, no default)."
    )
    # --- Airflow (titanovax/airflow_tasks.py) ---
    dag_failure_webhook_url: str | None = Field(
        default=None,
        description="Failed DAG tasks are POSTed here as Alertmanager webhook JSON; unset: logged only.",
    )
    train_min_interval_hours: float = Field(
        default=6.0,
        ge=0,
        description="train_and_promote runs on a feature update only when the newest model "
        "version is older than this (Variable tx_train_min_interval_hours overrides).",
    )
    train_experiment: str = Field(
        default="trend_v1",
        description="Default of train_and_promote's `experiment` Param (config name or YAML path).",
    )

    # --- monitoring (titanovax/monitor.py; docs/monitoring.md) ---
    monitor_db_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the monitoring results table; default "
        "sqlite:///<home>/monitoring.db (PostgreSQL: postgresql+psycopg://user@host/db).",
    )
    monitor_window_hours: float = Field(
        default=24.0, gt=0, description="Live window the drift check compares (hours up to now)."
    )
    monitor_psi_threshold: float = Field(
        default=0.2, gt=0, description="A column has drifted when its PSI reaches this."
    )
    monitor_drift_warn_share: float = Field(
        default=0.3, ge=0, le=1, description="Share of drifted columns from which drift warns."
    )
    monitor_drift_breach_share: float = Field(
        default=0.5, ge=0, le=1, description="Share of drifted columns from which drift breaches."
    )
    monitor_lake_max_lag_hours: float = Field(
        default=26.0,
        gt=0,
        description="Lake freshness: warn above this much market time behind, breach above twice.",
    )
    monitor_offline_max_lag_hours: float = Field(
        default=26.0,
        gt=0,
        description="Offline features: warn above this much market time behind, breach above twice.",
    )
    monitor_online_max_lag_bars: float = Field(
        default=3.0,
        gt=0,
        description="Online (Redis) features: warn above this many bars of market time behind, "
        "breach above twice.",
    )

    @field_validator("symbols", mode="before")
    @classmethod
    def _split_symbols(cls, v: object) -> object:
        if isinstance(v, str) and not v.startswith("["):
            return [s.strip().upper() for s in v.split(",") if s.strip()]
        return v

    @field_validator("symbols")
    @classmethod
    def _some_symbols(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("no symbol given (set e.g. TX_SYMBOLS=EURUSD,GBPUSD)")
        return v

    @field_validator("timeframe")
    @classmethod
    def _known_timeframe(cls, v: str) -> str:
        from engine.mt5 import TIMEFRAMES

        tf = v.strip().upper()
        if tf not in TIMEFRAMES:
            raise ValueError(f"{v!r} is not an MT5 timeframe (use one of {', '.join(TIMEFRAMES)})")
        return tf

    @field_validator("broker_tz")
    @classmethod
    def _known_broker_rule(cls, v: str | None) -> str | None:
        """Parsed at load, so a bad rule fails before any terminal opens."""
        from engine.mt5.brokertime import parse_rule

        if v is not None and v.strip():
            try:
                parse_rule(v)
            except ValueError:
                raise ValueError(f"unknown broker time rule {v!r} (use {BROKER_RULES})") from None
        return v

    # --- derived locations ---------------------------------------------------------------
    @property
    def staging_dir(self) -> Path:
        return self.home / "staging"

    @property
    def lake_dir(self) -> Path:
        return self.home / "lake"

    @property
    def quarantine_dir(self) -> Path:
        return self.home / "quarantine"

    @property
    def offline_features_dir(self) -> Path:
        return self.home / "offline" / "trend_features"

    @property
    def feast_registry(self) -> Path:
        return self.home / "feast" / "registry.db"

    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.home / "mlartifacts"

    @property
    def optuna_storage_url(self) -> str:
        return self.optuna_storage or f"sqlite:///{self.home / 'optuna.db'}"

    @property
    def monitor_db(self) -> str:
        return self.monitor_db_url or f"sqlite:///{self.home / 'monitoring.db'}"

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.home / 'mlflow.db'}"

    def require_redis_url(self) -> str:
        if not self.redis_url:
            raise RedisUrlUnset(
                "TX_REDIS_URL is not set (start a server with `redis-server --port 6379 "
                "--daemonize yes` and set TX_REDIS_URL=redis://127.0.0.1:6379/0, or run "
                "`tx demo`, which starts a private one)"
            )
        return self.redis_url


#: The broker time rules TX_BROKER_TZ accepts (engine/mt5/brokertime.py:parse_rule).
BROKER_RULES = "fixed:+2 | ny-close | eet | tz:<IANA zone>[+-hours], e.g. tz:Europe/Athens"


class RedisUrlUnset(RuntimeError):
    """A command that needs the online store ran without ``TX_REDIS_URL``."""


#: ``TX_*`` names read outside the settings classes (the test harness, the feast CLI env).
EXTRA_ENV_NAMES = frozenset(
    {
        "TX_TEST_RAW_EXPORTS",
        "TX_FEAST_REGISTRY",
        "TX_FEAST_REDIS",
        "TX_OFFLINE_FEATURES",
        "TX_OFFLINE_FEATURES_V2",
        "TX_OFFLINE_SEQUENCES",
    }
)


def known_env_names() -> set[str]:
    """Every ``TX_*`` name a TitanovaX deployable reads: the settings classes' fields, the
    names ``.env.example`` documents (when the checkout has it) and :data:`EXTRA_ENV_NAMES`."""
    from engine.config import EngineSettings
    from serving.settings import ServingSettings

    names = set(EXTRA_ENV_NAMES)
    for cls in (PlatformSettings, ServingSettings, EngineSettings):
        prefix = str(cls.model_config.get("env_prefix", ""))
        for name, fld in cls.model_fields.items():
            names.add((fld.alias or f"{prefix}{name}").upper())
    example = PROJECT_ROOT / ".env.example"
    if example.is_file():
        names |= set(re.findall(r"^#?\s*(TX_[A-Z0-9_]+)=", example.read_text(), re.M))
    return names


def unknown_env_names(environ: dict[str, str] | None = None) -> list[tuple[str, str | None]]:
    """``(name, closest known name or None)`` for each ``TX_*`` variable no deployable reads:
    most often a typo (``TX_SYMBOL`` for ``TX_SYMBOLS``) that would otherwise be ignored."""
    env = os.environ if environ is None else environ
    known = known_env_names()
    out = []
    for name in sorted(n for n in env if n.upper().startswith("TX_")):
        if name.upper() in known:
            continue
        close = difflib.get_close_matches(name.upper(), sorted(known), n=1, cutoff=0.75)
        out.append((name, close[0] if close else None))
    return out


def feast_redis_connection_string(redis_url: str) -> str:
    """``redis://host:port/db`` → Feast's ``host:port,db=N`` connection string."""
    u = urlparse(redis_url)
    if u.scheme not in ("redis", "rediss"):
        raise ValueError(f"TX_REDIS_URL must be redis://host:port/db, got {redis_url!r}")
    db = int(u.path.strip("/") or 0)
    parts = [f"{u.hostname or '127.0.0.1'}:{u.port or 6379}", f"db={db}"]
    if u.password:
        parts.append(f"password={u.password}")
    if u.scheme == "rediss":
        parts.append("ssl=true")
    return ",".join(parts)


def utc(dt: datetime) -> datetime:
    """Return ``dt`` as a plain, aware UTC ``datetime`` (naive input is taken as UTC).

    Subclasses such as pendulum's ``DateTime`` (Airflow's data intervals) become a stdlib
    ``datetime``: pandas drops their time zone otherwise."""
    from datetime import UTC

    aware = dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
    return datetime(
        aware.year,
        aware.month,
        aware.day,
        aware.hour,
        aware.minute,
        aware.second,
        aware.microsecond,
        tzinfo=UTC,
    )
