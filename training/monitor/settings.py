"""Thresholds of the model checks (``live_vs_expected``, ``shadow_ab``), all from ``TX_MONITOR_*``.

Kept apart from :class:`titanovax.settings.PlatformSettings`: the checks read only these, and a
test or an operator can change one threshold by environment without touching the platform's.
Every variable is documented in ``.env.example``.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ModelMonitorSettings(BaseSettings):
    """What the performance and shadow A/B checks need to decide."""

    model_config = SettingsConfigDict(env_prefix="TX_MONITOR_", env_file=None, extra="ignore")

    journal_scope: str | None = Field(
        default=None,
        description="Scope of the engine's journal rows to judge (<login>:<magic>:<mode>); "
        "unset: from TX_MT5_LOGIN, TX_ENGINE_MAGIC and TX_ENGINE_MODE, or the one scope in "
        "the journal with that magic and mode.",
    )
    perf_min_bars: int = Field(
        default=48,
        ge=4,
        description="Live bars of the champion needed before live P&L is judged against the "
        "backtest (fewer: status skipped).",
    )
    perf_window_bars: int = Field(
        default=2000,
        ge=4,
        description="Newest live bars the live-vs-expected check looks at.",
    )
    perf_ci: float = Field(
        default=0.99,
        gt=0.5,
        lt=1.0,
        description="Level of the backtest interval the live mean per-bar P&L must stay in "
        "(below it: breach performance_breach; above it: warn).",
    )
    cusum_k: float = Field(
        default=0.25,
        ge=0.0,
        description="CUSUM reference value k, in backtest standard deviations of per-bar P&L "
        "(half the downward mean shift to detect quickly).",
    )
    cusum_h: float = Field(
        default=12.0,
        gt=0.0,
        description="CUSUM decision threshold h, in backtest standard deviations: the "
        "cumulative shortfall above it is a breach (k=0.25, h=12: ~5700 bars between false alarms).",
    )
    shadow_min_bars: int = Field(
        default=200,
        ge=8,
        description="Bars scored by both champion and challenger in shadow before the A/B "
        "check may promote or retire the challenger.",
    )
    shadow_alpha: float = Field(
        default=0.01,
        gt=0.0,
        lt=0.5,
        description="Significance level of the shadow A/B tests (one-sided Diebold-Mariano, "
        "and 1 - level of the paired bootstrap interval of the mean P&L difference).",
    )
    shadow_act: bool = Field(
        default=True,
        description="Whether the shadow A/B check moves aliases (promote through the gate, "
        "retire the challenger); false: it only reports.",
    )
