"""Typed JSON of the serving API (``POST /v1/predict``, alias ``POST /predict``).

These pydantic models are the API's documentation (``GET /v1/schema`` serves their JSON
Schemas) and the reference the hot path is tested against: ``serving.request`` accepts
exactly what ``PredictRequest`` accepts (plus the check of the bundle's feature set), without
running pydantic per request. Every input error is answered with HTTP 400 and the body
BentoML uses for pydantic validation errors::

    {"error": "1 validation error for PredictRequest",
     "detail": [{"type": "missing_feature", "loc": ["rows", 0, "features", "rsi_14"],
                 "msg": "feature 'rsi_14' is required by the model and missing"}]}
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from serving.request import MAX_ROWS, SYMBOL_MAX_LEN

ClassName = Literal["short", "flat", "long"]
Position = Literal[-1, 0, 1]
#: A feature value: a JSON number (int or float), finite. Strings, booleans, null, NaN and
#: infinities are rejected.
FeatureValue = Annotated[float, Field(strict=True, allow_inf_nan=False)]


class FeatureRow(BaseModel):
    """One symbol's feature vector at one time."""

    model_config = ConfigDict(extra="forbid")

    symbol: str = Field(min_length=1, max_length=SYMBOL_MAX_LEN, examples=["EURUSD"])
    feature_time: AwareDatetime = Field(
        description="When the features became known (bar close), ISO-8601 with an offset "
        "(e.g. '2024-01-02T10:05:00Z') or epoch seconds. Returned in UTC.",
        examples=["2024-01-02T10:05:00Z"],
    )
    features: dict[str, FeatureValue] = Field(
        description="Exactly the bundle's features, by name.", examples=[{"ret_1": 0.0012}]
    )
    sequence: list[list[FeatureValue]] | None = Field(
        default=None,
        description="Only for bundles whose manifest has 'sequence' (and then required): "
        "SEQ_LEN steps, oldest first, of the manifest's channels.",
    )

    @field_validator("feature_time")
    @classmethod
    def _to_utc(cls, v: datetime) -> datetime:
        return v.astimezone(UTC)


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rows: list[FeatureRow] = Field(min_length=1, max_length=MAX_ROWS)


class ClassProbabilities(BaseModel):
    short: float
    flat: float
    long: float


class Prediction(BaseModel):
    symbol: str
    feature_time: datetime
    probabilities: ClassProbabilities
    decision: ClassName
    position: Position
    confidence: float = Field(description="Probability of the most probable class.")


class PredictResponse(BaseModel):
    model_name: str = Field(description="Registered MLflow model name.")
    model_version: str = Field(description="MLflow model version that produced the predictions.")
    bundle_sha256: str = Field(description="sha256 of the ONNX bundle that was run.")
    request_id: str = Field(description="X-Request-ID given, or one made up; in the shadow log.")
    predictions: list[Prediction]
