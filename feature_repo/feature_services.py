"""Feast feature services: one per model family and version (matches the MLflow model)."""

from feast import FeatureService
from feature_views import trend_fv

trend_v1 = FeatureService(
    name="trend_v1",
    features=[trend_fv],
    description="Inputs of the tx_trend XGBoost model.",
)
