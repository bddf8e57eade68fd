"""Ingest → validate → features → Feast/Redis on the real stack (no Airflow here)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import redis

from engine.features import OnlineFeatureReader
from feature_repo.pipeline import lake
from feature_repo.pipeline.ingest import ingest
from feature_repo.pipeline.store import FEATURE_VIEW, feast_apply, features_for_range, open_store
from feature_repo.pipeline.transforms import (
    TREND_V1_FEATURES as FEATURE_NAMES,  # trend_fv's features
)
from feature_repo.pipeline.validate import BatchQuarantined, validate_interval
from tests.conftest import Platform, make_settings

pytestmark = pytest.mark.integration


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.parquet"))
    }


def test_ingest_when_the_same_interval_runs_twice_then_the_staged_bytes_are_identical(
    tmp_path: Path, redis_url: str
) -> None:
    s = make_settings(tmp_path, redis_url, db=2)
    day = datetime(2026, 1, 6, tzinfo=UTC)
    r1 = ingest(s, "EURUSD", "M5", day, day + timedelta(days=2))
    first = _digest(s.staging_dir)
    r2 = ingest(s, "EURUSD", "M5", day, day + timedelta(days=2))
    assert r1.rows == r2.rows == 2 * 288
    assert _digest(s.staging_dir) == first and len(first) == 2
    bars = lake.read_bars(s.staging_dir, "EURUSD", "M5", day, day + timedelta(days=2))
    assert bars["time"].is_unique and bars["time"].is_monotonic_increasing
    assert str(bars["time"].dt.tz) == "UTC"
    # broker server time = UTC + offset: the raw value is kept beside the UTC time
    assert (bars["server_time"] - bars["time"].astype("int64") // 10**9 == 2 * 3600).all()


def test_ingest_when_the_last_bar_is_still_forming_then_it_is_left_out(
    tmp_path: Path, redis_url: str
) -> None:
    from feature_repo.pipeline.ingest import open_platform_terminal

    s = make_settings(tmp_path, redis_url, db=2)
    day = datetime(2026, 1, 6, tzinfo=UTC)
    now = int((day + timedelta(hours=10, minutes=2)).timestamp())  # inside the 10:00 bar
    term = open_platform_terminal(s, clock=lambda: now)
    res = ingest(s, "EURUSD", "M5", day, day + timedelta(days=1), terminal=term)
    bars = lake.read_bars(s.staging_dir, "EURUSD", "M5", day, day + timedelta(days=1))
    assert res.forming_bar_excluded
    assert bars["close_time"].max() == pd.Timestamp(day + timedelta(hours=10))
    assert len(bars) == 120


def test_validate_when_bars_are_clean_then_they_move_to_the_lake(platform: Platform) -> None:
    s = platform.settings
    assert not list(s.staging_dir.rglob("*.parquet"))
    assert not s.quarantine_dir.exists() or not list(s.quarantine_dir.rglob("*.parquet"))
    bars = lake.read_bars(s.lake_dir, "GBPUSD", "M5", platform.start, platform.end)
    assert len(bars) == 10 * 288  # two weeks of five trading days


def test_validate_when_a_batch_is_corrupt_then_it_is_quarantined_and_never_reaches_features_or_redis(
    tmp_path: Path, redis_url: str
) -> None:
    from feature_repo.pipeline.store import build_features, materialize

    s = make_settings(tmp_path, redis_url, db=3, symbols=["EURUSD"])
    feast_apply(s)
    d1, d2, d3 = (datetime(2026, 1, 6, tzinfo=UTC) + timedelta(days=i) for i in range(3))
    for a, b in ((d1, d2),):
        ingest(s, "EURUSD", "M5", a, b)
        validate_interval(s, "EURUSD", "M5", a, b)
        build_features(s, "EURUSD", "M5", a, b)
    materialize(s, d1, d2, "M5")
    # day 2 arrives corrupt: one bar with high < low
    ingest(s, "EURUSD", "M5", d2, d3)
    staged = lake.read_partition(s.staging_dir, "EURUSD", "M5", d2.date())
    assert staged is not None
    staged.loc[100, "high"] = staged.loc[100, "low"] - 0.001
    lake.write_partition(s.staging_dir, staged, "EURUSD", "M5", d2.date())

    with pytest.raises(BatchQuarantined) as exc:
        validate_interval(s, "EURUSD", "M5", d2, d3)

    assert "expect_column_pair_values_a_to_be_greater_than_b" in str(exc.value)
    qdir = lake.partition_dir(s.quarantine_dir, "EURUSD", "M5", d2.date())
    assert (qdir / "bars.parquet").exists() and "high" in (qdir / "validation.json").read_text()
    assert lake.read_partition(s.lake_dir, "EURUSD", "M5", d2.date()) is None
    res = build_features(s, "EURUSD", "M5", d2, d3)
    assert res.rows == 0
    materialize(s, d2, d3, "M5")
    row = _reader(s).read("EURUSD")
    assert row.event_time <= d2.timestamp()  # Redis still holds day 1's last bar, nothing of day 2


def _reader(s) -> OnlineFeatureReader:
    return OnlineFeatureReader(
        redis.Redis.from_url(s.redis_url),
        project=s.feast_project,
        feature_view=FEATURE_VIEW,
        features=list(FEATURE_NAMES),
    )


def test_online_features_when_materialised_then_equal_the_offline_row_of_the_same_bar(
    platform: Platform,
) -> None:
    s = platform.settings
    reader = _reader(s)
    for sym in s.symbols:
        row = reader.read(sym)
        offline = features_for_range(s, sym, "M5", platform.start, platform.end).iloc[-1]
        assert row.event_time == offline["event_timestamp"].timestamp()
        np.testing.assert_allclose(
            [row.values[f] for f in FEATURE_NAMES],
            offline[list(FEATURE_NAMES)].to_numpy(float),
            rtol=0,
            atol=1e-9,
        )


def test_engine_reader_when_reading_the_same_keys_then_equals_the_feast_sdk(
    platform: Platform,
) -> None:
    s = platform.settings
    store = open_store(s)
    sdk = store.get_online_features(
        features=store.get_feature_service("trend_v1"),
        entity_rows=[{"symbol": x} for x in s.symbols],
    ).to_dict()
    reader = _reader(s)
    for i, sym in enumerate(s.symbols):
        row = reader.read(sym)
        for f in FEATURE_NAMES:
            assert row.values[f] == sdk[f][i], f


def test_pusher_when_a_bar_closes_then_its_online_row_equals_the_offline_row(
    platform: Platform,
) -> None:
    from feature_repo.pipeline.ingest import open_platform_terminal
    from feature_repo.pipeline.stream import FeaturePusher

    s = platform.settings
    offline = features_for_range(s, "EURUSD", "M5", platform.start, platform.end)
    now = [0]
    term = open_platform_terminal(s, clock=lambda: now[0])
    pusher = FeaturePusher(s, term)
    for _, want in offline.iloc[[100, 777, -300]].iterrows():
        close = int(want["event_timestamp"].timestamp())
        now[0] = close
        got = pusher.features_at("EURUSD", close).iloc[0]
        np.testing.assert_allclose(
            got[list(FEATURE_NAMES)].to_numpy(float),
            want[list(FEATURE_NAMES)].to_numpy(float),
            rtol=0,
            atol=1e-9,
        )
