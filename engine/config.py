"""Engine settings (from ``TX_*``) and the frozen limits the risk layer, sizing and execution use.

``EngineSettings`` is read from the environment (every variable is documented in
``.env.example``); :meth:`EngineSettings.risk_limits`, :meth:`EngineSettings.sizing` and
:meth:`EngineSettings.execution` turn it into frozen, typed config objects that nothing can
change while the engine runs (a new config means a reload, which is journaled).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


@dataclass(frozen=True)
class RiskLimits:
    """Limits the risk layer enforces; frozen so nothing changes them mid-run.

    Money limits are fractions of equity (``0.03`` = 3 %). A limit of ``0`` (or ``None``)
    disables that rule.
    """

    kill_switch: bool = False
    max_position_lots: float = 1.0  # per symbol, absolute net lots of this engine
    max_total_lots: float = 3.0  # all symbols, sum of absolute net lots
    daily_loss_limit: float = 0.03  # loss since the UTC day's first equity, / that equity → HALTED
    max_drawdown: float = 0.10  # trailing: (peak equity - equity) / peak → HALTED
    max_orders_per_minute: int = 10
    max_consecutive_losses: int = 5  # closed losing trades in a row → REDUCING
    max_feature_age_s: float = 90.0  # wall/sim clock now - feature event time
    max_spread_points: float = 50.0
    max_tick_age_s: float = 900.0  # no tick this recent (server clock): market closed

    def __post_init__(self) -> None:
        for name in (
            "max_position_lots",
            "max_total_lots",
            "daily_loss_limit",
            "max_drawdown",
            "max_feature_age_s",
            "max_spread_points",
            "max_tick_age_s",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"RiskLimits.{name} must be >= 0")
        if self.max_orders_per_minute < 0 or self.max_consecutive_losses < 0:
            raise ValueError("RiskLimits counts must be >= 0")


@dataclass(frozen=True)
class SizingConfig:
    """Lots from risk % of equity over an ATR stop; ``risk_per_trade=0`` uses ``fixed_lots``."""

    risk_per_trade: float = 0.0  # fraction of equity lost if the stop is hit (0.005 = 0.5 %)
    fixed_lots: float = 0.1
    atr_period: int = 14
    stop_atr_mult: float = 2.0  # stop distance = mult * ATR (0: no stop loss)
    take_profit_atr_mult: float = 0.0  # 0: no take profit


@dataclass(frozen=True)
class ExecutionConfig:
    """Order path: the edge gate, retries and filling preference."""

    min_edge_cost_ratio: float = (
        0.0  # refuse when expected edge < ratio * (spread + slippage); 0: off
    )
    edge_atr_mult: float = 1.0  # expected move of a sure call, in ATRs over the label horizon
    slippage_points: float = 0.0  # predicted slippage: base points ...
    slippage_spread_frac: float = 0.25  # ... + this fraction of the current spread
    max_retries: int = 3
    retry_backoff_s: float = 0.2
    deviation_points: int = 20
    filling_preference: tuple[str, ...] = ("FOK", "IOC", "RETURN")
    history_lookback_s: int = 7 * 86_400  # how far back to search deals for a client order id


@dataclass(frozen=True)
class GridConfig:
    """The grid strategy (:mod:`engine.grid`): levels ``spacing_atr`` ATRs apart (widened
    with volatility), lots growing by ``lot_multiplier`` per level, a basket take-profit and
    stop, and what to do when the trend filter turns against the open grid."""

    spacing_atr: float = 1.0  # distance between levels, in ATRs (before widening)
    max_levels: int = 5
    lots: float = 0.01  # first level's lots
    lot_multiplier: float = 1.0  # level n has lots * multiplier ** (n - 1)
    basket_tp_atr: float = 1.0  # close all when the basket gained this many ATRs x its lots
    basket_tp_ccy: float = 0.0  # ... or this much account currency (0: off)
    basket_stop_atr: float = 0.0  # close all when it lost this many ATRs x its lots (0: off)
    basket_stop_ccy: float = 0.0  # ... or this much account currency (0: off)
    reverse_mode: Literal["flatten", "reverse", "stop_adding"] = "flatten"
    direction: Literal["trend", "long", "short"] = "trend"  # trend: start with the filter
    atr_period: int = 14
    vol_window: int = 100  # slow ATR of the widening ratio atr / slow atr
    vol_widen: float = 1.0  # spacing x max(1, atr / slow atr) ** vol_widen (0: no widening)
    trend_period: int = 50  # EMA period of the trend filter
    trend_slope_bars: int = 10  # EMA slope over this many bars ...
    trend_threshold: float = 0.5  # ... in ATRs: |slope| >= threshold is a trend

    def __post_init__(self) -> None:
        for name in ("spacing_atr", "lots", "lot_multiplier"):
            if getattr(self, name) <= 0:
                raise ValueError(f"GridConfig.{name} must be > 0")
        for name in (
            "basket_tp_atr",
            "basket_tp_ccy",
            "basket_stop_atr",
            "basket_stop_ccy",
            "vol_widen",
            "trend_threshold",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"GridConfig.{name} must be >= 0")
        if min(self.max_levels, self.atr_period, self.vol_window, self.trend_period) < 1:
            raise ValueError("GridConfig counts and periods must be >= 1")
        if self.trend_slope_bars < 1:
            raise ValueError("GridConfig.trend_slope_bars must be >= 1")
        if self.basket_tp_atr == 0 and self.basket_tp_ccy == 0:
            raise ValueError("GridConfig needs a basket take-profit (basket_tp_atr or _ccy)")

    @property
    def bars_needed(self) -> int:
        """Closed bars the strategy reads per decision (ATRs, widening, the EMA's window)."""
        return (
            max(self.atr_period, self.vol_window, 3 * self.trend_period + self.trend_slope_bars) + 1
        )


@dataclass(frozen=True)
class GridLimits:
    """Risk caps of the grid (:func:`engine.risk.check_grid_add`,
    :func:`engine.risk.check_grid_basket`), enforced before every grid order; 0 disables one."""

    max_lots: float = 0.5  # per symbol: the grid's open lots after an add
    max_levels: int = 8  # per symbol: open levels after an add
    max_basket_drawdown: float = 0.02  # basket floating loss / equity: close the basket

    def __post_init__(self) -> None:
        if self.max_lots < 0 or self.max_levels < 0 or self.max_basket_drawdown < 0:
            raise ValueError("GridLimits must be >= 0")


StrategyName = Literal["model", "grid", "both"]


def parse_strategies(text: str, symbols: list[str]) -> dict[str, StrategyName]:
    """``TX_ENGINE_STRATEGY``: one name for every symbol (``grid``) or ``SYMBOL=name`` pairs
    (``EURUSD=grid,XAUUSD=both``; unlisted symbols run ``model``)."""
    names = ("model", "grid", "both")
    text = text.strip()
    if text in names:
        return dict.fromkeys(symbols, text)  # type: ignore[arg-type]
    out: dict[str, StrategyName] = dict.fromkeys(symbols, "model")
    for part in filter(None, (p.strip() for p in text.split(","))):
        sym, sep, name = part.partition("=")
        if not sep or name.strip() not in names:
            raise ValueError(
                f"TX_ENGINE_STRATEGY: {part!r} is not SYMBOL=model|grid|both (or one of {names})"
            )
        out[sym.strip().upper()] = name.strip()  # type: ignore[assignment]
    return out


class EngineSettings(BaseSettings):
    """Settings of the engine deployable, all from ``TX_*`` (documented in ``.env.example``)."""

    model_config = SettingsConfigDict(env_prefix="TX_", extra="ignore")

    mode: Literal["live", "paper", "backtest"] = Field(default="paper", alias="TX_ENGINE_MODE")
    mt5_mode: Literal["sim", "native", "bridge"] = "sim"
    mt5_host: str = "127.0.0.1"
    mt5_port: int = 18812
    mt5_login: int | None = None
    mt5_password: SecretStr | None = None  # secret: no default, never printed
    mt5_server: str | None = None
    # deadline of one terminal call on the decision path (bridge), and tries per call
    terminal_timeout_s: float = Field(default=5.0, gt=0, alias="TX_ENGINE_TERMINAL_TIMEOUT_S")
    terminal_attempts: int = Field(default=2, ge=1, alias="TX_ENGINE_TERMINAL_ATTEMPTS")
    redis_url: str = "redis://127.0.0.1:6379/0"
    # connect and read deadline of the feature read (a hung Redis costs one deadline per bar)
    redis_timeout_s: float = Field(default=0.25, gt=0, alias="TX_ENGINE_REDIS_TIMEOUT_S")
    # largest feature magnitude the reader accepts; beyond: invalid_features
    feature_max_abs: float = Field(default=1e9, gt=0, alias="TX_ENGINE_FEATURE_MAX_ABS")
    feast_project: str = "titanovax"
    feature_view: str = "trend_fv"
    serving_url: str = "http://127.0.0.1:3000"
    serving_timeout_s: float = Field(default=0.5, gt=0)
    serving_token: SecretStr | None = None  # secret: no default
    serving_api: Literal["v1", "legacy"] = Field(default="v1", alias="TX_ENGINE_SERVING_API")
    serving_fallback: Literal["fail_closed", "onnx"] = Field(
        default="fail_closed", alias="TX_ENGINE_SERVING_FALLBACK"
    )
    bundle_dir: Path | None = Field(default=None, alias="TX_ENGINE_BUNDLE_DIR")
    # sha256 of the bundle the fallback may use before serving has answered once
    bundle_sha256: str | None = Field(default=None, alias="TX_ENGINE_BUNDLE_SHA256")
    home: Path = Field(default=Path(__file__).resolve().parents[1] / ".tx", alias="TX_HOME")
    journal_path: Path | None = None  # default: $TX_HOME/engine/journal.sqlite
    journal_url: SecretStr | None = None  # a DSN may hold a password: secret
    # backtests journal here only when set (never into TX_JOURNAL_URL/PATH)
    backtest_journal: str | None = Field(default=None, alias="TX_ENGINE_BACKTEST_JOURNAL")
    # a backtest's journal (a new file per run, never resumed) does not wait for the disk
    # unless true: a crash of the machine may lose its tail, a crash of the process nothing
    backtest_journal_durable: bool = Field(
        default=False, alias="TX_ENGINE_BACKTEST_JOURNAL_DURABLE"
    )
    # comma-separated in the environment: TX_SYMBOLS=EURUSD,GBPUSD
    symbols: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["EURUSD"])
    timeframe: str = "M5"
    lots: float = Field(default=0.1, alias="TX_ENGINE_LOTS")
    magic: int = Field(default=20260101, alias="TX_ENGINE_MAGIC")
    engine_token: SecretStr | None = None  # secret: no default
    control_timeout_s: float = Field(default=5.0, gt=0, alias="TX_ENGINE_CONTROL_TIMEOUT_S")
    control_host: str = Field(default="127.0.0.1", alias="TX_ENGINE_CONTROL_HOST")
    control_port: int = Field(default=8765, alias="TX_ENGINE_CONTROL_PORT")
    explain: bool = Field(
        default=True,
        alias="TX_ENGINE_EXPLAIN",
        description="journal each decision's probabilities, regime, members and feature vector",
    )
    explain_worker: bool = Field(
        default=False,
        alias="TX_ENGINE_EXPLAIN_WORKER",
        description="compute feature contributions (serving POST /v1/explain) in a low-priority "
        "thread after each bar's commit",
    )
    kill_switch: bool = Field(default=False, alias="TX_RISK_KILL_SWITCH")
    max_position_lots: float = Field(default=1.0, alias="TX_RISK_MAX_POSITION_LOTS")
    max_total_lots: float = Field(default=3.0, alias="TX_RISK_MAX_TOTAL_LOTS")
    daily_loss_limit: float = Field(default=0.03, alias="TX_RISK_DAILY_LOSS_LIMIT")
    max_drawdown: float = Field(default=0.10, alias="TX_RISK_MAX_DRAWDOWN")
    max_orders_per_minute: int = Field(default=10, alias="TX_RISK_MAX_ORDERS_PER_MINUTE")
    max_consecutive_losses: int = Field(default=5, alias="TX_RISK_MAX_CONSECUTIVE_LOSSES")
    max_feature_age_s: float = Field(default=90.0, alias="TX_RISK_MAX_FEATURE_AGE_S")
    max_spread_points: float = Field(default=50.0, alias="TX_RISK_MAX_SPREAD_POINTS")
    risk_per_trade: float = Field(default=0.0, alias="TX_RISK_PER_TRADE")
    stop_atr_mult: float = Field(default=2.0, alias="TX_ENGINE_STOP_ATR_MULT")
    min_edge_cost_ratio: float = Field(default=0.0, alias="TX_ENGINE_MIN_EDGE_COST_RATIO")
    broker_utc_offset_hours: int = 2
    reconcile_interval_s: float = Field(
        default=10.0,
        ge=0,
        alias="TX_ENGINE_RECONCILE_INTERVAL_S",
        description="seconds between two continuous reconciliation passes (terminal positions "
        "and deals of this magic against the journal); 0 turns it off",
    )
    model_max_age_days: float = Field(
        default=30.0,
        ge=0,
        alias="TX_ENGINE_MODEL_MAX_AGE_DAYS",
        description="a bundle trained longer ago than this (manifest trained_at) is refused "
        "with reason model_expired; 0 turns the check off",
    )
    slippage_model: bool = Field(
        default=False,
        alias="TX_ENGINE_SLIPPAGE_MODEL",
        description="the edge gate charges the promoted slippage model (the tx_slippage@champion "
        "folder TX_ENGINE_SLIPPAGE_MODEL_DIR, read once at start; the fixed 0.25*spread + "
        "0.05*volatility when none); false: spread + a fraction of the spread as before",
    )
    slippage_model_dir: Path | None = Field(
        default=None,
        alias="TX_ENGINE_SLIPPAGE_MODEL_DIR",
        description="folder of the pulled slippage champion (tx slippage pull); default "
        "$TX_HOME/slippage/champion, which tx slippage fit refreshes when it promotes",
    )
    ood_iqr_k: float = Field(
        default=5.0,
        ge=0,
        alias="TX_ENGINE_OOD_IQR_K",
        description="a feature row with any feature outside [q01 - k*IQR, q99 + k*IQR] of the "
        "training reference (manifest reference_stats) is refused out_of_distribution; 0: off",
    )

    strategy: str = Field(
        default="model",
        alias="TX_ENGINE_STRATEGY",
        description="model | grid | both for every symbol, or SYMBOL=name pairs "
        "(EURUSD=grid,XAUUSD=both); unlisted symbols run model",
    )
    grid_spacing_atr: float = Field(default=1.0, gt=0, alias="TX_GRID_SPACING_ATR")
    grid_max_levels: int = Field(default=5, ge=1, alias="TX_GRID_MAX_LEVELS")
    grid_lots: float = Field(default=0.01, gt=0, alias="TX_GRID_LOTS")
    grid_lot_multiplier: float = Field(default=1.0, gt=0, alias="TX_GRID_LOT_MULTIPLIER")
    grid_basket_tp_atr: float = Field(default=1.0, ge=0, alias="TX_GRID_BASKET_TP_ATR")
    grid_basket_tp_ccy: float = Field(default=0.0, ge=0, alias="TX_GRID_BASKET_TP_CCY")
    grid_basket_stop_atr: float = Field(default=0.0, ge=0, alias="TX_GRID_BASKET_STOP_ATR")
    grid_basket_stop_ccy: float = Field(default=0.0, ge=0, alias="TX_GRID_BASKET_STOP_CCY")
    grid_reverse_mode: Literal["flatten", "reverse", "stop_adding"] = Field(
        default="flatten", alias="TX_GRID_REVERSE_MODE"
    )
    grid_direction: Literal["trend", "long", "short"] = Field(
        default="trend", alias="TX_GRID_DIRECTION"
    )
    grid_vol_window: int = Field(default=100, ge=1, alias="TX_GRID_VOL_WINDOW")
    grid_vol_widen: float = Field(default=1.0, ge=0, alias="TX_GRID_VOL_WIDEN")
    grid_trend_period: int = Field(default=50, ge=1, alias="TX_GRID_TREND_PERIOD")
    grid_trend_slope_bars: int = Field(default=10, ge=1, alias="TX_GRID_TREND_SLOPE_BARS")
    grid_trend_threshold: float = Field(default=0.5, ge=0, alias="TX_GRID_TREND_THRESHOLD")
    grid_max_lots: float = Field(default=0.5, ge=0, alias="TX_RISK_GRID_MAX_LOTS")
    grid_max_levels_risk: int = Field(default=8, ge=0, alias="TX_RISK_GRID_MAX_LEVELS")
    grid_max_basket_drawdown: float = Field(
        default=0.02, ge=0, alias="TX_RISK_GRID_MAX_BASKET_DRAWDOWN"
    )

    venues: str = Field(
        default="",
        alias="TX_ENGINE_VENUES",
        description="JSON list of trading venues for the smart order router (engine.router): "
        "name, kind native|bridge|sim, address, login, commission_per_lot, symbol_map, max_lots, "
        "max_order_lots, timeout_s, cooldown_s; empty: the one terminal of TX_MT5_*",
    )

    @field_validator("venues")
    @classmethod
    def _venues(cls, v: str) -> str:
        from engine.router import parse_venues  # engine.router imports this module

        parse_venues(v)  # ValueError naming the bad entry
        return v

    @field_validator("symbols", mode="before")
    @classmethod
    def _split(cls, v: object) -> object:
        if isinstance(v, str) and not v.startswith("["):
            return [s.strip().upper() for s in v.split(",") if s.strip()]
        return v

    def risk_limits(self) -> RiskLimits:
        """The frozen risk limits these settings describe."""
        return RiskLimits(
            kill_switch=self.kill_switch,
            max_position_lots=self.max_position_lots,
            max_total_lots=self.max_total_lots,
            daily_loss_limit=self.daily_loss_limit,
            max_drawdown=self.max_drawdown,
            max_orders_per_minute=self.max_orders_per_minute,
            max_consecutive_losses=self.max_consecutive_losses,
            max_feature_age_s=self.max_feature_age_s,
            max_spread_points=self.max_spread_points,
        )

    def sizing(self) -> SizingConfig:
        """The frozen sizing config these settings describe."""
        return SizingConfig(
            risk_per_trade=self.risk_per_trade,
            fixed_lots=self.lots,
            stop_atr_mult=self.stop_atr_mult,
        )

    def open_terminal(self, mode: str | None = None) -> Any:
        """The terminal of ``TX_MT5_*`` (``mode`` overrides ``TX_MT5_MODE``): address, account,
        bridge deadline and reconnect attempts as configured."""
        from engine.mt5.gateway import open_terminal

        return open_terminal(
            mode or self.mt5_mode,
            host=self.mt5_host,
            port=self.mt5_port,
            login=self.mt5_login,
            password=self.mt5_password,
            server=self.mt5_server,
            bridge_timeout_s=self.terminal_timeout_s,
            reconnect_attempts=self.terminal_attempts,
        )

    def execution(self) -> ExecutionConfig:
        """The frozen execution config these settings describe."""
        return ExecutionConfig(min_edge_cost_ratio=self.min_edge_cost_ratio)

    @field_validator("strategy")
    @classmethod
    def _strategy(cls, v: str) -> str:
        parse_strategies(v, [])  # a bad value fails at start, not at the first bar
        return v

    def strategies(self) -> dict[str, StrategyName]:
        """Strategy per symbol (``TX_ENGINE_STRATEGY``)."""
        return parse_strategies(self.strategy, self.symbols)

    def grid(self) -> GridConfig:
        """The frozen grid config these settings describe."""
        return GridConfig(
            spacing_atr=self.grid_spacing_atr,
            max_levels=self.grid_max_levels,
            lots=self.grid_lots,
            lot_multiplier=self.grid_lot_multiplier,
            basket_tp_atr=self.grid_basket_tp_atr,
            basket_tp_ccy=self.grid_basket_tp_ccy,
            basket_stop_atr=self.grid_basket_stop_atr,
            basket_stop_ccy=self.grid_basket_stop_ccy,
            reverse_mode=self.grid_reverse_mode,
            direction=self.grid_direction,
            vol_window=self.grid_vol_window,
            vol_widen=self.grid_vol_widen,
            trend_period=self.grid_trend_period,
            trend_slope_bars=self.grid_trend_slope_bars,
            trend_threshold=self.grid_trend_threshold,
        )

    def grid_limits(self) -> GridLimits:
        """The frozen grid risk caps these settings describe."""
        return GridLimits(
            max_lots=self.grid_max_lots,
            max_levels=self.grid_max_levels_risk,
            max_basket_drawdown=self.grid_max_basket_drawdown,
        )

    @property
    def journal_target(self) -> str:
        """Where the journal lives: ``TX_JOURNAL_URL`` (postgresql://…) or the SQLite path
        (default ``$TX_HOME/engine/journal.sqlite``, never relative to the working directory)."""
        if self.journal_url is not None and self.journal_url.get_secret_value():
            return self.journal_url.get_secret_value()
        return str(self.journal_path or self.home / "engine" / "journal.sqlite")

    def secret(self, name: str) -> str | None:
        """The clear value of a secret setting (``serving_token``, ``engine_token``,
        ``mt5_password``, ``journal_url``), for the one place that needs it."""
        v = getattr(self, name)
        return v.get_secret_value() if isinstance(v, SecretStr) else v
