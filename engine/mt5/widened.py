"""A bar feed whose spread is wider by a constant: a second simulated venue that quotes the same
market at a different price of liquidity (``tx mt5 serve-sim --spread-add``, the ``sim`` venues
of :mod:`engine.router`)."""

from __future__ import annotations

import numpy as np

from engine.mt5.sim import BarFeed
from engine.mt5.synthetic import SymbolSpec

__all__ = ["WidenedFeed"]


class WidenedFeed:
    """``feed`` with ``extra_points`` added to every bar's spread (the typical spread of
    ``spec`` too); everything else is the wrapped feed's. Immutable like the feed it wraps."""

    def __init__(self, feed: BarFeed, extra_points: int) -> None:
        if extra_points < 0:
            raise ValueError(f"extra_points must be >= 0, got {extra_points}")
        self.feed = feed
        self.extra_points = int(extra_points)

    def symbols(self) -> list[str]:
        return self.feed.symbols()

    def spec(self, symbol: str) -> SymbolSpec:
        from dataclasses import replace

        s = self.feed.spec(symbol)
        return replace(s, spread_points=s.spread_points + self.extra_points)

    def rates(self, symbol: str, timeframe: str, start_utc: int, end_utc: int) -> np.ndarray:
        bars = self.feed.rates(symbol, timeframe, start_utc, end_utc)
        if not self.extra_points or not len(bars):
            return bars
        out = bars.copy()
        out["spread"] = out["spread"] + self.extra_points
        return out

    def base_timeframe(self, symbol: str) -> str:
        return self.feed.base_timeframe(symbol)

    def span_utc(self, symbol: str) -> tuple[int, int]:
        return self.feed.span_utc(symbol)
