"""Backtest/paper helpers: an in-memory feature source and the list of bar closes to replay.

The engine itself is the same in every mode; a backtest only swaps the world it is given:
a simulated terminal on a simulated clock, and (optionally) features precomputed in memory
instead of read from Redis, so it runs as fast as the engine's own code allows.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from engine.features import FeatureRow, FeatureUnavailable
from engine.loop import Engine
from engine.mt5 import protocol as mt5


class ArrayFeatureSource:
    """Feature rows from arrays: ``read(symbol)`` returns the latest row whose event time is
    at or before ``clock()``, exactly as the online store would hold it at that instant."""

    def __init__(
        self,
        names: list[str],
        tables: Mapping[str, tuple[np.ndarray, np.ndarray]],
        clock: Callable[[], float],
        sequences: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    ) -> None:
        self.names = list(names)
        self._tables = {
            s: (np.asarray(t, dtype=np.int64), np.asarray(v, dtype=np.float64))
            for s, (t, v) in tables.items()
        }
        self._seqs = {
            s: (np.asarray(t, dtype=np.int64), np.asarray(v, dtype=np.float32))
            for s, (t, v) in (sequences or {}).items()
        }
        self._clock = clock

    @property
    def features(self) -> list[str]:
        """Feature names, in order."""
        return list(self.names)

    def read(self, symbol: str) -> FeatureRow:
        """The row the online store would hold now."""
        if symbol not in self._tables:
            raise FeatureUnavailable(f"no features for {symbol}")
        times, values = self._tables[symbol]
        i = int(np.searchsorted(times, int(self._clock()), "right")) - 1
        if i < 0:
            raise FeatureUnavailable(f"no feature row for {symbol} before {self._clock():.0f}")
        row = values[i]
        if not np.all(np.isfinite(row)):
            raise FeatureUnavailable(f"{symbol}: non-finite feature at {int(times[i])}")
        seq = None
        if self._seqs:  # the sequence of the same bar ([seq_len, channels]), or no row at all
            st, sv = self._seqs.get(
                symbol, (np.zeros(0, np.int64), np.zeros((0, 0, 0), np.float32))
            )
            j = int(np.searchsorted(st, times[i]))
            if j >= len(st) or st[j] != times[i]:
                raise FeatureUnavailable(f"{symbol}: no sequence row at {int(times[i])}")
            seq = sv[j]
        return FeatureRow(
            symbol, float(times[i]), dict(zip(self.names, row.tolist(), strict=True)), sequence=seq
        )


def bar_closes(
    terminal: mt5.Terminal,
    symbols: list[str],
    timeframe: int,
    start_utc: int,
    end_utc: int,
    offset_hours: int,
) -> list[int]:
    """UTC closes of the bars (any of ``symbols``) that close in ``(start_utc, end_utc]``.

    The terminal's clock must already stand at or after ``end_utc``."""
    off = int(offset_hours) * 3600
    step = mt5.timeframe_seconds(timeframe)
    closes: set[int] = set()
    for sym in symbols:
        rates = terminal.copy_rates_range(
            sym, timeframe, start_utc + off - step, end_utc + off - step
        )
        if rates is not None:
            closes.update(int(t) - off + step for t in rates["time"])
    return sorted(c for c in closes if start_utc < c <= end_utc)


@dataclass(frozen=True)
class BacktestResult:
    """What one replay did and how fast."""

    bars: int
    decisions: int
    seconds: float
    counts: dict[str, int]
    refusals: dict[str, int]
    balance: float | None
    equity: float | None

    @property
    def bars_per_s(self) -> float:
        """Decided (symbol, bar) pairs per second of wall time."""
        return self.decisions / self.seconds if self.seconds > 0 else float("inf")


def run_backtest(
    engine: Engine, closes: list[int], symbols: list[str], set_time: Callable[[int], None]
) -> BacktestResult:
    """Replay ``closes`` through ``engine`` as fast as it goes (the clock is ``set_time``'s)."""
    n0 = engine.stats.bars
    t0 = time.perf_counter()
    engine.replay(closes, symbols, set_time)
    dt = time.perf_counter() - t0
    acct = engine.terminal.account_info()
    return BacktestResult(
        bars=len(closes),
        decisions=engine.stats.bars - n0,
        seconds=dt,
        counts=engine.journal.counts(),
        refusals=engine.journal.reason_counts(),
        balance=float(acct.balance) if acct else None,
        equity=float(acct.equity) if acct else None,
    )
