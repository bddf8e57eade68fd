"""The engine's reader over several views and the sequence, on rows written with Feast's own
serialisation helpers into a real Redis."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import redis
from feast.infra.online_stores.helpers import _mmh3, _redis_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import FloatList, Value
from google.protobuf.timestamp_pb2 import Timestamp

from engine.features import (
    FeatureUnavailable,
    InvalidFeatures,
    OnlineFeatureReader,
    SequenceSpec,
)

pytestmark = pytest.mark.integration
DB = 14
SEQ = SequenceSpec("bar_sequence_fv", "seq", seq_len=4, channels=3)


@pytest.fixture()
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + f"/{DB}")
    client.flushdb()
    yield client
    client.flushdb()


def _write(r: redis.Redis, symbol: str, view: str, values: dict[str, Value], ts: int) -> None:
    key = _redis_key(
        "p", EntityKey(join_keys=["symbol"], entity_values=[Value(string_val=symbol)]), 3
    )
    mapping: dict[bytes | str, bytes] = {
        _mmh3(f"{view}:{k}"): v.SerializeToString() for k, v in values.items()
    }
    mapping[f"_ts:{view}"] = Timestamp(seconds=ts).SerializeToString()
    r.hset(key, mapping=mapping)  # type: ignore[arg-type]


def _reader(r: redis.Redis) -> OnlineFeatureReader:
    return OnlineFeatureReader(
        r, project="p", views={"a_fv": ["x", "y"], "b_fv": ["z"]}, sequence=SEQ
    )


def test_reader_when_two_views_and_a_sequence_are_stored_then_one_read_returns_them_all(
    r: redis.Redis,
) -> None:
    seq = np.arange(12, dtype=np.float32) / 7
    _write(r, "EURUSD", "a_fv", {"x": Value(double_val=1.25), "y": Value(double_val=-3e-9)}, 1_000)
    _write(r, "EURUSD", "b_fv", {"z": Value(double_val=0.0)}, 1_000)
    _write(
        r,
        "EURUSD",
        "bar_sequence_fv",
        {"seq": Value(float_list_val=FloatList(val=seq.tolist()))},
        1_000,
    )
    row = _reader(r).read("EURUSD")
    assert row.values == {"x": 1.25, "y": -3e-9, "z": 0.0} and row.event_time == 1_000
    assert row.sequence is not None and row.sequence.shape == (4, 3)
    np.testing.assert_array_equal(row.sequence, seq.reshape(4, 3))


def test_reader_when_views_are_at_different_bars_then_the_row_carries_the_oldest_event_time(
    r: redis.Redis,
) -> None:
    seq = Value(float_list_val=FloatList(val=[0.0] * 12))
    _write(r, "EURUSD", "a_fv", {"x": Value(double_val=1.0), "y": Value(double_val=2.0)}, 2_000)
    _write(r, "EURUSD", "b_fv", {"z": Value(double_val=3.0)}, 1_700)
    _write(r, "EURUSD", "bar_sequence_fv", {"seq": seq}, 2_000)
    row = _reader(r).read("EURUSD")
    assert row.event_time == 1_700 and row.event_times == {
        "a_fv": 2_000,
        "b_fv": 1_700,
        "bar_sequence_fv": 2_000,
    }


def test_reader_when_the_sequence_is_missing_or_short_then_refuses(r: redis.Redis) -> None:
    _write(r, "EURUSD", "a_fv", {"x": Value(double_val=1.0), "y": Value(double_val=2.0)}, 1_000)
    _write(r, "EURUSD", "b_fv", {"z": Value(double_val=3.0)}, 1_000)
    with pytest.raises(FeatureUnavailable, match="bar_sequence_fv"):
        _reader(r).read("EURUSD")
    _write(
        r,
        "EURUSD",
        "bar_sequence_fv",
        {"seq": Value(float_list_val=FloatList(val=[1.0] * 11))},
        1_000,
    )
    with pytest.raises(InvalidFeatures, match="11 values"):  # there, but the wrong shape
        _reader(r).read("EURUSD")


def test_reader_from_a_manifest_without_sequence_reads_tabular_only(r: redis.Redis) -> None:
    _write(r, "GBPUSD", "trend_fv", {"x": Value(double_val=0.5)}, 3_000)
    reader = OnlineFeatureReader.from_manifest(
        r, {"feature_view": "trend_fv", "features": ["x"]}, project="p"
    )
    row = reader.read("GBPUSD")
    assert row.values == {"x": 0.5} and row.sequence is None and row.event_time == 3_000
    with pytest.raises(FeatureUnavailable):
        reader.read("USDJPY")
