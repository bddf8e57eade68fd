"""The null-market canary through the real pipeline, and the leaks it must catch.

A seeded random walk (nothing to learn) is written as an MT5 export and goes through the real
ingest → validate → features → Feast point-in-time dataset → labels → model → cost-aware
backtest. Trained on it, trend_v1 (XGBoost) and trend_v2 (the ensemble with the sequence) show
no edge beyond chance. Then each classic one-bar leak is planted in the pipeline (labels one
bar late, price features from the next bar, the sequence one bar ahead, ``ret_next`` equal to
the bar's own return) and must be caught: the dataset builder raises. With the builder's
guards switched off, the leaks that move accuracy or P&L trip the null test's edge guard.

Size: 6 weeks of M5 (~8.5k bars) of one symbol; a run's test window holds ~2.8k rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pytest

from feature_repo.pipeline.transforms import SEQ_CHANNELS, SEQ_FIELD, SEQ_LEN, TREND_V1_FEATURES
from training.canary import (
    EdgeOnNullMarket,
    NullEdge,
    assert_no_edge,
    null_edge,
    write_random_walk_export,
)
from training.config import ExperimentConfig, LabelConfig, SplitConfig, TransformerConfig
from training.dataset import LookAheadError

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.canary]

SYMBOL = "EURUSD"
START = datetime(2025, 1, 5, tzinfo=UTC)  # a Sunday: the FX week opens at 22:00 UTC
DAYS = 42
TEST_START = START + timedelta(days=29)  # Monday 2025-02-03
END = START + timedelta(days=DAYS)
HORIZON = 6
SEED = 20250105
CALENDAR = ("hour_sin", "hour_cos")
PRICE_V1 = [f for f in TREND_V1_FEATURES if f not in CALENDAR]


@dataclass
class NullMarket:
    settings: Any
    start: datetime
    end: datetime


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> NullMarket:
    """The random walk as an MT5 export, through ingest → validate → features (offline store)."""
    from feature_repo.pipeline.ingest import ingest
    from feature_repo.pipeline.store import build_features, feast_apply
    from feature_repo.pipeline.validate import validate_interval
    from titanovax.settings import PlatformSettings

    home = tmp_path_factory.mktemp("null_market")
    write_random_walk_export(home / "exports", SYMBOL, START, DAYS, seed=SEED)
    s = PlatformSettings(
        home=home,
        redis_url=f"{redis_url.rsplit('/', 1)[0]}/3",
        mt5_exports=home / "exports",
        symbols=[SYMBOL],
        timeframe="M5",
    )
    feast_apply(s)
    ingest(s, SYMBOL, "M5", START, END)
    validate_interval(s, SYMBOL, "M5", START, END)
    build_features(s, SYMBOL, "M5", START, END)
    return NullMarket(s, START, END)


def experiment(service: str) -> ExperimentConfig:
    cfg = ExperimentConfig(
        name=f"null_{service}",
        feature_service=service,
        label=LabelConfig(horizon_bars=HORIZON),
        split=SplitConfig(start=START, test_start=TEST_START, end=END, embargo_bars=HORIZON),
        model={"n_estimators": 60, "max_depth": 3, "learning_rate": 0.1, "tree_method": "hist"},
    )
    if service == "trend_v2":
        cfg = cfg.model_copy(
            update={
                "family": "ensemble",
                "transformer": TransformerConfig(
                    d_model=8, n_heads=1, n_layers=1, epochs=1, batch_size=256
                ),
                "split": cfg.split.model_copy(update={"n_folds": 2}),
            }
        )
    return cfg


def run(market: NullMarket, service: str) -> NullEdge:
    """The real training steps on the null market: dataset → fit → cost-aware backtest."""
    from training.train import backtest_step, build_training_dataset, fit_step, split_dataset

    cfg = experiment(service)
    path = build_training_dataset(market.settings, cfg, None)
    metrics = backtest_step(fit_step(market.settings, cfg, path, None))
    _, test = split_dataset(pd.read_parquet(path), cfg, None, "M5")  # the backtest's test rows
    return null_edge(metrics, test["label"].to_numpy(), HORIZON)


# --- planted leaks ------------------------------------------------------------------------------
def _per_symbol_shift(df: pd.DataFrame, cols: list[str], k: int) -> pd.DataFrame:
    """``cols`` of each row replaced by those of the row ``k`` bars later (k < 0: earlier)."""
    out = df.sort_values(["symbol", "event_timestamp"]).copy()
    out[cols] = out.groupby("symbol", sort=False)[cols].shift(-k)
    return out.sort_index()


def leak_labels_late(make_labels: Callable[..., pd.DataFrame]) -> Callable[..., pd.DataFrame]:
    """Each bar gets the label (and forward return) of the bar before it: the label window
    starts one bar before the features' close, so its first bar's return is a known feature."""

    def leaky(*a: Any, **k: Any) -> pd.DataFrame:
        out = _per_symbol_shift(make_labels(*a, **k), ["label", "fwd_ret"], -1)
        out = out.dropna(subset=["label"]).reset_index(drop=True)
        return out.astype({"label": np.int64})

    return leaky


def leak_ret_next_own(make_labels: Callable[..., pd.DataFrame]) -> Callable[..., pd.DataFrame]:
    """``ret_next`` (what a position taken at the close earns) becomes the bar's own return."""

    def leaky(*a: Any, **k: Any) -> pd.DataFrame:
        out = _per_symbol_shift(make_labels(*a, **k), ["ret_next"], -1)
        return out.dropna(subset=["ret_next"]).reset_index(drop=True)

    return leaky


class LeakyStore:
    """The real Feast store, whose point-in-time join hands each row some columns of the next
    bar's row (``cols``; for ``seq``: every channel but the close-hour ones, so the row still
    carries its own close time)."""

    def __init__(self, store: Any, cols: list[str]) -> None:
        self._store, self._cols = store, cols

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def get_historical_features(self, **kw: Any) -> Any:
        job = self._store.get_historical_features(**kw)
        cols = self._cols

        class Job:
            def to_df(self) -> pd.DataFrame:
                df = job.to_df()
                nxt = _per_symbol_shift(df, cols, 1)
                if SEQ_FIELD in cols:
                    keep = [SEQ_CHANNELS.index(c) for c in ("hour_sin", "hour_cos")]
                    nxt[SEQ_FIELD] = [
                        _with_channels(n, o, keep)
                        for n, o in zip(nxt[SEQ_FIELD], df[SEQ_FIELD], strict=True)
                    ]
                return nxt

        return Job()


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v))


def _with_channels(new: Any, own: Any, keep: list[int]) -> Any:
    if _missing(new) or _missing(own):
        return None
    a = np.asarray(new, np.float32).reshape(SEQ_LEN, len(SEQ_CHANNELS)).copy()
    a[:, keep] = np.asarray(own, np.float32).reshape(SEQ_LEN, len(SEQ_CHANNELS))[:, keep]
    return a.ravel()


LABEL_LEAKS = {"labels_one_bar_late": leak_labels_late, "ret_next_is_own_return": leak_ret_next_own}
CAUGHT_BY = {  # what the builder's message names
    "labels_one_bar_late": r"fwd_ret != log\(close\[t\+6\] / close\[t\]\)",
    "ret_next_is_own_return": r"ret_next != log\(close\[t\+1\] / close\[t\]\)",
}
STORE_LEAKS = {
    "price_features_from_next_bar": ("trend_v1", PRICE_V1),
    "sequence_one_bar_ahead": ("trend_v2", [SEQ_FIELD]),
}


@pytest.fixture
def without_builder_guards(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The dataset builder with its bar checks switched off (the timestamp checks stay)."""
    import training.dataset as dataset

    monkeypatch.setattr(dataset, "check_labels", lambda *a, **k: None)
    monkeypatch.setattr(dataset, "check_features", lambda *a, **k: None)
    yield


def _build(market: NullMarket, service: str, store: Any | None = None) -> pd.DataFrame:
    from training.dataset import build_dataset

    s = market.settings
    return build_dataset(
        s, [SYMBOL], "M5", market.start, market.end, horizon=HORIZON,
        feature_service=service, store=store,
    )  # fmt: skip


# --- the null test ------------------------------------------------------------------------------
@pytest.mark.parametrize("service", ["trend_v1", "trend_v2"])
def test_null_market_when_trained_through_the_pipeline_then_no_edge_beyond_chance(
    market: NullMarket, service: str
) -> None:
    edge = run(market, service)

    assert edge.n_test > 2000
    assert edge.accuracy <= edge.accuracy_limit, edge.to_dict()
    assert edge.net_return_ci_low <= edge.flat_net_return, edge.to_dict()
    assert_no_edge(edge)


# --- each leak is caught by the dataset builder --------------------------------------------------
@pytest.mark.parametrize("leak", sorted(LABEL_LEAKS))
def test_null_market_when_a_label_leak_is_planted_then_the_builder_raises(
    market: NullMarket, leak: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import training.dataset as dataset

    monkeypatch.setattr(dataset, "make_labels", LABEL_LEAKS[leak](dataset.make_labels))

    with pytest.raises(LookAheadError, match=CAUGHT_BY[leak]):
        _build(market, "trend_v1")


@pytest.mark.parametrize("leak", sorted(STORE_LEAKS))
def test_null_market_when_a_feature_leak_is_planted_in_the_join_then_the_builder_raises(
    market: NullMarket, leak: str
) -> None:
    from feature_repo.pipeline.store import open_store

    service, cols = STORE_LEAKS[leak]
    store = LeakyStore(open_store(market.settings), cols)

    with pytest.raises(LookAheadError, match="is not the value the lake gives"):
        _build(market, service, store)


def test_null_market_when_leaks_are_planted_then_the_old_close_hour_check_alone_misses_them(
    market: NullMarket,
) -> None:
    """Why the bar checks exist: the close-hour encodings of a row stay its own under these
    leaks, so the timestamp-only check passes them (the builder's bar checks do not)."""
    from feature_repo.pipeline import lake
    from feature_repo.pipeline.store import lookback, symbol_point
    from training.dataset import assert_point_in_time

    clean = _build(market, "trend_v1")
    leaked = _per_symbol_shift(clean, PRICE_V1, 1).dropna(subset=PRICE_V1)
    s = market.settings
    bars = {SYMBOL: lake.read_bars(s.lake_dir, SYMBOL, "M5", START - lookback("M5"), END)}

    assert_point_in_time(leaked)  # timestamps only: blind to it
    with pytest.raises(LookAheadError, match="ret_1"):
        assert_point_in_time(
            leaked, bars, horizon=HORIZON, points={SYMBOL: symbol_point(s, SYMBOL)}
        )


# --- and, with the builder's guards off, the null test's edge guard catches the accuracy leaks ---
@pytest.mark.parametrize("leak", ["labels_one_bar_late", "price_features_from_next_bar"])
def test_null_market_when_builder_guards_are_off_then_the_edge_guard_fails_the_run(
    market: NullMarket, leak: str, monkeypatch: pytest.MonkeyPatch, without_builder_guards: None
) -> None:
    import training.dataset as dataset
    from feature_repo.pipeline import store as store_mod

    if leak in LABEL_LEAKS:
        monkeypatch.setattr(dataset, "make_labels", LABEL_LEAKS[leak](dataset.make_labels))
    else:
        real_open = store_mod.open_store
        _, cols = STORE_LEAKS[leak]
        monkeypatch.setattr(dataset, "open_store", lambda s: LeakyStore(real_open(s), cols))

    edge = run(market, "trend_v1")

    assert edge.accuracy_edge or edge.pnl_edge, edge.to_dict()
    with pytest.raises(EdgeOnNullMarket):
        assert_no_edge(edge)
