"""Each validation rule just inside and just outside its threshold.

The thresholds are read from the rules configuration (``validation_rules.yaml`` through
:func:`load_config`), never written here, so the tests follow a threshold change and catch
drift: a rule whose threshold moved must now pass the "just outside" case or fail the "just
inside" one. The batch is a real staged partition of the synthetic market (Thursday
2026-01-08, EURUSD M5) with four days of validated lake history before it; each case changes
as little as possible and runs the real suites (:func:`validate_frame`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest

from feature_repo.pipeline import lake
from feature_repo.pipeline.calendar import calendar_for
from feature_repo.pipeline.expectations import ValidationConfig, load_config
from feature_repo.pipeline.ingest import ingest
from feature_repo.pipeline.validate import validate_frame, validate_interval
from titanovax.settings import PlatformSettings

pytestmark = pytest.mark.integration

SYM, TF = "EURUSD", "M5"
HISTORY_START = datetime(2026, 1, 4, tzinfo=UTC)  # Sunday: the week opens at 22:00 UTC
DAY = datetime(2026, 1, 8, tzinfo=UTC)  # Thursday: the batch under test
AS_OF = DAY + timedelta(days=1)
PRICES = ["open", "high", "low", "close"]


@pytest.fixture(scope="module")
def cfg() -> ValidationConfig:
    return load_config()


@pytest.fixture(scope="module")
def staged(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the staged batch, its lake history), through the real ingest and validation."""
    s = PlatformSettings(home=tmp_path_factory.mktemp("boundaries"), symbols=[SYM], timeframe=TF)
    for d in range((DAY - HISTORY_START).days):
        day = HISTORY_START + timedelta(days=d)
        ingest(s, SYM, TF, day, day + timedelta(days=1))
        validate_interval(s, SYM, TF, day, day + timedelta(days=1), as_of=AS_OF)
    ingest(s, SYM, TF, DAY, AS_OF)
    batch = lake.read_partition(s.staging_dir, SYM, TF, DAY.date())
    history = lake.read_bars(s.lake_dir, SYM, TF, DAY - timedelta(days=14), DAY)
    assert batch is not None and len(batch) == 288 and len(history) > 500
    return batch, history


def failed_rules(
    batch: pd.DataFrame, history: pd.DataFrame, cfg: ValidationConfig, as_of: datetime = AS_OF
) -> set[str]:
    out = validate_frame(batch, SYM, TF, history, as_of=as_of, config=cfg)
    return {f["rule"] for f in out.failures}


Case = Callable[[pd.DataFrame, pd.DataFrame, ValidationConfig, bool], pd.DataFrame]


def test_clean_batch_when_validated_then_no_rule_fails(
    staged: tuple[pd.DataFrame, pd.DataFrame], cfg: ValidationConfig
) -> None:
    batch, history = staged
    assert failed_rules(batch.copy(), history, cfg) == set()


# --- the cases: each returns the batch just inside (outside=False) or just outside its threshold -
def _level_shift(df: pd.DataFrame, i: int, log_move: float) -> pd.DataFrame:
    """Every bar from ``i`` on moved by ``log_move`` (a single close-to-close jump at bar ``i``,
    every other return unchanged; bars stay internally consistent)."""
    df = df.copy()
    df.loc[i:, PRICES] = df.loc[i:, PRICES].to_numpy() * np.exp(log_move)
    df.loc[i, "open"] = df.loc[i - 1, "close"]
    df.loc[i, "high"] = df.loc[i, PRICES].max()
    df.loc[i, "low"] = df.loc[i, PRICES].min()
    return df


def price_jump(
    batch: pd.DataFrame, history: pd.DataFrame, cfg: ValidationConfig, outside: bool
) -> pd.DataFrame:
    """A jump of k ± 0.05 robust sigmas at one midday bar. The rule's median and 1.4826 x MAD
    come from the last ``window_bars`` history returns and the batch's; the jump is the pool's
    most extreme value either way, so both are computed here with it placed at the top."""
    k = float(cfg.param("price_jump", "k_sigma"))
    window = int(cfg.param("price_jump", "window_bars"))
    i = 150
    hist = history["close"].to_numpy(float)[-window:]
    closes = np.concatenate([hist, batch["close"].to_numpy(float)])
    r = np.diff(np.log(closes))
    at = len(hist) - 1 + i  # the index of bar i's own return in r
    pool = np.delete(r, at)
    pool = np.append(pool, np.inf)  # the jump, at the top of the order
    med = float(np.median(pool))
    sigma = 1.4826 * float(np.median(np.abs(pool - med)))
    target = med + (k + (0.05 if outside else -0.05)) * sigma
    return _level_shift(batch, i, target - r[at])


def spread_spike(
    batch: pd.DataFrame, history: pd.DataFrame, cfg: ValidationConfig, outside: bool
) -> pd.DataFrame:
    """One spread at the limit ``max(ratio x median, median + min_points)`` (inside: the
    largest whole number of points not above it) or one point above."""
    window = int(cfg.param("price_jump", "window_bars"))
    spreads = np.concatenate(
        [history["spread"].to_numpy(float)[-window:], batch["spread"].to_numpy(float)]
    )
    spreads[-1] = np.inf  # the spike, at the top of the order (median unchanged by where)
    med = float(np.median(spreads))
    limit = max(
        float(cfg.param("spread_spike", "ratio")) * med,
        med + float(cfg.param("spread_spike", "min_points")),
    )
    df = batch.copy()
    df.loc[150, "spread"] = int(np.floor(limit)) + (1 if outside else 0)
    return df


def frozen_prices(
    batch: pd.DataFrame, history: pd.DataFrame, cfg: ValidationConfig, outside: bool
) -> pd.DataFrame:
    """A run of ``min_run`` bars identical to the previous close with ticks (outside), or one
    bar fewer (inside). The bars after the run continue from the frozen price."""
    n = int(cfg.param("frozen_prices", "min_run")) - (0 if outside else 1)
    first = 160
    df = batch.copy()
    px = df.loc[first - 1, "close"]
    after = first + n
    df = _level_shift(df, after, float(np.log(px / df.loc[after - 1, "close"])))
    df.loc[first : after - 1, PRICES] = px
    df.loc[after, "open"] = px
    df.loc[after, "high"] = df.loc[after, PRICES].max()
    df.loc[after, "low"] = df.loc[after, PRICES].min()
    return df


def calendar_gap(
    batch: pd.DataFrame, history: pd.DataFrame, cfg: ValidationConfig, outside: bool
) -> pd.DataFrame:
    """Bars missing over the FX daily break (17:00 New York) widened by ``tolerance_minutes``
    on both sides (inside), or from one bar earlier (outside)."""
    tol = timedelta(minutes=float(cfg.param("calendar_gap", "tolerance_minutes")))
    (bh, bm), (eh, em) = calendar_for(SYM).daily_break_ny
    ny = ZoneInfo("America/New_York")
    day = DAY.date()  # the break on this day, New York time (evening UTC)
    start = datetime(day.year, day.month, day.day, bh, bm, tzinfo=ny).astimezone(UTC) - tol
    end = datetime(day.year, day.month, day.day, eh, em, tzinfo=ny).astimezone(UTC) + tol
    step = timedelta(minutes=5)
    first = start - (step if outside else timedelta(0))
    t = pd.to_datetime(batch["time"], utc=True)
    keep = (t < first) | (t >= end)
    assert (~keep).sum() >= 2 and keep.iloc[-1]  # a real hole, with a bar after it
    return batch[keep].reset_index(drop=True)


def tz_shift(
    batch: pd.DataFrame, history: pd.DataFrame, cfg: ValidationConfig, outside: bool
) -> pd.DataFrame:
    """The batch's hour-of-day profiles (tick volume and spread) moved ``min_shift_hours``
    (outside) or one hour less (inside), as a broker clock off by that much would."""
    hours = int(cfg.param("tz_shift", "min_shift_hours")) - (0 if outside else 1)
    df = batch.copy()
    k = hours * 12
    for col in ("tick_volume", "spread"):
        df[col] = np.roll(df[col].to_numpy(), k)
    return df


def spread_non_negative(
    batch: pd.DataFrame, history: pd.DataFrame, cfg: ValidationConfig, outside: bool
) -> pd.DataFrame:
    df = batch.copy()
    df.loc[150, "spread"] = -1 if outside else 0
    return df


def ohlc_consistency(
    batch: pd.DataFrame, history: pd.DataFrame, cfg: ValidationConfig, outside: bool
) -> pd.DataFrame:
    """A high equal to the bar's largest price (inside) or one point below it (outside)."""
    df = batch.copy()
    top = df.loc[150, ["open", "close", "low"]].max()
    df.loc[150, "high"] = top - (1e-5 if outside else 0.0)
    return df


CASES: dict[str, Case] = {
    "price_jump": price_jump,
    "spread_spike": spread_spike,
    "frozen_prices": frozen_prices,
    "calendar_gap": calendar_gap,
    "tz_shift": tz_shift,
    "spread_non_negative": spread_non_negative,
    "ohlc_consistency": ohlc_consistency,
}


@pytest.mark.parametrize("rule", sorted(CASES))
def test_rule_when_just_inside_its_threshold_then_it_passes(
    staged: tuple[pd.DataFrame, pd.DataFrame], cfg: ValidationConfig, rule: str
) -> None:
    batch, history = staged
    df = CASES[rule](batch.copy(), history, cfg, False)

    assert failed_rules(df, history, cfg) == set()


@pytest.mark.parametrize("rule", sorted(CASES))
def test_rule_when_just_outside_its_threshold_then_that_rule_fails(
    staged: tuple[pd.DataFrame, pd.DataFrame], cfg: ValidationConfig, rule: str
) -> None:
    batch, history = staged
    df = CASES[rule](batch.copy(), history, cfg, True)

    assert failed_rules(df, history, cfg) == {rule}


def test_forming_bar_when_the_last_bar_closes_at_or_after_as_of_then_only_after_fails(
    staged: tuple[pd.DataFrame, pd.DataFrame], cfg: ValidationConfig
) -> None:
    batch, history = staged
    last_close = pd.Timestamp(batch["close_time"].max()).to_pydatetime()

    assert failed_rules(batch.copy(), history, cfg, as_of=last_close) == set()
    assert failed_rules(batch.copy(), history, cfg, as_of=last_close - timedelta(seconds=1)) == {
        "forming_bar"
    }


def test_thresholds_when_the_config_moves_them_then_the_cases_follow(
    staged: tuple[pd.DataFrame, pd.DataFrame], tmp_path: pytest.TempPathFactory
) -> None:
    """The cases read their thresholds from the config: a YAML that moves them (as a deployment
    may) moves both cases with it, and the old "just outside" batch passes the looser rule."""
    batch, history = staged
    path = tmp_path / "rules.yaml"  # type: ignore[operator]
    path.write_text("rules:\n  price_jump: {k_sigma: 20.0}\n  frozen_prices: {min_run: 8}\n")
    loose, default = load_config(path), load_config()

    for rule in ("price_jump", "frozen_prices"):
        assert failed_rules(CASES[rule](batch.copy(), history, loose, True), history, loose) == {
            rule
        }
        assert (
            failed_rules(CASES[rule](batch.copy(), history, loose, False), history, loose) == set()
        )
        old_outside = CASES[rule](batch.copy(), history, default, True)
        assert failed_rules(old_outside, history, loose) == set()
