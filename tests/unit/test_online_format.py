"""The engine's decoder of Feast's online format equals Feast's own serialisation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import _mmh3, _redis_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import DoubleList, FloatList, Int64List, Value
from google.protobuf.timestamp_pb2 import Timestamp

from engine.online_format import (
    decode_float32_array,
    decode_timestamp,
    decode_value,
    encode_double,
    encode_float_list,
    encode_timestamp,
    entity_key,
    field_hash,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("symbol", ["EURUSD", "XAUUSD", "ß-unicode"])
def test_entity_key_when_built_by_engine_then_equals_feast_redis_key(symbol: str) -> None:
    ek = EntityKey(join_keys=["symbol"], entity_values=[Value(string_val=symbol)])
    assert entity_key("symbol", symbol, "titanovax") == _redis_key("titanovax", ek, 3)
    assert entity_key("symbol", symbol, "") == serialize_entity_key(ek, 3)


def test_int64_entity_key_equals_feast() -> None:
    ek = EntityKey(join_keys=["account"], entity_values=[Value(int64_val=-42)])
    assert entity_key("account", -42, "p") == _redis_key("p", ek, 3)


def test_field_hash_equals_feast_mmh3() -> None:
    for name in ["trend_fv:ret_1", "trend_fv:rsi_14", "x:ü"]:
        assert field_hash(*name.split(":")) == _mmh3(name)


@pytest.mark.parametrize(
    "value,expected",
    [
        (Value(double_val=-1.2345678901234567), -1.2345678901234567),
        (Value(double_val=0.0), 0.0),
        (Value(float_val=1.5), 1.5),
        (Value(int64_val=-(2**40)), -(2**40)),
        (Value(int32_val=-7), -7),
        (Value(bool_val=True), True),
        (Value(string_val="abc"), "abc"),
        (Value(double_list_val=DoubleList(val=[1.0, -2.5, 3e-9])), [1.0, -2.5, 3e-9]),
        (Value(float_list_val=FloatList(val=[0.5, -0.25])), [0.5, -0.25]),
        (Value(int64_list_val=Int64List(val=[1, -2, 3])), [1, -2, 3]),
        (Value(), None),
    ],
)
def test_decode_value_when_feast_serialises_then_engine_reads_the_same(
    value: Value, expected: object
) -> None:
    assert decode_value(value.SerializeToString()) == expected


def test_decode_timestamp() -> None:
    ts = Timestamp(seconds=1767225900, nanos=500_000_000)
    assert math.isclose(decode_timestamp(ts.SerializeToString()), 1767225900.5)


@pytest.mark.parametrize("v", [0.0, -0.0, 1.5, -1.2345678901234567e-300, 7e22, float("inf")])
def test_encode_double_when_written_by_the_pusher_then_bytes_equal_feast(v: float) -> None:
    assert encode_double(v) == Value(double_val=v).SerializeToString()


@pytest.mark.parametrize("n", [1, 3, 31, 32, 576, 5000])
def test_encode_float_list_when_written_by_the_pusher_then_bytes_equal_feast(n: int) -> None:
    a = np.random.default_rng(n).normal(size=n).astype(np.float32)
    feast_bytes = Value(float_list_val=FloatList(val=a.tolist())).SerializeToString()
    assert encode_float_list(a) == feast_bytes
    got = decode_float32_array(feast_bytes)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, a)
    assert decode_value(feast_bytes) == a.tolist()


def test_decode_float32_array_of_an_empty_list() -> None:
    assert (
        decode_float32_array(Value(float_list_val=FloatList(val=[])).SerializeToString()).size == 0
    )


@pytest.mark.parametrize(
    "seconds,nanos", [(1767225900, 0), (1767225900, 500_000_000), (0, 0), (1, 1)]
)
def test_encode_timestamp_equals_protobuf(seconds: int, nanos: int) -> None:
    assert (
        encode_timestamp(seconds, nanos)
        == Timestamp(seconds=seconds, nanos=nanos).SerializeToString()
    )
