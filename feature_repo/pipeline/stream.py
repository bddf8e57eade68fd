"""The per-bar path to the online store: on each closed bar, compute that bar's features from
the terminal's recent bars with the same transform code as the batch path, and write them to
Redis through Feast. Used by paper trading and the demo's engine phase."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from engine.mt5 import TIMEFRAMES, Terminal, TerminalError
from feature_repo.pipeline.ingest import rates_to_frame
from feature_repo.pipeline.store import FEATURE_VIEW, open_store, symbol_point
from feature_repo.pipeline.transforms import FEATURE_NAMES, WARMUP_BARS, compute_features
from infra.settings import PlatformSettings

log = logging.getLogger(__name__)


class StaleBar(RuntimeError):
    """The terminal's last closed bar is not the bar the caller expects."""


class FeaturePusher:
    def __init__(self, settings: PlatformSettings, terminal: Terminal, store: Any | None = None) -> None:
        self.settings = settings
        self.terminal = terminal
        self.store = store or open_store(settings)
        self.pushed = 0

    def features_at(self, symbol: str, bar_close: int) -> pd.DataFrame:
        """The feature row of the last closed bar, which must close at ``bar_close`` (UTC)."""
        tf = self.settings.timeframe
        # pos 0 is the forming bar when the market is open, the last closed bar when it is not
        rates = self.terminal.copy_rates_from_pos(symbol, TIMEFRAMES[tf], 0, WARMUP_BARS + 16)
        if rates is None:
            raise TerminalError("copy_rates_from_pos", self.terminal.last_error())
        bars = rates_to_frame(rates, symbol, tf, self.settings.broker_utc_offset_hours)
        bars = bars[bars["close_time"] <= pd.Timestamp(bar_close, unit="s", tz="UTC")]
        feats = compute_features(bars, symbol_point(self.settings, symbol)).tail(1)
        if feats.empty or int(feats["event_timestamp"].iloc[0].timestamp()) != bar_close:
            got = None if feats.empty else feats["event_timestamp"].iloc[0]
            raise StaleBar(f"{symbol}: last closed bar closes at {got}, expected {bar_close}")
        return feats

    def push(self, symbol: str, bar_close: int) -> None:
        row = self.features_at(symbol, bar_close)
        self.store.write_to_online_store(FEATURE_VIEW, row[["symbol", "event_timestamp", *FEATURE_NAMES]])
        self.pushed += 1
