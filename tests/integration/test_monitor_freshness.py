"""Freshness check: injected staleness in the lake, the offline store and Redis is found, in
market time; a weekend (closed market) is not stale."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from training.monitor.freshness import FreshnessLimits, check_freshness, market_seconds

pytestmark = pytest.mark.integration

TF = "M5"
VIEW = "trend_fv"
LIMITS = FreshnessLimits(lake_s=26 * 3600, offline_s=26 * 3600, online_s=3 * 300)


def _lake(root: Path, symbol: str, newest: datetime) -> None:
    d = root / "lake" / f"symbol={symbol}" / f"timeframe={TF}" / f"date={newest:%Y-%m-%d}"
    d.mkdir(parents=True, exist_ok=True)
    closes = pd.date_range(end=newest, periods=12, freq="5min", tz="UTC")
    pd.DataFrame({"close_time": closes}).to_parquet(d / "bars.parquet")


def _offline(root: Path, symbol: str, newest: datetime) -> Path:
    d = root / "offline"
    d.mkdir(parents=True, exist_ok=True)
    ts = pd.date_range(end=newest, periods=12, freq="5min", tz="UTC")
    pd.DataFrame({"symbol": symbol, "event_timestamp": ts}).to_parquet(
        d / f"{symbol}_{TF}_{newest:%Y-%m-%d}.parquet"
    )
    return d


def _online(redis: object, symbol: str, newest: datetime) -> None:
    """Feast's Redis layout, as the pusher writes it (``_ts:<view>`` of the symbol's hash)."""
    from engine.online_format import encode_timestamp, entity_key

    redis.hset(  # type: ignore[attr-defined]
        entity_key("symbol", symbol, "txmon"),
        f"_ts:{VIEW}",
        encode_timestamp(int(newest.timestamp())),
    )


def _run(root: Path, redis: object, now: datetime) -> dict[str, tuple[str, float]]:
    rows = check_freshness(
        now=now,
        symbols=["EURUSD"],
        timeframe=TF,
        lake_dir=root / "lake",
        offline_dir=root / "offline",
        view=VIEW,
        limits=LIMITS,
        redis=redis,
        project="txmon",
    )
    return {r.subject: (r.status, r.metrics.get("lag_seconds", -1.0)) for r in rows}


@pytest.fixture()
def redis(redis_url: str):  # type: ignore[no-untyped-def]
    import redis as redis_lib

    r = redis_lib.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/9")
    r.flushdb()  # the private test server's db 9, nobody else's
    yield r
    r.flushdb()


def test_freshness_when_every_store_is_current_then_ok(tmp_path: Path, redis: object) -> None:
    now = datetime(2026, 1, 14, 12, 2, tzinfo=UTC)  # a Wednesday
    newest = datetime(2026, 1, 14, 12, 0, tzinfo=UTC)
    _lake(tmp_path, "EURUSD", newest)
    _offline(tmp_path, "EURUSD", newest)
    _online(redis, "EURUSD", newest)
    got = _run(tmp_path, redis, now)
    assert {k: v[0] for k, v in got.items()} == {
        "EURUSD/M5/lake": "ok",
        "EURUSD/M5/offline": "ok",
        "EURUSD/M5/online": "ok",
    }
    assert got["EURUSD/M5/online"][1] == pytest.approx(120)


def test_freshness_when_stores_are_stale_then_each_is_flagged(
    tmp_path: Path, redis: object
) -> None:
    now = datetime(2026, 1, 14, 12, 0, tzinfo=UTC)
    _lake(tmp_path, "EURUSD", now - timedelta(hours=60))  # > 2 x 26 h: breach
    _offline(tmp_path, "EURUSD", now - timedelta(hours=30))  # > 26 h: warn
    _online(redis, "EURUSD", now - timedelta(minutes=40))  # > 2 x 3 bars: breach
    got = _run(tmp_path, redis, now)
    assert got["EURUSD/M5/lake"][0] == "breach"
    assert got["EURUSD/M5/offline"][0] == "warn"
    assert got["EURUSD/M5/online"] == ("breach", pytest.approx(40 * 60))


def test_freshness_when_online_row_missing_then_breach(tmp_path: Path, redis: object) -> None:
    now = datetime(2026, 1, 14, 12, 0, tzinfo=UTC)
    _lake(tmp_path, "EURUSD", now)
    _offline(tmp_path, "EURUSD", now)
    got = _run(tmp_path, redis, now)
    assert got["EURUSD/M5/online"][0] == "breach"


def test_freshness_when_market_closed_for_the_weekend_then_not_stale(
    tmp_path: Path, redis: object
) -> None:
    """Sunday noon UTC; everything ends at Friday's close (17:00 New York = 22:00 UTC): 38 h
    of wall clock, but no market time — not stale, even for the 15-minute online limit."""
    friday_close = datetime(2026, 1, 9, 22, 0, tzinfo=UTC)
    now = datetime(2026, 1, 11, 12, 0, tzinfo=UTC)
    _lake(tmp_path, "EURUSD", friday_close)
    _offline(tmp_path, "EURUSD", friday_close)
    _online(redis, "EURUSD", friday_close)
    rows = check_freshness(
        now=now,
        symbols=["EURUSD"],
        timeframe=TF,
        lake_dir=tmp_path / "lake",
        offline_dir=tmp_path / "offline",
        view=VIEW,
        limits=LIMITS,
        redis=redis,
        project="txmon",
    )
    assert [r.status for r in rows] == ["ok", "ok", "ok"]
    assert all(r.metrics["lag_seconds"] == 0 for r in rows)
    assert all(r.metrics["wall_lag_seconds"] == 38 * 3600 for r in rows)
    assert all(r.metrics["market_open"] == 0 for r in rows)
    # the same 38 hours mid-week are stale
    assert (
        market_seconds("EURUSD", now - timedelta(days=4, hours=38), now - timedelta(days=4))
        > 30 * 3600
    )


def test_freshness_when_christmas_then_the_holiday_is_closed_time(
    tmp_path: Path, redis: object
) -> None:
    """25 December (``holidays``' US calendar): the closure does not count as lag."""
    start = datetime(2026, 12, 24, 16, 0, tzinfo=UTC)  # 11:00 New York, before the early close
    end = datetime(2026, 12, 26, 12, 0, tzinfo=UTC)
    assert market_seconds("EURUSD", start, end) <= 2 * 3600
