"""The typed JSON of the serving API (``POST /v1/predict``, alias ``POST /predict``), defined once.

These msgspec Structs are the only definition of the ``/v1`` request and response:

- the hot path decodes request bytes straight into them (``serving.request``), with the
  bundle's feature set plugged in as a Struct of its own, so a body is checked while it is
  decoded and a wrong field stops the decoder at once;
- the JSON Schemas served on ``GET /v1/schema`` come from ``msgspec.json.schema``;
- BentoML sees them through the pydantic hooks of ``ApiStruct``: the ``predict`` API of
  ``TrendService`` is declared with them, so BentoML's OpenAPI (``/docs.json``) and
  ``/schema.json`` list ``/v1/predict`` and ``bentoml.SyncHTTPClient`` can call it.

Every input error is answered with HTTP 400 and the body BentoML uses for validation
errors (``ErrorResponse``), at most ``MAX_REPORTED_ISSUES`` issues, each naming its field::

    {"error": "1 validation error for PredictRequest",
     "detail": [{"type": "missing_feature", "loc": ["rows", 0, "features", "rsi_14"],
                 "msg": "feature 'rsi_14' is required by the model and missing"}]}
"""

from __future__ import annotations

from datetime import datetime
from functools import cache
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

#: Most rows accepted in one request.
MAX_ROWS = 10_000
#: Symbol length bounds.
SYMBOL_MAX_LEN = 64
#: The largest finite float32: a feature value beyond it cannot reach the model.
FLOAT32_MAX = 3.4028234663852886e38
#: 9999-12-31T23:59:59Z in epoch seconds: the last instant a ``datetime`` can hold.
MAX_EPOCH_S = 253_402_300_799

FeatureValue = Annotated[
    float,
    Meta(
        ge=-FLOAT32_MAX,
        le=FLOAT32_MAX,
        description="A JSON number that fits the model's float32 (no strings, booleans, "
        "null, NaN or infinities).",
    ),
]
EpochSeconds = Annotated[float, Meta(ge=0, le=MAX_EPOCH_S)]
AwareDatetime = Annotated[datetime, Meta(tz=True)]
Symbol = Annotated[str, Meta(min_length=1, max_length=SYMBOL_MAX_LEN, examples=["EURUSD"])]
ClassName = Literal["short", "flat", "long"]
Position = Literal[-1, 0, 1]


class ApiStruct(msgspec.Struct, forbid_unknown_fields=True):
    """Base of the API's Structs: unknown fields are errors, and pydantic (hence BentoML)
    can use the Struct as a type: it validates with ``msgspec.convert`` and documents it
    with msgspec's JSON Schema, so nothing is declared a second time."""

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        from pydantic_core import core_schema

        def validate(value: Any) -> Any:
            if isinstance(value, cls):
                return value
            try:
                return msgspec.convert(value, cls)
            except msgspec.ValidationError as exc:
                raise ValueError(str(exc)) from None

        return core_schema.no_info_plain_validator_function(
            validate,
            serialization=core_schema.plain_serializer_function_ser_schema(msgspec.to_builtins),
        )

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict[str, Any]:
        return inline_schema(cls)


class FeatureRow(ApiStruct):
    """One symbol's feature vector at one time."""

    symbol: Symbol
    feature_time: Annotated[
        AwareDatetime | EpochSeconds,
        Meta(
            description="When the features became known (bar close): ISO-8601 / RFC 3339 "
            "with an offset (e.g. '2024-01-02T10:05:00Z') or epoch seconds. Returned in UTC.",
            examples=["2024-01-02T10:05:00Z"],
        ),
    ]
    features: Annotated[
        dict[str, FeatureValue],
        Meta(description="Exactly the bundle's features, by name.", examples=[{"ret_1": 0.0012}]),
    ]
    sequence: (
        Annotated[
            list[list[FeatureValue]],
            Meta(
                description="Only for bundles whose manifest has 'sequence' (and then "
                "required): SEQ_LEN steps, oldest first, of the manifest's channels."
            ),
        ]
        | None
    ) = None


class PredictRequest(ApiStruct):
    """The body of ``POST /v1/predict``."""

    rows: Annotated[list[FeatureRow], Meta(min_length=1, max_length=MAX_ROWS)]


class ClassProbabilities(ApiStruct):
    short: float
    flat: float
    long: float


class RegimeExplanation(ApiStruct):
    """The regime classifier's state for the row (its thresholds are in the manifest)."""

    state: Annotated[
        int,
        Meta(
            description="0 calm/ranging, 1 calm/trending, 2 volatile/ranging, 3 volatile/trending."
        ),
    ]
    probabilities: Annotated[
        list[float],
        Meta(description="Per state; one-hot, the classifier is two fitted thresholds."),
    ]


class MemberExplanation(ApiStruct):
    """One ensemble member's own answer and the weight it got for this row."""

    name: Annotated[str, Meta(examples=["xgb", "transformer"])]
    probabilities: Annotated[list[float], Meta(description="In the response's class order.")]
    weight: Annotated[
        float,
        Meta(
            description="Weight of this member in the row's regime state; the prediction's "
            "probabilities are the weighted sum of the members' probabilities."
        ),
    ]


class Explanation(ApiStruct):
    """Why the model answered what it did, from the same model run (no extra call)."""

    regime: Annotated[
        RegimeExplanation | None, Meta(description="null for a bundle without a regime classifier.")
    ] = None
    members: Annotated[
        list[MemberExplanation], Meta(description="Empty when the bundle cannot say.")
    ] = []


class Prediction(ApiStruct):
    symbol: str
    feature_time: datetime
    probabilities: ClassProbabilities
    decision: ClassName
    position: Position
    confidence: Annotated[float, Meta(description="Probability of the most probable class.")]
    explanation: Explanation


class PredictResponse(ApiStruct):
    """The body of a 200 from ``POST /v1/predict``."""

    model_name: Annotated[str, Meta(description="Registered MLflow model name.")]
    model_version: Annotated[
        str, Meta(description="MLflow model version that produced the predictions.")
    ]
    bundle_sha256: Annotated[str, Meta(description="sha256 of the ONNX bundle that was run.")]
    request_id: Annotated[
        str, Meta(description="X-Request-ID given, or one made up; in the shadow log.")
    ]
    predictions: list[Prediction]
    decision_policy: Annotated[
        dict[str, Any] | None,
        Meta(
            description="The bundle's decision policy (docs/execution-policy.md) without its "
            "fold statistics: the engine applies it with the spread it knows. null for a "
            "bundle without one (the min_confidence rule)."
        ),
    ] = None


class FeatureContribution(ApiStruct):
    feature: str
    value: Annotated[float, Meta(description="The feature's value in the request.")]
    contribution: Annotated[float, Meta(description="TreeSHAP value, margin units.")]


class RowExplanation(ApiStruct):
    """TreeSHAP of the XGBoost member for one row, for the class the ensemble predicts."""

    symbol: str
    feature_time: datetime
    member: Annotated[str, Meta(description="The member explained (its native booster).")]
    explained_class: Annotated[
        int,
        Meta(
            description="Index (in the response's class order) of the class explained: the "
            "ensemble's most probable class."
        ),
    ] = msgspec.field(name="class")
    class_name: ClassName
    base_value: Annotated[float, Meta(description="TreeSHAP expected value (bias), margin units.")]
    margin: Annotated[
        float,
        Meta(
            description="The member's raw score (log-odds before softmax) for the class; "
            "sum(contributions) + base_value == margin."
        ),
    ]
    member_probability: Annotated[float, Meta(description="The member's probability of the class.")]
    member_weight: Annotated[
        float | None, Meta(description="The member's weight for this row (null: unknown).")
    ]
    top: Annotated[
        list[FeatureContribution],
        Meta(description="The top_k largest |contribution|, largest first."),
    ]
    contributions: Annotated[
        dict[str, float], Meta(description="Every feature's contribution, by name.")
    ]


class ExplainResponse(ApiStruct):
    """The body of a 200 from ``POST /v1/explain``."""

    model_name: str
    model_version: str
    bundle_sha256: str
    request_id: str
    top_k: int
    attribution: Annotated[
        dict[str, str], Meta(description="How each member's part is attributed, by member.")
    ]
    explanations: list[RowExplanation]


class ErrorDetail(ApiStruct):
    """One reason a request was refused, located like the request's JSON."""

    type: str
    loc: list[str | int]
    msg: str


class ErrorResponse(ApiStruct):
    """The body of every 4xx (and the rare 5xx): what happened and, for a 400, where."""

    error: str
    detail: list[ErrorDetail] = []


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            return _inline(defs[ref.rsplit("/", 1)[1]], defs)
        return {k: _inline(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


@cache
def inline_schema(tp: Any) -> dict[str, Any]:
    """msgspec's JSON Schema of ``tp`` with every ``$ref`` resolved in place (the API's
    types are not recursive): the form pydantic and BentoML's OpenAPI can embed."""
    schema = msgspec.json.schema(tp)
    defs = schema.pop("$defs", {})
    out: dict[str, Any] = _inline(schema, defs)
    return out


def json_schemas() -> dict[str, Any]:
    """``GET /v1/schema``: the JSON Schemas of the request, the response and the errors."""
    return {
        "request": inline_schema(PredictRequest),
        "response": inline_schema(PredictResponse),
        "explain_response": inline_schema(ExplainResponse),
        "error": inline_schema(ErrorResponse),
    }
