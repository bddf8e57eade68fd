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

# How far back a point-in-time join may reach for a row: one bar of the longest timeframe the
# platform trades (H1). Feast's offline join pairs each entity row with every feature row inside
# the TTL before it keeps the latest, so the TTL sets its cost: 4 days meant 5,760 candidate rows
# per M1 entity row (21 GiB before it was stopped on 40k XAUUSD M1 bars). Entity rows are bar
# closes and every bar's features sit at its close, so a bar's own row is always inside the TTL;
# a bar without one gets nothing (the dataset builder drops it either way). Online reads and
# the platform's explicit-range materialisation do not use it.
TTL = timedelta(hours=1)

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
        Field(
            name=f.name,
            dtype=Float64,
            description=f.formula,
            tags={"family": f.family, "window": str(f.window)},
        )
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
