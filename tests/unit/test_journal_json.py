"""The journal's JSON columns: written by msgspec for speed, they read back exactly what the
standard library's ``json.dumps(value, default=float)`` wrote before (NaN and infinities, numpy
scalars, tuples, non-string keys, text that is not ASCII), and what the standard library refused
is still refused."""

from __future__ import annotations

import datetime
import enum
import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.journal import DecisionRecord, Intent, Journal, dumps

pytestmark = pytest.mark.unit


class _Side(enum.IntEnum):
    BUY = 0


class _Verdict(enum.StrEnum):
    SENT = "sent"


CASES: list[Any] = [
    {"feature_ms": 0.03436400004375173, "fallback": 1.0, "total_ms": 1.7236160000493328},
    {"regime": None, "members": [{"name": "model", "probabilities": [0.3, 0.2, 0.5], "w": 1.0}]},
    {"a": float("nan"), "b": [float("inf"), -float("inf")]},
    {"x": np.float32(0.1), "y": np.float64(1e-05), "z": np.int64(3), "t": np.bool_(True)},
    {"orders": ({"action": 1, "price": 1.1695},), 1: "one", 2.5: None, None: True},
    {"side": _Side.BUY, "verdict": _Verdict.SENT, "big": 2**70, "neg": -(2**63)},
    {"comment": "Request executed é/\u2028\x00", "nested": [[[]], {}], "empty": ""},
    [1e16, 1e-7, 5e-324, 1.7976931348623157e308, -0.0, 0.1, 123456789012345678.0],
    "null",
    None,
]


def _same(a: Any, b: Any) -> bool:
    """Equal, NaN equal to NaN."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("value", CASES, ids=range(len(CASES)))
def test_dumps_when_read_back_then_the_value_json_dumps_gave(value: Any) -> None:
    text = dumps(value)

    assert text.isascii()
    assert _same(json.loads(text), json.loads(json.dumps(value, default=float)))


def test_dumps_when_floats_are_random_then_every_one_reads_back_bit_for_bit() -> None:
    rng = random.Random(17)
    values = [rng.uniform(-1, 1) * 10.0 ** rng.randint(-20, 20) for _ in range(5000)]
    values += [rng.random() for _ in range(5000)]

    back = json.loads(dumps({"v": values}))["v"]

    assert [v.hex() for v in back] == [v.hex() for v in values]


@pytest.mark.parametrize(
    "value", [datetime.datetime(2026, 1, 1), {1, 2}, b"x", {"a": object()}, Path("/x")]
)
def test_dumps_when_the_standard_library_refuses_a_value_then_it_is_still_refused(
    value: Any,
) -> None:
    with pytest.raises((TypeError, ValueError)) as want:
        json.dumps(value, default=float)

    with pytest.raises(type(want.value)):
        dumps(value)


def test_journal_when_a_row_holds_nan_numpy_and_tuples_then_it_reads_back_as_before(
    tmp_path: Path,
) -> None:
    j = Journal(tmp_path / "j.sqlite", "1:2:paper")
    features = {"ret_1": float("nan"), "rsi_14": np.float32(0.25), "vol_24": np.float64(2e-05)}
    rec = DecisionRecord(
        "EURUSD",
        300,
        300.0,
        300.0,
        "m1",
        "long",
        0.1,
        "sent",
        None,
        {"orders": ({"symbol": "EURUSD", "volume": 0.1},)},
        {"results": [{"retcode": 10009, "comment": "é"}]},
        10009,
        {"total_ms": 1.25},
        probabilities={"short": 0.2, "flat": 0.3, "long": 0.5},
        features=features,
    )
    j.record(rec)
    j.intent_begin(Intent("tx-1", "EURUSD", 300, "open:buy", {"price": np.float64(1.1)}))

    row = Journal(tmp_path / "j.sqlite", "1:2:paper").rows()[0]

    assert math.isnan(row["features"]["ret_1"])
    assert row["features"]["rsi_14"] == float(np.float32(0.25))
    assert row["features"]["vol_24"] == 2e-05
    assert row["order_request"] == {"orders": [{"symbol": "EURUSD", "volume": 0.1}]}
    assert row["order_result"] == {"results": [{"retcode": 10009, "comment": "é"}]}
    assert row["probabilities"] == {"short": 0.2, "flat": 0.3, "long": 0.5}
    assert j.intent("tx-1") is not None and j.intent("tx-1").request == {"price": 1.1}  # type: ignore[union-attr]
