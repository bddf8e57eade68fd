"""Point-in-time datasets: labels from the lake joined to features through Feast.

Entity rows are bar closes. ``get_historical_features`` joins, for each entity row, the
latest feature row at or before its timestamp, so a row can only see the past. The builder
does not take that on trust; it checks every column that can leak against the lake's bars,
by timestamp (:func:`assert_point_in_time`), and raises :class:`LookAheadError` on any miss:

- **labels** (:func:`check_labels`): each row's time is a bar close of the lake; ``label_end``
  is the close of the bar ``horizon`` bars later; ``fwd_ret`` is ``log(close[label_end] /
  close[t])``; ``ret_next`` is ``log(close[next bar] / close[t])`` (the backtest's P&L); a
  ``fixed`` label is the class of its own ``fwd_ret`` against its cost. Checked before the join.
- **joined views** (:func:`check_features`): every feature of every view (tabular and the bar
  sequence) equals the value computed from the lake for the row's own bar, and for a sample of
  rows equals what the per-bar path computes from the bars up to that close *only*, so a
  value that depends on a later bar fails whether the join or the transform put it there.
- **the close-hour encodings** (``hour_sin``/``hour_cos``, the sequence's newest step) name the
  row's own close, which is also what tells a carried-forward row from a leaked one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
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
    last_view_rows,
    lookback,
    open_store,
    require_offline,
    symbol_point,
    view_rows,
)
from feature_repo.pipeline.transforms import (
    SEQ_CHANNELS,
    SEQ_FIELD,
    SEQ_LEN,
    STREAM_BARS,
    XS_TOLERANCE_BARS,
)
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


def _assert_own_close(ds: pd.DataFrame) -> None:
    """Every label looks forward, and every row's close-hour encodings are its own close's."""
    if (ds["label_end"] <= ds["event_timestamp"]).any():
        raise LookAheadError("label_end <= event_timestamp: a label does not look forward")
    if "hour_sin" in ds and "hour_cos" in ds:
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


def check_labels(
    labels: pd.DataFrame, bars: pd.DataFrame, horizon: int, *, method: str = "fixed"
) -> None:
    """Check one symbol's label rows against its lake bars, looked up by timestamp.

    Independent of :func:`training.labels.make_labels` (it reads the closes of the bars at the
    row's own close time and at ``label_end``): a label attached one bar late or early, a
    window of the wrong length, or a ``ret_next`` that is not the next bar's return fails.
    """
    if labels.empty:
        return
    b = bars.sort_values("close_time").reset_index(drop=True)
    closes = pd.DatetimeIndex(pd.to_datetime(b["close_time"], utc=True))
    t = pd.DatetimeIndex(pd.to_datetime(labels["event_timestamp"], utc=True))
    pos = closes.get_indexer(t)
    where = labels["event_timestamp"].reset_index(drop=True)
    if (pos < 0).any():
        raise LookAheadError(
            f"{int((pos < 0).sum())} label rows at times that are no bar close of the lake, "
            f"e.g. {where[pos < 0].head(3).tolist()}"
        )
    if (pos + horizon >= len(b)).any():
        raise LookAheadError(f"label rows without {horizon} bars after them in the lake")
    logc = np.log(b["close"].to_numpy(dtype="float64"))
    end = pd.DatetimeIndex(pd.to_datetime(labels["label_end"], utc=True))
    bad = end != closes[pos + horizon]
    if bad.any():
        raise LookAheadError(
            f"{int(bad.sum())} labels do not end at the close {horizon} bars after their own "
            f"bar, e.g. at {where[bad].head(3).tolist()}"
        )

    def _off(col: str, expect: np.ndarray) -> np.ndarray:
        got = labels[col].to_numpy(dtype="float64")
        return np.asarray(~np.isclose(got, expect, rtol=0.0, atol=1e-12))

    for col, expect, what in (
        ("fwd_ret", logc[pos + horizon] - logc[pos], f"log(close[t+{horizon}] / close[t])"),
        ("ret_next", logc[pos + 1] - logc[pos], "log(close[t+1] / close[t])"),
    ):
        if col in labels and (bad := _off(col, expect)).any():
            raise LookAheadError(
                f"{int(bad.sum())} rows have {col} != {what} of the lake's bars, "
                f"e.g. at {where[bad].head(3).tolist()}"
            )
    if method == "fixed" and {"label", "fwd_ret", "cost"} <= set(labels.columns):
        fwd, cost = labels["fwd_ret"].to_numpy(float), labels["cost"].to_numpy(float)
        expect = np.where(fwd > cost, 2, np.where(fwd < -cost, 0, 1))
        bad = labels["label"].to_numpy() != expect
        if bad.any():
            raise LookAheadError(
                f"{int(bad.sum())} labels are not the class of their own forward return, "
                f"e.g. at {where[bad].head(3).tolist()}"
            )


def _mismatch(got: np.ndarray, expect: np.ndarray) -> np.ndarray:
    """Row mask: any value differs beyond rounding (a missing expected value is a difference)."""
    with np.errstate(invalid="ignore"):
        off = ~(np.abs(got - expect) <= 1e-9 * (1.0 + np.abs(expect)))
    return np.asarray(off.reshape(len(off), -1).any(axis=1))


def _seq_matrix(values: pd.Series) -> np.ndarray:
    n = SEQ_LEN * len(SEQ_CHANNELS)
    out = np.full((len(values), n), np.nan)
    for i, v in enumerate(values):
        if v is not None and not (isinstance(v, float) and np.isnan(v)):
            out[i] = np.asarray(v, dtype="float64")
    return out


def check_features(
    ds: pd.DataFrame,
    bars: Mapping[str, pd.DataFrame],
    points: Mapping[str, float],
    feature_service: str,
    *,
    causal_rows: int = 16,
) -> None:
    """Check every joined feature against the lake's bars (see the module doc).

    ``bars``: lake bars of every configured symbol (the others feed the cross-symbol family),
    reaching back the warm-up before the first row. All rows: each view's value is the one the
    lake gives the row's own bar. ``causal_rows`` rows per symbol (spread evenly): each value
    is the one computed from the bars closing at or before the row's time only, the per-bar
    path of :func:`feature_repo.pipeline.store.last_view_rows`.
    """
    names, _ = service_inputs(feature_service)
    views = SERVICE_VIEWS[feature_service]
    for symbol, rows in ds.groupby("symbol", sort=True):
        rows = rows.sort_values("event_timestamp")
        t = pd.to_datetime(rows["event_timestamp"], utc=True)
        ref = view_rows(dict(bars), str(symbol), points[str(symbol)], views)
        for v in views:
            fields = [f for f in VIEW_FIELDS[v] if f == SEQ_FIELD or f in names]
            r = ref[v].assign(event_timestamp=pd.to_datetime(ref[v]["event_timestamp"], utc=True))
            r = r.drop_duplicates("event_timestamp").set_index("event_timestamp")
            for f in fields:
                got = rows[f]
                exp = r[f].reindex(t)
                if f == SEQ_FIELD:
                    off = _mismatch(_seq_matrix(got), _seq_matrix(exp))
                else:
                    off = _mismatch(got.to_numpy(float), exp.to_numpy(float))
                if off.any():
                    raise LookAheadError(
                        f"{int(off.sum())} {symbol} rows: {f} ({v}) is not the value the lake "
                        f"gives the row's own bar, e.g. at {t[off].head(3).tolist()}"
                    )
        _check_causal(rows, bars, points[str(symbol)], str(symbol), views, names, causal_rows)


def _check_causal(
    rows: pd.DataFrame,
    bars: Mapping[str, pd.DataFrame],
    point: float,
    symbol: str,
    views: tuple[str, ...],
    names: list[str],
    n: int,
) -> None:
    """A sample of rows against features computed from the bars up to each row's close only."""
    if n <= 0 or rows.empty:
        return
    closes = {k: pd.to_datetime(b["close_time"], utc=True) for k, b in bars.items()}
    for i in np.unique(np.linspace(0, len(rows) - 1, n).round().astype(int)):
        row = rows.iloc[i]
        t = pd.Timestamp(row["event_timestamp"])
        past = {
            k: b[closes[k] <= t].tail(STREAM_BARS + (0 if k == symbol else XS_TOLERANCE_BARS))
            for k, b in bars.items()
        }
        own = past[symbol]
        if own.empty or pd.Timestamp(own["close_time"].iloc[-1]) != t:
            raise LookAheadError(f"{symbol} row at {t} has no bar of its own in the lake")
        last = last_view_rows(past, symbol, point)
        off: list[str] = []
        for v in views:
            got_row = last.get(v)
            if got_row is None:
                raise LookAheadError(
                    f"{symbol} row at {t}: {v} has no row computable from the bars closing at "
                    "or before it (a value needs a later bar)"
                )
            for f in VIEW_FIELDS[v]:
                if f != SEQ_FIELD and f not in names:
                    continue
                exp = np.asarray(got_row[f], dtype="float64").ravel()
                got = np.asarray(row[f], dtype="float64").ravel()
                if exp.shape != got.shape or _mismatch(got[None, :], exp[None, :]).any():
                    off.append(f)
        if off:
            raise LookAheadError(
                f"{symbol} row at {t}: {sorted(set(off))} differ from the values computable "
                "from the bars closing at or before it (they use a later bar)"
            )


def assert_point_in_time(
    ds: pd.DataFrame,
    bars: Mapping[str, pd.DataFrame] | None = None,
    *,
    horizon: int | None = None,
    points: Mapping[str, float] | None = None,
    feature_service: str = FEATURE_SERVICE,
    label_method: str = "fixed",
    causal_rows: int = 16,
) -> None:
    """Fail (:class:`LookAheadError`) if any row could use information from after its close.

    Always: labels look forward and the close-hour encodings are the row's own. With the lake
    ``bars`` (keyed by symbol; ``horizon`` and ``points`` then required): :func:`check_labels`
    for every symbol and :func:`check_features` on every joined column. Without ``bars`` only
    the timestamps are checked, which cannot see a price column taken from another bar."""
    _assert_own_close(ds)
    if bars is None:
        return
    if horizon is None or points is None:
        raise ValueError("checking against bars needs the label horizon and the symbols' points")
    for symbol, rows in ds.groupby("symbol", sort=True):
        check_labels(rows, bars[str(symbol)], horizon, method=label_method)
    check_features(ds, bars, points, feature_service, causal_rows=causal_rows)


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
    bars = {
        sym: lake.read_bars(settings.lake_dir, sym, timeframe, start - lookback(timeframe), end)
        for sym in dict.fromkeys([*settings.symbols, *symbols])
    }
    points = {sym: symbol_point(settings, sym) for sym in bars}
    method = str((label_kw or {}).get("method", "fixed"))
    frames = []
    for symbol in symbols:
        labels = make_labels(
            bars[symbol],
            horizon=horizon,
            point=points[symbol],
            cost_multiplier=cost_multiplier,
            **(label_kw or {}),
        )
        check_labels(labels, bars[symbol], horizon, method=method)  # before the (slow) join
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
    assert_point_in_time(
        ds,
        bars,
        horizon=horizon,
        points=points,
        feature_service=feature_service,
        label_method=method,
    )
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
