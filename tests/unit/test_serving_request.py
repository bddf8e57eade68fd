"""The /v1/predict decoder (serving.request) against the API's one schema (serving.schemas).

Property-style: thousands of seeded random valid requests and single-field breakages. Every
valid request parses to the exact matrix, and the bundle-agnostic ``PredictRequest`` Struct
accepts it; every breakage is a ``FeatureValidationError`` naming the broken field, and
(for shape and type errors, which do not depend on the bundle) ``PredictRequest`` refuses
it too. Then the bounds: every field error in one answer, capped issue lists, clipped
names, deep nesting and the row cap.
"""

from __future__ import annotations

import json
import math
import random
from typing import Any

import msgspec
import numpy as np
import pytest

from serving.preprocess import MAX_REPORTED_ISSUES, FeatureValidationError, bundle_spec
from serving.request import MAX_NAME_CHARS, parse_body, render_validation_error
from serving.schemas import MAX_ROWS, PredictRequest


def parse_payload(payload: Any, spec: Any) -> Any:
    return parse_body(json.dumps(payload).encode(), spec)


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


def test_parse_when_many_random_valid_requests_then_exact_matrix_and_schema_agrees():
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
        assert all(t.utcoffset() is not None and not t.utcoffset() for t in parsed.feature_times)
        msgspec.convert(payload, PredictRequest)  # the typed API accepts it too


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
    of shape/type (which the bundle-agnostic ``PredictRequest`` must refuse too)."""
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


def test_parse_when_one_field_broken_then_error_names_it_and_schema_agrees():
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
            with pytest.raises(msgspec.ValidationError):
                msgspec.convert(json.loads(body), PredictRequest)


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


def test_parse_when_nan_literal_then_reported_at_its_field():
    body = b'{"rows": [{"symbol": "E", "feature_time": 1, "features": {"ret_1": NaN}}]}'

    with pytest.raises(FeatureValidationError) as err:
        parse_body(body, SPEC)

    kinds = {tuple(i.loc): i.kind for i in err.value.issues}
    assert kinds[("rows", 0, "features", "ret_1")] == "non_finite"


def test_parse_when_type_error_and_missing_fields_then_all_reported_at_once():
    body = json.dumps({"rows": [{"symbol": 7, "features": {"ret_1": "x", "ret_5": 1}}]})

    with pytest.raises(FeatureValidationError) as err:
        parse_body(body.encode(), SPEC)

    got = {tuple(i.loc): i.kind for i in err.value.issues}
    assert got == {
        ("rows", 0, "symbol"): "wrong_type",
        ("rows", 0, "feature_time"): "missing",
        ("rows", 0, "features", "ret_1"): "not_a_number",
        ("rows", 0, "features", "vol_20"): "missing_feature",
        ("rows", 0, "features", "rsi_14"): "missing_feature",
        ("rows", 0, "features", "spread"): "missing_feature",
    }


@pytest.mark.parametrize("n_keys", [5_000, 300_000])
def test_parse_when_many_unknown_keys_then_issues_capped_and_body_small(n_keys: int):
    row = {"symbol": "E", "feature_time": 1, "features": {f"k{i}": 0 for i in range(n_keys)}}

    with pytest.raises(FeatureValidationError) as err:
        parse_body(json.dumps({"rows": [row]}).encode(), SPEC)

    assert 1 <= len(err.value.issues) <= MAX_REPORTED_ISSUES
    assert len(render_validation_error(err.value)) < 8_000


@pytest.mark.parametrize("size", [10_000, 3 * 1024 * 1024])
def test_parse_when_huge_unknown_name_then_echo_clipped(size: int):
    name = "n" * size
    row = {"symbol": "E", "feature_time": 1, "features": {name: 0.0}}

    with pytest.raises(FeatureValidationError) as err:
        parse_body(json.dumps({"rows": [row]}).encode(), SPEC)

    rendered = render_validation_error(err.value)
    assert len(rendered) < 8_000
    assert any(
        len(str(i.loc[-1])) <= MAX_NAME_CHARS and i.kind == "unexpected_feature"
        for i in err.value.issues
    )


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"rows": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}",
        b'{"rows": [{"features": ' + b'{"a":' * 50_000 + b"1" + b"}" * 50_000 + b"}]}",
        b'{"x": ' + b"[" * 2_000 + b"]" * 2_000 + b"}",
    ],
    ids=["top_array", "in_rows", "in_features", "unknown_field"],
)
def test_parse_when_deeply_nested_then_validation_error_not_recursion_error(body: bytes):
    with pytest.raises(FeatureValidationError) as err:
        parse_body(body, SPEC)

    assert err.value.issues


def test_parse_when_rows_past_the_cap_then_decoder_stops_at_the_first_extra_row():
    payload = _valid(random.Random(6), 1)
    body = json.dumps({"rows": payload["rows"] * (MAX_ROWS + 5_000)}).encode()
    assert len(body) > 1024 * 1024  # the decoder's own error, not the walker's

    with pytest.raises(FeatureValidationError) as err:
        parse_body(body, SPEC)

    assert [(i.loc, i.kind) for i in err.value.issues] == [(("rows",), "too_long")]


def test_parse_when_random_bytes_changed_then_only_validation_errors():
    """Property-style: 5,000 random byte edits of a valid body (invalid UTF-8 in keys and
    values included) parse or raise ``FeatureValidationError``, never anything else."""
    rng = random.Random(7)
    valid = json.dumps(_valid(rng, 2)).encode()
    refused = 0
    for _ in range(5_000):
        cut = bytearray(valid)
        for _ in range(rng.randrange(1, 4)):
            cut[rng.randrange(len(cut))] = rng.randrange(256)
        try:
            parse_body(bytes(cut), SPEC)
        except FeatureValidationError as exc:
            refused += 1
            assert exc.issues and len(render_validation_error(exc)) < 8_000
    assert refused > 4_000
