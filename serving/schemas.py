"""Typed JSON of the serving API (``POST /predict``) and its error shape.

Every input error is answered with HTTP 400 and BentoML's body for pydantic validation
errors::

    {"error": "1 validation error for PredictRequest",
     "detail": [{"type": "missing_feature", "loc": ["rows", 0, "features", "rsi_14"],
                 "msg": "feature 'rsi_14' is required by the model and missing"}]}

Shape and type errors come from these models; feature-set errors found against the loaded
bundle are raised as the same ``ValidationError`` by ``feature_validation_error``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from serving.preprocess import FeatureValidationError

#: Most rows accepted in one request.
MAX_ROWS = 10_000

ClassName = Literal["short", "flat", "long"]
Position = Literal[-1, 0, 1]
#: A feature value: a JSON number (int or float), finite. Strings, booleans, null, NaN and
#: infinities are rejected.
FeatureValue = Annotated[float, Field(strict=True, allow_inf_nan=False)]


class FeatureRow(BaseModel):
    """One symbol's feature vector at one time."""

    model_config = ConfigDict(extra="forbid")

    symbol: str = Field(min_length=1, max_length=64, examples=["EURUSD"])
    feature_time: AwareDatetime = Field(
        description="When the features became known (bar close), ISO-8601 with an offset "
        "(e.g. '2024-01-02T10:05:00Z') or epoch seconds. Returned in UTC.",
        examples=["2024-01-02T10:05:00Z"],
    )
    features: dict[str, FeatureValue] = Field(
        description="Exactly the bundle's features, by name.", examples=[{"ret_1": 0.0012}]
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


class PredictResponse(BaseModel):
    model_name: str = Field(description="Registered MLflow model name.")
    model_version: str = Field(description="MLflow model version that produced the predictions.")
    predictions: list[Prediction]


def feature_validation_error(exc: FeatureValidationError) -> ValidationError:
    """Re-raise-able pydantic ``ValidationError`` for ``exc``, so BentoML answers 400 with
    the same body as for schema errors, each issue's ``loc`` naming the field."""
    line_errors: list[InitErrorDetails] = [
        {
            "type": PydanticCustomError(issue.kind, "{message}", {"message": issue.message}),
            "loc": issue.loc,
            "input": None,
        }
        for issue in exc.issues
    ]
    return ValidationError.from_exception_data("PredictRequest", line_errors)
