"""The market_data sequence for a span, without a scheduler: per UTC day and symbol, ingest →
validate → features, then one materialisation. Tests, benchmarks and `tx backfill` use it;
the DAG runs the same functions one data interval at a time."""

from __future__ import annotations

from datetime import datetime, timedelta

from feature_repo.pipeline.ingest import ingest
from feature_repo.pipeline.store import build_features, materialize
from feature_repo.pipeline.validate import validate_interval
from titanovax.settings import PlatformSettings, utc


def backfill(
    settings: PlatformSettings, start: datetime, end: datetime, *, materialise: bool = True
) -> None:
    """Ingest, validate and build features day by day over [start, end), then materialise once."""
    day, end = utc(start), utc(end)
    first = day
    while day < end:
        nxt = min(day + timedelta(days=1), end)
        # every symbol's bars reach the lake before any features: the cross-symbol family reads them
        for sym in settings.symbols:
            ingest(settings, sym, settings.timeframe, day, nxt)
            validate_interval(settings, sym, settings.timeframe, day, nxt)
        for sym in settings.symbols:
            build_features(settings, sym, settings.timeframe, day, nxt)
        day = nxt
    if materialise:
        materialize(settings, first, end, settings.timeframe)
