"""Importers for bar exports written from MT5, returned as :data:`RATES_DTYPE` arrays.

Two formats are read (the format is recognised from the header, not from the name):

* **copy_rates CSV**: what ``pd.DataFrame(mt5.copy_rates_*(...)).to_csv()`` writes:
  ``time,open,high,low,close,tick_volume,spread,real_volume`` with ``time`` either a naive
  ``YYYY-MM-DD HH:MM:SS`` string or epoch seconds (also ``1714752000.0``, or milliseconds).
  Columns are found by name, so a leading index column or trailing extra columns (derived
  features) are ignored.
* **History Center / "Export bars"**: tab-separated ``<DATE> <TIME> <OPEN> <HIGH> <LOW>
  <CLOSE> <TICKVOL> <VOL> <SPREAD>`` with dates as ``2025.01.02`` (``<TIME>`` may be absent
  in D1 exports). UTF-16 files with a byte-order mark, as the terminal sometimes writes,
  are decoded too.

Both CRLF and LF line endings are accepted, blank lines after the data are ignored, and a
semicolon-separated file may use decimal commas (``1,08500``). All times are kept in broker
**server time**, as written (an offset in a time string is dropped and its wall clock kept: MT5
times are server wall-clock seconds). Prices are rounded to the symbol's digits, which removes the
binary float artefacts pandas writes (``1.0883099999999999`` -> ``1.08831``).

Nothing is dropped, defaulted or reordered silently. Every line that cannot become a valid bar
(wrong field count, unparsable time or number, NaN, non-positive price, ``high``/``low``
inconsistent with ``open``/``close``, negative volume or spread, a time off the timeframe's
grid, a second line at a time already taken with *different* values, an empty line) is kept out
of the array and listed in :attr:`Export.rejected` as ``(line_no, raw_line, reason)`` with
1-based line numbers (the header is line 1). Repairs (an identical duplicate line dropped, rows
out of time order sorted) are listed in :attr:`Export.repairs`. Both are also in
:attr:`Export.issues` as :class:`ImportIssue` records that name the validation rule judging them
and the line's server time, so ingest can hand them to the validation of their UTC day.

A file without a ``spread`` or ``tick_volume`` column is refused (:class:`MissingColumnError`)
unless the caller passes a value for it in ``fill`` (``read_export(..., fill={"spread": 12})``):
the importer never invents a trading cost. :func:`check_rates` runs the same row checks on bars
that come from a terminal (native or bridge) instead of a file.
"""

from __future__ import annotations

import bisect
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from engine.mt5.protocol import RATES_DTYPE, TIMEFRAMES, timeframe_seconds
from engine.mt5.synthetic import SYMBOLS

__all__ = [
    "Export",
    "ImportIssue",
    "MissingColumnError",
    "check_rates",
    "parse_column_source",
    "parse_export_name",
    "read_export",
    "scan_exports",
]

logger = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1)
_ONE_SECOND = timedelta(seconds=1)
_NAME_RE = re.compile(
    r"^(?P<symbol>[A-Za-z0-9.#!+\-]+?)_(?P<tf>M1|M5|M15|M30|H1|H4|D1)(?:_.*)?$", re.IGNORECASE
)
_SUFFIXES = {".csv", ".tsv", ".txt"}
_EPOCH_FLOAT_RE = re.compile(r"^\d{9,13}\.0*$")

# header names (lower-case, without <>) -> RATES_DTYPE field
_COLUMN_ALIASES: dict[str, str] = {
    "time": "time",
    "date": "date",
    "datetime": "time",
    "open": "open",
    "high": "high",
    "low": "low",
    "close": "close",
    "tick_volume": "tick_volume",
    "tickvol": "tick_volume",
    "spread": "spread",
    "real_volume": "real_volume",
    "vol": "real_volume",
    "volume": "real_volume",
}
_DEFAULT_ORDER = ("time", "open", "high", "low", "close", "tick_volume", "spread", "real_volume")
FILLABLE_COLUMNS = ("spread", "tick_volume")
"""Columns a file may lack only when the caller says where their values come from."""

# reason prefix -> the validation rule that judges a rejected line (feature_repo validation_rules)
_REASON_RULES: tuple[tuple[str, str], ...] = (
    ("non-positive price", "ohlc_consistency"),
    ("high < ", "ohlc_consistency"),
    ("low > ", "ohlc_consistency"),
    ("negative spread", "spread_non_negative"),
    ("time is not on the", "timeframe_alignment"),
    ("duplicate time with different values", "duplicate_conflict"),
    ("identical duplicate", "import_repaired"),
    ("out of time order", "import_repaired"),
)


def rule_of(reason: str) -> str:
    """The validation rule that judges an importer reason (``rejected_line`` by default:
    the line could not be read as a bar at all)."""
    for prefix, rule in _REASON_RULES:
        if reason.startswith(prefix):
            return rule
    return "rejected_line"


class MissingColumnError(ValueError):
    """The file lacks a column (``spread``, ``tick_volume``) and no source was given for it."""


@dataclass(frozen=True)
class ImportIssue:
    """One line the importer rejected or repaired.

    ``rule`` is the validation rule that judges it (:func:`rule_of`); ``server_time`` the
    line's bar time in server time, or, when the line's own time cannot be read, the time of
    the nearest readable line before it (after it, for the first lines), so the issue lands on
    a day; ``None`` only when no line of the file has a readable time."""

    line_no: int
    raw: str
    reason: str
    rule: str
    server_time: int | None
    repaired: bool = False


def parse_column_source(spec: str) -> tuple[str, int | None]:
    """``"constant:12"`` → ``("constant", 12)``; ``"symbol_info"`` → ``("symbol_info", None)``.

    Raises ``ValueError`` on anything else (the documented sources of a missing column)."""
    text = spec.strip().lower()
    if text == "symbol_info":
        return "symbol_info", None
    if text.startswith("constant:"):
        try:
            value = int(text.split(":", 1)[1])
        except ValueError:
            value = -1
        if value >= 0:
            return "constant", value
    raise ValueError(f"column source {spec!r}: use constant:N (N >= 0, an integer) or symbol_info")


@dataclass
class Export:
    """One parsed export file.

    ``rates`` is sorted by ``time`` (server time), unique, with prices rounded to
    ``digits``; ``rejected`` lists the lines kept out of it; ``rounded_rows`` counts the rows
    whose prices were changed by rounding (float artefacts).
    """

    symbol: str
    timeframe: str
    rates: np.ndarray
    source: Path
    rejected: list[tuple[int, str, str]] = field(default_factory=list)
    format: str = "copy_rates"
    digits: int = 5
    rounded_rows: int = 0
    issues: list[ImportIssue] = field(default_factory=list)
    filled: dict[str, int] = field(default_factory=dict)  # column -> value given for it

    @property
    def repairs(self) -> list[ImportIssue]:
        return [i for i in self.issues if i.repaired]

    def __len__(self) -> int:
        return len(self.rates)


def parse_export_name(name: str | Path) -> tuple[str, str] | None:
    """``(symbol, timeframe)`` from a file name like ``EURUSD_H1__owner_repo.csv``.

    Also matches ``EURUSD_H1.csv`` and the terminal's ``XAUUSD_M5_202501020100_….csv``.
    Returns ``None`` when the name does not follow the pattern.
    """
    m = _NAME_RE.match(Path(name).stem)
    if m is None:
        return None
    return m.group("symbol"), m.group("tf").upper()


def scan_exports(folder: str | Path) -> dict[tuple[str, str], Path]:
    """Map ``(symbol, timeframe)`` to the export file for it in ``folder`` (not recursive).

    Only ``.csv``/``.tsv``/``.txt`` files named ``<SYMBOL>_<TF>…`` are listed; the content
    is not read. When two files claim the same pair the first by name wins (logged).
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"export folder not found: {root}")
    found: dict[tuple[str, str], Path] = {}
    for p in sorted(root.iterdir()):
        if not p.is_file() or p.suffix.lower() not in _SUFFIXES:
            continue
        key = parse_export_name(p.name)
        if key is None:
            logger.debug("skipping %s: name is not <SYMBOL>_<TF>…", p.name)
            continue
        if key in found:
            logger.warning(
                "%s: %s/%s already provided by %s; ignored", p.name, *key, found[key].name
            )
            continue
        found[key] = p
    return found


def read_export(
    path: str | Path,
    symbol: str | None = None,
    timeframe: str | None = None,
    *,
    digits: int | None = None,
    fill: Mapping[str, int] | None = None,
) -> Export:
    """Read one MT5 export (copy_rates CSV or History Center TSV) into an :class:`Export`.

    ``symbol``/``timeframe`` default to the file name's ``<SYMBOL>_<TF>…`` prefix. ``digits``
    defaults to the symbol's digits in :data:`~engine.mt5.synthetic.SYMBOLS` (unless the data
    carries more decimals, which wins) and is otherwise inferred from the prices. ``fill``
    gives the value of a column the file lacks (``spread``, ``tick_volume``).
    Raises ``ValueError`` when the header cannot be understood or symbol/timeframe are
    unknown, :class:`MissingColumnError` when ``spread``/``tick_volume`` are absent and not in
    ``fill``; bad *rows* never raise, they are returned in ``Export.rejected``/``issues``.
    """
    src = Path(path)
    from_name = parse_export_name(src.name)
    sym = symbol or (from_name[0] if from_name else None)
    tf = (timeframe or (from_name[1] if from_name else "")).upper() or None
    if sym is None or tf is None:
        raise ValueError(f"{src.name}: pass symbol and timeframe, the name is not <SYMBOL>_<TF>…")
    if tf not in TIMEFRAMES:
        raise ValueError(f"{src.name}: unsupported timeframe {tf!r}; use one of {list(TIMEFRAMES)}")

    lines = _decode(src.read_bytes()).split("\n")
    lines = [ln[:-1] if ln.endswith("\r") else ln for ln in lines]
    while lines and not lines[-1].strip():
        lines.pop()  # the final line ending, and blank lines after the data
    if not lines:
        return Export(sym, tf, np.empty(0, dtype=RATES_DTYPE), src)

    delim, columns, first_data, fmt = _read_header(lines[0], src.name)
    filled: dict[str, int] = {}
    for col in FILLABLE_COLUMNS:
        if col in columns:
            continue
        if fill is None or col not in fill:
            raise MissingColumnError(
                f"{src.name}: the file has no {col} column and no source is configured for it; "
                f"the importer does not invent {col} values (set the {col} source to "
                "constant:N or symbol_info)"
            )
        filled[col] = int(fill[col])
    early: list[tuple[int, str, str, int | None]] = []
    parsed = _parse_rows(lines, first_data, delim, columns, early)
    line_no, raw, times, prices, ints = parsed

    n = len(times)
    t = np.asarray(times, dtype=np.int64)
    px = np.asarray(prices, dtype=np.float64).reshape(n, 4)
    iv = np.asarray(ints, dtype=np.int64).reshape(n, 3)
    d = _choose_digits(sym, px, digits, src.name)
    rounded = np.round(px, d)
    rounded_rows = int(np.count_nonzero(np.any(rounded != px, axis=1)))
    idx, found = _screen(t, rounded, iv, tf, line_no, raw)
    out = np.empty(len(idx), dtype=RATES_DTYPE)
    out["time"] = t[idx]
    o, h, lo, c = rounded[idx].T
    out["open"], out["high"], out["low"], out["close"] = o, h, lo, c
    out["tick_volume"] = iv[idx, 0].astype(np.uint64)
    out["spread"] = iv[idx, 1].astype(np.int32)
    out["real_volume"] = iv[idx, 2].astype(np.uint64)
    if "spread" in filled:
        out["spread"] = filled["spread"]
    if "tick_volume" in filled:
        out["tick_volume"] = filled["tick_volume"]

    issues = found + _place_early(early, line_no, times)
    issues.sort(key=lambda i: i.line_no)
    rejected = [(i.line_no, i.raw, i.reason) for i in issues if not i.repaired]
    if rejected:
        logger.warning(
            "%s: %d line(s) rejected, e.g. line %d: %s", src.name, len(rejected), *rejected[0][::2]
        )
    repaired = len(issues) - len(rejected)
    if repaired:
        logger.warning("%s: %d line(s) repaired (see Export.repairs)", src.name, repaired)
    return Export(sym, tf, out, src, rejected, fmt, d, rounded_rows, issues, filled)


def check_rates(rates: np.ndarray, timeframe: str) -> tuple[np.ndarray, list[ImportIssue]]:
    """The importer's row checks on bars from a terminal (``copy_rates_*``), before staging.

    Returns the bars that pass, sorted by time and unique, and an :class:`ImportIssue` per row
    rejected or repaired; ``line_no`` is the row's 1-based position in ``rates`` and ``raw``
    the row as a ``copy_rates`` CSV line."""
    tf = timeframe.upper()
    n = len(rates)
    t = rates["time"].astype(np.int64)
    px = np.column_stack([rates[k].astype(np.float64) for k in ("open", "high", "low", "close")])
    iv = np.column_stack(
        [rates[k].astype(np.int64) for k in ("tick_volume", "spread", "real_volume")]
    ).reshape(n, 3)
    raw = [",".join(str(v) for v in row) for row in rates[list(_DEFAULT_ORDER)].tolist()]
    idx, issues = _screen(t, px.reshape(n, 4), iv, tf, list(range(1, n + 1)), raw)
    return rates[idx].copy(), issues


def _screen(
    t: np.ndarray,
    px: np.ndarray,
    iv: np.ndarray,
    tf: str,
    line_no: list[int],
    raw: list[str],
) -> tuple[np.ndarray, list[ImportIssue]]:
    """Row checks shared by files and terminals: the indices of the rows to keep (sorted by
    time, unique) and the issues (rejections and repairs) of the others."""
    n = len(t)
    o, h, lo, c = px.T if n else (np.empty(0),) * 4
    bad = np.zeros(n, dtype=bool)
    reasons: dict[int, str] = {}

    def flag(mask: np.ndarray, reason: str) -> None:
        for i in np.flatnonzero(mask & ~bad):
            reasons[int(i)] = reason
        bad[:] |= mask

    with np.errstate(invalid="ignore"):
        flag(~np.isfinite(px).all(axis=1) if n else bad.copy(), "bad price (not a finite number)")
        flag(np.minimum.reduce([o, h, lo, c]) <= 0 if n else bad.copy(), "non-positive price")
        flag(h < lo, "high < low")
        flag(h < np.maximum(o, c), "high < max(open, close)")
        flag(lo > np.minimum(o, c), "low > min(open, close)")
    if n:
        flag(iv[:, 1] < 0, "negative spread")
        flag((iv[:, 0] < 0) | (iv[:, 2] < 0), "negative volume")
    tfs = timeframe_seconds(tf)
    flag(t % tfs != 0, f"time is not on the {tf} grid")
    # duplicates among the rows kept so far: keep the first occurrence in file order
    order = np.argsort(t, kind="stable")
    keep_idx = order[~bad[order]]
    repaired: dict[int, str] = {}
    if len(keep_idx) > 1:
        tk = t[keep_idx]
        new_time = np.concatenate([[True], tk[1:] != tk[:-1]])
        run_first = keep_idx[np.maximum.accumulate(np.where(new_time, np.arange(tk.size), 0))]
        for j in np.flatnonzero(~new_time):
            i, first = int(keep_idx[j]), int(run_first[j])
            if np.array_equal(px[i], px[first]) and np.array_equal(iv[i], iv[first]):
                repaired[i] = f"identical duplicate of line {line_no[first]} dropped"
            else:
                reasons[i] = f"duplicate time with different values than line {line_no[first]}"
            bad[i] = True
    good = np.flatnonzero(~bad)
    # rows out of time order (among the rows kept): each one that comes after a later time
    if good.size > 1:
        tg = t[good]
        running = np.maximum.accumulate(tg)
        late = np.flatnonzero(tg[1:] < running[:-1]) + 1
        for j in late:
            i = int(good[j])
            repaired[i] = "out of time order; sorted into place"
    issues = [
        ImportIssue(line_no[i], raw[i], r, rule_of(r), int(t[i])) for i, r in reasons.items()
    ] + [
        ImportIssue(line_no[i], raw[i], r, rule_of(r), int(t[i]), repaired=True)
        for i, r in repaired.items()
    ]
    if good.size and np.any(np.diff(t[good]) < 0):
        logger.warning("rows are not in time order; sorted")
    return good[np.argsort(t[good], kind="stable")], issues


def _place_early(
    early: list[tuple[int, str, str, int | None]], line_no: list[int], times: list[int]
) -> list[ImportIssue]:
    """Issues of the lines that failed to parse, each with its own time or the time of the
    nearest parsed line before it (after it for the first lines)."""
    out = []
    for ln, raw, reason, ts in early:
        if ts is None and line_no:
            k = bisect.bisect_left(line_no, ln)
            ts = times[k - 1] if k > 0 else times[min(k, len(times) - 1)]
        out.append(ImportIssue(ln, raw, reason, rule_of(reason), ts))
    return out


# --- internals --------------------------------------------------------------------------------


def _decode(data: bytes) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16")
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _clean(field_: str) -> str:
    return field_.strip().strip('"').strip()


def _read_header(line: str, name: str) -> tuple[str, dict[str, int], int, str]:
    """Delimiter, column positions, index of the first data line and the format name."""
    delim = "\t" if "\t" in line else ";" if line.count(";") > line.count(",") else ","
    cells = [_clean(c) for c in line.split(delim)]
    fmt = "history_center" if cells and cells[0].startswith("<") else "copy_rates"
    columns: dict[str, int] = {}
    for i, cell in enumerate(cells):
        key = _COLUMN_ALIASES.get(cell.strip("<>").strip().lower())
        if key is not None and key not in columns:
            columns[key] = i
    if "time" not in columns and "date" not in columns:
        # no header: accept a bare copy_rates layout whose first field is a time
        try:
            _parse_time(cells[0], None)
        except (ValueError, IndexError):
            raise ValueError(f"{name}: header has no time/date column: {line[:120]!r}") from None
        return delim, {k: i for i, k in enumerate(_DEFAULT_ORDER)}, 0, "copy_rates"
    missing = [k for k in ("open", "high", "low", "close") if k not in columns]
    if missing:
        raise ValueError(f"{name}: header lacks column(s) {missing}: {line[:120]!r}")
    if fmt == "copy_rates" and "date" in columns and "time" not in columns:
        columns["time"], columns["date"] = columns.pop("date"), -1
    return delim, columns, 1, fmt


def _parse_rows(
    lines: list[str],
    first: int,
    delim: str,
    columns: dict[str, int],
    rejected: list[tuple[int, str, str, int | None]],
) -> tuple[list[int], list[str], list[int], list[float], list[int]]:
    """Parse data lines into flat lists; lines that fail go to ``rejected`` with their reason
    and their time when it can be read."""
    ci_date = columns.get("date", -1)
    ci_time = columns.get("time", -1)
    td, tt = (ci_date, ci_time) if ci_date >= 0 else (ci_time, -1)
    io, ih, il, ic = columns["open"], columns["high"], columns["low"], columns["close"]
    itv, isp, irv = (columns.get(k, -1) for k in ("tick_volume", "spread", "real_volume"))
    layout = (td, tt, (io, ih, il, ic), (itv, isp, irv))
    needed = 1 + max(td, tt, io, ih, il, ic, itv, isp, irv)

    line_no: list[int] = []
    raw: list[str] = []
    times: list[int] = []
    prices: list[float] = []
    ints: list[int] = []
    isfinite = math.isfinite
    decimal_comma = delim == ";"  # a European-locale export: "1,08500;1,08600"
    for k in range(first, len(lines)):
        line = lines[k]
        cells = (line.replace(",", ".") if decimal_comma else line).split(delim)
        if len(cells) >= needed:
            # fast path: plain cells; anything unusual is re-parsed below to explain it
            try:
                ts = _parse_time(cells[td].strip(), cells[tt].strip() if tt >= 0 else None)
                o, h, lo, c = float(cells[io]), float(cells[ih]), float(cells[il]), float(cells[ic])
                v1 = int(cells[itv]) if itv >= 0 else 0
                v2 = int(cells[isp]) if isp >= 0 else 0
                v3 = int(cells[irv]) if irv >= 0 else 0
            except ValueError:
                ts = -1  # not plain: the slow path below explains what is wrong
            if ts >= 0 and isfinite(o + h + lo + c) and v1 >= 0 and v2 >= 0 and v3 >= 0:
                line_no.append(k + 1)
                raw.append(line)
                times.append(ts)
                prices.extend((o, h, lo, c))
                ints.extend((v1, v2, v3))
                continue
        parsed = _parse_row_slow(line, cells, needed, layout)
        if isinstance(parsed, str):
            rejected.append((k + 1, line, parsed, _try_time(cells, td, tt)))
            continue
        line_no.append(k + 1)
        raw.append(line)
        times.append(parsed[0])
        prices.extend(parsed[1])
        ints.extend(parsed[2])
    return line_no, raw, times, prices, ints


def _parse_row_slow(
    line: str,
    cells: list[str],
    needed: int,
    layout: tuple[int, int, tuple[int, ...], tuple[int, ...]],
) -> tuple[int, list[float], list[int]] | str:
    """Parse one row cell by cell (quotes stripped, ``"12.0"`` volumes accepted).

    Returns ``(time, prices, ints)`` or the reason the row is rejected.
    """
    if not line.strip():
        return "empty line"
    if len(cells) < needed:
        return f"expected at least {needed} fields, got {len(cells)}"
    td, tt, ci_px, ci_int = layout
    d_cell = _clean(cells[td])
    t_cell = _clean(cells[tt]) if tt >= 0 else None
    try:
        ts = _parse_time(d_cell, t_cell)
    except ValueError:
        shown = d_cell if t_cell is None else f"{d_cell} {t_cell}"
        return f"bad time {shown!r}"
    px: list[float] = []
    for name, ci in zip(("open", "high", "low", "close"), ci_px, strict=True):
        cell = _clean(cells[ci])
        try:
            v = float(cell)
        except ValueError:
            return f"bad {name} {cell!r}"
        if not math.isfinite(v):
            return f"bad {name} {cell!r}"
        px.append(v)
    ivs: list[int] = []
    for name, ci in zip(("tick_volume", "spread", "real_volume"), ci_int, strict=True):
        if ci < 0:
            ivs.append(0)
            continue
        cell = _clean(cells[ci])
        try:
            iv = _parse_int(cell)
        except ValueError:
            return f"bad {name} {cell!r}"
        if iv < 0:
            return f"negative {name} {cell!r}"
        ivs.append(iv)
    return ts, px, ivs


def _try_time(cells: list[str], td: int, tt: int) -> int | None:
    try:
        return _parse_time(_clean(cells[td]), _clean(cells[tt]) if tt >= 0 else None)
    except (ValueError, IndexError):
        return None


def _parse_int(cell: str) -> int:
    try:
        return int(cell)
    except ValueError:
        f = float(cell)
        if not f.is_integer():
            raise ValueError(cell) from None
        return int(f)


def _parse_time(date_cell: str, time_cell: str | None) -> int:
    """Server-time epoch seconds from ``"2024-05-15 10:00:00"``, ``"2025.01.02"`` +
    ``"01:00:00"``, ``"1389657600"`` (epoch seconds; 13+ digits are read as milliseconds)."""
    s = date_cell if time_cell is None else f"{date_cell} {time_cell}"
    if s.isdigit():
        v = int(s)
        return v // 1000 if len(s) >= 13 else v
    if _EPOCH_FLOAT_RE.match(s):  # "1714752000.0": an epoch column pandas wrote as float
        v = int(s.split(".", 1)[0])
        return v // 1000 if len(s.split(".", 1)[0]) >= 13 else v
    if len(s) >= 10 and s[4] == "." and s[7] == ".":
        s = s[:4] + "-" + s[5:7] + "-" + s[8:]
    dt = datetime.fromisoformat(s)
    if dt.tzinfo is not None:
        dt = dt.replace(tzinfo=None)
    return (dt - _EPOCH) // _ONE_SECOND


def _infer_digits(px: np.ndarray) -> int | None:
    """The fewest decimals (0-8) that represent every price, or None if none does."""
    if px.size == 0:
        return None
    tol = 1e-9 * np.maximum(np.abs(px), 1.0)
    for d in range(9):
        if np.all(np.abs(np.round(px, d) - px) <= tol):
            return d
    return None


def _choose_digits(symbol: str, px: np.ndarray, digits: int | None, name: str) -> int:
    if digits is not None:
        return int(digits)
    known = SYMBOLS.get(symbol.upper())
    inferred = _infer_digits(px)
    if known is not None:
        if inferred is not None and inferred > known.digits:
            logger.warning(
                "%s: prices carry %d decimals, more than %s's %d; keeping %d",
                name,
                inferred,
                known.name,
                known.digits,
                inferred,
            )
            return inferred
        return known.digits
    if inferred is None:
        logger.warning("%s: cannot infer digits of %s from the data; using 5", name, symbol)
        return 5
    return inferred
