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

Nothing is dropped silently: every line that cannot become a valid bar (wrong field count,
unparsable time or number, non-positive price, ``high``/``low`` inconsistent with
``open``/``close``, negative volume or spread, a time off the timeframe's grid, a duplicate
time, an empty line) is kept out of the array and listed in :attr:`Export.rejected` as
``(line_no, raw_line, reason)`` with 1-based line numbers (the header is line 1). Rows out of
time order are kept and sorted, with a warning in the log.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from engine.mt5.protocol import RATES_DTYPE, TIMEFRAMES, timeframe_seconds
from engine.mt5.synthetic import SYMBOLS

__all__ = ["Export", "parse_export_name", "read_export", "scan_exports"]

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
) -> Export:
    """Read one MT5 export (copy_rates CSV or History Center TSV) into an :class:`Export`.

    ``symbol``/``timeframe`` default to the file name's ``<SYMBOL>_<TF>`` prefix. ``digits``
    defaults to the symbol's digits in :data:`~engine.mt5.synthetic.SYMBOLS` (unless the data
    carries more decimals, which wins) and is otherwise inferred from the prices.
    Raises ``ValueError`` when the header cannot be understood or symbol/timeframe are
    unknown; bad *rows* never raise, they are returned in ``Export.rejected``.
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
    rejected: list[tuple[int, str, str]] = []
    parsed = _parse_rows(lines, first_data, delim, columns, rejected)
    line_no, raw, times, prices, ints = parsed

    n = len(times)
    t = np.asarray(times, dtype=np.int64)
    px = np.asarray(prices, dtype=np.float64).reshape(n, 4)
    iv = np.asarray(ints, dtype=np.int64).reshape(n, 3)
    d = _choose_digits(sym, px, digits, src.name)
    rounded = np.round(px, d)
    rounded_rows = int(np.count_nonzero(np.any(rounded != px, axis=1)))
    o, h, lo, c = rounded.T

    bad = np.zeros(n, dtype=bool)
    reasons: dict[int, str] = {}

    def flag(mask: np.ndarray, reason: str) -> None:
        for i in np.flatnonzero(mask & ~bad):
            reasons[int(i)] = reason
        bad[:] |= mask

    flag(lo <= 0, "non-positive price")
    flag(h < lo, "high < low")
    flag(h < np.maximum(o, c), "high < max(open, close)")
    flag(lo > np.minimum(o, c), "low > min(open, close)")
    tfs = timeframe_seconds(tf)
    flag(t % tfs != 0, f"time is not on the {tf} grid")
    # duplicates among the rows kept so far: keep the first occurrence in file order
    order = np.argsort(t, kind="stable")
    keep_idx = order[~bad[order]]
    tk = t[keep_idx]
    dup = np.zeros(n, dtype=bool)
    if len(keep_idx) > 1:
        dup[keep_idx[1:][tk[1:] == tk[:-1]]] = True
    flag(dup, "duplicate time")
    for i, reason in reasons.items():
        rejected.append((line_no[i], raw[i], reason))
    rejected.sort(key=lambda r: r[0])

    good = ~bad
    if np.any(np.diff(t[good]) < 0):
        logger.warning("%s: rows are not in time order; sorted", src.name)
    idx = np.flatnonzero(good)
    idx = idx[np.argsort(t[idx], kind="stable")]
    out = np.empty(len(idx), dtype=RATES_DTYPE)
    out["time"] = t[idx]
    out["open"], out["high"], out["low"], out["close"] = o[idx], h[idx], lo[idx], c[idx]
    out["tick_volume"] = iv[idx, 0].astype(np.uint64)
    out["spread"] = iv[idx, 1].astype(np.int32)
    out["real_volume"] = iv[idx, 2].astype(np.uint64)
    if rejected:
        logger.warning(
            "%s: %d line(s) rejected, e.g. line %d: %s", src.name, len(rejected), *rejected[0][::2]
        )
    return Export(sym, tf, out, src, rejected, fmt, d, rounded_rows)


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
    rejected: list[tuple[int, str, str]],
) -> tuple[list[int], list[str], list[int], list[float], list[int]]:
    """Parse data lines into flat lists; lines that fail go to ``rejected``."""
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
            rejected.append((k + 1, line, parsed))
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
