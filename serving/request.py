"""The ``POST /v1/predict`` body: decoded into the API's Structs, checked while it is decoded.

``codec_for(spec)`` builds, once per bundle, a decoder of ``serving.schemas.PredictRequest``
in which ``features`` is a Struct of exactly the bundle's feature names (and ``sequence``
the bundle's shape, or null). So one msgspec pass over the bytes checks every type, name,
range and length, and stops at the first wrong field: a row of unknown names, a nested
array where a number belongs or the 10,001st row ends the decode without building the rest
of the body. ``RequestCodec.parse`` returns the model's inputs (a float32 ``[N, F]`` matrix
and, for sequence bundles, a float32 ``[N, SEQ_LEN, C]`` tensor).

A body the decoder refuses is explained in full: when it is at most ``COLLECT_MAX_BYTES``
it is decoded without a type and walked against the same Structs (``_walk``), so that every
wrong field is reported at once (a type error *and* the missing fields), up to
``MAX_REPORTED_ISSUES``; a larger body gets the decoder's first error only. Names echoed
back are cut to ``MAX_NAME_CHARS``, messages to ``MAX_MESSAGE_CHARS``: an error body stays
a few KiB whatever the request. The walker also reads the non-standard ``NaN`` /
``Infinity`` literals, so such a value is reported against its field.

Nothing here imports BentoML or onnxruntime.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Annotated, Any, Union, get_args, get_origin

import msgspec
import numpy as np

from serving.preprocess import (
    MAX_REPORTED_ISSUES,
    BundleSpec,
    Decision,
    FeatureIssue,
    FeatureValidationError,
    Loc,
)
from serving.schemas import (
    MAX_ROWS,
    ApiStruct,
    ClassProbabilities,
    ErrorDetail,
    ErrorResponse,
    Explanation,
    FeatureRow,
    FeatureValue,
    Prediction,
    PredictRequest,
    PredictResponse,
)

#: A refused body up to this size is decoded again to report every issue; above, the first.
COLLECT_MAX_BYTES = 1024 * 1024
#: Longest name (a JSON key) echoed back in an error, in characters.
MAX_NAME_CHARS = 64
#: Longest error message, in characters.
MAX_MESSAGE_CHARS = 240
#: No body is ever read past this size, whatever the bundle.
HARD_MAX_BODY_BYTES = 64 * 1024 * 1024

_ENCODER = msgspec.json.Encoder()
_NO_EXPLANATION = Explanation(regime=None, members=[])
_UNTYPED = msgspec.json.Decoder()
_PATH = re.compile(r"\.([^.\[]+)|\[(\d+)\]|\[\.\.\.\]")


@dataclass(frozen=True)
class ParsedRequest:
    """A valid request: one entry per row, in request order."""

    symbols: list[str]
    feature_times: list[datetime]  # UTC
    matrix: np.ndarray  # float32 [N, F] in the bundle's feature order
    sequence: np.ndarray | None  # float32 [N, SEQ_LEN, C] when the bundle has a sequence

    @property
    def n_rows(self) -> int:
        return len(self.symbols)


class BundleFeatures(ApiStruct):
    """Base of the Struct ``codec_for`` makes of a bundle's feature names."""


class _RowBudget(threading.local):
    left: int = MAX_ROWS


_BUDGET = _RowBudget()


def _count_row(self: Any) -> None:
    """``__post_init__`` of the bundle's row Struct: msgspec calls it as each row is
    decoded, so the row cap ends the decode instead of waiting for the whole list."""
    budget = _BUDGET
    budget.left -= 1
    if budget.left < 0:
        raise ValueError(f"at most {MAX_ROWS} rows per request")


class RequestCodec:
    """The ``/v1/predict`` decoder of one bundle; build it with ``codec_for``."""

    def __init__(self, spec: BundleSpec) -> None:
        self.spec = spec
        names = [f"f{j}" for j in range(spec.n_features)]
        self.features_type = msgspec.defstruct(
            "BundleFeatures",
            [(n, FeatureValue) for n in names],
            bases=(BundleFeatures,),
            rename=dict(zip(names, spec.features, strict=True)),
        )
        seq = spec.sequence
        if seq is None:
            seq_field: tuple[Any, ...] = ("sequence", None, None)
        else:
            step = Annotated[
                list[FeatureValue],
                msgspec.Meta(min_length=seq.n_channels, max_length=seq.n_channels),
            ]
            seq_field = (
                "sequence",
                Annotated[list[step], msgspec.Meta(min_length=seq.seq_len, max_length=seq.seq_len)],  # type: ignore[valid-type]
            )
        self.row_type = msgspec.defstruct(
            "BundleFeatureRow",
            [("features", self.features_type), seq_field],
            bases=(FeatureRow,),
            namespace={"__post_init__": _count_row},
        )
        self.request_type = msgspec.defstruct(
            "BundlePredictRequest",
            [
                (
                    "rows",
                    Annotated[
                        list[self.row_type],  # type: ignore[name-defined]
                        msgspec.Meta(min_length=1, max_length=MAX_ROWS),
                    ],
                )
            ],
            bases=(PredictRequest,),
        )
        self._decoder = msgspec.json.Decoder(self.request_type)
        self.max_body_bytes = max_body_bytes(spec)

    def parse(self, body: bytes | bytearray | memoryview) -> ParsedRequest:
        """Decode and check ``body``.

        Raises:
            FeatureValidationError: every problem found (see the module docstring).
        """
        _BUDGET.left = MAX_ROWS
        try:
            request = self._decoder.decode(body)
        except (msgspec.DecodeError, ValueError) as exc:  # ValueError: e.g. invalid UTF-8
            raise self.refusal(body, exc) from None
        except RecursionError:
            raise FeatureValidationError([_too_deep()]) from None
        rows: list[Any] = request.rows  # type: ignore[attr-defined]
        astuple = msgspec.structs.astuple
        matrix = np.array([astuple(r.features) for r in rows], dtype=np.float32)
        sequence = (
            np.array([r.sequence for r in rows], dtype=np.float32)
            if self.spec.sequence is not None
            else None
        )
        times = [
            t.astimezone(UTC) if type(t) is datetime else datetime.fromtimestamp(t, UTC)
            for t in (r.feature_time for r in rows)
        ]
        return ParsedRequest([r.symbol for r in rows], times, matrix, sequence)

    def refusal(self, body: Any, first: Exception) -> FeatureValidationError:
        """The error for a body the decoder refused with ``first``."""
        if len(body) > COLLECT_MAX_BYTES:
            return FeatureValidationError([_from_msgspec(first)])
        try:
            payload = _UNTYPED.decode(body)
        except (msgspec.DecodeError, ValueError):
            try:
                payload = json.loads(body)  # reads NaN / Infinity, reported at their field
            except (ValueError, RecursionError) as exc:
                return FeatureValidationError(
                    [FeatureIssue((), "json_invalid", _clip(f"body is not valid JSON: {exc}"))]
                )
        except RecursionError:
            return FeatureValidationError([_too_deep()])
        issues: list[FeatureIssue] = []
        _BUDGET.left = 1 << 62  # the walker converts rows one by one: no cap there
        try:
            _walk(payload, self.request_type, (), issues)
        finally:
            _BUDGET.left = MAX_ROWS
        if not issues:  # the walker and the decoder always agree; never answer 400 empty
            issues.append(_from_msgspec(first))
        return FeatureValidationError(
            issues[:MAX_REPORTED_ISSUES], truncated=len(issues) > MAX_REPORTED_ISSUES
        )


@lru_cache(maxsize=16)
def codec_for(spec: BundleSpec) -> RequestCodec:
    """The decoder of ``spec``'s requests (built once per bundle)."""
    return RequestCodec(spec)


def max_body_bytes(spec: BundleSpec) -> int:
    """The largest ``/v1/predict`` body ``spec`` can need: ``MAX_ROWS`` rows of its
    features (and sequence) written out with 40 bytes a number, capped at
    ``HARD_MAX_BODY_BYTES``. A larger body is refused (413) before it is read."""
    per_row = 512 + sum(len(name.encode()) + 40 for name in spec.features)
    if spec.sequence is not None:
        per_row += spec.sequence.seq_len * (spec.sequence.n_channels * 40 + 4)
    return min(HARD_MAX_BODY_BYTES, 4096 + MAX_ROWS * per_row)


def format_utc(dt: datetime) -> str:
    """``2024-05-01T10:05:00Z`` (with ``.ffffff`` when there are microseconds)."""
    dt = dt.astimezone(UTC)
    text = dt.strftime("%Y-%m-%dT%H:%M:%S")
    if dt.microsecond:
        text += f".{dt.microsecond:06d}"
    return text + "Z"


def parse_body(body: bytes | bytearray | memoryview, spec: BundleSpec) -> ParsedRequest:
    """Decode and validate a ``/v1/predict`` body against ``spec``."""
    return codec_for(spec).parse(body)


# --- the walker: every issue of a refused body ---------------------------------------------


def _walk(value: Any, tp: Any, loc: Loc, issues: list[FeatureIssue]) -> None:
    """Append the issues of ``value`` against type ``tp`` (one of the API's annotations).

    A value that converts is fine as a whole; otherwise Structs, lists and dicts are
    opened to locate each wrong member, and anything else is one issue at ``loc``. The
    recursion follows the schema's depth, never the data's."""
    if len(issues) > MAX_REPORTED_ISSUES:
        return
    try:
        msgspec.convert(value, tp)
        return
    except msgspec.ValidationError as exc:
        error = exc
    base, metas = _unwrap(tp)
    if isinstance(base, type) and issubclass(base, msgspec.Struct):
        if type(value) is dict:
            _walk_struct(value, base, loc, issues)
        else:
            issues.append(
                FeatureIssue(loc, "object_type", f"expected an object, got {_json_type(value)}")
            )
        return
    origin = get_origin(base)
    if origin is list and type(value) is list:
        lo = max((m.min_length for m in metas if m.min_length is not None), default=0)
        hi = min((m.max_length for m in metas if m.max_length is not None), default=None)
        if hi is not None and len(value) > hi:
            issues.append(FeatureIssue(loc, "too_long", f"at most {hi} items, got {len(value)}"))
            return
        if len(value) < lo:
            issues.append(FeatureIssue(loc, "too_short", f"at least {lo} items, got {len(value)}"))
            return
        (item_type,) = get_args(base)
        for i, item in enumerate(value):
            if len(issues) > MAX_REPORTED_ISSUES:
                return
            _walk(item, item_type, (*loc, i), issues)
        return
    if origin is dict and type(value) is dict:
        value_type = get_args(base)[1]
        for key, item in value.items():
            if len(issues) > MAX_REPORTED_ISSUES:
                return
            _walk(item, value_type, (*loc, _clip_name(key)), issues)
        return
    issues.append(_leaf_issue(loc, tp, value, error))


def _walk_struct(
    value: dict[str, Any], st: type[msgspec.Struct], loc: Loc, issues: list[FeatureIssue]
) -> None:
    features = issubclass(st, BundleFeatures)
    fields = msgspec.structs.fields(st)
    for f in fields:
        if len(issues) > MAX_REPORTED_ISSUES:
            return
        name = f.encode_name
        if name in value:
            _walk(value[name], f.type, (*loc, name), issues)
        elif f.required:
            shown = _clip_name(name)
            issues.append(
                FeatureIssue(
                    (*loc, shown),
                    "missing_feature",
                    f"feature {shown!r} is required by the model and missing",
                )
                if features
                else FeatureIssue((*loc, shown), "missing", f"field {shown!r} is required")
            )
    known = {f.encode_name for f in fields}
    for key in value:
        if len(issues) > MAX_REPORTED_ISSUES:
            return
        if key not in known:
            shown = _clip_name(key)
            issues.append(
                FeatureIssue(
                    (*loc, shown),
                    "unexpected_feature",
                    f"feature {shown!r} is not a feature of the model",
                )
                if features
                else FeatureIssue((*loc, shown), "extra_forbidden", f"unknown field {shown!r}")
            )


def _unwrap(tp: Any) -> tuple[Any, list[msgspec.Meta]]:
    metas: list[msgspec.Meta] = []
    while get_origin(tp) is Annotated:
        tp, *extra = get_args(tp)
        metas.extend(m for m in extra if isinstance(m, msgspec.Meta))
    if get_origin(tp) is Union:  # an optional container: open its non-null member
        members = [a for a in get_args(tp) if a is not type(None)]
        if len(members) == 1:
            return _unwrap(members[0])
    return tp, metas


def _leaf_issue(loc: Loc, tp: Any, value: Any, error: Exception) -> FeatureIssue:
    what = f"feature {loc[-1]!r}" if len(loc) == 4 and loc[2] == "features" else _field(loc)
    if tp is FeatureValue:
        if type(value) not in (int, float):
            return FeatureIssue(
                loc, "not_a_number", f"{what} must be a JSON number, got {_json_type(value)}"
            )
        return FeatureIssue(
            loc, "non_finite", _clip(f"{what} must be finite and fit float32, got {value!r}")
        )
    message = _strip_path(str(error))
    kind = "wrong_type" if message.startswith("Expected `") and "got `" in message else "invalid"
    return FeatureIssue(loc, kind, _clip(f"{what}: {message}"))


def _field(loc: Loc) -> str:
    return repr(loc[-1]) if loc and isinstance(loc[-1], str) else ".".join(map(str, loc)) or "body"


def _from_msgspec(exc: Exception) -> FeatureIssue:
    """The decoder's first error as an issue, its ``$.rows[0].symbol`` path as the loc."""
    text = str(exc)
    message, _, path = text.rpartition(" - at `")
    if not message:
        message, path = text, ""
    loc: list[str | int] = []
    for m in _PATH.finditer(path.rstrip("`").removeprefix("$")):
        name, index = m.group(1), m.group(2)
        loc.append(_clip_name(name) if name is not None else int(index) if index else "…")
    if "rows per request" in message:
        return FeatureIssue(("rows",), "too_long", message)
    if message.startswith(("JSON is malformed", "Input data was truncated")):
        return FeatureIssue((), "json_invalid", _clip(f"body is not valid JSON: {message}"))
    in_features = bool(loc) and loc[-1] == "features"
    for prefix, kind, feature_kind in (
        ("Object contains unknown field `", "extra_forbidden", "unexpected_feature"),
        ("Object missing required field `", "missing", "missing_feature"),
    ):
        if message.startswith(prefix):
            name = _clip_name(message[len(prefix) :].rstrip("`"))
            return FeatureIssue(
                (*loc, name),
                feature_kind if in_features else kind,
                f"{'feature' if in_features else 'field'} {name!r}: {message[: len(prefix) - 2]}",
            )
    kind = "wrong_type" if message.startswith("Expected `") else "invalid"
    return FeatureIssue(tuple(loc), kind, _clip(message))


def _too_deep() -> FeatureIssue:
    return FeatureIssue((), "json_too_deep", "body is nested too deeply for this API")


def _strip_path(message: str) -> str:
    return message.rpartition(" - at `")[0] or message


def _clip(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _clip_name(name: Any) -> str:
    return _clip(str(name), MAX_NAME_CHARS)


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
    return "number" if isinstance(value, int | float) else type(value).__name__


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
    explanations: Sequence[Explanation] | None = None,
    decision_policy: dict[str, Any] | None = None,
) -> bytes:
    """The ``/v1/predict`` response body (``PredictResponse``), JSON bytes."""
    return _ENCODER.encode(
        predict_response(
            parsed,
            probabilities,
            decisions,
            classes,
            model_name=model_name,
            model_version=model_version,
            bundle_sha256=bundle_sha256,
            request_id=request_id,
            explanations=explanations,
            decision_policy=decision_policy,
        )
    )


def predict_response(
    parsed: ParsedRequest,
    probabilities: np.ndarray,
    decisions: Sequence[Decision],
    classes: Sequence[str],
    *,
    model_name: str,
    model_version: str,
    bundle_sha256: str,
    request_id: str,
    explanations: Sequence[Explanation] | None = None,
    decision_policy: dict[str, Any] | None = None,
) -> PredictResponse:
    """The ``PredictResponse`` of scored rows (``explanations``: one per row, see
    ``serving.explain.prediction_explanations``; default empty)."""
    names = tuple(classes)
    if explanations is None:
        explanations = [_NO_EXPLANATION] * len(parsed.symbols)
    predictions = [
        Prediction(
            symbol=symbol,
            feature_time=ft,
            probabilities=ClassProbabilities(**dict(zip(names, probs, strict=True))),
            decision=d.label,  # type: ignore[arg-type]
            position=d.position,  # type: ignore[arg-type]
            confidence=d.confidence,
            explanation=ex,
        )
        for symbol, ft, probs, d, ex in zip(
            parsed.symbols,
            parsed.feature_times,
            probabilities.tolist(),
            decisions,
            explanations,
            strict=True,
        )
    ]
    return PredictResponse(
        model_name=model_name,
        model_version=model_version,
        bundle_sha256=bundle_sha256,
        request_id=request_id,
        predictions=predictions,
        decision_policy=decision_policy,
    )


def validation_error(exc: FeatureValidationError) -> ErrorResponse:
    """The 400 ``ErrorResponse`` of ``exc`` (BentoML's shape for validation errors)."""
    n = len(exc.issues)
    count = f"more than {n}" if exc.truncated else str(n)
    return ErrorResponse(
        error=f"{count} validation error{'s' if n != 1 else ''} for PredictRequest"
        + (f" (the first {n} listed)" if exc.truncated else ""),
        detail=[ErrorDetail(type=i.kind, loc=list(i.loc), msg=i.message) for i in exc.issues],
    )


def render_validation_error(exc: FeatureValidationError) -> bytes:
    """The 400 body of ``exc``, JSON bytes."""
    return _ENCODER.encode(validation_error(exc))


def render_json(payload: Any) -> bytes:
    """Any JSON-able payload (Structs included) as bytes (msgspec)."""
    return _ENCODER.encode(payload)
