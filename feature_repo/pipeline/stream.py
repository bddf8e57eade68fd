"""The streaming path to the online store (``tx features stream``): on each closed bar, compute
that bar's features from the terminal's recent bars with the same transform code as the batch
path, and write them to Redis in Feast's online format.

- :class:`FeaturePusher` computes every view's row (``trend_fv``, ``trend_v2_fv``,
  ``bar_sequence_fv``) of every configured symbol for one bar close, reading the last
  :data:`~feature_repo.pipeline.transforms.STREAM_BARS` bars of each symbol (the cross-symbol
  family needs them all at the same close).
- Two writers: :class:`DirectWriter` (default) writes the bytes Feast writes — one ``HSET`` per
  symbol with all views' fields and ``_ts:<view>`` — in one pipelined round trip, so a
  symbol's views change atomically; :class:`FeastWriter` goes through
  ``FeatureStore.write_to_online_store`` (one call per view). ``bench/freshness.py`` measures both.
- :meth:`FeaturePusher.run` is the clock-driven loop: sleep to the next bar close, wait until
  every symbol's closing bar is there, push, repeat.

Unlike Feast's writer, the direct writer does not compare with the stored event time first:
the pusher only ever writes the newest closed bar.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd

from engine.mt5 import TIMEFRAMES, Terminal, TerminalError, timeframe_seconds
from engine.online_format import (
    encode_double,
    encode_float_list,
    encode_timestamp,
    entity_key,
    field_hash,
)
from feature_repo.pipeline.ingest import rates_to_frame
from feature_repo.pipeline.store import (
    FEATURE_VIEW,
    SEQ_VIEW,
    VIEW_FIELDS,
    VIEWS,
    last_view_rows,
    open_store,
    symbol_point,
)
from feature_repo.pipeline.transforms import SEQ_FIELD, STREAM_BARS, XS_TOLERANCE_BARS
from titanovax.settings import PlatformSettings

log = logging.getLogger(__name__)

BarRows = dict[str, dict[str, dict[str, Any]]]  # symbol → view → the bar's row (field → value)


class StaleBar(RuntimeError):
    """The terminal's last closed bar is not the bar the caller expects."""


class OnlineWriter(Protocol):
    def write(self, rows: BarRows) -> None: ...


class DirectWriter:
    """Feast's Redis layout written directly: one pipelined round trip for all symbols."""

    def __init__(self, redis: Any, project: str, views: tuple[str, ...] = VIEWS) -> None:
        self.redis = redis
        self.project = project
        self._fields = {v: [(n, field_hash(v, n)) for n in VIEW_FIELDS[v]] for v in views}

    def encode(self, symbol: str, rows: dict[str, Any]) -> tuple[bytes, dict[bytes, bytes]]:
        mapping: dict[bytes, bytes] = {}
        for view, row in rows.items():
            ts = pd.Timestamp(row["event_timestamp"])
            mapping[f"_ts:{view}".encode()] = encode_timestamp(
                int(ts.timestamp()), ts.microsecond * 1000
            )
            for name, fh in self._fields[view]:
                v = row[name]
                mapping[fh] = encode_float_list(v) if view == SEQ_VIEW else encode_double(float(v))
        return entity_key("symbol", symbol, self.project), mapping

    def write(self, rows: BarRows) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for symbol, views in rows.items():
            key, mapping = self.encode(symbol, views)
            pipe.hset(key, mapping=mapping)  # type: ignore[arg-type]
        pipe.execute()


class FeastWriter:
    """Through the Feast SDK: ``write_to_online_store`` once per view."""

    def __init__(self, store: Any, views: tuple[str, ...] = VIEWS) -> None:
        self.store = store
        self.views = views

    def write(self, rows: BarRows) -> None:
        for view in self.views:
            frame = pd.DataFrame([r[view] for r in rows.values() if view in r])
            if frame.empty:
                continue
            if view == SEQ_VIEW:
                frame[SEQ_FIELD] = [
                    np.asarray(v, dtype=np.float32).tolist() for v in frame[SEQ_FIELD]
                ]
            frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
            self.store.write_to_online_store(
                view, frame[["symbol", "event_timestamp", *VIEW_FIELDS[view]]]
            )


class PusherMetrics:
    """The pusher's Prometheus series (own registry; ``tx features stream --metrics-port``
    serves them): a heartbeat on every bar close handled, even one with nothing to write (a
    closed market), so "pusher silent" means the loop stopped, and the last write time."""

    def __init__(self, bar_seconds: int) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.heartbeat = Gauge(
            "tx_pusher_heartbeat_timestamp_seconds",
            "Wall-clock time (UTC epoch seconds) the pusher last handled a bar close",
            registry=r,
        )
        self.last_write = Gauge(
            "tx_pusher_last_write_timestamp_seconds",
            "Wall-clock time (UTC epoch seconds) the pusher last wrote rows to Redis",
            registry=r,
        )
        self.last_bar = Gauge(
            "tx_pusher_last_bar_close_timestamp_seconds",
            "Close time (UTC epoch seconds) of the last bar whose rows were written",
            registry=r,
        )
        self.bar_seconds = Gauge(
            "tx_pusher_bar_seconds", "Length of one bar of the pusher's timeframe", registry=r
        )
        self.bar_seconds.set(bar_seconds)
        self.heartbeat.set(time.time())  # "silent for two bars" counts from the start
        self.rows = Counter(
            "tx_pusher_rows", "Symbol rows written (all views of one symbol = one row)", registry=r
        )
        self.skipped = Counter(
            "tx_pusher_skipped", "Symbols with no row at a bar close (no bar, warm-up)", registry=r
        )
        self.push_seconds = Histogram(
            "tx_pusher_push_seconds",
            "Time to read, compute and write one bar close",
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )

    def observe(self, bar_close: int, rows: int, skipped: int, seconds: float) -> None:
        """Record one handled bar close."""
        now = time.time()
        self.heartbeat.set(now)
        self.push_seconds.observe(seconds)
        self.skipped.inc(skipped)
        if rows:
            self.rows.inc(rows)
            self.last_write.set(now)
            self.last_bar.set(bar_close)


@dataclass
class PushStats:
    """Per pushed bar: seconds spent reading bars, computing features and writing."""

    fetch_s: list[float] = field(default_factory=list)
    compute_s: list[float] = field(default_factory=list)
    write_s: list[float] = field(default_factory=list)
    skipped: int = 0


class FeaturePusher:
    """Computes and writes one bar's features for every configured symbol."""

    def __init__(
        self,
        settings: PlatformSettings,
        terminal: Terminal,
        store: Any | None = None,
        *,
        writer: str | OnlineWriter = "direct",
        redis: Any | None = None,
    ) -> None:
        self.settings = settings
        self.terminal = terminal
        self.symbols = list(settings.symbols)
        self.step = timeframe_seconds(settings.timeframe)
        self.points = {s: symbol_point(settings, s) for s in self.symbols}
        if writer == "feast":
            self.writer: OnlineWriter = FeastWriter(store or open_store(settings))
        elif writer == "direct":
            if redis is None:
                import redis as redis_lib

                redis = redis_lib.Redis.from_url(settings.require_redis_url())
            self.writer = DirectWriter(redis, settings.feast_project)
        else:
            assert not isinstance(writer, str), f"unknown writer {writer!r}"
            self.writer = writer
        self.pushed = 0
        self.last_close: int | None = None
        self.stats = PushStats()
        self.metrics = PusherMetrics(self.step)

    # --- one bar ---------------------------------------------------------------------------
    def bars_at(self, bar_close: int) -> dict[str, pd.DataFrame]:
        """Each symbol's last closed bars up to ``bar_close`` (UTC), as lake rows."""
        tf = self.settings.timeframe
        cutoff = pd.Timestamp(bar_close, unit="s", tz="UTC")
        out = {}
        for sym in self.symbols:
            # pos 0 is the forming bar when the market is open, the last closed bar when it is not
            rates = self.terminal.copy_rates_from_pos(
                sym, TIMEFRAMES[tf], 0, STREAM_BARS + XS_TOLERANCE_BARS + 1
            )
            if rates is None:
                raise TerminalError("copy_rates_from_pos", self.terminal.last_error())
            bars = rates_to_frame(rates, sym, tf, self.settings.broker_utc_offset_hours)
            out[sym] = bars[bars["close_time"] <= cutoff].reset_index(drop=True)
        return out

    def rows_at(self, bar_close: int, bars: dict[str, pd.DataFrame] | None = None) -> BarRows:
        """Every view's row of the bar closing at ``bar_close``, per symbol that has that bar."""
        bars = bars if bars is not None else self.bars_at(bar_close)
        cutoff = pd.Timestamp(bar_close, unit="s", tz="UTC")
        out: BarRows = {}
        for sym in self.symbols:
            own = bars[sym]
            if own.empty or own["close_time"].iloc[-1] != cutoff:
                continue
            tail = {
                k: (v.iloc[-STREAM_BARS:].reset_index(drop=True) if k == sym else v)
                for k, v in bars.items()
            }
            got = {
                v: r
                for v, r in last_view_rows(tail, sym, self.points[sym]).items()
                if r["event_timestamp"] == cutoff
            }
            if got:
                out[sym] = got
        return out

    def features_at(self, symbol: str, bar_close: int, view: str = FEATURE_VIEW) -> pd.DataFrame:
        """One view's feature row of ``symbol``'s bar closing at ``bar_close`` (a 1-row frame)."""
        rows = self.rows_at(bar_close)
        if symbol not in rows or view not in rows[symbol]:
            raise StaleBar(f"{symbol}: no {view} row for the bar closing at {bar_close}")
        return pd.DataFrame([rows[symbol][view]])

    def push_bar(self, bar_close: int) -> BarRows:
        """Compute and write every symbol's rows of the bar closing at ``bar_close``."""
        t0 = time.perf_counter()
        bars = self.bars_at(bar_close)
        t1 = time.perf_counter()
        rows = self.rows_at(bar_close, bars)
        t2 = time.perf_counter()
        if rows:
            self.writer.write(rows)
        t3 = time.perf_counter()
        self.stats.fetch_s.append(t1 - t0)
        self.stats.compute_s.append(t2 - t1)
        self.stats.write_s.append(t3 - t2)
        missing = [s for s in self.symbols if s not in rows]
        if missing:
            self.stats.skipped += len(missing)
            log.warning(
                "bar closing %s: no row for %s (no bar, warm-up or undefined)", bar_close, missing
            )
        self.pushed += len(rows)
        self.last_close = bar_close
        self.metrics.observe(bar_close, len(rows), len(missing), t3 - t0)
        return rows

    def push(self, symbol: str, bar_close: int) -> None:
        """The engine's per-symbol hook: pushes all symbols once per bar close."""
        if self.last_close != bar_close:
            self.push_bar(bar_close)
        elif symbol not in self.symbols:
            raise StaleBar(f"{symbol} is not a configured symbol")

    # --- the loop --------------------------------------------------------------------------
    def closed(self, bar_close: int) -> bool:
        """Whether every symbol's terminal shows a bar opening at or after ``bar_close`` or the
        bar closing at ``bar_close`` is its newest (i.e. that bar is complete)."""
        tf = TIMEFRAMES[self.settings.timeframe]
        off = self.settings.broker_utc_offset_hours * 3600
        for sym in self.symbols:
            r = self.terminal.copy_rates_from_pos(sym, tf, 0, 1)
            if r is None or not len(r) or int(r["time"][-1]) - off < bar_close - self.step:
                return False
        return True

    def run(
        self,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        stop: Callable[[], bool] = lambda: False,
        max_bars: int | None = None,
        wait_s: float = 5.0,
        poll_s: float = 0.002,
        on_push: Callable[[int, BarRows], None] | None = None,
        push_last_closed: bool = False,
    ) -> int:
        """Push each bar as it closes until ``stop()`` or ``max_bars``; returns bars pushed.

        ``clock``/``sleep`` are in market seconds (a simulated, accelerated feed passes its own).
        A bar that does not show up within ``wait_s`` after its close (no tick, market closed)
        is skipped. ``push_last_closed``: first push the bar that closed last before the start
        (Redis is current at once, and the first timed bar does not pay for cold caches)."""
        done = 0
        if push_last_closed:
            last = int(clock()) // self.step * self.step
            rows = self.push_bar(last)
            if on_push is not None:
                on_push(last, rows)
        while not stop() and (max_bars is None or done < max_bars):
            now = clock()
            close = (int(now) // self.step + 1) * self.step
            if close - now > 0:
                sleep(close - now)
            deadline = close + wait_s
            while not self.closed(close) and clock() < deadline and not stop():
                sleep(poll_s)
            if stop():
                break
            rows = self.push_bar(close)
            if on_push is not None:
                on_push(close, rows)
            done += 1
        return done
