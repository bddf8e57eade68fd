"""Feast data sources. The offline store is the parquet written by the feature task
(``feature_repo/pipeline/store.py``): one folder per feature view, one file per symbol,
timeframe and UTC day (``ParquetFormat`` lets the DuckDB offline store read a folder).
``tx features env`` prints the variables that locate them."""

import os

from feast import FileSource
from feast.data_format import ParquetFormat

trend_features_source = FileSource(
    name="trend_features_source",
    path=os.environ.get("TX_OFFLINE_FEATURES", "../.tx/offline/trend_features"),
    timestamp_field="event_timestamp",
    file_format=ParquetFormat(),
    description="trend_v1 bar features at bar close (UTC), one parquet file per symbol, timeframe and day.",
)

trend_v2_source = FileSource(
    name="trend_v2_source",
    path=os.environ.get("TX_OFFLINE_FEATURES_V2", "../.tx/offline/trend_v2"),
    timestamp_field="event_timestamp",
    file_format=ParquetFormat(),
    description="All tabular features (46, in families) at bar close (UTC), rows past the longest warm-up.",
)

bar_sequence_source = FileSource(
    name="bar_sequence_source",
    path=os.environ.get("TX_OFFLINE_SEQUENCES", "../.tx/offline/bar_sequence"),
    timestamp_field="event_timestamp",
    file_format=ParquetFormat(),
    description="The last 64 normalised bar vectors at each bar close, one float32 list per row.",
)
