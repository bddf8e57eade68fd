"""The seeded synthetic market (engine.mt5.synthetic)."""

from __future__ import annotations

import numpy as np
import pytest

from engine.mt5.protocol import RATES_DTYPE, timeframe_seconds
from engine.mt5.synthetic import (
    ORIGIN_UTC,
    REGIME_CALM,
    REGIME_TREND_DOWN,
    REGIME_TREND_UP,
    SYMBOLS,
    SyntheticMarket,
    aggregate_rates,
    symbol_spec,
    synthetic_rates,
)

pytestmark = pytest.mark.unit

DAY = 86_400
OFF = 2 * 3600
# eight weeks from the origin: long enough for the properties, quick to generate
START, END = ORIGIN_UTC, ORIGIN_UTC + 56 * DAY


@pytest.fixture(scope="module")
def market() -> SyntheticMarket:
    return SyntheticMarket(seed=7)


def _utc(rates: np.ndarray, off: int = OFF) -> np.ndarray:
    return rates["time"] - off


def test_rates_requested_then_dtype_is_rates_dtype(market: SyntheticMarket) -> None:
    for tf in ("M1", "M5", "M15", "M30", "H1", "H4", "D1"):
        r = market.rates("EURUSD", tf, START, START + 7 * DAY)
        assert r.dtype == RATES_DTYPE
        assert len(r) > 0


def test_same_seed_different_ranges_then_identical_bars() -> None:
    a = SyntheticMarket(7).rates("GBPUSD", "M5", START + 20 * DAY, START + 21 * DAY)
    wide = SyntheticMarket(7).rates("GBPUSD", "M5", START + 3 * DAY, START + 40 * DAY)
    b = wide[np.isin(wide["time"], a["time"])]
    assert len(a) > 0
    np.testing.assert_array_equal(a, b)
    # the module-level function agrees with the class, for aggregated timeframes too
    h1 = synthetic_rates("GBPUSD", "H1", START + 20 * DAY, START + 21 * DAY, seed=7)
    h1_wide = SyntheticMarket(7).rates("GBPUSD", "H1", START, START + 30 * DAY)
    np.testing.assert_array_equal(h1, h1_wide[np.isin(h1_wide["time"], h1["time"])])


def test_range_grown_step_by_step_then_same_as_one_request() -> None:
    step = SyntheticMarket(3)
    parts = [
        step.rates("XAUUSD", "M5", START + k * 9 * DAY, START + (k + 1) * 9 * DAY) for k in range(6)
    ]
    once = SyntheticMarket(3).rates("XAUUSD", "M5", START, START + 54 * DAY)
    np.testing.assert_array_equal(np.concatenate(parts), once)


def test_different_seeds_then_different_paths() -> None:
    a = synthetic_rates("EURUSD", "H1", START, START + 7 * DAY, seed=1)
    b = synthetic_rates("EURUSD", "H1", START, START + 7 * DAY, seed=2)
    np.testing.assert_array_equal(a["time"], b["time"])
    assert not np.array_equal(a["close"], b["close"])


def test_time_then_server_time_with_offset(market: SyntheticMarket) -> None:
    r0 = market.rates("EURUSD", "M5", START, START + DAY, server_utc_offset_hours=0)
    r3 = market.rates("EURUSD", "M5", START, START + DAY, server_utc_offset_hours=3)
    assert r0["time"][0] == ORIGIN_UTC
    np.testing.assert_array_equal(r3["time"], r0["time"] + 3 * 3600)
    np.testing.assert_array_equal(r3["close"], r0["close"])


@pytest.mark.parametrize("tf", ["M1", "M5", "H1", "H4", "D1"])
def test_weeks_of_bars_then_no_weekend_bars(market: SyntheticMarket, tf: str) -> None:
    end = START + (14 if tf == "M1" else 56) * DAY
    t = _utc(market.rates("USDJPY", tf, START, end))
    assert np.all((t >= START) & (t < end))
    wd = ((t // DAY) + 3) % 7  # 0 = Monday (1970-01-01 was a Thursday)
    hour = (t % DAY) // 3600
    closed = ((wd == 4) & (hour >= 22)) | (wd == 5) | ((wd == 6) & (hour < 22))
    assert not np.any(closed)
    # and the market does trade on Sunday evening and Friday afternoon
    if tf in ("M5", "H1"):
        assert np.any((wd == 6) & (hour == 22))
        assert np.any((wd == 4) & (hour == 21))


def test_bars_then_ohlc_consistent_rounded_and_sorted(market: SyntheticMarket) -> None:
    for sym, spec in SYMBOLS.items():
        for tf in ("M1", "M5", "H1", "D1"):
            r = market.rates(sym, tf, START, START + (7 if tf == "M1" else 56) * DAY)
            o, h, lo, c = r["open"], r["high"], r["low"], r["close"]
            assert np.all(h >= np.maximum(o, c)), (sym, tf)
            assert np.all(lo <= np.minimum(o, c)), (sym, tf)
            assert np.all(lo > 0)
            for col in (o, h, lo, c):
                np.testing.assert_array_equal(np.round(col, spec.digits), col)
            assert np.all(np.diff(r["time"]) > 0)
            assert np.all(r["time"] % timeframe_seconds(tf) == 0)


def test_bars_then_open_is_previous_close_except_weekly_open(market: SyntheticMarket) -> None:
    r = market.rates("EURUSD", "M5", START, END)
    same = r["open"][1:] == r["close"][:-1]
    gap = np.diff(r["time"]) > 300
    assert np.all(same[~gap])
    assert np.count_nonzero(gap) == 8  # 8 weekends (the range ends Monday 00:00 UTC)


def test_bars_then_spread_integer_non_negative_and_seasonal(market: SyntheticMarket) -> None:
    r = market.rates("EURUSD", "M5", START, END)
    sp = r["spread"]
    assert sp.dtype == np.int32
    assert np.all(sp >= 0)
    hour = (_utc(r) % DAY) // 3600
    rollover = np.median(sp[(hour == 21) | (hour == 22)])
    asia = np.median(sp[(hour >= 23) | (hour < 7)])
    london_ny = np.median(sp[(hour >= 12) & (hour < 16)])
    assert rollover > asia > london_ny
    assert london_ny == pytest.approx(SYMBOLS["EURUSD"].spread_points, abs=2)


def test_bars_then_volatility_and_tick_volume_follow_the_session(market: SyntheticMarket) -> None:
    r = market.rates("EURUSD", "M5", START, END)
    hour = (_utc(r) % DAY) // 3600
    absret = np.abs(np.diff(np.log(r["close"]), prepend=np.log(r["open"][0])))
    asia = (hour >= 0) & (hour < 6)
    overlap = (hour >= 12) & (hour < 16)
    assert absret[overlap].mean() > 1.8 * absret[asia].mean()
    tv = r["tick_volume"]
    assert tv.dtype == np.uint64
    assert np.all(tv > 0)
    assert np.median(tv[overlap]) > 1.8 * np.median(tv[asia])
    assert np.all(r["real_volume"] == 0)


def test_trending_regime_then_positive_return_autocorrelation(market: SyntheticMarket) -> None:
    end = START + 364 * DAY
    r = market.rates("EURUSD", "M5", START, end, server_utc_offset_hours=0)
    t, reg = market.regimes("EURUSD", START, end)
    np.testing.assert_array_equal(t, r["time"])
    ret = np.diff(np.log(r["close"]))
    prev, nxt, state = ret[:-1], ret[1:], reg[2:]
    trend = (state == REGIME_TREND_UP) | (state == REGIME_TREND_DOWN)
    calm = state == REGIME_CALM
    ac_trend = np.corrcoef(prev[trend], nxt[trend])[0, 1]
    ac_calm = np.corrcoef(prev[calm], nxt[calm])[0, 1]
    assert 0.1 < ac_trend < 0.35
    assert ac_calm < 0.0
    # learnable on purpose (the drift in trends), yet returns stay mostly noise bar to bar
    assert 0.03 < np.corrcoef(prev, nxt)[0, 1] < 0.2
    assert set(np.unique(reg)) == {0, 1, 2, 3}


def test_m1_requested_then_aggregates_back_to_m5_exactly(market: SyntheticMarket) -> None:
    lo, hi = START + 8 * DAY, START + 10 * DAY
    m1 = market.rates("XAUUSD", "M1", lo, hi)
    m5 = market.rates("XAUUSD", "M5", lo, hi)
    assert len(m1) == 5 * len(m5)
    np.testing.assert_array_equal(aggregate_rates(m1, "M5"), m5)


def test_h1_and_d1_then_aggregated_from_m5_on_server_time(market: SyntheticMarket) -> None:
    m5 = market.rates("EURUSD", "M5", START, START + 14 * DAY)
    h1 = market.rates("EURUSD", "H1", START, START + 14 * DAY)
    np.testing.assert_array_equal(aggregate_rates(m5, "H1"), h1)
    d1 = market.rates("EURUSD", "D1", START, START + 14 * DAY)
    assert np.all(d1["time"] % DAY == 0)  # server midnight
    # Tue..Fri of week 0 (Monday's bar opens at Sunday 22:00 UTC, before the origin), a full
    # week, and the next Monday's bar, which opens at Sunday 22:00 UTC inside the range
    assert len(d1) == 4 + 5 + 1
    assert np.all((d1["time"] - OFF) % DAY == 22 * 3600)


def test_range_before_origin_or_empty_then_no_bars(market: SyntheticMarket) -> None:
    assert len(market.rates("EURUSD", "M5", 0, ORIGIN_UTC)) == 0
    assert len(market.rates("EURUSD", "M5", START + DAY, START + DAY)) == 0
    first = market.rates("EURUSD", "M5", 0, START + 3600)
    assert first["time"][0] - OFF == ORIGIN_UTC


def test_unknown_symbol_or_timeframe_then_error(market: SyntheticMarket) -> None:
    with pytest.raises(KeyError):
        market.rates("EURCHF", "M5", START, END)
    with pytest.raises(ValueError):
        synthetic_rates("EURUSD", "W1", START, END)


def test_two_years_of_m5_then_every_bar_is_there_and_the_level_stays_plausible() -> None:
    """(Its speed is measured by bench/synthetic_market.py, not asserted here.)"""
    r = SyntheticMarket(11).rates("EURUSD", "M5", ORIGIN_UTC, ORIGIN_UTC + 730 * DAY)
    assert len(r) > 145_000
    # the level stays plausible over two years
    assert r["close"].min() > 0.8 and r["close"].max() < 1.4


def test_symbols_table_then_specs_as_documented() -> None:
    assert set(SYMBOLS) == {"EURUSD", "GBPUSD", "USDJPY", "XAUUSD"}
    assert (SYMBOLS["EURUSD"].digits, SYMBOLS["EURUSD"].point) == (5, 0.00001)
    assert (SYMBOLS["USDJPY"].digits, SYMBOLS["USDJPY"].point) == (3, 0.001)
    assert (SYMBOLS["XAUUSD"].digits, SYMBOLS["XAUUSD"].contract_size) == (2, 100.0)
    assert SYMBOLS["GBPUSD"].contract_size == 100_000.0
    for spec in SYMBOLS.values():
        assert (spec.volume_min, spec.volume_step, spec.volume_max) == (0.01, 0.01, 100.0)
        assert spec.spread_points > 0 and spec.stops_level >= 0
    assert SYMBOLS["USDJPY"].currency_profit == "JPY"


def test_symbol_spec_for_unknown_symbol_then_generic_from_name() -> None:
    spec = symbol_spec("EURGBP", digits=5)
    assert (spec.currency_base, spec.currency_profit, spec.digits) == ("EUR", "GBP", 5)
    assert symbol_spec("EURUSD") is SYMBOLS["EURUSD"]
    assert symbol_spec("XAUUSD", digits=3).digits == 3
