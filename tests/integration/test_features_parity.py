"""Offline/online parity, bar by bar over a replayed day, for both materialisation paths.

The expectation is the offline store itself: Feast ``get_historical_features`` of the
services ``trend_v1`` and ``trend_v2`` with entity rows at every bar close of the day. Then:

- batch path: after ``materialize`` of each bar (the DAG's function), the engine's reader and
  the Feast SDK read exactly that row from Redis;
- streaming path: after the pusher's write of each bar (clock-driven sim terminal), the same.

Values must agree within 1e-9 (they agree to the bit: one transform code path, float32
sequences stored as float32 on both sides).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import redis

from engine.features import OnlineFeatureReader
from feature_repo.pipeline.store import (
    FEATURE_VIEW,
    SEQ_VIEW,
    V2_VIEW,
    feast_apply,
    frames_for_range,
    materialize,
    open_store,
)
from feature_repo.pipeline.transforms import (
    FEATURE_NAMES,
    SEQ_CHANNELS,
    SEQ_FIELD,
    SEQ_LEN,
    TREND_V1_FEATURES,
    sequence_to_array,
)
from tests.conftest import make_settings
from titanovax.settings import PlatformSettings

pytestmark = pytest.mark.integration

TF = "H1"
START = datetime(2026, 1, 5, tzinfo=UTC)  # Monday
DAY = datetime(2026, 1, 14, tzinfo=UTC)  # the replayed day, a Wednesday
STEP = timedelta(hours=1)
BATCH_DB, STREAM_DB, FEAST_WRITER_DB = 11, 12, 13


@dataclass
class Expected:
    settings: PlatformSettings
    closes: list[pd.Timestamp]
    v1: pd.DataFrame  # index (symbol, event_timestamp)
    v2: pd.DataFrame


def _redis(s: PlatformSettings, db: int) -> PlatformSettings:
    return s.model_copy(update={"redis_url": s.redis_url.rsplit("/", 1)[0] + f"/{db}"})  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def expected(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Expected]:
    from feature_repo.pipeline.backfill import backfill

    s = make_settings(tmp_path_factory.mktemp("parity"), redis_url, db=BATCH_DB, timeframe=TF)
    feast_apply(s)
    backfill(s, START, DAY + timedelta(days=1), materialise=False)
    closes = [pd.Timestamp(DAY + STEP * (i + 1)) for i in range(24)]
    entity = pd.DataFrame(
        [(sym, t) for t in closes for sym in s.symbols], columns=["symbol", "event_timestamp"]
    )
    store = open_store(s)
    out = {}
    for svc in ("trend_v1", "trend_v2"):
        df = store.get_historical_features(
            entity_df=entity, features=store.get_feature_service(svc)
        ).to_df()
        df["event_timestamp"] = pd.to_datetime(df["event_timestamp"], utc=True)
        out[svc] = df.set_index(["symbol", "event_timestamp"]).sort_index()
    yield Expected(s, closes, out["trend_v1"], out["trend_v2"])


def test_offline_store_has_every_bar_of_the_day_for_every_symbol_and_view(
    expected: Expected,
) -> None:
    s = expected.settings
    assert len(expected.v2) == 24 * len(s.symbols)
    assert not expected.v1[list(TREND_V1_FEATURES)].isna().any().any()
    assert not expected.v2[list(FEATURE_NAMES)].isna().any().any()
    assert expected.v2[SEQ_FIELD].map(len).eq(SEQ_LEN * len(SEQ_CHANNELS)).all()
    # point in time: the historical row of each close is the offline parquet row of that very bar
    for sym in s.symbols:
        frames = frames_for_range(s, sym, TF, DAY, DAY + timedelta(days=1))
        v2 = frames[V2_VIEW].set_index("event_timestamp")
        got = expected.v2.loc[sym]
        np.testing.assert_array_equal(
            got[list(FEATURE_NAMES)].to_numpy(float),
            v2.loc[got.index, list(FEATURE_NAMES)].to_numpy(float),
        )
        seq = frames[SEQ_VIEW].set_index("event_timestamp")
        for t in got.index:
            np.testing.assert_array_equal(
                np.asarray(got.loc[t, SEQ_FIELD], np.float32), seq.loc[t, SEQ_FIELD]
            )


def _readers(s: PlatformSettings) -> tuple[OnlineFeatureReader, OnlineFeatureReader]:
    r = redis.Redis.from_url(s.redis_url)  # type: ignore[arg-type]
    v1 = OnlineFeatureReader(
        r, project=s.feast_project, feature_view=FEATURE_VIEW, features=list(TREND_V1_FEATURES)
    )
    v2 = OnlineFeatureReader.from_manifest(
        r,
        {
            "feature_view": V2_VIEW,
            "features": list(FEATURE_NAMES),
            "sequence": {
                "feature_view": SEQ_VIEW,
                "field": SEQ_FIELD,
                "seq_len": SEQ_LEN,
                "channels": list(SEQ_CHANNELS),
            },
        },
        project=s.feast_project,
    )
    return v1, v2


def _assert_online_equals_offline(
    s: PlatformSettings, exp: Expected, close: pd.Timestamp, store: Any | None = None
) -> None:
    v1_reader, v2_reader = _readers(s)
    for sym in s.symbols:
        want_v1, want_v2 = exp.v1.loc[(sym, close)], exp.v2.loc[(sym, close)]
        r1, r2 = v1_reader.read(sym), v2_reader.read(sym)
        assert r1.event_time == r2.event_time == close.timestamp(), (sym, close)
        np.testing.assert_allclose(
            [r1.values[f] for f in TREND_V1_FEATURES],
            want_v1[list(TREND_V1_FEATURES)].to_numpy(float),
            rtol=0,
            atol=1e-9,
        )
        np.testing.assert_allclose(
            [r2.values[f] for f in FEATURE_NAMES],
            want_v2[list(FEATURE_NAMES)].to_numpy(float),
            rtol=0,
            atol=1e-9,
        )
        assert r2.sequence is not None
        np.testing.assert_allclose(
            r2.sequence, sequence_to_array(want_v2[SEQ_FIELD]), rtol=0, atol=1e-9
        )
    if store is not None:  # the Feast SDK reads the same row from the same keys
        sdk = store.get_online_features(
            features=store.get_feature_service("trend_v2"),
            entity_rows=[{"symbol": x} for x in s.symbols],
        ).to_dict()
        for i, sym in enumerate(s.symbols):
            row = v2_reader.read(sym)
            assert [row.values[f] for f in FEATURE_NAMES] == [sdk[f][i] for f in FEATURE_NAMES]
            np.testing.assert_array_equal(row.sequence, sequence_to_array(sdk[SEQ_FIELD][i]))


def test_batch_path_when_each_bar_is_materialised_then_redis_equals_the_offline_store(
    expected: Expected,
) -> None:
    s = expected.settings
    store = open_store(s)
    for i, close in enumerate(expected.closes):
        materialize(s, close - STEP, close, TF, store=store)
        _assert_online_equals_offline(s, expected, close, store if i in (0, 23) else None)


def test_stream_path_when_each_bar_closes_then_redis_equals_the_offline_store(
    expected: Expected,
) -> None:
    from feature_repo.pipeline.ingest import open_platform_terminal
    from feature_repo.pipeline.stream import FeaturePusher

    s = _redis(expected.settings, STREAM_DB)
    redis.Redis.from_url(s.redis_url).flushdb()  # type: ignore[arg-type]
    now = [0]
    pusher = FeaturePusher(s, open_platform_terminal(s, clock=lambda: now[0]))
    store = open_store(s)
    for i, close in enumerate(expected.closes):
        now[0] = int(close.timestamp())
        rows = pusher.push_bar(now[0])
        assert set(rows) == set(s.symbols)
        _assert_online_equals_offline(s, expected, close, store if i in (0, 23) else None)


def test_stream_direct_writer_writes_the_bytes_the_feast_writer_writes(expected: Expected) -> None:
    from feature_repo.pipeline.ingest import open_platform_terminal
    from feature_repo.pipeline.stream import FeaturePusher

    direct_s, feast_s = (
        _redis(expected.settings, STREAM_DB),
        _redis(expected.settings, FEAST_WRITER_DB),
    )
    for db_s in (direct_s, feast_s):
        redis.Redis.from_url(db_s.redis_url).flushdb()  # type: ignore[arg-type]
    close = int(expected.closes[5].timestamp())
    direct = FeaturePusher(direct_s, open_platform_terminal(direct_s, clock=lambda: close))
    via_feast = FeaturePusher(
        feast_s, open_platform_terminal(feast_s, clock=lambda: close), writer="feast"
    )
    direct.push_bar(close)
    via_feast.push_bar(close)
    a, b = redis.Redis.from_url(direct_s.redis_url), redis.Redis.from_url(feast_s.redis_url)  # type: ignore[arg-type]
    keys = sorted(a.keys())
    assert keys == sorted(b.keys()) and len(keys) == len(expected.settings.symbols)
    for k in keys:
        assert a.hgetall(k) == b.hgetall(k)


def test_stream_path_when_a_bar_is_missing_then_nothing_is_written_for_that_close(
    expected: Expected, tmp_path: Path
) -> None:
    from feature_repo.pipeline.ingest import open_platform_terminal
    from feature_repo.pipeline.stream import FeaturePusher

    s = _redis(expected.settings, STREAM_DB)
    r = redis.Redis.from_url(s.redis_url)  # type: ignore[arg-type]
    r.flushdb()
    saturday_noon = int(datetime(2026, 1, 10, 12, tzinfo=UTC).timestamp())  # market closed
    pusher = FeaturePusher(s, open_platform_terminal(s, clock=lambda: saturday_noon))
    assert pusher.push_bar(saturday_noon) == {}
    assert r.dbsize() == 0 and pusher.stats.skipped == len(s.symbols)


def test_stream_loop_when_the_clock_passes_three_closes_then_each_bar_is_pushed_once_in_order(
    expected: Expected,
) -> None:
    from feature_repo.pipeline.ingest import open_platform_terminal
    from feature_repo.pipeline.stream import FeaturePusher

    s = _redis(expected.settings, STREAM_DB)
    redis.Redis.from_url(s.redis_url).flushdb()  # type: ignore[arg-type]
    now = [expected.closes[3].timestamp() - 1234.5]  # a simulated clock, in the middle of a bar
    pusher = FeaturePusher(s, open_platform_terminal(s, clock=lambda: int(now[0])))
    pushed: list[int] = []

    def sleep(dt: float) -> None:
        now[0] += dt

    n = pusher.run(
        clock=lambda: now[0],
        sleep=sleep,
        max_bars=3,
        on_push=lambda c, rows: pushed.append(c),
        push_last_closed=True,
    )
    # the bar closed before the start first (Redis current at once), then the next three as they close
    assert n == 3 and pushed == [int(t.timestamp()) for t in expected.closes[2:6]]
    _assert_online_equals_offline(s, expected, expected.closes[5])
