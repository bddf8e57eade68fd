"""Purged walk-forward splits: chronological, no overlap, purge of label overlap, embargo."""

from __future__ import annotations

import pandas as pd
import pytest

from training.config import ExperimentConfig, SplitConfig
from training.splits import purged_train_test, walk_forward_folds

pytestmark = pytest.mark.unit

H = 6


def rows(n: int = 600, symbols: tuple[str, ...] = ("EURUSD", "GBPUSD")) -> pd.DataFrame:
    t = pd.date_range("2026-01-05 00:05", periods=n, freq="5min", tz="UTC")
    frames = [
        pd.DataFrame(
            {"symbol": s, "event_timestamp": t, "label_end": t + pd.Timedelta(minutes=5 * H)}
        )
        for s in symbols
    ]
    return pd.concat(frames).sort_values(["event_timestamp", "symbol"]).reset_index(drop=True)


@pytest.mark.parametrize("scheme", ["expanding", "rolling"])
def test_walk_forward_when_split_then_train_precedes_test_with_purge_and_embargo(
    scheme: str,
) -> None:
    ds = rows()
    embargo = pd.Timedelta(minutes=5 * H)
    folds = walk_forward_folds(ds, n_folds=4, embargo=embargo, scheme=scheme)  # type: ignore[arg-type]
    assert len(folds) == 4
    for f in folds:
        tr, te = ds.iloc[f.train], ds.iloc[f.test]
        assert not set(f.train) & set(f.test)
        assert (
            tr["label_end"].max() < te["event_timestamp"].min()
        )  # purge: no label overlaps the test block
        assert te["event_timestamp"].min() - tr["event_timestamp"].max() >= embargo  # embargo
    tests = [set(f.test) for f in folds]
    assert all(
        not (a & b) for i, a in enumerate(tests) for b in tests[i + 1 :]
    )  # test blocks disjoint
    starts = [f.test_start for f in folds]
    assert starts == sorted(starts)


def test_walk_forward_when_expanding_then_train_grows_and_when_rolling_then_it_slides() -> None:
    ds = rows()
    emb = pd.Timedelta(minutes=30)
    exp = walk_forward_folds(ds, n_folds=3, embargo=emb, scheme="expanding")
    rol = walk_forward_folds(ds, n_folds=3, embargo=emb, scheme="rolling")
    assert [len(f.train) for f in exp] == sorted(len(f.train) for f in exp) and len(
        exp[-1].train
    ) > len(exp[0].train)
    assert (
        ds.iloc[rol[-1].train]["event_timestamp"].min()
        > ds.iloc[exp[-1].train]["event_timestamp"].min()
    )


def test_walk_forward_when_labels_reach_far_then_overlapping_rows_are_purged() -> None:
    ds = rows()
    ds.loc[ds.index[::10], "label_end"] += pd.Timedelta(
        days=1
    )  # some labels reach into later blocks
    folds = walk_forward_folds(ds, n_folds=3, embargo=pd.Timedelta(minutes=30))
    for f in folds:
        assert (ds.iloc[f.train]["label_end"] < f.test_start).all()


def test_holdout_when_split_then_embargo_and_purge_hold() -> None:
    ds = rows()
    t0 = ds["event_timestamp"].iloc[800]
    tr, te = purged_train_test(ds, t0, pd.Timedelta(minutes=30))
    assert ds.iloc[tr]["label_end"].max() < t0 <= ds.iloc[te]["event_timestamp"].min()
    assert t0 - ds.iloc[tr]["event_timestamp"].max() >= pd.Timedelta(minutes=30)


def test_config_when_embargo_is_shorter_than_the_label_horizon_then_rejected() -> None:
    with pytest.raises(ValueError, match="embargo"):
        ExperimentConfig(
            name="x",
            feature_service="trend_v1",
            label={"horizon_bars": 12},
            split={"embargo_bars": 6},
        )  # type: ignore[arg-type]


def test_config_when_explicit_ranges_are_given_then_they_win_and_must_be_chronological() -> None:
    cfg = ExperimentConfig(
        name="x",
        feature_service="trend_v1",
        split=SplitConfig(start="2025-01-01", test_start="2025-06-01", end="2025-07-01"),  # type: ignore[arg-type]
    )
    r = cfg.ranges()
    assert r["train"][1] == r["test"][0] and r["train"][0] < r["test"][0] < r["test"][1]
    with pytest.raises(ValueError, match="chronological"):
        SplitConfig(start="2025-06-01", test_start="2025-01-01", end="2025-07-01")  # type: ignore[arg-type]
