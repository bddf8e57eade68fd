"""Features into Feast: the offline parquet, ``feast apply``, materialisation and pushes.

``feature_store.yaml`` reads its registry path and Redis connection from the environment;
:func:`feast_env` derives them from :class:`PlatformSettings`, and :func:`open_store` sets them
in this process just before it builds the ``FeatureStore``.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from engine.mt5 import timeframe_seconds
from feature_repo.pipeline import lake
from feature_repo.pipeline.transforms import FEATURE_NAMES, WARMUP_BARS, compute_features
from infra.settings import FEATURE_REPO, PlatformSettings, feast_redis_connection_string, utc

log = logging.getLogger(__name__)

FEATURE_VIEW = "trend_fv"
FEATURE_SERVICE = "trend_v1"
MATERIALIZE_OVERLAP = timedelta(hours=1)


def feast_env(settings: PlatformSettings) -> dict[str, str]:
    return {
        "TX_FEAST_REGISTRY": str(settings.feast_registry),
        "TX_FEAST_REDIS": feast_redis_connection_string(settings.require_redis_url()),
        "TX_OFFLINE_FEATURES": str(settings.offline_features_dir),
    }


def feast_apply(settings: PlatformSettings) -> str:
    """Register the repo's definitions (``feast apply``), creating the folders it needs."""
    settings.feast_registry.parent.mkdir(parents=True, exist_ok=True)
    settings.offline_features_dir.mkdir(parents=True, exist_ok=True)
    feast_bin = Path(sys.executable).with_name("feast")
    env = {**os.environ, **feast_env(settings)}
    proc = subprocess.run(
        [str(feast_bin), "apply"], cwd=FEATURE_REPO, env=env, capture_output=True, text=True, check=False
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
    return timedelta(days=math.ceil(2 * WARMUP_BARS * timeframe_seconds(timeframe) / 86400) + 3)


def offline_path(settings: PlatformSettings, symbol: str, timeframe: str, day: Any) -> Path:
    return settings.offline_features_dir / f"{symbol}_{timeframe}_{day.isoformat()}.parquet"


@dataclass
class FeatureResult:
    symbol: str
    timeframe: str
    rows: int
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def symbol_point(settings: PlatformSettings, symbol: str) -> float:
    """Price of one point of ``symbol`` (spreads are in points)."""
    from engine.mt5.synthetic import symbol_spec

    return float(symbol_spec(symbol).point)


def features_for_range(
    settings: PlatformSettings, symbol: str, timeframe: str, start: datetime, end: datetime
) -> pd.DataFrame:
    """Feature rows of the bars with open time in [start, end), computed from the lake only."""
    start, end = utc(start), utc(end)
    bars = lake.read_bars(settings.lake_dir, symbol, timeframe, start - lookback(timeframe), end)
    feats = compute_features(bars, symbol_point(settings, symbol))
    step = pd.Timedelta(seconds=timeframe_seconds(timeframe))
    opened = feats["event_timestamp"] - step
    return feats[(opened >= start) & (opened < end)].reset_index(drop=True)


def build_features(
    settings: PlatformSettings, symbol: str, timeframe: str, start: datetime, end: datetime
) -> FeatureResult:
    """Write the offline feature files of [start, end), one per UTC day, overwriting."""
    start, end = utc(start), utc(end)
    feats = features_for_range(settings, symbol, timeframe, start, end)
    step = pd.Timedelta(seconds=timeframe_seconds(timeframe))
    res = FeatureResult(symbol, timeframe, len(feats))
    day_of_open = (feats["event_timestamp"] - step).dt.date
    for day in lake.days_in(start, end):
        path = offline_path(settings, symbol, timeframe, day)
        part = feats[day_of_open == day]
        if part.empty:
            path.unlink(missing_ok=True)
            continue
        lake.write_parquet_atomic(part, path)
        res.files.append(str(path))
    log.info("built %d feature rows for %s %s [%s, %s)", len(feats), symbol, timeframe, start, end)
    return res


def materialize(settings: PlatformSettings, start: datetime, end: datetime, timeframe: str) -> None:
    """Materialise the bars closing in the interval (plus a small overlap for late bars)."""
    start, end = utc(start), utc(end)
    step = timedelta(seconds=timeframe_seconds(timeframe))
    store = open_store(settings)
    store.materialize(start - MATERIALIZE_OVERLAP, end + step, feature_views=[FEATURE_VIEW])


def push_rows(settings: PlatformSettings, rows: pd.DataFrame, store: Any | None = None) -> None:
    """Write feature rows straight to the online store through Feast (the per-bar path)."""
    store = store or open_store(settings)
    store.write_to_online_store(FEATURE_VIEW, rows[["symbol", "event_timestamp", *FEATURE_NAMES]])
