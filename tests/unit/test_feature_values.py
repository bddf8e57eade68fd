"""Every feature family against values computed independently of the transform code.

On a short fixed series, each family's values are compared with a maintained implementation
(the ``ta`` package: Bollinger bands, stochastic oscillator, simple moving averages), with
pandas' own rolling statistics written out from the documented formula, or with numbers
derived by hand in the test. The transforms are never compared with themselves here: an
inverted RSI, Bollinger at 3σ instead of 2σ, a sample instead of a population stdev or a window
one bar off fails a test in this file.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from ta.momentum import StochasticOscillator
from ta.trend import SMAIndicator
from ta.volatility import BollingerBands

from feature_repo.pipeline.transforms import (
    SEQ_CHANNELS,
    SEQ_LEN,
    compute_sequences,
    feature_frame,
)
from tests.unit.test_transforms import make_bars

pytestmark = pytest.mark.unit

N = 200
POINT = 1e-5


@pytest.fixture(scope="module")
def bars() -> pd.DataFrame:
    return make_bars(N, seed=5)


@pytest.fixture(scope="module")
def feats(bars: pd.DataFrame) -> pd.DataFrame:
    return feature_frame(bars, POINT)


def _close(expected: pd.Series | np.ndarray, got: pd.Series, first: int) -> None:
    """Equal from row ``first`` on (past every warm-up involved), to rounding."""
    e = np.asarray(expected, dtype=float)[first:]
    g = got.to_numpy(dtype=float)[first:]
    assert not np.isnan(e).any() and not np.isnan(g).any()
    np.testing.assert_allclose(g, e, rtol=1e-9, atol=1e-12)


def _atr(b: pd.DataFrame, w: int = 14) -> pd.Series:
    prev = b["close"].shift(1)
    tr = pd.concat(
        [b["high"] - b["low"], (b["high"] - prev).abs(), (b["low"] - prev).abs()], axis=1
    ).max(axis=1)
    return tr.rolling(w).mean()


# --- returns -------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 3, 6, 12, 24, 48])
def test_returns_when_computed_then_equal_the_log_of_close_over_close_k_bars_back(
    bars: pd.DataFrame, feats: pd.DataFrame, k: int
) -> None:
    c = bars["close"].to_numpy()
    expected = np.full(N, np.nan)
    expected[k:] = [np.log(c[i] / c[i - k]) for i in range(k, N)]

    _close(expected, feats[f"ret_{k}"], k)


# --- volatility ----------------------------------------------------------------------------------
def test_volatility_when_computed_then_equals_population_stdevs_atr_and_range_estimators(
    bars: pd.DataFrame, feats: pd.DataFrame
) -> None:
    r1 = np.log(bars["close"]).diff()
    atr = _atr(bars)
    hl2 = np.log(bars["high"] / bars["low"]) ** 2
    co2 = np.log(bars["close"] / bars["open"]) ** 2

    _close(r1.rolling(24).std(ddof=0), feats["vol_24"], 24)
    _close(r1.rolling(48).std(ddof=0), feats["vol_48"], 48)
    _close(atr / bars["close"], feats["atr_14_rel"], 14)
    _close((bars["high"] - bars["low"]) / atr, feats["range_atr"], 14)
    _close(np.sqrt(hl2.rolling(24).mean() / (4 * np.log(2))), feats["park_24"], 23)
    gk = np.sqrt((0.5 * hl2 - (2 * np.log(2) - 1) * co2).rolling(24).mean().clip(lower=0))
    _close(gk, feats["gk_24"], 23)
    _close(r1.rolling(12).std(ddof=0) / r1.rolling(48).std(ddof=0), feats["vol_ratio_12_48"], 48)


def test_atr_when_every_bar_has_the_same_true_range_then_atr_is_that_range() -> None:
    """Hand-derived: closes step up 0.001 a bar, each bar spans close ± 0.0005, so every true
    range is |high - previous close| = 0.0015 and ATR14 / close = 0.0015 / close."""
    b = make_bars(40)
    b["close"] = 1.1 + 0.001 * np.arange(40)
    b["open"] = b["close"] - 0.001
    b["high"], b["low"] = b["close"] + 0.0005, b["close"] - 0.0005

    f = feature_frame(b, POINT)

    np.testing.assert_allclose(f["atr_14_rel"].iloc[14:], 0.0015 / b["close"].iloc[14:], rtol=1e-9)
    np.testing.assert_allclose(f["range_atr"].iloc[14:], 0.001 / 0.0015, rtol=1e-9)


# --- momentum: RSI and SMA ratio --------------------------------------------------------------------
def test_rsi_when_ten_of_fourteen_moves_are_equal_gains_then_it_is_ten_fourteenths() -> None:
    """Hand-derived: 10 equal up-moves and 4 equal down-moves of the same size in the last 14
    log returns give mean gain / (mean gain + mean loss) = 10 / 14; the mirror image 4 / 14."""
    b = make_bars(15)
    step = np.array([0.0] + [1e-3] * 10 + [-1e-3] * 4)
    b["close"] = 1.1 * np.exp(np.cumsum(step))
    mirror = b.copy()
    mirror["close"] = 1.1 * np.exp(np.cumsum(-step))

    up, down = feature_frame(b, POINT), feature_frame(mirror, POINT)

    assert up["rsi_14"].iloc[-1] == pytest.approx(10 / 14, rel=1e-9)
    assert down["rsi_14"].iloc[-1] == pytest.approx(4 / 14, rel=1e-9)


def test_rsi_and_sma_ratio_when_computed_then_equal_the_documented_formulas(
    bars: pd.DataFrame, feats: pd.DataFrame
) -> None:
    r1 = np.log(bars["close"]).diff()
    gain, loss = r1.clip(lower=0).rolling(14).mean(), (-r1).clip(lower=0).rolling(14).mean()
    sma12 = SMAIndicator(bars["close"], 12).sma_indicator()
    sma48 = SMAIndicator(bars["close"], 48).sma_indicator()

    _close(gain / (gain + loss), feats["rsi_14"], 14)
    _close(sma12 / sma48 - 1, feats["sma_ratio_12_48"], 47)


# --- Bollinger (ta) -------------------------------------------------------------------------------
def test_bollinger_when_computed_then_position_and_width_match_ta_two_sigma_bands(
    bars: pd.DataFrame, feats: pd.DataFrame
) -> None:
    bb = BollingerBands(bars["close"], window=20, window_dev=2)
    mid, hi, lo = bb.bollinger_mavg(), bb.bollinger_hband(), bb.bollinger_lband()

    _close((bars["close"] - mid) / (hi - mid), feats["bb_pos_20"], 19)  # +1 at the upper band
    _close((hi - lo) / mid, feats["bb_width_20"], 19)


# --- MACD (SMA-based, in ATRs) ----------------------------------------------------------------------
def test_macd_when_computed_then_equals_sma12_minus_sma26_over_atr_and_its_signal(
    bars: pd.DataFrame, feats: pd.DataFrame
) -> None:
    sma = {w: SMAIndicator(bars["close"], w).sma_indicator() for w in (12, 26)}
    macd = (sma[12] - sma[26]) / _atr(bars)
    signal = macd.rolling(9).mean()

    _close(macd, feats["macd_atr"], 25)
    _close(signal, feats["macd_signal_atr"], 33)
    _close(macd - signal, feats["macd_hist_atr"], 33)


# --- stochastic (ta) ------------------------------------------------------------------------------
def test_stochastic_when_computed_then_matches_ta_on_the_unit_scale(
    bars: pd.DataFrame, feats: pd.DataFrame
) -> None:
    st = StochasticOscillator(bars["high"], bars["low"], bars["close"], window=14, smooth_window=3)

    _close(st.stoch() / 100, feats["stoch_k_14"], 13)
    _close(st.stoch_signal() / 100, feats["stoch_d_3"], 15)


# --- ADX (finite windows) -------------------------------------------------------------------------
def test_adx_when_computed_then_equals_the_directional_movement_sums_over_14_bars(
    bars: pd.DataFrame, feats: pd.DataFrame
) -> None:
    h, lo, c = bars["high"], bars["low"], bars["close"]
    up, dn = h.diff(), -lo.diff()
    pdm = up.where((up > dn) & (up > 0), 0.0)
    mdm = dn.where((dn > up) & (dn > 0), 0.0)
    tr = pd.concat([h - lo, (h - c.shift()).abs(), (lo - c.shift()).abs()], axis=1).max(axis=1)
    tr14 = tr.rolling(14).sum()
    pdi, mdi = pdm.rolling(14).sum() / tr14, mdm.rolling(14).sum() / tr14
    dx = ((pdi - mdi).abs() / (pdi + mdi)).fillna(0.0)
    dx[:14] = np.nan

    _close(pdi, feats["di_plus_14"], 14)
    _close(mdi, feats["di_minus_14"], 14)
    _close(dx.rolling(14).mean(), feats["adx_14"], 27)


# --- volume and spread ------------------------------------------------------------------------------
def test_volume_and_spread_when_computed_then_equal_population_zscores_and_ratios(
    bars: pd.DataFrame, feats: pd.DataFrame
) -> None:
    tv, sp = bars["tick_volume"].astype(float), bars["spread"].astype(float)

    def z(x: pd.Series, w: int) -> pd.Series:
        return (x - x.rolling(w).mean()) / x.rolling(w).std(ddof=0)

    _close(z(tv, 48), feats["tickvol_z_48"], 47)
    _close(z(tv, 12), feats["tickvol_z_12"], 11)
    _close(tv.rolling(12).mean() / tv.rolling(48).mean(), feats["tickvol_ratio_12_48"], 47)
    _close(sp * POINT / bars["close"], feats["spread_rel"], 0)
    _close(z(sp, 48), feats["spread_z_48"], 47)
    _close(sp * POINT / _atr(bars), feats["spread_atr"], 14)


# --- calendar and sessions (hand-derived) ----------------------------------------------------------
def test_calendar_and_sessions_when_a_bar_opens_monday_0900_utc_in_winter_then_known_values() -> (
    None
):
    """Bar opening Mon 2026-01-05 09:00 UTC, closing 09:05: hour of the close 9 + 5/60;
    weekday 0 + 9/24 of a day; London 09:00 (open), New York 04:00 (closed), Tokyo 18:00
    (closed: 09-18), Sydney 20:00 (closed: 07-16)."""
    b = make_bars(1, start="2026-01-05 09:00")

    f = feature_frame(b, POINT).iloc[0]

    hour = 9 + 5 / 60
    assert f["hour_sin"] == pytest.approx(np.sin(2 * np.pi * hour / 24), abs=1e-12)
    assert f["hour_cos"] == pytest.approx(np.cos(2 * np.pi * hour / 24), abs=1e-12)
    assert f["dow_sin"] == pytest.approx(np.sin(2 * np.pi * (9 / 24) / 7), abs=1e-12)
    assert f["dow_cos"] == pytest.approx(np.cos(2 * np.pi * (9 / 24) / 7), abs=1e-12)
    assert (f["sess_london"], f["sess_newyork"], f["sess_tokyo"], f["sess_sydney"]) == (
        1.0,
        0.0,
        0.0,
        0.0,
    )


def test_sessions_when_a_bar_opens_in_summer_then_local_daylight_time_counts() -> None:
    """Wed 2026-07-01 12:30 UTC: London 13:30 BST (open), New York 08:30 EDT (open), Tokyo
    21:30 (closed), Sydney 22:30 AEST (closed); 07:00 UTC: London 08:00 (open), NY 03:00."""
    noon = feature_frame(make_bars(1, start="2026-07-01 12:30"), POINT).iloc[0]
    seven = feature_frame(make_bars(1, start="2026-07-01 07:00"), POINT).iloc[0]

    assert (noon["sess_london"], noon["sess_newyork"], noon["sess_tokyo"]) == (1.0, 1.0, 0.0)
    assert (seven["sess_london"], seven["sess_newyork"]) == (1.0, 0.0)


# --- cross-symbol -----------------------------------------------------------------------------------
def test_cross_symbol_when_one_other_symbol_then_equal_pandas_correlation_and_relative_returns(
    bars: pd.DataFrame,
) -> None:
    other = make_bars(N, seed=9, symbol="GBPUSD")
    f = feature_frame(bars, POINT, {"GBPUSD": other})
    lc, lo = np.log(bars["close"]), np.log(other["close"])

    _close(lc.diff().rolling(48).corr(lo.diff()), f["xs_corr_48"], 48)
    _close(lc.diff(6) - lo.diff(6), f["xs_rs_6"], 6)
    _close(lc.diff(24) - lo.diff(24), f["xs_rs_24"], 24)
    _close((lo.diff(24) < lc.diff(24)).astype(float), f["xs_rank_24"], 24)


# --- regime ------------------------------------------------------------------------------------------
def test_regime_when_computed_then_equal_efficiency_trend_t_and_volatility_percentile(
    bars: pd.DataFrame, feats: pd.DataFrame
) -> None:
    c = bars["close"]
    r1 = np.log(c).diff()
    vol24, vol48 = r1.rolling(24).std(ddof=0), r1.rolling(48).std(ddof=0)
    pct = vol24.rolling(96).apply(lambda w: float(np.mean(w <= w[-1])), raw=True)

    _close((c - c.shift(48)).abs() / c.diff().abs().rolling(48).sum(), feats["er_48"], 48)
    _close(np.log(c).diff(48) / (vol48 * np.sqrt(48)), feats["trend_t_48"], 48)
    _close(pct, feats["vol_pct_96"], 119)


# --- the sequence's channels -------------------------------------------------------------------------
def test_sequence_when_computed_then_each_channel_of_the_newest_bar_equals_its_formula(
    bars: pd.DataFrame,
) -> None:
    atr = _atr(bars)
    tv = bars["tick_volume"].astype(float)
    hour = bars["close_time"].dt.hour + bars["close_time"].dt.minute / 60
    expected = pd.DataFrame(
        {
            "ret_atr": bars["close"].diff() / atr,
            "open_atr": (bars["open"] - bars["close"]) / atr,
            "high_atr": (bars["high"] - bars["close"]) / atr,
            "low_atr": (bars["low"] - bars["close"]) / atr,
            "range_atr": (bars["high"] - bars["low"]) / atr,
            "tickvol_z": (tv - tv.rolling(48).mean()) / tv.rolling(48).std(ddof=0),
            "spread_atr": bars["spread"] * POINT / atr,
            "hour_sin": np.sin(2 * np.pi * hour / 24),
            "hour_cos": np.cos(2 * np.pi * hour / 24),
        }
    )[list(SEQ_CHANNELS)]

    seqs = compute_sequences(bars, POINT)

    last = np.asarray(seqs["seq"].iloc[-1]).reshape(SEQ_LEN, len(SEQ_CHANNELS))
    np.testing.assert_allclose(last, expected.iloc[-SEQ_LEN:].to_numpy(), rtol=1e-5, atol=1e-6)
