"""The dataset builder's timestamp checks on hand-made rows: a bar without its own feature row
(Feast carried the previous one forward) is dropped as stale, a future bar's row still fails."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from training.dataset import LookAheadError, assert_point_in_time, carried_forward

pytestmark = pytest.mark.unit


def _rows(n: int = 6) -> pd.DataFrame:
    t = pd.date_range("2024-12-24 10:00", periods=n, freq="1h", tz="UTC")
    hour = t.hour + t.minute / 60.0
    return pd.DataFrame(
        {
            "symbol": "USDJPY",
            "event_timestamp": t,
            "label_end": t + pd.Timedelta(hours=6),
            "ret_1": np.arange(n, dtype=float) / 100,
            "hour_sin": np.sin(2 * np.pi * hour / 24.0),
            "hour_cos": np.cos(2 * np.pi * hour / 24.0),
        }
    )


NAMES = ["ret_1", "hour_sin", "hour_cos"]


def test_carried_forward_when_a_bar_got_the_previous_bars_features_then_only_that_row_is_flagged() -> (
    None
):
    ds = _rows()
    ds.loc[3, NAMES] = ds.loc[
        2, NAMES
    ].to_numpy()  # bar 3 has no row of its own: Feast joins bar 2's
    flagged = carried_forward(ds, NAMES)
    assert flagged.tolist() == [False, False, False, True, False, False]
    assert_point_in_time(ds[~flagged])  # what is left is every bar's own row


def test_carried_forward_when_a_bar_got_the_next_bars_features_then_it_is_not_excused() -> None:
    ds = _rows()
    ds.loc[3, NAMES] = ds.loc[4, NAMES].to_numpy()  # look-ahead: bar 3 joined bar 4's row
    assert not carried_forward(ds, NAMES).any()
    with pytest.raises(LookAheadError):
        assert_point_in_time(ds)


def _with_sequences(ds: pd.DataFrame) -> pd.DataFrame:
    """Each row's sequence ends at its own close: its newest step carries the row's hour_sin."""
    from feature_repo.pipeline.transforms import SEQ_CHANNELS, SEQ_FIELD, SEQ_LEN

    seqs = []
    for i, hs in enumerate(ds["hour_sin"]):
        a = np.full((SEQ_LEN, len(SEQ_CHANNELS)), i, np.float32)
        a[-1, SEQ_CHANNELS.index("hour_sin")] = hs
        seqs.append(a.ravel())
    return ds.assign(**{SEQ_FIELD: seqs})


def test_carried_forward_when_a_bar_got_the_previous_bars_sequence_then_only_that_row_is_flagged() -> (
    None
):
    from feature_repo.pipeline.transforms import SEQ_FIELD

    ds = _with_sequences(_rows())
    ds.at[3, SEQ_FIELD] = ds.at[2, SEQ_FIELD]  # its tabular row is its own, its sequence is bar 2's
    flagged = carried_forward(ds, NAMES)
    assert flagged.tolist() == [False, False, False, True, False, False]
    assert_point_in_time(ds[~flagged])


def test_carried_forward_when_a_bar_got_the_next_bars_sequence_then_it_is_not_excused() -> None:
    from feature_repo.pipeline.transforms import SEQ_FIELD

    ds = _with_sequences(_rows())
    ds.at[3, SEQ_FIELD] = ds.at[4, SEQ_FIELD]
    assert not carried_forward(ds, NAMES).any()
    with pytest.raises(LookAheadError, match="sequences"):
        assert_point_in_time(ds)


def test_require_offline_when_a_view_has_no_parquet_then_the_error_names_it_and_the_fix(
    tmp_path: Path,
) -> None:
    from feature_repo.pipeline.store import V2_VIEW, offline_dir, require_offline
    from titanovax.settings import PlatformSettings

    s = PlatformSettings(home=tmp_path)
    with pytest.raises(ValueError, match=r"trend_fv .*empty.*tx features build"):
        require_offline(s, "trend_v1")
    for view in ("trend_fv", V2_VIEW):
        offline_dir(s, view).mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"x": [1.0]}).to_parquet(offline_dir(s, view) / "a.parquet")
    require_offline(s, "trend_v1")
    with pytest.raises(
        ValueError, match="bar_sequence_fv"
    ):  # trend_v2 also needs the sequence view
        require_offline(s, "trend_v2")


def test_check_ttls_when_a_view_keeps_rows_a_day_or_more_then_the_builder_refuses() -> None:
    from datetime import timedelta

    from training.dataset import check_ttls

    check_ttls({"trend_fv": timedelta(hours=1), "bar_sequence_fv": timedelta(hours=23)})
    for bad in (timedelta(days=1), timedelta(days=4), None):  # None: Feast keeps rows forever
        with pytest.raises(ValueError, match="under one day"):
            check_ttls({"trend_fv": timedelta(hours=1), "bar_sequence_fv": bad})
