"""Freshness: how far behind the market each store is, per symbol and timeframe.

Three stores feed a live decision, each written by a different process, and each can stall on
its own: the **lake** (the ``market_data`` DAG, daily), the **offline** feature parquet (the
same DAG's feature build) and the **online** store (Redis, the pusher or ``materialize``). A
stalled store shows as an old newest timestamp.

The lag is counted in *market time*: the time the market was open between the newest row and
now (:mod:`feature_repo.pipeline.calendar` — weekends, the Christmas/New Year closures, the
daily rollover break; holidays from the ``holidays`` library). A Saturday check of a lake that
ends at Friday's close therefore sees a lag of minutes, not a day: a closed market is not stale.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from training.monitor.result import CheckResult, Status

log = logging.getLogger(__name__)

CHECK = "freshness"
STORES = ("lake", "offline", "online")


@dataclass(frozen=True)
class FreshnessLimits:
    """Warn above the limit, breach above twice the limit (market-time seconds)."""

    lake_s: float
    offline_s: float
    online_s: float

    def limit(self, store: str) -> float:
        return float(getattr(self, f"{store}_s"))


def market_seconds(symbol: str, start: datetime, end: datetime) -> float:
    """Seconds of ``[start, end)`` during which ``symbol``'s market was open (no tolerance)."""
    from feature_repo.pipeline.calendar import calendar_for

    a, b = int(start.timestamp()), int(end.timestamp())
    if b <= a:
        return 0.0
    closed = calendar_for(symbol, tolerance=timedelta(0)).closed_windows(a, b)
    shut = sum(max(0, min(b, int(w1)) - max(a, int(w0))) for w0, w1 in closed)
    return float(b - a - shut)


def market_open(symbol: str, at: datetime) -> bool:
    from feature_repo.pipeline.calendar import calendar_for

    t = int(at.timestamp())
    closed = calendar_for(symbol, tolerance=timedelta(0)).closed_windows(t, t + 1)
    return not any(int(w0) <= t < int(w1) for w0, w1 in closed)


def lake_newest(lake_dir: Path, symbol: str, timeframe: str) -> datetime | None:
    """Close time of the newest bar in the lake (the newest day partition only is read)."""
    parts = sorted(
        (lake_dir / f"symbol={symbol}" / f"timeframe={timeframe}").glob("date=*/bars.parquet")
    )
    for p in reversed(parts):
        df = pd.read_parquet(p, columns=["close_time"])
        if len(df):
            return pd.Timestamp(df["close_time"].max()).to_pydatetime()
    return None


def offline_newest(offline_dir: Path, symbol: str, timeframe: str) -> datetime | None:
    """Newest ``event_timestamp`` of the offline feature parquet of one view."""
    parts = sorted(offline_dir.glob(f"{symbol}_{timeframe}_*.parquet"))
    for p in reversed(parts):
        df = pd.read_parquet(p, columns=["event_timestamp"])
        if len(df):
            return pd.Timestamp(df["event_timestamp"].max()).to_pydatetime()
    return None


def online_newest(redis: Any, project: str, symbol: str, view: str) -> datetime | None:
    """The feature row's event time Redis holds for ``symbol`` (Feast's ``_ts:<view>`` field)."""
    from datetime import UTC

    from engine.online_format import decode_timestamp, entity_key

    raw = redis.hget(entity_key("symbol", symbol, project), f"_ts:{view}".encode())
    if not raw:
        return None
    return datetime.fromtimestamp(decode_timestamp(raw), UTC)


def judge(
    symbol: str,
    timeframe: str,
    store: str,
    newest: datetime | None,
    now: datetime,
    limit_s: float,
    evidence: dict[str, Any] | None = None,
) -> CheckResult:
    """One store's verdict: lag in market time against ``limit_s`` (warn) and twice it (breach)."""
    subject = f"{symbol}/{timeframe}/{store}"
    if newest is None:
        return CheckResult(
            CHECK, subject, "breach", f"{store} has no rows for {symbol} {timeframe}", now
        )
    lag = market_seconds(symbol, newest, now)
    is_open = market_open(symbol, now)
    status: Status = "ok"
    if lag > 2 * limit_s:
        status = "breach"
    elif lag > limit_s:
        status = "warn"
    wall = (now - newest).total_seconds()
    detail = (
        f"{store} newest {newest:%Y-%m-%d %H:%M} UTC, {lag / 3600:.2f} h of market time behind "
        f"(limit {limit_s / 3600:.2f} h; wall clock {wall / 3600:.1f} h"
        f"{', market closed now' if not is_open else ''})"
    )
    return CheckResult(
        CHECK,
        subject,
        status,
        detail,
        now,
        metrics={"lag_seconds": lag, "wall_lag_seconds": wall, "market_open": float(is_open)},
        evidence={
            "symbol": symbol,
            "timeframe": timeframe,
            "store": store,
            "newest": newest.isoformat(),
            "limit_seconds": limit_s,
            **(evidence or {}),
        },
    )


def check_freshness(
    *,
    now: datetime,
    symbols: list[str],
    timeframe: str,
    lake_dir: Path,
    offline_dir: Path,
    view: str,
    limits: FreshnessLimits,
    redis: Any | None,
    project: str,
) -> list[CheckResult]:
    """Every (symbol, store) verdict; the online store is ``skipped`` without a Redis."""
    out: list[CheckResult] = []
    for sym in symbols:
        out.append(
            judge(sym, timeframe, "lake", lake_newest(lake_dir, sym, timeframe), now, limits.lake_s)
        )
        out.append(
            judge(
                sym,
                timeframe,
                "offline",
                offline_newest(offline_dir, sym, timeframe),
                now,
                limits.offline_s,
                {"view": view},
            )
        )
        if redis is None:
            out.append(
                CheckResult(
                    CHECK,
                    f"{sym}/{timeframe}/online",
                    "skipped",
                    "no online store configured (TX_REDIS_URL unset)",
                    now,
                )
            )
            continue
        try:
            newest = online_newest(redis, project, sym, view)
        except Exception as exc:  # an unreachable Redis is a finding, not a crash of the run
            out.append(
                CheckResult(
                    CHECK,
                    f"{sym}/{timeframe}/online",
                    "breach",
                    f"online store unreachable: {exc}",
                    now,
                )
            )
            continue
        out.append(judge(sym, timeframe, "online", newest, now, limits.online_s, {"view": view}))
    return out
