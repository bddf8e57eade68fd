"""Ingest: pull one data interval of bars through the MT5 gateway into the staging area.

MT5 bar ``time`` is the open time in broker server time; the lake stores UTC. The broker's
clock is described by a rule (:mod:`engine.mt5.brokertime`, ``TX_BROKER_TZ``: a fixed offset,
``ny-close`` or an IANA zone such as EET/EEST; unset, the fixed ``TX_BROKER_UTC_OFFSET_HOURS``),
applied per bar so DST switches land right. A run for the data interval [start, end) takes the
bars whose UTC open time lies in it, leaves out the bar that is still forming on the terminal,
and overwrites the interval's staging partitions, so running it twice gives the same bytes.
Validation then moves each partition to the lake or to quarantine.

Each run also stores the symbol's ``symbol_info`` contract metadata with the lake
(``<lake>/symbol=S/_symbol.json``, :func:`feature_repo.pipeline.lake.symbol_meta`), and, when
the interval holds a weekend, checks the configured time rule against the bars
(:func:`engine.mt5.brokertime.check_rule`): a disagreement is logged as a warning and reported in
:attr:`IngestResult.broker_time_check`.

Nothing is dropped, defaulted or reordered without a record. The lines of an export file that
the importer rejected or repaired (:class:`engine.mt5.exports.ImportIssue`), and the rows of a
native/bridge terminal's answer that fail the same row checks
(:func:`engine.mt5.exports.check_rates`), are written beside the staged bars of their UTC day as
``import_issues.parquet``; validation judges them with the day (a day whose every line was
rejected is staged with no bars, so it is judged too). A column an export lacks is filled only
from a configured source (``TX_MT5_SPREAD_SOURCE`` / ``TX_MT5_TICK_VOLUME_SOURCE``), recorded
in ``<lake>/symbol=S/timeframe=TF/_sources.json``. An interval with no bars is reported
(:attr:`IngestResult.empty_reason`); :func:`check_ingested` turns it into :class:`NoBarsError`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from engine.mt5 import TIMEFRAMES, Terminal, TerminalError, timeframe_seconds
from engine.mt5.brokertime import BrokerTimeRule, FixedOffset, check_rule, parse_rule
from engine.mt5.exports import ImportIssue, check_rates
from feature_repo.pipeline import lake
from feature_repo.pipeline.calendar import calendar_for
from titanovax.settings import PlatformSettings, utc

log = logging.getLogger(__name__)


@dataclass
class IngestResult:
    symbol: str
    timeframe: str
    start: str
    end: str
    rows: int
    partitions: list[str] = field(default_factory=list)
    forming_bar_excluded: bool = False
    broker_time_rule: str = ""
    broker_time_check: str | None = None  # the rule check's message, when the bars hold a weekend
    broker_time_ok: bool = True
    symbol_meta: str | None = None  # path of the stored symbol_info metadata
    rejected_lines: int = 0  # lines/rows of the interval the row checks rejected
    repaired_lines: int = 0  # lines of the interval repaired (identical duplicate, order)
    column_sources: dict[str, str] = field(default_factory=dict)  # filled column -> source
    empty_reason: str | None = None  # why the interval has no bars (None: it has some)
    market_closed: bool = False  # the interval lies wholly in the calendar's closed windows

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class NoBarsError(RuntimeError):
    """An ingest or validation of an interval found no bars. ``expected``: the market was
    closed the whole interval (weekend, holiday), a skip rather than an error."""

    def __init__(self, message: str, expected: bool) -> None:
        super().__init__(message)
        self.expected = expected


ISSUES_FILE = "import_issues.parquet"
"""The rejected/repaired lines of a day, beside its staged (then lake or quarantine) bars."""


def market_closed(symbol: str, start: datetime, end: datetime) -> str | None:
    """``"weekend"`` / ``"holiday"`` when the market calendar of ``symbol`` is closed over the
    whole of [start, end), else ``None``."""
    cal = calendar_for(symbol)
    s, e = int(utc(start).timestamp()), int(utc(end).timestamp())
    if not bool(cal.covers(np.array([s]), np.array([e]))[0]):
        return None
    return "holiday" if cal.holiday_session(s, e) else "weekend"


def explain_empty(symbol: str, timeframe: str, start: datetime, end: datetime) -> tuple[str, bool]:
    """The one-line reason an interval has no bars, and whether that was expected."""
    closed = market_closed(symbol, start, end)
    span = f"{symbol} {timeframe} [{utc(start):%Y-%m-%d %H:%M}, {utc(end):%Y-%m-%d %H:%M}) UTC"
    if closed:
        return f"no bars for {span}: the market is closed ({closed})", True
    return (
        f"no bars for {span} although the market was open: check the symbol, the timeframe "
        "and the source's span (TX_MT5_EXPORTS / the terminal's history)",
        False,
    )


def check_ingested(results: list[IngestResult]) -> None:
    """Raise :class:`NoBarsError` when an ingest did nothing: any symbol without bars while
    the market was open is an error; every symbol without bars because the market was closed
    is an expected skip."""
    empty = [r for r in results if r.empty_reason]
    unexpected = [r for r in empty if not r.market_closed]
    if unexpected:
        raise NoBarsError("; ".join(str(r.empty_reason) for r in unexpected), expected=False)
    if results and len(empty) == len(results):
        raise NoBarsError("; ".join(str(r.empty_reason) for r in empty), expected=True)


def broker_rule(settings: PlatformSettings) -> FixedOffset | BrokerTimeRule:
    """The broker time rule of the settings: ``TX_BROKER_TZ``, else the fixed
    ``TX_BROKER_UTC_OFFSET_HOURS``."""
    return parse_rule(getattr(settings, "broker_tz", None), settings.broker_utc_offset_hours)


def open_platform_terminal(
    settings: PlatformSettings, clock: Callable[[], int] | None = None
) -> Terminal:
    """The terminal the platform ingests from: simulated (synthetic market or MT5 exports)
    by default, or the native / bridge terminal when ``TX_MT5_MODE`` says so (connection and
    account from ``TX_MT5_*``, :class:`engine.mt5.settings.MT5Settings`)."""
    from engine.mt5.gateway import open_configured_terminal, open_terminal

    if settings.mt5_mode == "sim":
        from engine.mt5.sim import ExportFeed, SyntheticFeed

        feed: object
        if settings.mt5_exports:
            feed = ExportFeed(
                settings.mt5_exports,
                server_utc_offset_hours=settings.broker_utc_offset_hours,
                column_sources=column_sources(settings),
            )
        else:
            # the synthetic market runs on: by default the terminal stands at the wall clock
            if clock is None:
                import time

                clock = lambda: int(time.time())  # noqa: E731
            feed = SyntheticFeed(
                seed=settings.synthetic_seed,
                symbols=settings.symbols,
                server_utc_offset_hours=settings.broker_utc_offset_hours,
            )
        return open_terminal(
            "sim",
            sim_feed=feed,
            clock=clock,
            server_utc_offset_hours=settings.broker_utc_offset_hours,
        )
    from engine.mt5.settings import MT5Settings

    return open_configured_terminal(MT5Settings(mode=settings.mt5_mode))


def column_sources(settings: PlatformSettings) -> dict[str, str]:
    """The configured sources of columns an export may lack (``TX_MT5_*_SOURCE``)."""
    out = {}
    if settings.mt5_spread_source:
        out["spread"] = settings.mt5_spread_source
    if settings.mt5_tick_volume_source:
        out["tick_volume"] = settings.mt5_tick_volume_source
    return out


def _file_export(term: Terminal, symbol: str, timeframe: str) -> Any:
    """The export file behind a simulated terminal's bars of ``symbol``/``timeframe``, if any
    (raises :class:`~engine.mt5.exports.MissingColumnError` for a file lacking a column)."""
    from engine.mt5.sim import ExportFeed

    feed = getattr(term, "feed", None)
    return feed.export(symbol, timeframe) if isinstance(feed, ExportFeed) else None


def issues_frame(
    issues: list[ImportIssue], rule: FixedOffset | BrokerTimeRule, source: str
) -> pd.DataFrame:
    """Import issues as rows with their UTC time (lines without any readable time are kept
    with a null time; they cannot be placed on a day)."""
    server = np.array(
        [-1 if i.server_time is None else i.server_time for i in issues], dtype=np.int64
    )
    utc_s = rule.to_utc(server) if len(server) else server
    t = pd.to_datetime(utc_s, unit="s", utc=True).astype("datetime64[ns, UTC]")
    t = t.where(server >= 0)
    return pd.DataFrame(
        {
            "time": t,
            "line_no": np.array([i.line_no for i in issues], dtype=np.int64),
            "raw_line": [i.raw for i in issues],
            "reason": [i.reason for i in issues],
            "rule": [i.rule for i in issues],
            "repaired": np.array([i.repaired for i in issues], dtype=bool),
            "source": source,
        }
    )


def rates_to_frame(
    rates: np.ndarray, symbol: str, timeframe: str, utc_offset_hours: int | BrokerTimeRule
) -> pd.DataFrame:
    """MT5 rates (server time) → lake rows (UTC open and close time, raw server time kept).

    ``utc_offset_hours`` is a fixed offset or a :class:`~engine.mt5.brokertime.BrokerTimeRule`
    (applied per bar)."""
    rule = (
        FixedOffset(utc_offset_hours)
        if isinstance(utc_offset_hours, int | float)
        else utc_offset_hours
    )
    step = timeframe_seconds(timeframe)
    server = rates["time"].astype("int64")
    t = pd.to_datetime(rule.to_utc(server), unit="s", utc=True).astype("datetime64[ns, UTC]")
    return pd.DataFrame(
        {
            "time": t,
            "close_time": t + pd.Timedelta(seconds=step),
            "symbol": symbol,
            "timeframe": timeframe,
            "open": rates["open"].astype("float64"),
            "high": rates["high"].astype("float64"),
            "low": rates["low"].astype("float64"),
            "close": rates["close"].astype("float64"),
            "tick_volume": rates["tick_volume"].astype("int64"),
            "spread": rates["spread"].astype("int32"),
            "real_volume": rates["real_volume"].astype("int64"),
            "server_time": server,
        }
    )


def _source_name(export: Any) -> str:
    return "file" if export is None else str(export.source.name)


def _synthetic(term: Terminal) -> bool:
    """The seeded synthetic market keeps a fixed Sunday 22:00 UTC week all year (not New York
    time), so the weekly-close check has nothing true to say about it."""
    from engine.mt5.sim import SyntheticFeed

    return isinstance(getattr(term, "feed", None), SyntheticFeed)


def store_symbol_meta(settings: PlatformSettings, symbol: str, terminal: Terminal) -> str | None:
    """Write ``symbol``'s ``symbol_info`` metadata with the lake; ``None`` (logged) when the
    terminal has none."""
    info = terminal.symbol_info(symbol)
    if info is None:
        log.warning(
            "symbol_info(%s) failed: %s; metadata not stored", symbol, terminal.last_error()
        )
        return None
    return str(lake.write_symbol_meta(settings.lake_dir, symbol, lake.symbol_meta(info)))


def ingest(
    settings: PlatformSettings,
    symbol: str,
    timeframe: str,
    start: datetime,
    end: datetime,
    terminal: Terminal | None = None,
) -> IngestResult:
    """Stage the bars of [start, end) (UTC open times) for ``symbol``/``timeframe``."""
    start, end = utc(start), utc(end)
    if end <= start:
        raise ValueError(f"empty interval: start={start} end={end}")
    term = terminal or open_platform_terminal(settings)
    tf = TIMEFRAMES[timeframe]
    rule = broker_rule(settings)
    server_from = rule.to_server(int(start.timestamp()))
    server_to = rule.to_server(int(end.timestamp())) - 1
    export = _file_export(term, symbol, timeframe)
    rates = term.copy_rates_range(symbol, tf, server_from, server_to)
    if rates is None:
        raise TerminalError("copy_rates_range", term.last_error())
    # the importer's row checks, on bars from any terminal (a no-op on an export's clean bars)
    rates, row_issues = check_rates(rates, timeframe)
    forming = term.copy_rates_from_pos(symbol, tf, 0, 1)
    excluded = False
    if (
        len(rates)
        and forming is not None
        and len(forming)
        and rates["time"][-1] == forming["time"][0]
    ):
        rates = rates[:-1]  # still forming: its close is not known yet
        excluded = True
    df = rates_to_frame(rates, symbol, timeframe, rule)
    df = df[(df["time"] >= start) & (df["time"] < end)].sort_values("time")
    issues = pd.concat(
        [
            issues_frame(row_issues, rule, "terminal"),
            issues_frame(export.issues if export is not None else [], rule, _source_name(export)),
        ],
        ignore_index=True,
    )
    issues = issues[(issues["time"] >= start) & (issues["time"] < end)]

    result = IngestResult(
        symbol,
        timeframe,
        start.isoformat(),
        end.isoformat(),
        len(df),
        forming_bar_excluded=excluded,
    )
    result.broker_time_rule = rule.spec
    result.rejected_lines = int((~issues["repaired"]).sum())
    result.repaired_lines = int(issues["repaired"].sum())
    if len(rates) > 1 and timeframe_seconds(timeframe) <= 3600 and not _synthetic(term):
        check = check_rule(rule, rates["time"], timeframe, symbol=symbol)
        if check.checked:
            result.broker_time_check, result.broker_time_ok = check.message, check.ok
    result.symbol_meta = store_symbol_meta(settings, symbol, term)
    if export is not None:
        sources = column_sources(settings)
        result.column_sources = {c: sources[c] for c in export.filled}
        lake.write_column_sources(
            settings.lake_dir,
            symbol,
            timeframe,
            {c: {"source": sources[c], "value": v} for c, v in export.filled.items()},
            export.source.name,
        )
    days = df["time"].dt.date
    issue_days = issues["time"].dt.date
    for day in lake.days_in(start, end):
        part = df[days == day]
        day_issues = issues[issue_days == day]
        if part.empty and day_issues.empty:
            lake.remove_partition(settings.staging_dir, symbol, timeframe, day)
            continue
        path = lake.write_partition(settings.staging_dir, part, symbol, timeframe, day)
        if day_issues.empty:
            (path.parent / ISSUES_FILE).unlink(missing_ok=True)
        else:
            lake.write_parquet_atomic(
                day_issues.sort_values(["source", "line_no"]).reset_index(drop=True),
                path.parent / ISSUES_FILE,
            )
            log.warning(
                "%s %s %s: %d line(s) rejected, %d repaired by the row checks (judged by validation)",
                symbol,
                timeframe,
                day,
                int((~day_issues["repaired"]).sum()),
                int(day_issues["repaired"].sum()),
            )
        result.partitions.append(str(path))
    if df.empty and issues.empty:
        result.empty_reason, result.market_closed = explain_empty(symbol, timeframe, start, end)
        log.warning("%s", result.empty_reason)
    log.info(
        "ingested %d %s %s bars for [%s, %s) into %d partitions",
        len(df),
        symbol,
        timeframe,
        start,
        end,
        len(result.partitions),
    )
    return result


def check_broker_time(
    settings: PlatformSettings,
    symbol: str,
    timeframe: str,
    days: int = 120,
    terminal: Terminal | None = None,
) -> dict[str, object]:
    """Check the configured broker time rule against the terminal's last ``days`` of bars
    (``tx mt5 detect-offset``): the detector's readings, the mismatches and a suggestion."""
    term = terminal or open_platform_terminal(settings)
    if _synthetic(term):
        log.warning(
            "the synthetic market's week is Sunday 22:00 UTC all year: its offset check is not meaningful"
        )
    count = max(2, days * 86_400 // timeframe_seconds(timeframe))
    rates = term.copy_rates_from_pos(symbol, TIMEFRAMES[timeframe], 1, int(count))
    if rates is None:
        raise TerminalError("copy_rates_from_pos", term.last_error())
    out: dict[str, object] = {"symbol": symbol, "bars": len(rates)}
    out.update(check_rule(broker_rule(settings), rates["time"], timeframe, symbol=symbol).to_dict())
    return out


def export_of(settings: PlatformSettings, symbol: str, timeframe: str) -> Any:
    """The parsed export of ``symbol``/``timeframe`` in ``TX_MT5_EXPORTS``, with the configured
    column sources (raises ``KeyError`` when there is none, ``MissingColumnError`` when it lacks
    a column with no source)."""
    from engine.mt5.sim import ExportFeed

    assert settings.mt5_exports is not None
    feed = ExportFeed(
        settings.mt5_exports,
        server_utc_offset_hours=settings.broker_utc_offset_hours,
        column_sources=column_sources(settings),
    )
    export = feed.export(symbol, timeframe)
    if export is None:
        raise KeyError(f"no {symbol} {timeframe} export in {settings.mt5_exports}")
    return export


def autodetect_exports(settings: PlatformSettings) -> tuple[PlatformSettings, str | None]:
    """Use what ``TX_MT5_EXPORTS`` holds when the settings do not say what to ingest.

    With the simulated terminal over an export folder: when the configured symbols and timeframe
    all have a file, nothing changes (``None``). Otherwise, when the folder holds exactly one
    symbol/timeframe, or ``TX_SYMBOLS`` is unset (every symbol with a file at the timeframe:
    ``TX_TIMEFRAME``, or the timeframe of the folder's first file), the settings are narrowed to
    it and the returned line says what was chosen and the broker time rule the detector suggests
    for it. Symbols or a timeframe set explicitly that the folder does not hold are an error
    (``ValueError``), never silently replaced."""
    from engine.mt5.brokertime import detect_offset
    from engine.mt5.exports import MissingColumnError, scan_exports

    if settings.mt5_mode != "sim" or not settings.mt5_exports:
        return settings, None
    folder = settings.mt5_exports
    files = scan_exports(folder)
    if not files:
        raise ValueError(f"no MT5 export named <SYMBOL>_<TF>….csv in {folder}")
    explicit_sym = "symbols" in settings.model_fields_set
    explicit_tf = "timeframe" in settings.model_fields_set
    wanted = {(s, settings.timeframe) for s in settings.symbols}
    if explicit_sym and wanted <= set(files):
        return settings, None
    tfs = {tf for _, tf in files}
    if len(files) == 1:
        ((sym, tf),) = files
        if (explicit_sym and sym not in settings.symbols) or (
            explicit_tf and tf != settings.timeframe
        ):
            raise ValueError(
                f"TX_SYMBOLS/TX_TIMEFRAME ask for {', '.join(f'{s} {t}' for s, t in sorted(wanted))}"
                f" but {folder} holds only {sym} {tf}"
            )
        symbols = [sym]
    elif not explicit_sym:
        tf = settings.timeframe if (explicit_tf or settings.timeframe in tfs) else min(files)[1]
        symbols = sorted(s for s, t in files if t == tf)
        if not symbols:
            raise ValueError(f"no {tf} export in {folder}; found {sorted(files)}")
    else:
        missing = sorted(wanted - set(files))
        raise ValueError(f"no export for {missing} in {folder}; found {sorted(files)}")
    chosen = settings.model_copy(update={"symbols": symbols, "timeframe": tf})
    rules = []
    for sym in symbols:
        try:
            det = detect_offset(export_of(chosen, sym, tf).rates["time"], tf)
            rules.append(f"{sym} {det.suggested or 'inconclusive (' + det.reason + ')'}")
        except MissingColumnError as exc:
            rules.append(f"{sym} unreadable: {exc}")
    message = (
        f"auto-detected from {folder}: {','.join(symbols)} {tf}; broker time rule the detector "
        f"suggests: {'; '.join(rules)} (configured: {broker_rule(settings).spec}, "
        "set TX_BROKER_TZ to change it)"
    )
    log.info("%s", message)
    return chosen, message
