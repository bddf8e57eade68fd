"""Purged walk-forward splits with an embargo.

Rows are bar closes (``event_timestamp``) whose labels are known at ``label_end``. The span of
distinct timestamps is cut into ``n_folds + 1`` consecutive blocks; fold *k* tests on block
``k + 1`` and trains on what lies before it: all of it (``expanding``) or the same number of
blocks (``rolling``, one block). A training row must

* have its label known before the test block starts (``label_end < test_start``: purge), and
* have its features at least ``embargo`` before the test block (``event_timestamp <= test_start
  - embargo``), with ``embargo >= label horizon``.

Test rows never come before their training rows: the splits are chronological, never shuffled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Fold:
    """Row positions of one walk-forward fold."""

    k: int
    train: np.ndarray
    test: np.ndarray
    test_start: pd.Timestamp
    test_end: pd.Timestamp


def walk_forward_folds(
    ds: pd.DataFrame,
    *,
    n_folds: int,
    embargo: pd.Timedelta,
    scheme: Literal["expanding", "rolling"] = "expanding",
    min_train_rows: int = 1,
) -> list[Fold]:
    """Purged walk-forward folds over ``ds`` (columns ``event_timestamp`` and ``label_end``)."""
    if n_folds < 1:
        raise ValueError("n_folds must be >= 1")
    ts = pd.to_datetime(ds["event_timestamp"], utc=True).to_numpy()
    end = pd.to_datetime(ds["label_end"], utc=True).to_numpy()
    uniq = np.unique(ts)
    if len(uniq) < n_folds + 1:
        raise ValueError(f"{len(uniq)} timestamps cannot make {n_folds} folds")
    bounds = np.linspace(0, len(uniq), n_folds + 2).astype(int)
    emb = np.timedelta64(int(embargo.total_seconds() * 1e9), "ns")
    folds: list[Fold] = []
    for k in range(n_folds):
        lo, hi = bounds[k + 1], bounds[k + 2]
        t0 = uniq[lo]
        t1 = uniq[hi - 1]
        test = np.flatnonzero((ts >= t0) & (ts <= t1))
        train_mask = (ts <= t0 - emb) & (end < t0)
        if scheme == "rolling":
            train_mask &= ts >= uniq[bounds[k]]
        train = np.flatnonzero(train_mask)
        if len(train) < min_train_rows:
            continue
        folds.append(Fold(k, train, test, pd.Timestamp(t0), pd.Timestamp(t1)))
    return folds


def purged_train_test(
    ds: pd.DataFrame, test_start: pd.Timestamp, embargo: pd.Timedelta
) -> tuple[np.ndarray, np.ndarray]:
    """The hold-out split: train rows purged and embargoed before ``test_start``; test rows from it."""
    ts = pd.to_datetime(ds["event_timestamp"], utc=True)
    end = pd.to_datetime(ds["label_end"], utc=True)
    train = np.flatnonzero(((ts <= test_start - embargo) & (end < test_start)).to_numpy())
    test = np.flatnonzero((ts >= test_start).to_numpy())
    return train, test
