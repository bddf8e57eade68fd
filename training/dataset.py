"""Point-in-time datasets: labels from the lake joined to features through Feast.

Entity rows are bar closes. ``get_historical_features`` joins, for each entity row, the
latest feature row at or before its timestamp, so a row can only see the past. The builder
asserts the timestamps it relies on: every label ends after its features exist, and the
feature row Feast returned belongs to this very bar (its value of ``hour_sin``/``hour_cos``
identifies the close time) — a feature shifted into the future fails the build.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from engine.mt5 import timeframe_seconds
from feature_repo.pipeline import lake
from feature_repo.pipeline.store import (
    FEATURE_SERVICE,
    SEQ_VIEW,
    SERVICE_VIEWS,
    VIEW_FIELDS,
    lookback,
    open_store,
    require_offline,
    symbol_point,
)
from feature_repo.pipeline.transforms import SEQ_CHANNELS, SEQ_FIELD, SEQ_LEN
from titanovax.settings import PlatformSettings, utc
from training.labels import make_labels

log = logging.getLogger(__name__)


def service_inputs(feature_service: str) -> tuple[list[str], bool]:
    """(tabular feature names in model-input order, whether the bar sequence is an input)."""
    if feature_service not in SERVICE_VIEWS:
        raise KeyError(
            f"unknown feature service {feature_service!r}; known: {sorted(SERVICE_VIEWS)}"
        )
    views = SERVICE_VIEWS[feature_service]
    names: list[str] = []
    for v in views:
        if v != SEQ_VIEW:
            names += [n for n in VIEW_FIELDS[v] if n not in names]
    return names, SEQ_VIEW in views


def sequence_tensor(ds: pd.DataFrame) -> np.ndarray:
    """The ``seq`` column (flat arrays) → float32 ``[N, SEQ_LEN, C]``."""
    c = len(SEQ_CHANNELS)
    if len(ds) == 0:
        return np.zeros((0, SEQ_LEN, c), np.float32)
    return np.stack([np.asarray(v, dtype=np.float32) for v in ds[SEQ_FIELD]]).reshape(
        len(ds), SEQ_LEN, c
    )


class LookAheadError(AssertionError):
    """A dataset row would use information from after its own timestamp."""


def _close_hour(ds: pd.DataFrame) -> pd.Series:
    """Each row's close time as fractional hours of the day (what ``hour_sin``/``hour_cos`` encode)."""
    return ds["event_timestamp"].dt.hour + ds["event_timestamp"].dt.minute / 60.0


def _close_hour_error(ds: pd.DataFrame) -> pd.Series:
    """How far each row's tabular close-hour encoding is from its own bar close's (NaN if undefined)."""
    hour = _close_hour(ds)
    return np.maximum(
        np.abs(ds["hour_sin"] - np.sin(2 * np.pi * hour / 24.0)),
        np.abs(ds["hour_cos"] - np.cos(2 * np.pi * hour / 24.0)),
    )


def _seq_close_hour_error(ds: pd.DataFrame, seq: np.ndarray) -> np.ndarray:
    """How far the newest bar of each sequence (``seq``, ``ds``'s rows in order) is from the row's own close."""
    expect = np.sin(2 * np.pi * _close_hour(ds).to_numpy() / 24.0).astype(np.float32)
    return np.asarray(np.abs(seq[:, -1, SEQ_CHANNELS.index("hour_sin")] - expect))


def assert_point_in_time(ds: pd.DataFrame) -> None:
    """Fail if any label is known no later than its features, or any row's features are not
    those of its own bar close (checked through the close-hour encoding)."""
    if (ds["label_end"] <= ds["event_timestamp"]).any():
        raise LookAheadError("label_end <= event_timestamp: a label does not look forward")
    off = _close_hour_error(ds) > 1e-9
    if off.any():
        bad = ds.loc[off, "event_timestamp"].head(3).tolist()
        raise LookAheadError(
            f"{int(off.sum())} rows joined a feature row of another bar, e.g. {bad}"
        )
    if SEQ_FIELD in ds and "hour_sin" in SEQ_CHANNELS and len(ds):
        # the newest bar of each sequence must be this row's bar: check its close-hour channel
        bad_seq = _seq_close_hour_error(ds, sequence_tensor(ds)) > 1e-5
        if bad_seq.any():
            raise LookAheadError(
                f"{int(bad_seq.sum())} sequences do not end at their own bar close"
            )


def build_dataset(
    settings: PlatformSettings,
    symbols: list[str],
    timeframe: str,
    start: datetime,
    end: datetime,
    *,
    horizon: int,
    cost_multiplier: float = 1.0,
    feature_service: str = FEATURE_SERVICE,
    store: Any | None = None,
    label_kw: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """Rows for bars closing in (start, end] whose label is known by ``end``.

    Labels whose window reaches past ``end`` are dropped: a dataset built "as of" ``end``
    must not contain outcomes that were not known then.
    """
    start, end = utc(start), utc(end)
    step = pd.Timedelta(seconds=timeframe_seconds(timeframe))
    frames = []
    for symbol in symbols:
        bars = lake.read_bars(
            settings.lake_dir, symbol, timeframe, start - lookback(timeframe), end
        )
        labels = make_labels(
            bars,
            horizon=horizon,
            point=symbol_point(settings, symbol),
            cost_multiplier=cost_multiplier,
            **(label_kw or {}),
        )
        opened = labels["event_timestamp"] - step
        labels = labels[(opened >= start) & (labels["label_end"] <= end)]
        frames.append(labels)
    entity = pd.concat(frames, ignore_index=True)
    if entity.empty:
        raise ValueError(f"no labelled bars for {symbols} {timeframe} in [{start}, {end})")
    names, has_seq = service_inputs(feature_service)
    clash = set(entity.columns) & (set(names) | ({SEQ_FIELD} if has_seq else set()))
    if clash:
        raise ValueError(
            f"label columns {sorted(clash)} collide with features of {feature_service}"
        )
    require_offline(settings, feature_service)
    fs = store or open_store(settings)
    service = fs.get_feature_service(feature_service)
    check_ttls({p.name: fs.get_feature_view(p.name).ttl for p in service.feature_view_projections})
    joined = fs.get_historical_features(
        entity_df=entity[["symbol", "event_timestamp"]], features=service
    ).to_df()
    joined["event_timestamp"] = pd.to_datetime(joined["event_timestamp"], utc=True).astype(
        "datetime64[ns, UTC]"
    )  # DuckDB returns µs
    ds = entity.merge(joined, on=["symbol", "event_timestamp"], how="left", validate="one_to_one")
    missing = ds[names].isna().any(axis=1)
    if has_seq:
        missing |= ds[SEQ_FIELD].isna()
    if missing.any():
        log.info(
            "dropping %d rows without features (warm-up or quarantined bars)", int(missing.sum())
        )
    ds = ds[~missing].sort_values(["event_timestamp", "symbol"]).reset_index(drop=True)
    stale = carried_forward(ds, names)
    if stale.any():
        log.info(
            "dropping %d rows whose bar has no feature row of its own (Feast carried an earlier one forward)",
            int(stale.sum()),
        )
        ds = ds[~stale].reset_index(drop=True)
    assert_point_in_time(ds)
    return ds


def check_ttls(ttls: dict[str, timedelta | None]) -> None:
    """Every view's TTL must be under a day. The join may hand a bar without a row of its own
    the latest row inside the TTL; one exactly k days old has the same close-hour encoding, so
    the builder's checks could not tell it from the bar's own (a stale row, silently used)."""
    bad = {v: t for v, t in ttls.items() if not t or t >= timedelta(days=1)}
    if bad:
        raise ValueError(
            f"feature view TTL must be under one day for point-in-time datasets: {bad}"
        )


def carried_forward(ds: pd.DataFrame, names: list[str]) -> pd.Series:
    """Rows whose features are an earlier bar's, carried forward by the point-in-time join.

    A bar without a feature row of its own (its features are undefined, e.g. on a flat holiday
    filler bar) gets from ``get_historical_features`` the latest earlier row within the view's
    TTL: exactly the previous row's values, with a close-hour encoding that is not its own. The
    sequence view is checked the same way on its own (its newest bar's close-hour channel). Only
    such rows are flagged (a past value, not look-ahead); any other mismatch is left for
    :func:`assert_point_in_time` to fail on."""
    if not len(ds) or "hour_sin" not in ds or "hour_cos" not in ds:
        return pd.Series(False, index=ds.index)
    own = _close_hour_error(ds) <= 1e-9
    order = ds.sort_values(["symbol", "event_timestamp"]).index
    cols = ds.loc[order, names]
    same = (cols == cols.groupby(ds.loc[order, "symbol"]).shift(1)).all(axis=1)
    stale = ~own & same.reindex(ds.index)
    if SEQ_FIELD in ds and "hour_sin" in SEQ_CHANNELS:
        # the sequence view is joined on its own: a bar without a sequence row of its own gets the
        # previous bar's sequence, which ends at that bar's close
        seq = sequence_tensor(ds.loc[order])
        seq_own = _seq_close_hour_error(ds.loc[order], seq) <= 1e-5
        sym = ds.loc[order, "symbol"].to_numpy()
        seq_same = np.zeros(len(order), bool)
        seq_same[1:] = (sym[1:] == sym[:-1]) & (seq[1:] == seq[:-1]).all(axis=(1, 2))
        stale |= pd.Series(~seq_own & seq_same, index=order).reindex(ds.index)
    return stale
