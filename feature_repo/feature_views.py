"""Feast feature views. Feature names and docs come from the one transform module."""

from datetime import timedelta

from data_sources import bar_sequence_source, trend_features_source, trend_v2_source
from entities import symbol
from feast import FeatureView, Field
from feast.types import Array, Float32, Float64

from feature_repo.pipeline.transforms import (
    FEATURES,
    SEQ_CHANNELS,
    SEQ_FIELD,
    SEQ_LEN,
    SPECS,
    TREND_V1_FEATURES,
)

# rows stay servable over a weekend
TTL = timedelta(days=4)

trend_fv = FeatureView(
    name="trend_fv",
    entities=[symbol],
    ttl=TTL,
    schema=[Field(name=n, dtype=Float64, description=SPECS[n].formula) for n in TREND_V1_FEATURES],
    source=trend_features_source,
    online=True,
    description="The 13 original technical features (trend_v1), known at each bar's close.",
)

trend_v2_fv = FeatureView(
    name="trend_v2_fv",
    entities=[symbol],
    ttl=TTL,
    schema=[
        Field(name=f.name, dtype=Float64, description=f.formula, tags={"family": f.family, "window": str(f.window)})
        for f in FEATURES
    ],
    source=trend_v2_source,
    online=True,
    description="All tabular features in families (returns, volatility, momentum, MACD, Bollinger, "
    "stochastic, ADX, volume, spread, session, calendar, cross-symbol, regime), at each bar's close.",
)

bar_sequence_fv = FeatureView(
    name="bar_sequence_fv",
    entities=[symbol],
    ttl=TTL,
    schema=[
        Field(
            name=SEQ_FIELD,
            dtype=Array(Float32),
            description=f"last {SEQ_LEN} bars x channels ({', '.join(SEQ_CHANNELS)}), row-major [bar][channel], oldest first",
        )
    ],
    source=bar_sequence_source,
    online=True,
    description="Sequence input of the transformer: one online read returns the whole window.",
)
