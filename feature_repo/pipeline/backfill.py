"""The market_data sequence for a span, without a scheduler: per UTC day and symbol, ingest →
validate → features, then one materialisation. Tests, benchmarks and `tx data backfill` use it;
the DAG runs the same functions one data interval at a time."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from feature_repo.pipeline.ingest import ingest
from feature_repo.pipeline.store import build_features, materialize
from feature_repo.pipeline.validate import validate_interval
from titanovax.settings import PlatformSettings, utc


@dataclass
class BackfillCounts:
    """What a backfill did, summed over its days and symbols."""

    days: int = 0
    bars_ingested: int = 0
    bars_passed: int = 0
    bars_quarantined: int = 0
    feature_rows: int = 0
    materialised: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def backfill(
    settings: PlatformSettings,
    start: datetime,
    end: datetime,
    *,
    materialise: bool = True,
    on_day: Callable[[datetime], None] | None = None,
) -> BackfillCounts:
    """Ingest, validate and build features day by day over [start, end), then materialise once.

    ``on_day`` is called after each day (progress); the counts are returned."""
    day, end = utc(start), utc(end)
    first = day
    counts = BackfillCounts()
    while day < end:
        nxt = min(day + timedelta(days=1), end)
        # every symbol's bars reach the lake before any features: the cross-symbol family reads them
        for sym in settings.symbols:
            counts.bars_ingested += ingest(settings, sym, settings.timeframe, day, nxt).rows
            report = validate_interval(settings, sym, settings.timeframe, day, nxt)
            counts.bars_passed += report.passed_rows
            counts.bars_quarantined += report.quarantined_rows
        for sym in settings.symbols:
            counts.feature_rows += build_features(settings, sym, settings.timeframe, day, nxt).rows
        counts.days += 1
        if on_day is not None:
            on_day(day)
        day = nxt
    if materialise:
        materialize(settings, first, end, settings.timeframe)
        counts.materialised = True
    return counts
