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


# --- the checks against the lake's bars ---------------------------------------------------------
def _lake_rows(n: int = 300) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Labelled trend_v1 rows of a made-up lake (a weekend gap inside), and its bars."""
    from feature_repo.pipeline.store import view_rows
    from tests.unit.test_transforms import make_bars
    from training.labels import make_labels

    bars = make_bars(n)
    bars.loc[200:, ["time", "close_time"]] += pd.Timedelta(hours=48)
    lake = {"EURUSD": bars}
    feats = view_rows(lake, "EURUSD", 1e-5, ("trend_fv",))["trend_fv"]
    labels = make_labels(bars, horizon=6, point=1e-5)
    return labels.merge(feats, on=["symbol", "event_timestamp"]), lake


def _shift(ds: pd.DataFrame, cols: list[str], k: int) -> pd.DataFrame:
    out = ds.copy()
    out[cols] = out[cols].shift(-k)
    return out.dropna(subset=cols).astype({"label": "int64"})


POINTS = {"EURUSD": 1e-5}


def test_check_labels_when_rows_are_the_lakes_own_then_pass() -> None:
    from training.dataset import check_labels

    ds, lake = _lake_rows()
    check_labels(ds, lake["EURUSD"], 6)
    assert_point_in_time(ds, lake, horizon=6, points=POINTS)


@pytest.mark.parametrize(
    ("cols", "k", "names"),
    [
        (["label", "fwd_ret"], -1, "fwd_ret"),  # labels attached one bar late
        (["label", "fwd_ret"], 1, "fwd_ret"),  # one bar early
        (["label_end"], -1, "do not end at the close 6 bars after"),
        (["ret_next"], -1, "ret_next"),  # the bar's own return
        (["label"], -1, "not the class of their own forward return"),
    ],
)
def test_check_labels_when_a_label_column_is_one_bar_off_then_it_raises(
    cols: list[str], k: int, names: str
) -> None:
    from training.dataset import check_labels

    ds, lake = _lake_rows()
    leaked = _shift(ds, cols, k)

    with pytest.raises(LookAheadError, match=names):
        check_labels(leaked, lake["EURUSD"], 6)


def test_check_labels_when_a_row_is_not_a_bar_close_of_the_lake_then_it_raises() -> None:
    from training.dataset import check_labels

    ds, lake = _lake_rows()
    ds.loc[5, "event_timestamp"] += pd.Timedelta(minutes=1)

    with pytest.raises(LookAheadError, match="no bar close of the lake"):
        check_labels(ds, lake["EURUSD"], 6)


def test_check_features_when_a_price_column_is_the_next_bars_then_it_raises() -> None:
    ds, lake = _lake_rows()
    leaked = _shift(ds, ["ret_1"], 1)  # the hour encodings stay the row's own

    assert_point_in_time(leaked)  # the timestamps alone cannot see it
    with pytest.raises(LookAheadError, match="ret_1"):
        assert_point_in_time(leaked, lake, horizon=6, points=POINTS)


def test_check_features_when_the_transform_itself_reads_the_next_bar_then_the_causal_sample_raises(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A leak in the transform code is in the lake's recomputed rows too (they agree); the
    per-bar recomputation from the bars up to each close only is what sees it."""
    import feature_repo.pipeline.store as store
    from feature_repo.pipeline.transforms import feature_frame

    def leaky(bars: pd.DataFrame, point: float, others: object = None) -> pd.DataFrame:
        f = feature_frame(bars, point, others)  # type: ignore[arg-type]
        f["ret_6"] = f["ret_6"].shift(-1)
        return f

    monkeypatch.setattr(store, "feature_frame", leaky)
    ds, lake = _lake_rows()
    ds = ds.dropna(subset=["ret_6"])

    with pytest.raises(
        LookAheadError, match="trend_fv has no row computable from the bars closing"
    ):
        assert_point_in_time(ds, lake, horizon=6, points=POINTS)
