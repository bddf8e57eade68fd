"""Feast data sources. The offline store is the parquet written by the feature task."""

import os

from feast import FileSource

trend_features_source = FileSource(
    name="trend_features_source",
    path=os.environ.get("TX_OFFLINE_FEATURES", "../.tx/offline/trend_features"),
    timestamp_field="event_timestamp",
    description="Bar features at bar close (UTC), one parquet file per symbol, timeframe and day.",
)
