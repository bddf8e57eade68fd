"""Shared fixtures. Every test writes only into its own temp dirs, its own private Redis
server (a real redis-server on a free port, stopped at the end) and its own MLflow store."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.require_deps import pytest_configure, pytest_runtest_makereport  # noqa: F401  (hooks)
from titanovax.settings import PlatformSettings

RAW = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "raw"


def raw_exports_dir() -> Path:
    env = os.environ.get("TX_TEST_RAW_EXPORTS")
    return Path(env) if env else RAW


def redis_newest_event_time(settings: PlatformSettings) -> float:
    """The newest event time any feature view holds in Redis (Feast's ``_ts:<view>`` fields);
    0.0 when Redis holds none."""
    import redis
    from google.protobuf.timestamp_pb2 import Timestamp

    r = redis.Redis.from_url(settings.require_redis_url())
    newest = 0.0
    for key in r.scan_iter():
        for name, raw in r.hgetall(key).items():
            if name.startswith(b"_ts:"):
                ts = Timestamp()
                ts.ParseFromString(raw)
                newest = max(newest, ts.seconds + ts.nanos / 1e9)
    return newest


@pytest.fixture()
def pg_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A scratch PostgreSQL database of this test module and process (``tests/pg.py``)."""
    from tests.pg import database_name, scratch_database

    with scratch_database(database_name(request.module.__name__.rsplit(".", 1)[-1])) as url:
        yield url


@pytest.fixture(scope="session")
def raw_dir() -> Path:
    d = raw_exports_dir()
    if not d.is_dir() or not any(d.glob("*.csv")):
        pytest.skip(
            f"real MT5 exports not found at {d} (../shared/data/raw); the synthetic market covers the core suite"
        )
    return d


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    from titanovax.redis_local import LocalRedis

    with LocalRedis() as srv:
        yield srv.url


# --- a small real platform: temp TX_HOME, private Redis db, feast apply, two weeks of bars ---
START = datetime(2026, 1, 5, tzinfo=UTC)  # a Monday
DAYS = 14
SYMBOLS = ["EURUSD", "GBPUSD"]


@dataclass
class Platform:
    settings: PlatformSettings
    start: datetime
    end: datetime

    def days(self) -> list[datetime]:
        return [self.start + timedelta(days=i) for i in range((self.end - self.start).days)]


def run_market_data(s: PlatformSettings, start: datetime, end: datetime) -> None:
    """The market_data DAG's tasks, called directly (the DAG itself is tested in tests/dags)."""
    from feature_repo.pipeline.backfill import backfill

    backfill(s, start, end)


def make_settings(home: Path, redis_url: str, db: int, **kw: object) -> PlatformSettings:
    base = redis_url.rsplit("/", 1)[0]
    opts: dict[str, object] = {"symbols": SYMBOLS, "timeframe": "M5", **kw}
    return PlatformSettings(home=home, redis_url=f"{base}/{db}", **opts)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def platform(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Platform]:
    from feature_repo.pipeline.store import feast_apply

    s = make_settings(tmp_path_factory.mktemp("platform"), redis_url, db=1)
    feast_apply(s)
    end = START + timedelta(days=DAYS)
    run_market_data(s, START, end)
    yield Platform(s, START, end)
