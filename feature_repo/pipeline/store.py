"""Features into Feast: the offline parquet, ``feast apply``, materialisation and pushes.

One feature computation per symbol and bar range feeds three views (see
:mod:`feature_repo.pipeline.transforms`): ``trend_fv`` (13 features, service ``trend_v1``),
``trend_v2_fv`` (all 46) and ``bar_sequence_fv`` (the 64-bar ``seq`` array); services
``trend_v1`` = ``trend_fv``, ``trend_v2`` = ``trend_v2_fv`` + ``bar_sequence_fv``. Their offline
parquet lives in sibling folders of ``settings.offline_features_dir``.

``feature_store.yaml`` reads its registry path and Redis connection from the environment;
:func:`feast_env` derives them from :class:`PlatformSettings`, and :func:`open_store` sets them
in this process just before it builds the ``FeatureStore``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from engine.mt5 import timeframe_seconds
from feature_repo.pipeline import lake
from feature_repo.pipeline.transforms import (
    FEATURE_NAMES,
    SEQ_FIELD,
    SEQ_WARMUP_BARS,
    TREND_V1_FEATURES,
    WARMUP_BARS,
    compute_sequences,
    feature_frame,
    last_row,
    last_sequence,
    select_rows,
)
from titanovax.settings import FEATURE_REPO, PlatformSettings, feast_redis_connection_string, utc

log = logging.getLogger(__name__)

FEATURE_VIEW = "trend_fv"
FEATURE_SERVICE = "trend_v1"
V2_VIEW = "trend_v2_fv"
SEQ_VIEW = "bar_sequence_fv"
V2_SERVICE = "trend_v2"
VIEWS: tuple[str, ...] = (FEATURE_VIEW, V2_VIEW, SEQ_VIEW)
VIEW_FIELDS: dict[str, tuple[str, ...]] = {
    FEATURE_VIEW: TREND_V1_FEATURES,
    V2_VIEW: FEATURE_NAMES,
    SEQ_VIEW: (SEQ_FIELD,),
}
SERVICE_VIEWS: dict[str, tuple[str, ...]] = {
    FEATURE_SERVICE: (FEATURE_VIEW,),
    V2_SERVICE: (V2_VIEW, SEQ_VIEW),
}
MATERIALIZE_OVERLAP = timedelta(hours=1)
_SEQ_SCHEMA = pa.schema(
    [
        ("symbol", pa.string()),
        ("event_timestamp", pa.timestamp("ns", tz="UTC")),
        (SEQ_FIELD, pa.list_(pa.float32())),
    ]
)


def offline_dir(settings: PlatformSettings, view: str = FEATURE_VIEW) -> Path:
    """Offline parquet folder of a feature view (``trend_fv`` keeps the historical location)."""
    base = settings.offline_features_dir
    return {
        FEATURE_VIEW: base,
        V2_VIEW: base.parent / "trend_v2",
        SEQ_VIEW: base.parent / "bar_sequence",
    }[view]


#: Feast's online-store connection string when ``TX_REDIS_URL`` is unset. Offline work (apply,
#: point-in-time joins, training) never opens the online store; the host name says why a
#: connection attempt would fail, and the online paths check ``require_redis_url`` first.
OFFLINE_ONLY_REDIS = "tx-redis-url-unset:6379,db=0"


def feast_env(settings: PlatformSettings) -> dict[str, str]:
    """The variables ``feature_store.yaml`` reads (the registry, the offline folders and the
    online store, which offline work does not need: see :data:`OFFLINE_ONLY_REDIS`)."""
    online = (
        feast_redis_connection_string(settings.redis_url)
        if settings.redis_url
        else OFFLINE_ONLY_REDIS
    )
    return {
        "TX_FEAST_REGISTRY": str(settings.feast_registry),
        "TX_FEAST_REDIS": online,
        "TX_OFFLINE_FEATURES": str(offline_dir(settings, FEATURE_VIEW)),
        "TX_OFFLINE_FEATURES_V2": str(offline_dir(settings, V2_VIEW)),
        "TX_OFFLINE_SEQUENCES": str(offline_dir(settings, SEQ_VIEW)),
    }


def feast_apply(settings: PlatformSettings) -> str:
    """Register the repo's definitions (``feast apply``), creating the folders it needs."""
    settings.feast_registry.parent.mkdir(parents=True, exist_ok=True)
    for view in VIEWS:
        offline_dir(settings, view).mkdir(parents=True, exist_ok=True)
    feast_bin = Path(sys.executable).with_name("feast")
    env = {**os.environ, **feast_env(settings)}
    proc = subprocess.run(
        [str(feast_bin), "apply"],
        cwd=FEATURE_REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"feast apply failed:\n{proc.stdout}\n{proc.stderr}")
    log.info("feast apply: %s", proc.stdout.strip().replace("\n", " | "))
    return proc.stdout


def open_store(settings: PlatformSettings) -> Any:
    """A ``feast.FeatureStore`` on the repo, configured from ``settings``."""
    os.environ.update(feast_env(settings))
    from feast import FeatureStore

    return FeatureStore(repo_path=str(FEATURE_REPO))


def lookback(timeframe: str) -> timedelta:
    """History read before an interval so its first bars are past the warm-up (weekends incl.)."""
    bars = max(WARMUP_BARS, SEQ_WARMUP_BARS)
    return timedelta(days=math.ceil(2 * bars * timeframe_seconds(timeframe) / 86400) + 3)


def offline_path(
    settings: PlatformSettings, symbol: str, timeframe: str, day: Any, view: str = FEATURE_VIEW
) -> Path:
    return offline_dir(settings, view) / f"{symbol}_{timeframe}_{day.isoformat()}.parquet"


@dataclass
class FeatureResult:
    symbol: str
    timeframe: str
    rows: int
    files: list[str] = field(default_factory=list)
    view_rows: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def symbol_point(settings: PlatformSettings, symbol: str) -> float:
    """Price of one point of ``symbol`` (spreads are in points): the broker's ``symbol_info``
    stored with the lake at ingest, else the simulator's symbol table (a symbol never ingested)."""
    stored = lake.symbol_point(settings.lake_dir, symbol)
    if stored is not None:
        return stored
    from engine.mt5.synthetic import symbol_spec

    return float(symbol_spec(symbol).point)


def view_rows(
    bars: dict[str, pd.DataFrame], symbol: str, point: float, views: tuple[str, ...] = VIEWS
) -> dict[str, pd.DataFrame]:
    """The rows of each view for ``symbol`` from one feature computation over ``bars`` (all
    configured symbols' bars, keyed by symbol: the others feed the cross-symbol family)."""
    own = bars[symbol]
    out: dict[str, pd.DataFrame] = {}
    tab = [v for v in views if v != SEQ_VIEW]
    if tab:
        frame = (
            feature_frame(own, point, {k: v for k, v in bars.items() if k != symbol})
            if len(own)
            else None
        )
        for v in tab:
            names = list(VIEW_FIELDS[v])
            out[v] = (
                select_rows(frame, names)
                if frame is not None
                else pd.DataFrame(columns=["symbol", "event_timestamp", *names])
            )
    if SEQ_VIEW in views:
        out[SEQ_VIEW] = compute_sequences(own, point)
    return out


def last_view_rows(
    bars: dict[str, pd.DataFrame], symbol: str, point: float
) -> dict[str, dict[str, Any]]:
    """Each view's row of ``symbol``'s last bar in ``bars`` (the per-bar path: the same
    transforms as :func:`view_rows`, only the last row kept); views whose row is not defined
    are left out."""
    own = bars[symbol]
    out: dict[str, dict[str, Any]] = {}
    if own.empty:
        return out
    frame = feature_frame(own, point, {k: v for k, v in bars.items() if k != symbol})
    for v in (FEATURE_VIEW, V2_VIEW):
        row = last_row(frame, VIEW_FIELDS[v])
        if row is not None:
            out[v] = row
    seq = last_sequence(own, point)
    if seq is not None:
        out[SEQ_VIEW] = {
            "symbol": str(own["symbol"].iloc[-1]),
            "event_timestamp": own["close_time"].iloc[-1],
            SEQ_FIELD: seq,
        }
    return out


def read_lake_bars(
    settings: PlatformSettings, timeframe: str, start: datetime, end: datetime
) -> dict[str, pd.DataFrame]:
    """Lake bars of every configured symbol with open time in [start - lookback, end)."""
    return {
        sym: lake.read_bars(settings.lake_dir, sym, timeframe, start - lookback(timeframe), end)
        for sym in settings.symbols
    }


def frames_for_range(
    settings: PlatformSettings,
    symbol: str,
    timeframe: str,
    start: datetime,
    end: datetime,
    views: tuple[str, ...] = VIEWS,
    bars: dict[str, pd.DataFrame] | None = None,
) -> dict[str, pd.DataFrame]:
    """Per view, the rows of the bars with open time in [start, end), from the lake only."""
    start, end = utc(start), utc(end)
    bars = bars if bars is not None else read_lake_bars(settings, timeframe, start, end)
    if symbol not in bars:
        bars = {
            **bars,
            symbol: lake.read_bars(
                settings.lake_dir, symbol, timeframe, start - lookback(timeframe), end
            ),
        }
    step = pd.Timedelta(seconds=timeframe_seconds(timeframe))
    out = {}
    for v, rows in view_rows(bars, symbol, symbol_point(settings, symbol), views).items():
        opened = pd.to_datetime(rows["event_timestamp"], utc=True) - step
        out[v] = rows[(opened >= start) & (opened < end)].reset_index(drop=True)
    return out


def features_for_range(
    settings: PlatformSettings,
    symbol: str,
    timeframe: str,
    start: datetime,
    end: datetime,
    view: str = FEATURE_VIEW,
) -> pd.DataFrame:
    """Feature rows of one view for the bars with open time in [start, end), from the lake only."""
    return frames_for_range(settings, symbol, timeframe, start, end, (view,))[view]


def build_features(
    settings: PlatformSettings, symbol: str, timeframe: str, start: datetime, end: datetime
) -> FeatureResult:
    """Write the offline feature files of every view for [start, end), one per UTC day, overwriting.

    ``rows`` counts the ``trend_fv`` rows; ``view_rows`` every view's."""
    start, end = utc(start), utc(end)
    frames = frames_for_range(settings, symbol, timeframe, start, end)
    step = pd.Timedelta(seconds=timeframe_seconds(timeframe))
    res = FeatureResult(symbol, timeframe, len(frames[FEATURE_VIEW]))
    for view, feats in frames.items():
        res.view_rows[view] = len(feats)
        day_of_open = (pd.to_datetime(feats["event_timestamp"], utc=True) - step).dt.date
        for day in lake.days_in(start, end):
            path = offline_path(settings, symbol, timeframe, day, view)
            part = feats[day_of_open == day]
            if part.empty:
                path.unlink(missing_ok=True)
                continue
            lake.write_parquet_atomic(part, path, schema=_SEQ_SCHEMA if view == SEQ_VIEW else None)
            res.files.append(str(path))
    log.info(
        "built %s feature rows for %s %s [%s, %s)", res.view_rows, symbol, timeframe, start, end
    )
    return res


def materialize(
    settings: PlatformSettings,
    start: datetime,
    end: datetime,
    timeframe: str,
    views: tuple[str, ...] = VIEWS,
    store: Any | None = None,
) -> None:
    """Materialise the bars opening in [start, end), i.e. closing by ``end`` (Feast's range is
    inclusive), plus a small overlap before ``start`` for late or re-validated bars."""
    start, end = utc(start), utc(end)
    settings.require_redis_url()
    store = store or open_store(settings)
    # Feast prints its progress to stdout in ANSI colours: keep stdout for results, log it plain
    with contextlib.redirect_stdout(io.StringIO()) as said:
        store.materialize(start - MATERIALIZE_OVERLAP, end, feature_views=list(views))
    text = re.sub(r"\x1b\[[0-9;]*m", "", said.getvalue()).strip()
    if text:
        log.debug("feast materialize: %s", " | ".join(text.splitlines()))


def offline_rows(
    settings: PlatformSettings, start: datetime, end: datetime, timeframe: str | None = None
) -> dict[str, int]:
    """Per view, the offline rows of the UTC days of [start, end) (parquet metadata only)."""
    import pyarrow.parquet as pq

    tf = timeframe or settings.timeframe
    out = dict.fromkeys(VIEWS, 0)
    for view in VIEWS:
        for sym in settings.symbols:
            for day in lake.days_in(utc(start), utc(end)):
                path = offline_path(settings, sym, tf, day, view)
                if path.is_file():
                    out[view] += pq.read_metadata(path).num_rows
    return out


def require_offline(settings: PlatformSettings, service: str) -> None:
    """Fail clearly when a view of ``service`` has no offline parquet yet (DuckDB would raise an
    I/O error on the empty folder)."""
    for view in SERVICE_VIEWS[service]:
        folder = offline_dir(settings, view)
        if not any(folder.glob("*.parquet")):
            raise ValueError(
                f"the offline store of {view} ({folder}) is empty: build features first "
                "(the market_data DAG, `tx data backfill` or `tx features build`)"
            )


def bar_closes(
    settings: PlatformSettings, symbols: list[str], timeframe: str, start: datetime, end: datetime
) -> pd.DataFrame:
    """Entity rows ``symbol``, ``event_timestamp`` at the close of every lake bar opening in [start, end)."""
    start, end = utc(start), utc(end)
    frames = [
        lake.read_bars(settings.lake_dir, sym, timeframe, start, end)[["symbol", "close_time"]]
        for sym in symbols
    ]
    rows = pd.concat(frames, ignore_index=True).rename(columns={"close_time": "event_timestamp"})
    rows["symbol"] = rows["symbol"].astype(str)
    return rows.sort_values(["event_timestamp", "symbol"]).reset_index(drop=True)


def historical_features(
    settings: PlatformSettings,
    service: str,
    symbols: list[str],
    start: datetime,
    end: datetime,
    timeframe: str | None = None,
    store: Any | None = None,
) -> pd.DataFrame:
    """Point-in-time features of a feature service through Feast ``get_historical_features``,
    with entity rows at the lake's bar closes of [start, end). Bars whose features are not
    defined (warm-up, quarantined history) come back with nulls; nothing later than each
    bar's close is joined."""
    tf = timeframe or settings.timeframe
    entity = bar_closes(settings, symbols, tf, start, end)
    if entity.empty:
        raise ValueError(f"no bars in the lake for {symbols} {tf} in [{start}, {end})")
    require_offline(settings, service)
    store = store or open_store(settings)
    out = store.get_historical_features(
        entity_df=entity, features=store.get_feature_service(service)
    ).to_df()
    out["event_timestamp"] = pd.to_datetime(out["event_timestamp"], utc=True).astype(
        "datetime64[ns, UTC]"
    )  # DuckDB returns µs
    return out.sort_values(["event_timestamp", "symbol"]).reset_index(drop=True)


def push_rows(settings: PlatformSettings, rows: pd.DataFrame, store: Any | None = None) -> None:
    """Write feature rows straight to the online store through Feast (the per-bar path)."""
    settings.require_redis_url()
    store = store or open_store(settings)
    store.write_to_online_store(
        FEATURE_VIEW, rows[["symbol", "event_timestamp", *TREND_V1_FEATURES]]
    )
