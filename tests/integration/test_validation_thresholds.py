"""The thresholds this round added or changed, each just below and just above its boundary,
through the validation suites (:func:`feature_repo.pipeline.validate.validate_frame`):

* ``price_jump_absurd``: hard when a move is beyond ``k_sigma`` (50) robust sigmas AND beyond
  ``min_log_move`` (0.15) in log return; each condition alone leaves the soft ``price_jump``;
* ``frozen_prices_long``: hard from ``min_run`` (48) frozen bars; 47 stay soft ``frozen_prices``;
* the weekly open: a Sunday batch whose open lies on the calendar's open (within the calendar
  tolerance, 60 min) passes even when the history's weekly opens disagree; further off it is a
  timezone shift;
* the holiday calendar from the ``holidays`` library (US/NYSE closures and early closes for
  metals, UK bank holidays as holiday sessions).

The frames are built so the robust sigma is known exactly: log returns cycle +a, -a, 0, so the
median is 0 and the median absolute deviation is a (two thirds of the values are +-a), and one
jump barely moves either: sigma = 1.4826 a.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from feature_repo.pipeline import lake
from feature_repo.pipeline.calendar import calendar_for
from feature_repo.pipeline.expectations import load_config
from feature_repo.pipeline.validate import validate_frame

pytestmark = pytest.mark.integration

SYM = "EURUSD"
CFG = load_config()
K_ABSURD = float(CFG.param("price_jump_absurd", "k_sigma"))
MIN_MOVE = float(CFG.param("price_jump_absurd", "min_log_move"))
LONG_RUN = int(CFG.param("frozen_prices_long", "min_run"))
AS_OF = datetime(2026, 6, 1, tzinfo=UTC)


def _frame(
    times: list[datetime], returns: np.ndarray, tf: str, frozen: frozenset[int] = frozenset()
) -> pd.DataFrame:
    """Lake rows: each bar opens at the previous close and closes at open * exp(return); a bar
    in ``frozen`` has O=H=L=C = the previous close (ticks still counted)."""
    step = {"M5": 300, "H1": 3600}[tf]
    px = 1.1
    rows = []
    for i, (t, r) in enumerate(zip(times, returns, strict=True)):
        o = px
        c = px if i in frozen else o * math.exp(float(r))
        wick = 0.0 if i in frozen else 1e-5
        rows.append((t, o, max(o, c) + wick, min(o, c) - wick, c))
        px = c
    ts = pd.to_datetime([r[0] for r in rows], utc=True).astype("datetime64[ns, UTC]")
    hours = np.array([t.hour for t in times])
    return pd.DataFrame(
        {
            "time": ts,
            "close_time": ts + pd.Timedelta(seconds=step),
            "symbol": SYM,
            "timeframe": tf,
            "open": [r[1] for r in rows],
            "high": [r[2] for r in rows],
            "low": [r[3] for r in rows],
            "close": [r[4] for r in rows],
            "tick_volume": (100 + 80 * np.sin(np.pi * hours / 24)).astype("int64"),
            "spread": (10 + (hours % 5)).astype("int32"),
            "real_volume": np.zeros(len(rows), dtype="int64"),
            "server_time": (ts.astype("int64") // 10**9).to_numpy(),
        }
    )[lake.BAR_COLUMNS]


def _cycle(n: int, a: float) -> np.ndarray:
    return np.resize(np.array([a, -a, 0.0]), n)


def _m5_days(first: datetime, days: int) -> list[datetime]:
    return [first + timedelta(minutes=5 * i) for i in range(288 * days)]


def _jump_case(a: float, move: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Monday-Tuesday history and a Wednesday batch of EURUSD M5 whose bar 120 jumps by
    ``move`` (log) and bar 121 comes back."""
    times = _m5_days(datetime(2026, 1, 5, tzinfo=UTC), 3)
    r = _cycle(len(times), a)
    j = 576 + 120
    r[j], r[j + 1] = move, -move
    df = _frame(times, r, "M5")
    return df.iloc[:576].reset_index(drop=True), df.iloc[576:].reset_index(drop=True)


def _outcome(history: pd.DataFrame, batch: pd.DataFrame, tf: str = "M5"):  # type: ignore[no-untyped-def]
    return validate_frame(batch, SYM, tf, history, as_of=AS_OF, config=CFG)


@pytest.mark.parametrize(
    ("sigmas", "hard"),
    [(K_ABSURD * 0.99, False), (K_ABSURD * 1.01, True)],
    ids=["just_below_k_sigma", "just_above_k_sigma"],
)
def test_price_jump_absurd_when_a_big_move_is_around_k_sigma_then_hard_only_above(
    sigmas: float, hard: bool
) -> None:
    a = 0.004  # sigma = 1.4826 * a: the move is far beyond min_log_move either way
    move = sigmas * 1.4826 * a
    assert move > MIN_MOVE * 1.5

    history, batch = _jump_case(a, move)
    out = _outcome(history, batch)

    assert out.success is not hard
    assert ("price_jump_absurd" in out.rule_rows("hard")) is hard
    assert out.rule_rows("soft").get("price_jump", 0) >= 1  # beyond 12 sigmas: soft either way


@pytest.mark.parametrize(
    ("move", "hard"),
    [(MIN_MOVE * 0.99, False), (MIN_MOVE * 1.01, True)],
    ids=["just_below_min_log_move", "just_above_min_log_move"],
)
def test_price_jump_absurd_when_a_far_move_is_around_min_log_move_then_hard_only_above(
    move: float, hard: bool
) -> None:
    a = 0.0005  # sigma 0.00074: the move is 200 sigmas either way
    assert move / (1.4826 * a) > K_ABSURD * 2

    history, batch = _jump_case(a, move)
    out = _outcome(history, batch)

    assert out.success is not hard
    assert ("price_jump_absurd" in out.rule_rows("hard")) is hard


@pytest.mark.parametrize(
    ("bars", "hard"),
    [(LONG_RUN - 1, False), (LONG_RUN, True)],
    ids=["one_below_min_run", "at_min_run"],
)
def test_frozen_prices_long_when_a_run_is_around_min_run_then_hard_from_it(
    bars: int, hard: bool
) -> None:
    times = _m5_days(datetime(2026, 1, 5, tzinfo=UTC), 3)
    frozen = frozenset(range(576 + 24, 576 + 24 + bars))
    df = _frame(times, _cycle(len(times), 0.0005), "M5", frozen)
    history, batch = df.iloc[:576].reset_index(drop=True), df.iloc[576:].reset_index(drop=True)

    out = _outcome(history, batch)

    assert out.success is not hard
    assert ("frozen_prices_long" in out.rule_rows("hard")) is hard
    assert out.rule_rows("soft")["frozen_prices"] == bars


def _weekly_case(open_hour: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two weeks of EURUSD H1 whose weeks open Monday 00:00 UTC, then a Sunday evening batch
    that opens at ``open_hour`` UTC (the calendar's open in January: 17:00 New York = 22:00)."""
    times: list[datetime] = []
    for week in range(2):
        monday = datetime(2026, 1, 5, tzinfo=UTC) + timedelta(weeks=week)
        times += [monday + timedelta(hours=h) for h in range(5 * 24 - 2)]  # to Friday 21:00
    sunday = datetime(2026, 1, 18, open_hour, tzinfo=UTC)
    batch_times = [sunday + timedelta(hours=h) for h in range(24 - open_hour)]
    df = _frame(times + batch_times, _cycle(len(times) + len(batch_times), 0.0005), "H1")
    n = len(times)
    return df.iloc[:n].reset_index(drop=True), df.iloc[n:].reset_index(drop=True)


@pytest.mark.parametrize(
    ("open_hour", "hard"),
    [(22, False), (21, False), (20, True)],
    ids=["on_the_calendar_open", "one_hour_off_within_tolerance", "two_hours_off"],
)
def test_tz_shift_when_a_sunday_opens_on_the_calendar_then_it_passes_whatever_the_history_says(
    open_hour: int, hard: bool
) -> None:
    history, batch = _weekly_case(open_hour)

    out = _outcome(history, batch, "H1")

    assert ("tz_shift" in out.rule_rows("hard")) is hard, out.stats
    if not hard:  # the history's opens (Monday 00:00) disagree, and the batch still passes
        assert out.success and out.stats["tz_shift_hours"] == 0


def _utc(s: str) -> int:
    return int(datetime.fromisoformat(s).replace(tzinfo=UTC).timestamp())


@pytest.mark.parametrize(
    ("minutes_off", "on"), [(60, True), (61, False), (-60, True), (-61, False)]
)
def test_calendar_weekly_open_when_a_bar_is_near_the_open_then_within_the_tolerance_only(
    minutes_off: int, on: bool
) -> None:
    open_s = _utc("2026-01-18 22:00")  # Sunday 17:00 New York (EST)
    assert calendar_for(SYM).on_weekly_open(open_s + 60 * minutes_off) is on


@pytest.mark.parametrize(
    ("symbol", "gap_start", "gap_end", "allowed"),
    [
        ("XAUUSD", "2025-04-17 21:00", "2025-04-20 22:00", True),  # Good Friday (NYSE calendar)
        ("EURUSD", "2025-04-18 12:00", "2025-04-18 14:00", False),  # FX trades on Good Friday
        ("XAUUSD", "2025-07-04 17:00", "2025-07-04 22:00", True),  # Independence Day early halt
        ("EURUSD", "2025-07-04 17:00", "2025-07-04 22:00", False),  # FX is open
        ("XAUUSD", "2025-11-28 18:00", "2025-11-28 21:00", True),  # day after Thanksgiving
        ("XAUUSD", "2025-11-26 18:00", "2025-11-26 21:00", False),  # an ordinary Wednesday
    ],
)
def test_calendar_when_us_holidays_come_from_the_holidays_library_then_metals_closures_are_allowed(
    symbol: str, gap_start: str, gap_end: str, allowed: bool
) -> None:
    got = calendar_for(symbol).covers(np.array([_utc(gap_start)]), np.array([_utc(gap_end)]))
    assert bool(got[0]) is allowed


@pytest.mark.parametrize(
    ("day", "holiday"),
    [("2025-05-05", True), ("2025-05-06", False), ("2025-08-25", True), ("2025-08-27", False)],
)
def test_calendar_when_a_day_is_a_uk_bank_holiday_then_it_is_a_holiday_session(
    day: str, holiday: bool
) -> None:
    start = _utc(f"{day} 08:00")
    assert calendar_for(SYM).holiday_session(start, start + 8 * 3600) is holiday
