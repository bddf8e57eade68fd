"""Broker server time ↔ UTC rules and the offset detector (engine.mt5.brokertime)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from engine.mt5.brokertime import (
    FixedOffset,
    NewYorkClose,
    ZoneRule,
    check_rule,
    detect_offset,
    fx_week_close_utc,
    parse_rule,
)
from engine.mt5.protocol import timeframe_seconds

pytestmark = pytest.mark.unit

NY = ZoneInfo("America/New_York")


def ts(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> int:
    return int(datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp())


def server_wall(t: int) -> datetime:
    return datetime.fromtimestamp(t, UTC).replace(tzinfo=None)


# --- rules -----------------------------------------------------------------------------------


def test_parse_rule_when_given_each_spelling_then_the_rule_and_its_spec_round_trip() -> None:
    assert parse_rule("fixed:+2") == FixedOffset(2) == parse_rule("+2") == parse_rule("utc+2")
    assert parse_rule("fixed:-3.5") == FixedOffset(-3.5) and FixedOffset(-3.5).spec == "fixed:-3.5"
    assert parse_rule("ny-close") == NewYorkClose() and NewYorkClose().spec == "ny-close"
    assert parse_rule("eet") == ZoneRule("Europe/Athens") == parse_rule("tz:Europe/Athens")
    assert parse_rule("tz:America/New_York+7").spec == "tz:America/New_York+7"
    assert parse_rule("tz:Etc/GMT-2") == ZoneRule("Etc/GMT-2")  # a zone whose name has a sign
    for spec in ("fixed:+2", "ny-close", "tz:Europe/Athens", "tz:America/New_York+7"):
        assert parse_rule(parse_rule(spec).spec) == parse_rule(spec)
    with pytest.raises(ValueError, match="unknown"):
        parse_rule("tz:Mars/Olympus")
    with pytest.raises(ValueError, match="unknown"):
        parse_rule("summer time please")


def test_parse_rule_when_unset_then_the_old_fixed_offset_setting_applies() -> None:
    assert parse_rule(None, 3) == FixedOffset(3)
    assert parse_rule("  ", 2) == FixedOffset(2)


def test_fixed_offset_when_converting_then_scalars_stay_ints_and_arrays_stay_arrays() -> None:
    r = FixedOffset(2)
    assert r.to_server(ts(2024, 1, 5, 22)) == ts(2024, 1, 6, 0)
    assert isinstance(r.to_utc(ts(2024, 1, 6)), int)
    arr = np.array([ts(2024, 1, 1), ts(2024, 7, 1)], dtype=np.int64)
    np.testing.assert_array_equal(r.to_utc(r.to_server(arr)), arr)
    assert r.to_server(np.empty(0, dtype=np.int64)).shape == (0,)


@pytest.mark.parametrize(
    ("utc", "offset_h"),
    [
        ((2024, 1, 15, 12), 2),  # winter: EST, server UTC+2
        ((2024, 7, 1, 12), 3),  # summer: EDT, server UTC+3
        ((2024, 3, 10, 6, 59), 2),  # US spring forward is 2024-03-10 02:00 EST = 07:00 UTC
        ((2024, 3, 10, 7, 0), 3),
        ((2024, 11, 3, 5, 59), 3),  # US fall back is 2024-11-03 02:00 EDT = 06:00 UTC
        ((2024, 11, 3, 6, 0), 2),
        ((2025, 3, 14, 12), 3),  # between the US (Mar 9) and EU (Mar 30) switches
    ],
)
def test_ny_close_when_us_dst_switches_then_offset_follows_new_york(
    utc: tuple[int, ...], offset_h: int
) -> None:
    t = ts(*utc)  # type: ignore[arg-type]
    assert NewYorkClose().to_server(t) - t == offset_h * 3600


def test_eet_when_between_us_and_eu_switches_then_offset_follows_the_eu_dates() -> None:
    eet, ny = ZoneRule("Europe/Athens"), NewYorkClose()
    mid_march = ts(2025, 3, 14, 12)  # US already on DST, EU not yet
    assert eet.to_server(mid_march) - mid_march == 2 * 3600
    assert ny.to_server(mid_march) - mid_march == 3 * 3600
    eu_switch = ts(2025, 3, 30, 1)  # last Sunday of March, 01:00 UTC
    assert eet.to_server(eu_switch - 1) - (eu_switch - 1) == 2 * 3600
    assert eet.to_server(eu_switch) - eu_switch == 3 * 3600


def test_ny_close_when_new_york_strikes_five_pm_then_server_clock_reads_midnight_all_year() -> None:
    rule = NewYorkClose()
    day = datetime(2023, 1, 1, 17, tzinfo=NY)
    closes = []
    for _ in range(3 * 366):
        closes.append(int(day.timestamp()))
        day = datetime.combine(day.date() + timedelta(days=1), day.timetz())
    server = rule.to_server(np.asarray(closes, dtype=np.int64))
    assert np.all(server % 86_400 == 0)
    np.testing.assert_array_equal(rule.to_utc(server), closes)


def test_ny_close_when_vectorised_then_equals_zoneinfo_per_element() -> None:
    rng = np.random.default_rng(5)
    utc = rng.integers(ts(2015, 1, 1), ts(2030, 1, 1), size=2000, dtype=np.int64)
    want = [
        int(
            (
                datetime.fromtimestamp(int(u), UTC).astimezone(NY).replace(tzinfo=UTC)
                + timedelta(hours=7)
            ).timestamp()
        )
        for u in utc
    ]
    np.testing.assert_array_equal(NewYorkClose().to_server(utc), want)


def test_to_utc_when_server_clock_repeats_or_skips_an_hour_then_documented_choice() -> None:
    rule = NewYorkClose()
    # fall back 2024-11-03: server 08:00-09:00 happens twice; the earlier instant is taken
    assert rule.to_utc(ts(2024, 11, 3, 8, 30)) == ts(2024, 11, 3, 5, 30)
    # spring forward 2024-03-10: server 09:00-10:00 never happens; read with the old offset (+2)
    assert rule.to_utc(ts(2024, 3, 10, 9, 30)) == ts(2024, 3, 10, 7, 30)
    # everything else round-trips, for every M5 bar of a year
    utc = np.arange(ts(2024, 1, 1), ts(2025, 1, 1), 300, dtype=np.int64)
    back = rule.to_utc(rule.to_server(utc))
    wrong = utc[back != utc]
    assert len(wrong) == 12 and np.all((wrong >= ts(2024, 11, 3, 6)) & (wrong < ts(2024, 11, 3, 7)))


# --- detector -----------------------------------------------------------------------------------


def fx_bars(
    rule: FixedOffset | ZoneRule, start: int, end: int, timeframe: str, open_delay_h: int = 0
) -> np.ndarray:
    """Server-time bar opens of a market open Sunday 17:00 (+delay) to Friday 17:00 New York."""
    step = timeframe_seconds(timeframe)
    utc = np.arange(start - start % step, end, step, dtype=np.int64)
    ny7 = NewYorkClose().to_server(utc)  # New York wall clock + 7h: the week is Mon-Fri there
    dow = (ny7 // 86_400 + 3) % 7  # 0 = Monday
    open_ = dow < 5
    if open_delay_h:
        open_ &= ~((dow == 0) & ((ny7 % 86_400) < open_delay_h * 3600))
    return np.asarray(rule.to_server(utc[open_]))


@pytest.mark.parametrize("spec", ["fixed:+2", "fixed:+0", "ny-close", "tz:Europe/Athens"])
def test_detect_offset_when_bars_follow_a_rule_then_that_rule_is_suggested(spec: str) -> None:
    rule = parse_rule(spec)
    bars = fx_bars(rule, ts(2024, 1, 1), ts(2025, 1, 1), "M15")
    det = detect_offset(bars, "M15")
    assert det.conclusive and len(det.weeks) == 52
    assert det.suggested == spec
    assert det.mismatches(rule) == []


def test_detect_offset_when_gold_opens_an_hour_later_then_the_delay_is_read_and_weeks_stay_usable() -> (
    None
):
    bars = fx_bars(NewYorkClose(), ts(2024, 1, 1), ts(2024, 7, 1), "M5", open_delay_h=1)
    det = detect_offset(bars, "M5")
    assert det.open_delay_h == 1.0
    assert det.suggested == "ny-close" and det.mismatches(NewYorkClose()) == []
    assert (
        sum(not w.consistent for w in det.weeks) == 1
    )  # the DST weekend: +2 at Friday's close, +3 at Sunday's open


def test_detect_offset_when_bars_are_daily_then_inconclusive() -> None:
    bars = fx_bars(FixedOffset(2), ts(2024, 1, 1), ts(2025, 1, 1), "D1")
    det = detect_offset(bars, "D1")
    assert not det.conclusive and "H1 or finer" in det.reason and det.suggested is None


def test_detect_offset_when_only_winter_weeks_then_fixed_offset_wins_the_tie() -> None:
    bars = fx_bars(NewYorkClose(), ts(2024, 1, 1), ts(2024, 2, 15), "H1")
    det = detect_offset(bars, "H1")
    assert det.summer_offset_h is None and det.winter_offset_h == 2.0
    assert det.suggested == "fixed:+2"  # ny-close fits too; the data cannot tell them apart


def test_check_rule_when_configured_rule_disagrees_then_warns_with_the_weeks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bars = fx_bars(NewYorkClose(), ts(2024, 1, 1), ts(2025, 1, 1), "M5")
    with caplog.at_level(logging.WARNING, logger="engine.mt5.brokertime"):
        res = check_rule(FixedOffset(2), bars, "M5", symbol="EURUSD")
    assert not res.ok and res.checked == 2 * 52  # a close and an open per weekend
    # the readings of 2024 on US daylight saving time: 34 Friday closes, 34 Sunday opens
    assert len(res.mismatches) == 68
    assert all(obs == 3.0 and rule == 2.0 for _, obs, rule in res.mismatches)
    assert "close 2024-03-15" in res.message and "TX_BROKER_TZ=ny-close" in res.message
    assert any("disagrees" in r.getMessage() for r in caplog.records)


def test_check_rule_when_rule_agrees_then_ok_and_silent(caplog: pytest.LogCaptureFixture) -> None:
    bars = fx_bars(NewYorkClose(), ts(2024, 1, 1), ts(2025, 1, 1), "M5")
    with caplog.at_level(logging.WARNING, logger="engine.mt5.brokertime"):
        res = check_rule(NewYorkClose(), bars, "M5")
    assert res.ok and res.mismatches == [] and not caplog.records


def test_fx_week_close_when_asked_near_a_weekend_then_friday_five_pm_new_york() -> None:
    assert fx_week_close_utc(ts(2024, 1, 6, 3)) == ts(2024, 1, 5, 22)  # winter: 22:00 UTC
    assert fx_week_close_utc(ts(2024, 7, 6, 3)) == ts(2024, 7, 5, 21)  # summer: 21:00 UTC


def test_detect_offset_when_reading_the_real_eurusd_export_then_the_fixed_default_is_flagged(
    raw_dir: Path,
) -> None:
    from engine.mt5.exports import read_export

    path = raw_dir / "EURUSD_H1__magiclovexxx_mt5_bot.csv"
    if not path.exists():
        pytest.skip(f"{path.name} not in {raw_dir}")
    rates = read_export(path).rates
    det = detect_offset(rates["time"], "H1")
    assert det.conclusive and det.winter_offset_h == 2.0 and det.summer_offset_h == 3.0
    best = parse_rule(det.suggested)
    assert len(det.mismatches(best)) <= 0.05 * len(det.observations)  # holiday closes only
    assert check_rule(best, rates["time"], "H1").ok
    assert not check_rule(FixedOffset(2), rates["time"], "H1").ok
