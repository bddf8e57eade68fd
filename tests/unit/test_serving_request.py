"""The /v1/predict hot-path parser (serving.request) against the typed API (serving.schemas).

Property-style: thousands of seeded random valid requests and single-field breakages. Every
valid request parses to the exact matrix, and the pydantic model accepts it; every breakage
is a ``FeatureValidationError`` naming the broken field, and (for shape and type errors,
which do not depend on the bundle) the pydantic model rejects it too.
"""

from __future__ import annotations

import json
import math
import random
from typing import Any

import numpy as np
import pytest

from serving.preprocess import FeatureValidationError, bundle_spec
from serving.request import decode_json, parse_body, parse_payload, render_validation_error
from serving.schemas import PredictRequest

pytestmark = pytest.mark.unit

FEATURES = ["ret_1", "ret_5", "vol_20", "rsi_14", "spread"]
SEQ_LEN, CHANNELS = 4, ["ret", "range"]
BASE = {
    "features": FEATURES,
    "classes": ["short", "flat", "long"],
    "positions": [-1, 0, 1],
    "min_confidence": 0.4,
}
SPEC = bundle_spec(BASE)
SEQ_SPEC = bundle_spec(
    BASE | {"sequence": {"input_name": "sequence", "seq_len": SEQ_LEN, "channels": CHANNELS}}
)


def _valid(rng: random.Random, n_rows: int, sequence: bool = False) -> dict[str, Any]:
    rows = []
    for i in range(n_rows):
        row: dict[str, Any] = {
            "symbol": rng.choice(["EURUSD", "GBPUSD", "X"]),
            "feature_time": rng.choice(
                ["2024-05-01T10:05:00Z", "2024-05-01T12:05:00+02:00", 1714557900, 1714557900.5]
            ),
            # ints and floats, in a random key order
            "features": dict(
                rng.sample(
                    [
                        (f, rng.choice([rng.uniform(-1e6, 1e6), rng.randint(-5, 5)]))
                        for f in FEATURES
                    ],
                    len(FEATURES),
                )
            ),
        }
        if sequence:
            row["sequence"] = [[rng.uniform(-3, 3) for _ in CHANNELS] for _ in range(SEQ_LEN)]
        rows.append(row)
        del i
    return {"rows": rows}


def test_parse_when_many_random_valid_requests_then_exact_matrix_and_pydantic_agrees():
    rng = random.Random(1)
    for _ in range(500):
        payload = _valid(rng, rng.randint(1, 5))

        parsed = parse_body(json.dumps(payload).encode(), SPEC)

        expected = np.array(
            [[r["features"][f] for f in FEATURES] for r in payload["rows"]], dtype=np.float32
        )
        np.testing.assert_array_equal(parsed.matrix, expected)
        assert parsed.matrix.dtype == np.float32
        assert parsed.symbols == [r["symbol"] for r in payload["rows"]]
        assert all(t.endswith("Z") for t in parsed.feature_times)
        PredictRequest.model_validate(payload)  # the typed API accepts it too


def test_parse_when_sequence_bundle_then_sequence_tensor_in_row_order():
    rng = random.Random(2)
    payload = _valid(rng, 3, sequence=True)

    parsed = parse_payload(payload, SEQ_SPEC)

    assert parsed.sequence is not None and parsed.sequence.shape == (3, SEQ_LEN, len(CHANNELS))
    np.testing.assert_array_equal(
        parsed.sequence, np.array([r["sequence"] for r in payload["rows"]], dtype=np.float32)
    )


BAD: dict[str, list[Any]] = {
    "symbol": [None, True, 1.5, "", [], {}, "X" * 65],
    "feature_time": [None, True, "", "2024-05-01", "nope", "2024-05-01T10:05:00", [], {}, 1e300],
    "features": [None, True, "", [], [1.0], "abc", 1.0],
    "feature": [
        None,
        True,
        False,
        "1.0",
        "",
        [],
        {},
        [1.0],
        {"x": 1},
        math.nan,
        math.inf,
        1e39,
        10**400,
    ],
}


def _break(rng: random.Random, payload: dict[str, Any]) -> tuple[list[Any], bool]:
    """Break one field of ``payload`` in place; return its loc and whether the break is one
    of shape/type (which the bundle-agnostic pydantic model must reject too)."""
    rows = payload["rows"]
    i = rng.randrange(len(rows))
    kind = rng.choice(["drop", "extra", "value", "feature_value", "feature_drop", "feature_extra"])
    if kind == "drop":
        key = rng.choice(["symbol", "feature_time", "features"])
        del rows[i][key]
        return ["rows", i, key], True
    if kind == "extra":
        key = rng.choice(["x", "Symbol", "probabilities"])
        rows[i][key] = 1
        return ["rows", i, key], True
    if kind == "value":
        key = rng.choice(["symbol", "feature_time", "features"])
        rows[i][key] = rng.choice(BAD[key])
        return ["rows", i, key], True
    name = rng.choice(FEATURES)
    if kind == "feature_value":
        value = rng.choice(BAD["feature"])
        rows[i]["features"][name] = value
        # finite in float64 but not in the model's float32: only the bundle knows
        numeric = type(value) is int or (type(value) is float and math.isfinite(value))
        return ["rows", i, "features", name], not numeric
    if kind == "feature_drop":
        del rows[i]["features"][name]
        return ["rows", i, "features", name], False
    rows[i]["features"][name + "_x"] = 0.5
    return ["rows", i, "features", name + "_x"], False


def test_parse_when_one_field_broken_then_error_names_it_and_pydantic_agrees():
    from pydantic import ValidationError

    rng = random.Random(3)
    for case in range(2000):
        payload = _valid(rng, rng.randint(1, 3))
        loc, schema_level = _break(rng, payload)
        body = json.dumps(payload).encode()  # NaN/Infinity become the JS literals

        with pytest.raises(FeatureValidationError) as err:
            parse_body(body, SPEC)

        locs = [list(i.loc) for i in err.value.issues]
        assert loc in locs, (case, loc, locs)
        assert json.loads(render_validation_error(err.value))["detail"]
        if schema_level:
            with pytest.raises(ValidationError):
                PredictRequest.model_validate(json.loads(body))


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        (b"", []),
        (b"{rows:", []),
        (b"\xff\xfe{}", []),
        (b"[]", []),
        (b'{"rows": []}', ["rows"]),
        (b'{"rows": {}}', ["rows"]),
        (b'{"rows": [1]}', ["rows", 0]),
        (b'{"rows": [], "x": 1}', ["x"]),
    ],
)
def test_parse_when_body_unreadable_or_wrong_shape_then_error_at_loc(body: bytes, loc: list[Any]):
    with pytest.raises(FeatureValidationError) as err:
        parse_body(body, SPEC)

    assert loc in [list(i.loc) for i in err.value.issues]


def test_parse_when_too_many_rows_then_too_long():
    from serving.request import MAX_ROWS

    payload = _valid(random.Random(4), 1)
    payload["rows"] = payload["rows"] * (MAX_ROWS + 1)

    with pytest.raises(FeatureValidationError) as err:
        parse_payload(payload, SPEC)

    assert err.value.issues[0].kind == "too_long"


def test_parse_when_sequence_on_tabular_bundle_then_extra_but_null_is_absent():
    payload = _valid(random.Random(5), 1)
    payload["rows"][0]["sequence"] = None
    parse_payload(payload, SPEC)

    payload["rows"][0]["sequence"] = [[0.0, 0.0]] * SEQ_LEN
    with pytest.raises(FeatureValidationError) as err:
        parse_payload(payload, SPEC)
    assert [list(i.loc) for i in err.value.issues] == [["rows", 0, "sequence"]]


def test_decode_json_when_nan_literal_then_value_reaches_the_field_check():
    payload = decode_json(b'{"rows": [{"x": NaN}]}')

    assert math.isnan(payload["rows"][0]["x"])
