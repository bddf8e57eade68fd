"""Feast feature services: one per model family and version (matches the MLflow model)."""

from feast import FeatureService
from feature_views import bar_sequence_fv, trend_fv, trend_v2_fv

trend_v1 = FeatureService(
    name="trend_v1",
    features=[trend_fv],
    description="Inputs of the tx_trend XGBoost model (13 tabular features).",
)

trend_v2 = FeatureService(
    name="trend_v2",
    features=[trend_v2_fv, bar_sequence_fv],
    description="All tabular features plus the 64-bar sequence: XGBoost + transformer + ensemble.",
)
