"""The bar lake: partitioned parquet, ``<root>/symbol=S/timeframe=TF/date=YYYY-MM-DD/bars.parquet``.

Next to a symbol's bars, ``<root>/symbol=S/_symbol.json`` keeps its contract metadata from the
terminal's ``symbol_info`` (digits, point, contract size, volume min/step/max, trade and filling
modes, stops level, currencies; see :func:`symbol_meta`), written atomically by ingest and read
back with :func:`read_symbol_meta` / :func:`symbol_point`. (Its leading underscore keeps it out
of parquet dataset discovery.)

Bars are stored in UTC. ``time`` is the bar's open time, ``close_time`` its close; ``server_time``
keeps the raw MT5 value (open time, broker server time, epoch seconds) for audit. Writes are
atomic and overwrite: a partition is replaced whole, so re-running an interval leaves the same
bytes and no duplicates.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

BAR_COLUMNS = [
    "time",
    "close_time",
    "symbol",
    "timeframe",
    "open",
    "high",
    "low",
    "close",
    "tick_volume",
    "spread",
    "real_volume",
    "server_time",
]

BAR_SCHEMA = pa.schema(
    [
        ("time", pa.timestamp("ns", tz="UTC")),
        ("close_time", pa.timestamp("ns", tz="UTC")),
        ("symbol", pa.string()),
        ("timeframe", pa.string()),
        ("open", pa.float64()),
        ("high", pa.float64()),
        ("low", pa.float64()),
        ("close", pa.float64()),
        ("tick_volume", pa.int64()),
        ("spread", pa.int32()),
        ("real_volume", pa.int64()),
        ("server_time", pa.int64()),
    ]
)


def partition_dir(root: Path, symbol: str, timeframe: str, day: date) -> Path:
    return root / f"symbol={symbol}" / f"timeframe={timeframe}" / f"date={day.isoformat()}"


def days_in(start: datetime, end: datetime) -> Iterator[date]:
    """UTC days that bars with open time in [start, end) can fall on."""
    d = start.astimezone(UTC).date()
    last = (end.astimezone(UTC) - timedelta(microseconds=1)).date()
    while d <= last:
        yield d
        d += timedelta(days=1)


def write_parquet_atomic(df: pd.DataFrame, path: Path, schema: pa.Schema | None = None) -> None:
    """Write ``df`` to ``path`` through a temp file and rename: readers never see half a file.

    The output is deterministic for equal input (no write timestamps in the metadata)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(df, schema=schema, preserve_index=False)
    table = table.replace_schema_metadata(None)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        pq.write_table(table, tmp, compression="zstd", write_statistics=True)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_partition(root: Path, bars: pd.DataFrame, symbol: str, timeframe: str, day: date) -> Path:
    """Replace one day's partition with ``bars`` (already UTC, sorted, that day only)."""
    part = partition_dir(root, symbol, timeframe, day)
    path = part / "bars.parquet"
    write_parquet_atomic(bars[BAR_COLUMNS].reset_index(drop=True), path, BAR_SCHEMA)
    return path


def read_partition(root: Path, symbol: str, timeframe: str, day: date) -> pd.DataFrame | None:
    path = partition_dir(root, symbol, timeframe, day) / "bars.parquet"
    if not path.exists():
        return None
    return pq.read_table(path, schema=BAR_SCHEMA).to_pandas()


def remove_partition(root: Path, symbol: str, timeframe: str, day: date) -> bool:
    """Delete one day's partition under ``root``; returns whether there was one."""
    part = partition_dir(root, symbol, timeframe, day)
    if not part.exists():
        return False
    shutil.rmtree(part)
    return True


def move_partition(
    src_root: Path, dst_root: Path, symbol: str, timeframe: str, day: date
) -> Path | None:
    """Move a partition between roots (staging → lake/quarantine), replacing the target."""
    src = partition_dir(src_root, symbol, timeframe, day)
    if not src.exists():
        return None
    dst = partition_dir(dst_root, symbol, timeframe, day)
    if dst.exists():
        shutil.rmtree(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(src), str(dst))
    return dst


def read_bars(
    root: Path, symbol: str, timeframe: str, start: datetime, end: datetime
) -> pd.DataFrame:
    """Bars with open time in [start, end), sorted by time, from the partitions present."""
    frames = [
        df
        for day in days_in(start, end)
        if (df := read_partition(root, symbol, timeframe, day)) is not None and len(df)
    ]
    if not frames:
        return pd.DataFrame(
            {c: pd.Series(dtype=BAR_SCHEMA.field(c).type.to_pandas_dtype()) for c in BAR_COLUMNS}
        )
    df = pd.concat(frames, ignore_index=True)
    s, e = pd.Timestamp(start).tz_convert("UTC"), pd.Timestamp(end).tz_convert("UTC")
    df = df[(df["time"] >= s) & (df["time"] < e)]
    return df.sort_values("time").reset_index(drop=True)


# --- symbol metadata ----------------------------------------------------------------------------

SYMBOL_META_FILE = "_symbol.json"
SYMBOL_META_FIELDS = (
    "name",
    "description",
    "path",
    "currency_base",
    "currency_profit",
    "currency_margin",
    "digits",
    "point",
    "trade_tick_size",
    "trade_tick_value",
    "trade_contract_size",
    "trade_calc_mode",
    "trade_mode",
    "trade_exemode",
    "filling_mode",
    "order_mode",
    "expiration_mode",
    "trade_stops_level",
    "trade_freeze_level",
    "volume_min",
    "volume_step",
    "volume_max",
    "volume_limit",
    "spread_float",
    "swap_mode",
    "swap_long",
    "swap_short",
    "margin_initial",
    "margin_maintenance",
    "margin_hedged",
)
"""The ``SymbolInfo`` fields kept with the lake: the contract, not the market (no bid/ask)."""

_TRADE_MODES = {0: "DISABLED", 1: "LONGONLY", 2: "SHORTONLY", 3: "CLOSEONLY", 4: "FULL"}
_FILLING_FLAGS = {1: "FOK", 2: "IOC", 4: "BOC"}  # symbol_info().filling_mode bits


def symbol_meta(info: Any) -> dict[str, Any]:
    """The lake's metadata record of a ``symbol_info()`` answer (any object with its fields):
    :data:`SYMBOL_META_FIELDS` plus readable ``trade_mode_name`` and ``filling_modes``."""
    meta: dict[str, Any] = {}
    for name in SYMBOL_META_FIELDS:
        v = getattr(info, name, None)
        if v is None:
            continue
        meta[name] = v.item() if hasattr(v, "item") else v
    if "point" in meta:
        meta["point"] = round(float(meta["point"]), int(meta.get("digits", 10)))
    meta["symbol"] = meta.get("name", "")
    meta["trade_mode_name"] = _TRADE_MODES.get(int(meta.get("trade_mode", -1)), "UNKNOWN")
    flags = int(meta.get("filling_mode", 0))
    meta["filling_modes"] = [n for bit, n in _FILLING_FLAGS.items() if flags & bit] or ["RETURN"]
    return meta


def symbol_meta_path(root: Path, symbol: str) -> Path:
    return root / f"symbol={symbol}" / SYMBOL_META_FILE


def write_symbol_meta(root: Path, symbol: str, meta: dict[str, Any]) -> Path:
    """Write ``meta`` as ``<root>/symbol=S/_symbol.json`` through a temp file and a rename;
    an unchanged record is not rewritten (same bytes, same mtime)."""
    path = symbol_meta_path(root, symbol)
    data = json.dumps({**meta, "symbol": symbol}, sort_keys=True, indent=1) + "\n"
    return _write_if_changed(path, data.encode())


def _write_if_changed(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temp file and a rename, unless the file already
    holds these bytes (then its mtime stays)."""
    if path.exists() and path.read_bytes() == data:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_symbol_meta(root: Path, symbol: str) -> dict[str, Any] | None:
    """The stored metadata of ``symbol``, or ``None`` when ingest has not written any."""
    path = symbol_meta_path(root, symbol)
    if not path.exists():
        return None
    meta: dict[str, Any] = json.loads(path.read_text())
    return meta


def symbol_point(root: Path, symbol: str) -> float | None:
    """The price of one point of ``symbol`` from the stored metadata, or ``None``."""
    meta = read_symbol_meta(root, symbol)
    if meta is None or "point" not in meta:
        return None
    return float(meta["point"])


# --- column sources -----------------------------------------------------------------------------

COLUMN_SOURCES_FILE = "_sources.json"


def column_sources_path(root: Path, symbol: str, timeframe: str) -> Path:
    return root / f"symbol={symbol}" / f"timeframe={timeframe}" / COLUMN_SOURCES_FILE


def write_column_sources(
    root: Path, symbol: str, timeframe: str, filled: dict[str, Any], file: str
) -> Path | None:
    """Record which columns of ``symbol``/``timeframe`` were not in the export ``file`` and
    where their values came from (``{"spread": {"source": "constant:12", "value": 12}}``) as
    ``<root>/symbol=S/timeframe=TF/_sources.json``; an empty ``filled`` removes the record
    (every column came from the file). Returns the path written, or ``None``."""
    path = column_sources_path(root, symbol, timeframe)
    if not filled:
        path.unlink(missing_ok=True)
        return None
    data = json.dumps({"file": file, "filled": filled}, sort_keys=True, indent=1) + "\n"
    return _write_if_changed(path, data.encode())


def read_column_sources(root: Path) -> dict[str, dict[str, Any]]:
    """Every ``_sources.json`` under ``root``: ``"SYMBOL TF"`` → its record."""
    out: dict[str, dict[str, Any]] = {}
    for p in (
        sorted(root.glob(f"symbol=*/timeframe=*/{COLUMN_SOURCES_FILE}")) if root.exists() else []
    ):
        key = f"{p.parts[-3].split('=', 1)[1]} {p.parts[-2].split('=', 1)[1]}"
        out[key] = json.loads(p.read_text())
    return out
