"""The ``POST /v1/predict`` body, parsed and validated without pydantic on the hot path.

``parse_body`` turns raw request bytes into the model's inputs (a float32 ``[N, F]`` matrix
and, for bundles with a ``sequence`` input, a float32 ``[N, SEQ_LEN, C]`` tensor) or raises
``FeatureValidationError`` whose issues name each offending field with a ``loc`` in the
shape of the JSON (``("rows", 0, "features", "rsi_14")``). It accepts exactly what
``serving.schemas.PredictRequest`` describes, plus the bundle's feature set, which only
the loaded bundle knows. ``render_*`` build the response bodies.

JSON is decoded with msgspec; a body msgspec refuses is decoded again with the standard
library, which also reads the non-standard ``NaN``/``Infinity`` literals, so that such a
value is reported against its field instead of as unreadable JSON.

Nothing here imports BentoML or onnxruntime.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
import numpy as np

from serving.preprocess import (
    MAX_REPORTED_ISSUES,
    BundleSpec,
    Decision,
    FeatureIssue,
    FeatureValidationError,
    Loc,
    feature_name_issues,
)

#: Most rows accepted in one request (as ``serving.schemas.MAX_ROWS``).
MAX_ROWS = 10_000
#: Symbol length bounds (as ``serving.schemas.FeatureRow.symbol``).
SYMBOL_MAX_LEN = 64

_DECODER = msgspec.json.Decoder()
_ENCODER = msgspec.json.Encoder()
_NUMBER_TYPES = (float, int)  # exact types: bool is excluded because type(True) is bool
_TOP_KEYS = frozenset({"rows"})
_ROW_KEYS = frozenset({"symbol", "feature_time", "features"})
_ROW_KEYS_SEQ = _ROW_KEYS | {"sequence"}
_MISSING = object()


@dataclass(frozen=True)
class ParsedRequest:
    """A valid request: one entry per row, in request order."""

    symbols: list[str]
    feature_times: list[str]  # normalised to UTC, ISO-8601 with a ``Z``
    matrix: np.ndarray  # float32 [N, F] in the bundle's feature order
    sequence: np.ndarray | None  # float32 [N, SEQ_LEN, C] when the bundle has a sequence

    @property
    def n_rows(self) -> int:
        return len(self.symbols)


def decode_json(body: bytes) -> Any:
    """Decode a JSON body; raise ``FeatureValidationError`` (loc ``()``) when unreadable."""
    try:
        return _DECODER.decode(body)
    except (msgspec.DecodeError, ValueError):  # ValueError: e.g. invalid UTF-8
        pass
    try:
        return json.loads(body)  # also reads NaN / Infinity, reported against their field
    except (ValueError, RecursionError) as exc:
        raise FeatureValidationError(
            [FeatureIssue((), "json_invalid", f"body is not valid JSON: {exc}")]
        ) from None


def parse_body(body: bytes, spec: BundleSpec) -> ParsedRequest:
    """Decode and validate a ``/v1/predict`` body against ``spec``."""
    return parse_payload(decode_json(body), spec)


def parse_payload(payload: Any, spec: BundleSpec) -> ParsedRequest:
    """Validate a decoded ``/v1/predict`` payload against ``spec``.

    Raises:
        FeatureValidationError: every problem found (up to ``MAX_REPORTED_ISSUES``), each
            with the ``loc`` of its field.
    """
    issues: list[FeatureIssue] = []
    if type(payload) is not dict:
        _fail((), "dict_type", "request body must be a JSON object with 'rows'")
    for key in payload:
        if key not in _TOP_KEYS:
            issues.append(FeatureIssue((key,), "extra_forbidden", f"unknown field {key!r}"))
    rows = payload.get("rows", _MISSING)
    if rows is _MISSING:
        issues.append(FeatureIssue(("rows",), "missing", "field 'rows' is required"))
    elif type(rows) is not list:
        issues.append(FeatureIssue(("rows",), "list_type", "'rows' must be a list of rows"))
    elif not rows:
        issues.append(FeatureIssue(("rows",), "too_short", "at least one row is required"))
    elif len(rows) > MAX_ROWS:
        issues.append(FeatureIssue(("rows",), "too_long", f"at most {MAX_ROWS} rows per request"))
    if issues:
        raise FeatureValidationError(issues)

    n = len(rows)
    order = spec.features
    expected = frozenset(order)
    seq_spec = spec.sequence
    allowed = _ROW_KEYS_SEQ if seq_spec is not None else _ROW_KEYS
    matrix = np.zeros((n, len(order)), dtype=np.float64)
    sequence = (
        np.zeros((n, seq_spec.seq_len, seq_spec.n_channels), dtype=np.float64)
        if seq_spec is not None
        else None
    )
    symbols: list[str] = []
    times: list[str] = []

    for i, row in enumerate(rows):
        if len(issues) >= MAX_REPORTED_ISSUES:
            break
        if type(row) is not dict:
            issues.append(FeatureIssue(("rows", i), "dict_type", "a row must be a JSON object"))
            continue
        if row.keys() - allowed:
            for key in sorted(row.keys() - allowed, key=str):
                if key == "sequence" and row[key] is None:
                    continue  # an explicit null is an absent sequence
                hint = " (this bundle takes no sequence)" if key == "sequence" else ""
                issues.append(
                    FeatureIssue(
                        ("rows", i, key), "extra_forbidden", f"unknown field {key!r}{hint}"
                    )
                )
        symbols.append(_symbol(row.get("symbol", _MISSING), i, issues))
        times.append(_feature_time(row.get("feature_time", _MISSING), i, issues))
        features = row.get("features", _MISSING)
        if features is _MISSING:
            issues.append(
                FeatureIssue(("rows", i, "features"), "missing", "field 'features' is required")
            )
        elif type(features) is not dict:
            issues.append(
                FeatureIssue(("rows", i, "features"), "dict_type", "'features' must be an object")
            )
        else:
            _features(features, i, order, expected, matrix, issues)
        if seq_spec is not None and sequence is not None:
            _sequence(
                row.get("sequence", _MISSING),
                i,
                seq_spec.seq_len,
                seq_spec.n_channels,
                sequence,
                issues,
            )

    if issues:
        raise FeatureValidationError(issues[:MAX_REPORTED_ISSUES])
    matrix32 = _to_float32(matrix, lambda idx: ("rows", idx[0], "features", order[idx[1]]))
    seq32 = (
        _to_float32(sequence, lambda idx: ("rows", idx[0], "sequence", idx[1], idx[2]))
        if sequence is not None
        else None
    )
    return ParsedRequest(symbols, times, matrix32, seq32)


def _fail(loc: Loc, kind: str, message: str) -> Any:
    raise FeatureValidationError([FeatureIssue(loc, kind, message)])


def _symbol(value: Any, i: int, issues: list[FeatureIssue]) -> str:
    loc = ("rows", i, "symbol")
    if value is _MISSING:
        issues.append(FeatureIssue(loc, "missing", "field 'symbol' is required"))
    elif type(value) is not str:
        issues.append(FeatureIssue(loc, "string_type", "'symbol' must be a string"))
    elif not 1 <= len(value) <= SYMBOL_MAX_LEN:
        issues.append(
            FeatureIssue(loc, "string_length", f"'symbol' must have 1 to {SYMBOL_MAX_LEN} chars")
        )
    else:
        return value
    return ""


def format_utc(dt: datetime) -> str:
    """``2024-05-01T10:05:00Z`` (with ``.ffffff`` when there are microseconds)."""
    dt = dt.astimezone(UTC)
    text = dt.strftime("%Y-%m-%dT%H:%M:%S")
    if dt.microsecond:
        text += f".{dt.microsecond:06d}"
    return text + "Z"


def _feature_time(value: Any, i: int, issues: list[FeatureIssue]) -> str:
    loc = ("rows", i, "feature_time")
    kind = type(value)
    if value is _MISSING:
        issues.append(FeatureIssue(loc, "missing", "field 'feature_time' is required"))
        return ""
    if kind is str:
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            issues.append(FeatureIssue(loc, "datetime_parsing", "'feature_time' must be ISO-8601"))
            return ""
        if dt.tzinfo is None or dt.utcoffset() is None:
            issues.append(
                FeatureIssue(loc, "timezone_aware", "'feature_time' needs a UTC offset (e.g. 'Z')")
            )
            return ""
        return format_utc(dt)
    if kind is int or kind is float:
        try:
            return format_utc(datetime.fromtimestamp(value, UTC))
        except (OverflowError, OSError, ValueError):
            issues.append(
                FeatureIssue(loc, "datetime_range", "'feature_time' epoch seconds out of range")
            )
            return ""
    issues.append(
        FeatureIssue(loc, "datetime_type", "'feature_time' must be an ISO-8601 string or epoch")
    )
    return ""


def _features(
    features: dict[Any, Any],
    i: int,
    order: Sequence[str],
    expected: frozenset[str],
    matrix: np.ndarray,
    issues: list[FeatureIssue],
) -> None:
    if features.keys() != expected:
        issues.extend(feature_name_issues(i, features, order, expected))
        return
    values = [features[name] for name in order]
    if all(type(v) in _NUMBER_TYPES for v in values):
        try:
            row = np.array(values, dtype=np.float64)
        except OverflowError:  # an int beyond float64: located below
            pass
        else:
            if np.isfinite(row).all():
                matrix[i] = row
                return
    for name, value in zip(order, values, strict=True):
        issue = _number_issue(value, f"feature {name!r}")
        if issue is not None:
            issues.append(FeatureIssue(("rows", i, "features", name), *issue))


def _number_issue(value: Any, what: str) -> tuple[str, str] | None:
    if type(value) not in _NUMBER_TYPES:
        return ("not_a_number", f"{what} must be a JSON number, got {_json_type(value)}")
    try:
        ok = math.isfinite(value)
    except OverflowError:
        ok = False
    if not ok:
        return ("non_finite", f"{what} must be finite, got {value!r}"[:200])
    return None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _sequence(
    value: Any,
    i: int,
    seq_len: int,
    n_channels: int,
    out: np.ndarray,
    issues: list[FeatureIssue],
) -> None:
    loc: Loc = ("rows", i, "sequence")
    if value is _MISSING:
        issues.append(FeatureIssue(loc, "missing", "field 'sequence' is required by this bundle"))
        return
    if type(value) is not list or len(value) != seq_len:
        got = f"{len(value)} steps" if type(value) is list else _json_type(value)
        issues.append(
            FeatureIssue(
                loc,
                "sequence_shape",
                f"'sequence' must be a list of {seq_len} steps of {n_channels} numbers, got {got}",
            )
        )
        return
    fast = True
    for step in value:
        if type(step) is not list or len(step) != n_channels:
            fast = False
            break
        for v in step:
            if type(v) not in _NUMBER_TYPES:
                fast = False
                break
        if not fast:
            break
    if fast:
        try:
            arr = np.array(value, dtype=np.float64)
        except OverflowError:
            fast = False
        else:
            if np.isfinite(arr).all():
                out[i] = arr
                return
    start = len(issues)
    for t, step in enumerate(value):
        if len(issues) - start >= MAX_REPORTED_ISSUES:
            return
        if type(step) is not list or len(step) != n_channels:
            got = f"{len(step)} values" if type(step) is list else _json_type(step)
            issues.append(
                FeatureIssue(
                    (*loc, t),
                    "sequence_shape",
                    f"sequence step {t} must be a list of {n_channels} numbers, got {got}",
                )
            )
            continue
        for c, v in enumerate(step):
            issue = _number_issue(v, f"sequence[{t}][{c}]")
            if issue is not None:
                issues.append(FeatureIssue((*loc, t, c), *issue))


def _to_float32(values: np.ndarray, loc_of: Any) -> np.ndarray:
    with np.errstate(over="ignore"):
        out = values.astype(np.float32)
    bad = ~np.isfinite(out)
    if bad.any():
        issues = [
            FeatureIssue(
                loc_of(tuple(int(k) for k in idx)),
                "non_finite",
                f"value {values[tuple(idx)]!r} overflows float32",
            )
            for idx in np.argwhere(bad)[:MAX_REPORTED_ISSUES]
        ]
        raise FeatureValidationError(issues)
    return out


# --- responses ----------------------------------------------------------------------------


def render_predictions(
    parsed: ParsedRequest,
    probabilities: np.ndarray,
    decisions: Sequence[Decision],
    classes: Sequence[str],
    *,
    model_name: str,
    model_version: str,
    bundle_sha256: str,
    request_id: str,
) -> bytes:
    """The ``/v1/predict`` response body (contract 3), JSON bytes."""
    names = tuple(classes)
    predictions = [
        {
            "symbol": symbol,
            "feature_time": ft,
            "probabilities": dict(zip(names, probs, strict=True)),
            "decision": d.label,
            "position": d.position,
            "confidence": d.confidence,
        }
        for symbol, ft, probs, d in zip(
            parsed.symbols, parsed.feature_times, probabilities.tolist(), decisions, strict=True
        )
    ]
    return _ENCODER.encode(
        {
            "model_name": model_name,
            "model_version": model_version,
            "bundle_sha256": bundle_sha256,
            "request_id": request_id,
            "predictions": predictions,
        }
    )


def render_validation_error(exc: FeatureValidationError) -> bytes:
    """400 body, the shape BentoML uses for pydantic errors:
    ``{"error": ..., "detail": [{"type", "loc", "msg"}]}``."""
    n = len(exc.issues)
    return _ENCODER.encode(
        {
            "error": f"{n} validation error{'s' if n != 1 else ''} for PredictRequest",
            "detail": [{"type": i.kind, "loc": list(i.loc), "msg": i.message} for i in exc.issues],
        }
    )


def render_json(payload: Any) -> bytes:
    """Any JSON-able payload as bytes (msgspec)."""
    return _ENCODER.encode(payload)
