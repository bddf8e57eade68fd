"""Validation of staged bars with Great Expectations, and the quarantine.

A staged day partition that passes the suite moves into the lake; one that fails moves, whole,
into the quarantine with its validation result (``validation.json``) and the task fails with
:class:`BatchQuarantined`. Nothing of a quarantined batch reaches the features or Redis,
because features are only ever computed from the lake.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import pandas as pd

from feature_repo.pipeline import lake
from infra.settings import PlatformSettings, utc

log = logging.getLogger(__name__)

SUITE_NAME = "mt5_bars_v1"
PRICE_COLUMNS = ["open", "high", "low", "close"]


class BatchQuarantined(RuntimeError):
    """Raised when at least one partition of the interval failed validation."""

    def __init__(self, report: ValidationReport) -> None:
        self.report = report
        failed = [p for p in report.partitions if not p["success"]]
        super().__init__(
            f"{len(failed)} partition(s) of {report.symbol} {report.timeframe} quarantined: "
            + "; ".join(f"{p['date']}: {', '.join(p['failed_expectations'])}" for p in failed)
        )


@dataclass
class ValidationReport:
    symbol: str
    timeframe: str
    start: str
    end: str
    partitions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed_rows(self) -> int:
        return sum(p["rows"] for p in self.partitions if p["success"])

    @property
    def quarantined_rows(self) -> int:
        return sum(p["rows"] for p in self.partitions if not p["success"])

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(passed_rows=self.passed_rows, quarantined_rows=self.quarantined_rows)
        return d


def build_suite() -> Any:
    """The bar suite: schema, non-null, OHLC consistency, unique increasing time, spread ≥ 0."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    suite = gx.ExpectationSuite(name=SUITE_NAME)
    for col in lake.BAR_COLUMNS:
        suite.add_expectation(gxe.ExpectColumnToExist(column=col))
    for col in ["time", "close_time", *PRICE_COLUMNS, "tick_volume", "spread"]:
        suite.add_expectation(gxe.ExpectColumnValuesToNotBeNull(column=col))
    for col in PRICE_COLUMNS:
        suite.add_expectation(gxe.ExpectColumnValuesToBeBetween(column=col, min_value=0, strict_min=True))
    for a, b in [("high", "low"), ("high", "open"), ("high", "close"), ("open", "low"), ("close", "low")]:
        suite.add_expectation(
            gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A=a, column_B=b, or_equal=True)
        )
    suite.add_expectation(gxe.ExpectColumnValuesToBeUnique(column="time"))
    suite.add_expectation(gxe.ExpectColumnValuesToBeIncreasing(column="server_time", strictly=True))
    suite.add_expectation(gxe.ExpectColumnValuesToBeBetween(column="spread", min_value=0))
    suite.add_expectation(gxe.ExpectColumnValuesToBeBetween(column="tick_volume", min_value=0))
    return suite


@functools.cache
def _validator() -> tuple[Any, Any]:
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    asset = ctx.data_sources.add_pandas("mt5").add_dataframe_asset("bars")
    batch_def = asset.add_batch_definition_whole_dataframe("partition")
    suite = ctx.suites.add(build_suite())
    return batch_def, suite


def validate_frame(df: pd.DataFrame) -> dict[str, Any]:
    """Run the suite on one frame; returns a JSON-able summary with the failing expectations."""
    batch_def, suite = _validator()
    # GE's pandas engine compares timestamps fine; drop tz to keep its JSON rendering simple.
    frame = df.copy()
    for c in ("time", "close_time"):
        if c in frame and isinstance(frame[c].dtype, pd.DatetimeTZDtype):
            frame[c] = frame[c].dt.tz_localize(None)
    result = batch_def.get_batch(batch_parameters={"dataframe": frame}).validate(suite)
    failures = []
    for r in result.results:
        if not r.success:
            cfg = r.expectation_config
            res = r.result or {}
            failures.append(
                {
                    "expectation": cfg.type,
                    "kwargs": {k: v for k, v in cfg.kwargs.items() if k != "batch_id"},
                    "unexpected_count": res.get("unexpected_count"),
                    "partial_unexpected_list": [str(x) for x in (res.get("partial_unexpected_list") or [])][:20],
                }
            )
    return {"success": bool(result.success), "suite": SUITE_NAME, "failures": failures}


def validate_interval(
    settings: PlatformSettings, symbol: str, timeframe: str, start: datetime, end: datetime
) -> ValidationReport:
    """Validate every staged partition of [start, end); pass → lake, fail → quarantine."""
    start, end = utc(start), utc(end)
    report = ValidationReport(symbol, timeframe, start.isoformat(), end.isoformat())
    for day in lake.days_in(start, end):
        df = lake.read_partition(settings.staging_dir, symbol, timeframe, day)
        if df is None:
            continue
        outcome = validate_frame(df)
        entry = {
            "date": day.isoformat(),
            "rows": len(df),
            "success": outcome["success"],
            "failed_expectations": [f["expectation"] for f in outcome["failures"]],
        }
        if outcome["success"]:
            lake.move_partition(settings.staging_dir, settings.lake_dir, symbol, timeframe, day)
        else:
            dst = lake.move_partition(settings.staging_dir, settings.quarantine_dir, symbol, timeframe, day)
            assert dst is not None
            # the lake must not keep an older good copy of a day that now fails
            lake.remove_partition(settings.lake_dir, symbol, timeframe, day)
            (dst / "validation.json").write_text(json.dumps(outcome, indent=2, default=str))
            entry["quarantine"] = str(dst)
            log.error("quarantined %s %s %s: %s", symbol, timeframe, day, entry["failed_expectations"])
        report.partitions.append(entry)
    if any(not p["success"] for p in report.partitions):
        raise BatchQuarantined(report)
    return report
