"""Feast feature views. Feature names and docs come from the one transform module."""

from datetime import timedelta

from data_sources import trend_features_source
from entities import symbol
from feast import FeatureView, Field
from feast.types import Float64

from feature_repo.pipeline.transforms import FEATURES

trend_fv = FeatureView(
    name="trend_fv",
    entities=[symbol],
    ttl=timedelta(days=4),
    schema=[Field(name=f.name, dtype=Float64, description=f.formula) for f in FEATURES],
    source=trend_features_source,
    online=True,
    description="Technical features of the configured timeframe, known at each bar's close.",
)
