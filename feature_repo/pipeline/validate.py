"""Validation of staged bars with Great Expectations, the quarantine, and its release.

Each staged day partition is checked by the suites of :mod:`feature_repo.pipeline.expectations`
against the symbol's lake history. Every failing expectation belongs to a rule with a severity:

* **hard** - the partition moves, whole, into ``<home>/quarantine/symbol=S/timeframe=TF/date=D/``
  with ``bars.parquet`` (the batch as staged), ``rejected.parquet`` (the failing rows with a
  ``reasons`` and a ``severity`` column), ``validation.json`` (the failed expectations and the
  statistics behind them) and ``data_docs/index.html`` (the run's Great Expectations Data Docs
  page). Any older lake copy of that day is removed and :class:`BatchQuarantined` is raised.
* **soft** - the partition proceeds into the lake; the flagged rows are written beside it in
  ``flags.parquet`` (with their reasons) and a warning is logged.

The lines ingest rejected or repaired on the way in (``import_issues.parquet`` beside the staged
bars: an export's lines, or rows of a terminal's answer) are judged with their day by the rules
that name them (:func:`engine.mt5.exports.rule_of`: ``rejected_line``, ``ohlc_consistency``,
``spread_non_negative``, ``timeframe_alignment``, ``duplicate_conflict``, ``import_repaired``),
with the same per-rule severities: a hard one quarantines the day with the lines (line number,
raw text, reason) in ``rejected.parquet``; a soft one (by default ``import_repaired``: an
identical duplicate dropped, rows sorted) lists them in the day's ``flags.parquet``.

Every partition that reaches the lake carries its ``validation.json``. Nothing of a quarantined
batch reaches the features or Redis, because features are only computed from the lake.
Re-validating a fixed batch releases it: :func:`release_partition` (``tx data release``) for a
batch repaired in the quarantine folder, or a re-ingested batch that now passes. A release moves
the bars into the lake, removes the quarantine entry and appends a record to
``<home>/quarantine/releases.jsonl``.
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from feature_repo.pipeline import lake
from feature_repo.pipeline.expectations import (
    BARS_SUITE,
    SCHEMA_SUITE,
    ValidationConfig,
    annotate,
    build_bars_suite,
    build_schema_suite,
    config_from_settings,
)
from titanovax.settings import PlatformSettings, utc

log = logging.getLogger(__name__)

SUITE_NAME = BARS_SUITE
RELEASES_FILE = "releases.jsonl"


class BatchQuarantined(RuntimeError):
    """Raised when at least one partition of the interval failed a hard expectation."""

    def __init__(self, report: ValidationReport) -> None:
        self.report = report
        failed = [p for p in report.partitions if not p["success"]]
        super().__init__(
            f"{len(failed)} partition(s) of {report.symbol} {report.timeframe} quarantined: "
            + "; ".join(
                f"{p['date']}: "
                + ", ".join(f"{r} ({', '.join(e)})" for r, e in p["hard_failures"].items())
                for p in failed
            )
        )


@dataclass
class ValidationReport:
    """What one validation run did, per day partition (JSON-able for XCom and the CLI)."""

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

    @property
    def flagged_rows(self) -> int:
        return sum(p["flagged_rows"] for p in self.partitions if p["success"])

    @property
    def soft_failures(self) -> dict[str, int]:
        """Rule → rows flagged by it, over the partitions that passed."""
        out: dict[str, int] = {}
        for p in self.partitions:
            if p["success"]:
                for rule, n in p["soft_failures"].items():
                    out[rule] = out.get(rule, 0) + n
        return out

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(
            passed_rows=self.passed_rows,
            quarantined_rows=self.quarantined_rows,
            flagged_rows=self.flagged_rows,
            soft_failures=self.soft_failures,
        )
        return d


@dataclass
class FrameOutcome:
    """The result of the suites on one partition."""

    success: bool
    failures: list[dict[str, Any]]
    reasons: pd.Series  # row index -> "; "-joined reasons ("" when the row passed)
    severity: pd.Series  # row index -> "hard" | "soft" | ""
    stats: dict[str, Any]
    results: list[Any]  # Great Expectations ExpectationSuiteValidationResult objects
    # the import issues judged with the day: line_no, raw_line, time, reasons, severity, source
    import_rows: pd.DataFrame = field(default_factory=pd.DataFrame)

    def rule_rows(self, severity: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for f in self.failures:
            if f["severity"] == severity:
                out[f["rule"]] = out.get(f["rule"], 0) + int(f["rows"])
        return out

    def summary(self) -> dict[str, Any]:
        return {
            "success": self.success,
            "suites": [SCHEMA_SUITE, BARS_SUITE][: len(self.results)],
            "import_issues": len(self.import_rows),
            "hard_failures": self.rule_rows("hard"),
            "soft_failures": self.rule_rows("soft"),
            "failures": self.failures,
            "stats": self.stats,
        }


@functools.cache
def _batch_definition() -> Any:
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    asset = ctx.data_sources.add_pandas("mt5").add_dataframe_asset("bars")
    return asset.add_batch_definition_whole_dataframe("partition")


def _run_suite(frame: pd.DataFrame, suite: Any) -> Any:
    batch = _batch_definition().get_batch(batch_parameters={"dataframe": frame})
    return batch.validate(suite, result_format={"result_format": "COMPLETE"})


def _describe(cfg_type: str, kwargs: dict[str, Any]) -> str:
    cols = [str(kwargs[k]) for k in ("column", "column_A", "column_B") if kwargs.get(k) is not None]
    return f"{cfg_type}({','.join(cols)})" if cols else cfg_type


def _collect(
    result: Any,
    index: pd.Index,
    reasons: dict[Any, list[str]],
    sev: dict[Any, str],
    failures: list[dict[str, Any]],
    default_severity: str,
) -> None:
    """Failing expectations of one suite result → per-row reasons and the failure list."""
    for r in result.results:
        if r.success:
            continue
        cfg = r.expectation_config
        meta = cfg.meta or {}
        rule, severity = (
            str(meta.get("rule", "schema")),
            str(meta.get("severity", default_severity)),
        )
        kwargs = {k: v for k, v in cfg.kwargs.items() if k not in ("batch_id", "result_format")}
        res = r.result or {}
        idx = res.get("unexpected_index_list")
        rows = list(index) if idx is None else [i for i in idx if i in index]
        label = f"{rule}: {_describe(cfg.type, kwargs)}"
        for i in rows:
            reasons.setdefault(i, []).append(label)
            if sev.get(i) != "hard":
                sev[i] = severity
        err = (r.exception_info or {}).get("exception_message") if r.exception_info else None
        failures.append(
            {
                "rule": rule,
                "severity": severity,
                "expectation": cfg.type,
                "kwargs": kwargs,
                "rows": len(rows),
                "unexpected_count": res.get("unexpected_count"),
                "observed_value": res.get("observed_value"),
                "partial_unexpected_list": [
                    str(x) for x in (res.get("partial_unexpected_list") or [])
                ][:20],
                **({"exception": err} if err else {}),
            }
        )


def validate_frame(
    df: pd.DataFrame,
    symbol: str,
    timeframe: str,
    history: pd.DataFrame | None = None,
    *,
    as_of: datetime | None = None,
    config: ValidationConfig | None = None,
    import_issues: pd.DataFrame | None = None,
) -> FrameOutcome:
    """Run the schema suite, then (if the schema holds) the FX-aware suite on one partition,
    and judge the day's ``import_issues`` (lines ingest rejected or repaired).

    ``history`` is the symbol's lake bars before ``df`` (default: none); ``as_of`` the time
    before which every bar must have closed (default: now). A day whose every line was
    rejected has no bars: only its import issues are judged."""
    from feature_repo.pipeline.expectations import load_config

    cfg = config or load_config()
    _batch_definition()  # suites need an active (ephemeral) Great Expectations context
    as_of_s = int(utc(as_of or datetime.now(UTC)).timestamp())
    frame = df.reset_index(drop=True)
    reasons: dict[Any, list[str]] = {}
    sev: dict[Any, str] = {}
    failures: list[dict[str, Any]] = []
    schema_sev = cfg.severity("schema")
    results = []
    stats: dict[str, Any] = {"rows": len(frame)}

    import_rows = _judge_import_issues(import_issues, cfg, failures)
    stats["import_issues"] = len(import_rows)
    if frame.empty and len(import_rows):
        schema_ok = False  # nothing to run the suites on: every line of the day was rejected
    else:
        schema_result = _run_suite(frame, build_schema_suite(symbol, timeframe))
        results.append(schema_result)
        _collect(schema_result, frame.index, reasons, sev, failures, schema_sev)
        schema_ok = schema_result.success
    if schema_ok:  # the FX-aware suite needs the schema to hold
        hist = (
            history
            if history is not None and len(history)
            else pd.DataFrame(columns=lake.BAR_COLUMNS)
        )
        checked, info = annotate(frame, hist, symbol, timeframe, as_of_s, cfg)
        stats.update(info)
        bars_result = _run_suite(checked, build_bars_suite(timeframe, cfg))
        results.append(bars_result)
        _collect(bars_result, frame.index, reasons, sev, failures, "hard")
    reason_s = pd.Series({i: "; ".join(v) for i, v in reasons.items()}, dtype=object).reindex(
        frame.index, fill_value=""
    )
    sev_s = pd.Series(sev, dtype=object).reindex(frame.index, fill_value="")
    success = not any(f["severity"] == "hard" for f in failures)
    return FrameOutcome(success, failures, reason_s, sev_s, stats, results, import_rows)


def _judge_import_issues(
    issues: pd.DataFrame | None, cfg: ValidationConfig, failures: list[dict[str, Any]]
) -> pd.DataFrame:
    """Import issues → one failure per rule (severity from the config; ``off`` drops them) and
    the rows to keep with the day (``reasons``, ``severity``)."""
    if issues is None or issues.empty:
        return pd.DataFrame()
    rows = issues.copy()
    rows["severity"] = [cfg.severity(r) for r in rows["rule"]]
    rows = rows[rows["severity"] != "off"].reset_index(drop=True)
    rows["reasons"] = rows["rule"] + ": " + rows["reason"]
    for (rule, severity), grp in rows.groupby(["rule", "severity"], sort=True):
        failures.append(
            {
                "rule": str(rule),
                "severity": str(severity),
                "expectation": "mt5_import_row_checks",
                "kwargs": {"source": sorted(set(grp["source"]))},
                "rows": len(grp),
                "unexpected_count": len(grp),
                "observed_value": None,
                "partial_unexpected_list": [
                    f"line {ln}: {reason}"
                    for ln, reason in zip(grp["line_no"], grp["reason"], strict=True)
                ][:20],
            }
        )
    return rows.drop(columns=["reason"])


# --- partitions --------------------------------------------------------------------------------


def _read_raw(path: Path) -> pd.DataFrame:
    """A partition as stored (no schema cast: the schema suite judges it)."""
    return pq.read_table(path).to_pandas()


def _history(
    settings: PlatformSettings, symbol: str, timeframe: str, day: date, cfg: ValidationConfig
) -> pd.DataFrame:
    day0 = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return lake.read_bars(
        settings.lake_dir, symbol, timeframe, day0 - timedelta(days=cfg.history_days), day0
    )


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))


def _flagged_rows(df: pd.DataFrame, outcome: FrameOutcome) -> pd.DataFrame:
    """The day's flagged bars, then its import issues (``line_no``, ``raw_line``, ``source``
    set; bar columns null)."""
    mask = outcome.reasons != ""
    rows = df.reset_index(drop=True)[mask.to_numpy()].copy()
    rows["reasons"] = outcome.reasons[mask].to_numpy()
    rows["severity"] = outcome.severity[mask].to_numpy()
    if outcome.import_rows.empty:
        return rows
    imp = outcome.import_rows.drop(columns=["rule", "repaired"], errors="ignore")
    if rows.empty:
        return imp.reset_index(drop=True)
    return pd.concat([rows, imp], ignore_index=True)


def _read_issues(part_dir: Path) -> pd.DataFrame | None:
    from feature_repo.pipeline.ingest import ISSUES_FILE

    path = part_dir / ISSUES_FILE
    return pq.read_table(path).to_pandas() if path.exists() else None


def _write_data_docs(folder: Path, outcome: FrameOutcome) -> Path:
    """Render the run's validation results as Great Expectations Data Docs pages."""
    from great_expectations.render.renderer import ValidationResultsPageRenderer
    from great_expectations.render.view import DefaultJinjaPageView

    folder.mkdir(parents=True, exist_ok=True)
    pages = []
    for res in outcome.results:
        name = res.suite_name or "suite"
        html = DefaultJinjaPageView().render(ValidationResultsPageRenderer().render(res))
        (folder / f"{name}.html").write_text(html)
        pages.append((name, res.success))
    failing = next((n for n, ok in pages if not ok), pages[-1][0] if pages else None)
    index = folder / "index.html"
    if failing is not None:
        shutil.copyfile(folder / f"{failing}.html", index)
    return index


def _write_sidecars(part_dir: Path, df: pd.DataFrame, outcome: FrameOutcome) -> None:
    """Soft flags and the validation summary beside a partition that proceeds to the lake."""
    flags = _flagged_rows(df, outcome)
    if len(flags):
        lake.write_parquet_atomic(flags, part_dir / "flags.parquet")
    else:
        (part_dir / "flags.parquet").unlink(missing_ok=True)
    _write_json(part_dir / "validation.json", outcome.summary())


def _quarantine(
    settings: PlatformSettings,
    symbol: str,
    timeframe: str,
    day: date,
    df: pd.DataFrame,
    outcome: FrameOutcome,
    src_root: Path,
) -> Path:
    if src_root != settings.quarantine_dir:
        dst = lake.move_partition(src_root, settings.quarantine_dir, symbol, timeframe, day)
        assert dst is not None
    else:
        dst = lake.partition_dir(settings.quarantine_dir, symbol, timeframe, day)
    # the lake must not keep an older good copy of a day that now fails
    lake.remove_partition(settings.lake_dir, symbol, timeframe, day)
    lake.write_parquet_atomic(_flagged_rows(df, outcome), dst / "rejected.parquet")
    (dst / "flags.parquet").unlink(missing_ok=True)
    _write_json(
        dst / "validation.json",
        {"symbol": symbol, "timeframe": timeframe, "date": day.isoformat(), **outcome.summary()},
    )
    _write_data_docs(dst / "data_docs", outcome)
    return dst


def _record_release(
    settings: PlatformSettings,
    symbol: str,
    timeframe: str,
    day: date,
    how: str,
    previous: dict[str, Any],
) -> dict[str, Any]:
    rec = {
        "symbol": symbol,
        "timeframe": timeframe,
        "date": day.isoformat(),
        "released_at": datetime.now(UTC).isoformat(),
        "how": how,
        "previous_hard_failures": previous.get("hard_failures", {}),
    }
    settings.quarantine_dir.mkdir(parents=True, exist_ok=True)
    with (settings.quarantine_dir / RELEASES_FILE).open("a") as fh:
        fh.write(json.dumps(rec, sort_keys=True) + "\n")
    log.warning("released %s %s %s from quarantine (%s)", symbol, timeframe, day, how)
    return rec


def _entry(day: date, rows: int, outcome: FrameOutcome) -> dict[str, Any]:
    soft_imports = (
        int((outcome.import_rows["severity"] == "soft").sum()) if len(outcome.import_rows) else 0
    )
    flagged = int((outcome.severity == "soft").sum()) + soft_imports if outcome.success else 0
    return {
        "date": day.isoformat(),
        "rows": rows,
        "success": outcome.success,
        "flagged_rows": flagged,
        "hard_failures": {
            f["rule"]: sorted(
                {x["expectation"] for x in outcome.failures if x["rule"] == f["rule"]}
            )
            for f in outcome.failures
            if f["severity"] == "hard"
        },
        "soft_failures": outcome.rule_rows("soft"),
        "failed_expectations": [f["expectation"] for f in outcome.failures],
    }


def validate_interval(
    settings: PlatformSettings,
    symbol: str,
    timeframe: str,
    start: datetime,
    end: datetime,
    *,
    as_of: datetime | None = None,
    config: ValidationConfig | None = None,
) -> ValidationReport:
    """Validate every staged partition of [start, end): pass → lake (soft flags beside it),
    hard failure → quarantine, then raise :class:`BatchQuarantined` if any partition failed."""
    start, end = utc(start), utc(end)
    cfg = config or config_from_settings(settings)
    report = ValidationReport(symbol, timeframe, start.isoformat(), end.isoformat())
    for day in lake.days_in(start, end):
        path = lake.partition_dir(settings.staging_dir, symbol, timeframe, day) / "bars.parquet"
        if not path.exists():
            continue
        df = _read_raw(path)
        outcome = validate_frame(
            df,
            symbol,
            timeframe,
            _history(settings, symbol, timeframe, day, cfg),
            as_of=as_of,
            config=cfg,
            import_issues=_read_issues(path.parent),
        )
        entry = _entry(day, len(df), outcome)
        if outcome.success:
            _write_sidecars(path.parent, df, outcome)
            lake.move_partition(settings.staging_dir, settings.lake_dir, symbol, timeframe, day)
            qdir = lake.partition_dir(settings.quarantine_dir, symbol, timeframe, day)
            if qdir.exists():  # a re-ingested batch that now passes releases the old entry
                prev = (
                    json.loads((qdir / "validation.json").read_text())
                    if (qdir / "validation.json").exists()
                    else {}
                )
                shutil.rmtree(qdir)
                entry["released"] = _record_release(
                    settings, symbol, timeframe, day, "re-ingested batch passed", prev
                )
            if entry["flagged_rows"]:
                log.warning(
                    "%s %s %s: %d row(s) flagged (soft): %s",
                    symbol,
                    timeframe,
                    day,
                    entry["flagged_rows"],
                    entry["soft_failures"],
                )
        else:
            dst = _quarantine(settings, symbol, timeframe, day, df, outcome, settings.staging_dir)
            entry["quarantine"] = str(dst)
            log.error("quarantined %s %s %s: %s", symbol, timeframe, day, entry["hard_failures"])
        report.partitions.append(entry)
    if any(not p["success"] for p in report.partitions):
        raise BatchQuarantined(report)
    return report


def release_partition(
    settings: PlatformSettings,
    symbol: str,
    timeframe: str,
    day: date,
    *,
    as_of: datetime | None = None,
    config: ValidationConfig | None = None,
) -> ValidationReport:
    """Re-validate a quarantined partition (after its ``bars.parquet`` was fixed in place).

    Passes → the bars move into the lake, the quarantine entry is removed and the release is
    appended to ``releases.jsonl``. Fails → the quarantine entry is refreshed (reasons, docs)
    and :class:`BatchQuarantined` is raised. Rebuild the day's features afterwards."""
    cfg = config or config_from_settings(settings)
    qdir = lake.partition_dir(settings.quarantine_dir, symbol, timeframe, day)
    if not (qdir / "bars.parquet").exists():
        raise FileNotFoundError(
            f"no quarantined partition {symbol} {timeframe} {day} under {settings.quarantine_dir}"
        )
    day0 = datetime(day.year, day.month, day.day, tzinfo=UTC)
    report = ValidationReport(
        symbol, timeframe, day0.isoformat(), (day0 + timedelta(days=1)).isoformat()
    )
    df = _read_raw(qdir / "bars.parquet")
    outcome = validate_frame(
        df,
        symbol,
        timeframe,
        _history(settings, symbol, timeframe, day, cfg),
        as_of=as_of,
        config=cfg,
        import_issues=_read_issues(qdir),
    )
    entry = _entry(day, len(df), outcome)
    report.partitions.append(entry)
    if not outcome.success:
        _quarantine(settings, symbol, timeframe, day, df, outcome, settings.quarantine_dir)
        entry["quarantine"] = str(qdir)
        raise BatchQuarantined(report)
    prev = (
        json.loads((qdir / "validation.json").read_text())
        if (qdir / "validation.json").exists()
        else {}
    )
    dst = lake.write_partition(settings.lake_dir, df, symbol, timeframe, day).parent
    _write_sidecars(dst, df, outcome)
    shutil.rmtree(qdir)
    entry["released"] = _record_release(
        settings, symbol, timeframe, day, "re-validated in quarantine", prev
    )
    return report


def list_quarantine(settings: PlatformSettings) -> list[dict[str, Any]]:
    """The quarantined partitions with their hard failures and folder."""
    out = []
    root = settings.quarantine_dir
    for vj in (
        sorted(root.glob("symbol=*/timeframe=*/date=*/validation.json")) if root.exists() else []
    ):
        info = json.loads(vj.read_text())
        out.append(
            {
                "symbol": vj.parts[-4].split("=", 1)[1],
                "timeframe": vj.parts[-3].split("=", 1)[1],
                "date": vj.parts[-2].split("=", 1)[1],
                "hard_failures": info.get("hard_failures", {}),
                "folder": str(vj.parent),
            }
        )
    return out


class QuarantinedSymbols(BatchQuarantined):
    """Raised by :func:`validate_symbols` when any symbol had a hard failure (all were run)."""

    def __init__(self, reports: list[ValidationReport], failed: list[BatchQuarantined]) -> None:
        self.reports = reports
        self.failed = failed
        RuntimeError.__init__(self, " | ".join(str(e) for e in failed))
        self.report = failed[0].report


def validate_symbols(
    settings: PlatformSettings, symbols: list[str], timeframe: str, start: datetime, end: datetime
) -> list[dict[str, Any]]:
    """The DAG's validate task: every symbol is validated (one symbol's quarantine does not stop
    the others); soft flags are logged as warnings; any hard failure raises
    :class:`QuarantinedSymbols` at the end, so the task fails loudly. An interval with nothing
    staged for any symbol raises :class:`~feature_repo.pipeline.ingest.NoBarsError`."""
    from feature_repo.pipeline.ingest import NoBarsError, explain_empty

    reports: list[ValidationReport] = []
    failed: list[BatchQuarantined] = []
    for sym in symbols:
        try:
            reports.append(validate_interval(settings, sym, timeframe, start, end))
        except BatchQuarantined as exc:
            failed.append(exc)
            reports.append(exc.report)
    if reports and not any(r.partitions for r in reports):
        why = [explain_empty(sym, timeframe, start, end) for sym in symbols]
        raise NoBarsError(
            "nothing staged to validate: "
            + "; ".join(w for w, _ in why)
            + ("" if all(e for _, e in why) else " (run tx ingest for the interval first)"),
            expected=all(e for _, e in why),
        )
    for r in reports:
        if r.flagged_rows:
            log.warning(
                "validation: %s %s [%s, %s) passed with %d soft-flagged row(s): %s",
                r.symbol,
                r.timeframe,
                r.start,
                r.end,
                r.flagged_rows,
                r.soft_failures,
            )
    if failed:
        raise QuarantinedSymbols(reports, failed)
    return [r.to_dict() for r in reports]
