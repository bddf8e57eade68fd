"""A seeded synthetic FX market that yields MT5-shaped bars (:data:`RATES_DTYPE`).

The market is built to be *plausible and learnable*, not to be a forecast of anything:

* **Calendar.** The market trades from Sunday 22:00 UTC to Friday 22:00 UTC (no holidays).
  History starts at :data:`ORIGIN_UTC` (2024-01-01 00:00 UTC); there are no bars before it.
  No M1..H1 bar opens in the closed window. With the default +2 h server offset H4 and D1
  bars also start at the Sunday 22:00 UTC open; with other offsets the H4/D1 bar holding the
  Sunday open is stamped at its aligned start, as MT5 does (the "Sunday candle").
* **One base path per (seed, symbol).** Prices are generated at M5 resolution from the
  origin forward, week by week, each week drawing its random numbers from its own generator
  seeded with ``(seed, crc32(symbol), 300, week)``. A bar therefore depends only on the seed, the
  symbol and its time, never on the range that was asked for. M15..D1 bars are aggregated
  from the M5 path (so all timeframes agree with each other; H4 and D1 buckets are aligned
  on *server* time, as in MT5) and M1 bars refine each M5 bar with a Brownian bridge that
  reproduces its open, high, low and close exactly.
* **Regimes.** A four-state Markov chain (stepped per M5 bar) switches between
  ``CALM`` (mean-reverting: AR(1) coefficient -0.05 and a pull, half-life 8 h, back to the
  price at which the calm spell began), ``TREND_UP`` / ``TREND_DOWN`` (a drift of ±0.35
  bar-sigma per bar plus AR(1) coefficient +0.12, i.e. positively autocorrelated returns)
  and ``VOLATILE`` (2.2x volatility, no drift). Mean spell lengths are 12 h, 8 h, 8 h and
  2 h (about 51 % / 22 % / 22 % / 4 % of the time). A weak pull (half-life 120 days) toward
  the symbol's initial price keeps the level realistic over years.

  *The learnable signal is strong on purpose* (measured on two years of M5, seed 7): the
  lag-1 autocorrelation of M5 log returns is about +0.10 overall (EURUSD; +0.08 XAUUSD) and
  about +0.22 inside trending spells; the past 4 h move correlates about +0.45..+0.48 with
  the next 4 h move. The drift was raised from 0.08 to 0.35 bar-sigma because at 0.08 no
  model beat always-flat after the spread (checked on Feb-Mar 2026 with the trend_v1
  features): the demo market must carry an after-cost edge for the whole path to be
  exercised. Real markets are far harder; do not read the demo's Sharpe as a forecast.
  The hidden regime is available through :meth:`SyntheticMarket.regimes` for diagnostics
  only.
* **Seasonality.** Volatility follows the UTC hour (quiet Asia, busy London and the
  London/New York overlap, a lull at the 21:00-23:00 UTC rollover). The spread (integer
  points, never negative) widens 3-3.5x in the rollover, 1.4x in Asia and 1.6x in the
  volatile regime. ``tick_volume`` scales with the bar's volatility; ``real_volume`` is 0 as
  in OTC FX feeds.
* **Bars.** ``open`` equals the previous ``close`` except at the weekly open (weekend gap);
  ``high >= max(open, close)``, ``low <= min(open, close)``; prices are rounded to the
  symbol's digits.

Times: :func:`synthetic_rates` takes a UTC range and returns ``time`` in broker *server* time
(``utc + server_utc_offset_hours * 3600``, a fixed offset with no DST).
"""

from __future__ import annotations

import logging
import math
import zlib
from collections import OrderedDict
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

from engine.mt5.protocol import RATES_DTYPE, TIMEFRAMES, timeframe_seconds

__all__ = [
    "ORIGIN_UTC",
    "REGIME_CALM",
    "REGIME_NAMES",
    "REGIME_TREND_DOWN",
    "REGIME_TREND_UP",
    "REGIME_VOLATILE",
    "SYMBOLS",
    "SymbolSpec",
    "SyntheticMarket",
    "aggregate_rates",
    "symbol_spec",
    "synthetic_rates",
]

logger = logging.getLogger(__name__)

ORIGIN_UTC = 1_704_067_200
"""2024-01-01 00:00 UTC (a Monday): the first bar of every synthetic history."""

_DAY = 86_400
_WEEK = 7 * _DAY
_WEEK0_UTC = ORIGIN_UTC - 2 * 3600  # Sunday 2023-12-31 22:00 UTC: the weekly open of week 0
_OPEN_SECONDS = 5 * _DAY  # Sunday 22:00 -> Friday 22:00 UTC
_BASE_SECONDS = 300  # the base path is M5
_MAX_SPAN_SECONDS = 30 * 365 * _DAY  # refuse to generate more than ~30 years
_YEAR_SECONDS = 260 * _DAY  # trading seconds in a year (for annualised volatility)

REGIME_CALM = 0
REGIME_TREND_UP = 1
REGIME_TREND_DOWN = 2
REGIME_VOLATILE = 3
REGIME_NAMES: dict[int, str] = {
    REGIME_CALM: "calm",
    REGIME_TREND_UP: "trend_up",
    REGIME_TREND_DOWN: "trend_down",
    REGIME_VOLATILE: "volatile",
}

# per-regime parameters (drift in units of the bar's sigma, AR(1) coefficient, vol multiplier)
_DRIFT = (0.0, 0.35, -0.35, 0.0)
_PHI = (-0.05, 0.12, 0.12, 0.0)
_VOL = (0.8, 1.0, 1.0, 2.2)
_MEAN_SPELL_SECONDS = (12 * 3600, 8 * 3600, 8 * 3600, 2 * 3600)
# where a spell goes when it ends (rows: from, columns: to; the diagonal is unused)
_EXIT = np.array(
    [
        [0.0, 0.35, 0.35, 0.30],
        [0.60, 0.0, 0.20, 0.20],
        [0.60, 0.20, 0.0, 0.20],
        [0.50, 0.25, 0.25, 0.0],
    ]
)
_CALM_PULL_HALF_LIFE = 8 * 3600  # calm spells revert to their starting price
_LEVEL_PULL_HALF_LIFE = 120 * _DAY  # weak pull toward the symbol's initial price

# volatility multiplier by UTC hour (quiet Asia, London open, London/NY overlap, rollover)
_HOUR_VOL = np.array(
    [
        0.55,
        0.65,
        0.6,
        0.5,
        0.45,
        0.45,
        0.6,
        1.0,
        1.2,
        1.1,
        1.0,
        1.0,
        1.3,
        1.6,
        1.7,
        1.5,
        1.1,
        0.9,
        0.8,
        0.7,
        0.6,
        0.4,
        0.4,
        0.5,
    ]
)
_HOUR_VOL = _HOUR_VOL / math.sqrt(float(np.mean(_HOUR_VOL**2)))
# spread multiplier by UTC hour: rollover 21:00-23:00, Asia 23:00-07:00
_HOUR_SPREAD = np.array([1.4] * 7 + [1.0] * 14 + [3.0, 3.5] + [1.4])


@dataclass(frozen=True)
class SymbolSpec:
    """What the simulator needs to know about a symbol (a subset of MT5's ``SymbolInfo``).

    ``spread_points`` is the typical (base) spread in points; ``initial_price``,
    ``annual_vol`` and ``ticks_per_minute`` only shape the synthetic market.
    """

    name: str
    digits: int
    contract_size: float = 100_000.0
    currency_base: str = "USD"
    currency_profit: str = "USD"
    currency_margin: str = "USD"
    description: str = ""
    volume_min: float = 0.01
    volume_step: float = 0.01
    volume_max: float = 100.0
    spread_points: int = 10
    stops_level: int = 0
    freeze_level: int = 0
    initial_price: float = 1.0
    annual_vol: float = 0.08
    ticks_per_minute: float = 40.0

    @property
    def point(self) -> float:
        """The price of one point, ``10 ** -digits``."""
        return round(10.0**-self.digits, self.digits)


SYMBOLS: dict[str, SymbolSpec] = {
    "EURUSD": SymbolSpec(
        name="EURUSD",
        digits=5,
        currency_base="EUR",
        currency_margin="EUR",
        description="Euro vs US Dollar",
        spread_points=12,
        stops_level=0,
        initial_price=1.0800,
        annual_vol=0.07,
        ticks_per_minute=55.0,
    ),
    "GBPUSD": SymbolSpec(
        name="GBPUSD",
        digits=5,
        currency_base="GBP",
        currency_margin="GBP",
        description="Great Britain Pound vs US Dollar",
        spread_points=16,
        stops_level=0,
        initial_price=1.2700,
        annual_vol=0.08,
        ticks_per_minute=55.0,
    ),
    "USDJPY": SymbolSpec(
        name="USDJPY",
        digits=3,
        currency_base="USD",
        currency_profit="JPY",
        currency_margin="USD",
        description="US Dollar vs Japanese Yen",
        spread_points=14,
        stops_level=0,
        initial_price=150.000,
        annual_vol=0.09,
        ticks_per_minute=80.0,
    ),
    "XAUUSD": SymbolSpec(
        name="XAUUSD",
        digits=2,
        contract_size=100.0,
        currency_base="XAU",
        currency_margin="XAU",
        description="Gold vs US Dollar",
        spread_points=20,
        stops_level=0,
        initial_price=2300.00,
        annual_vol=0.15,
        ticks_per_minute=150.0,
    ),
}


def symbol_spec(symbol: str, digits: int | None = None) -> SymbolSpec:
    """The spec of ``symbol``: from :data:`SYMBOLS` when known, else a generic one.

    For an unknown six-letter symbol (``EURGBP``) the currencies are read from its name;
    ``digits`` (e.g. inferred from an export) overrides the table's digits when given.
    """
    known = SYMBOLS.get(symbol.upper())
    if known is not None:
        if digits is None or digits == known.digits:
            return known
        return replace(known, digits=digits)
    name = symbol.upper()
    base, profit = ("USD", "USD")
    if len(name) >= 6 and name[:6].isalpha():
        base, profit = name[:3], name[3:6]
    d = 5 if digits is None else digits
    return SymbolSpec(
        name=symbol,
        digits=d,
        currency_base=base,
        currency_profit=profit,
        currency_margin=base,
        description=f"{symbol} (generic spec)",
    )


# --- aggregation ------------------------------------------------------------------------------


def aggregate_rates(
    rates: np.ndarray, timeframe: int | str, *, anchor_offset: int = 0
) -> np.ndarray:
    """Aggregate time-sorted bars into ``timeframe`` bars.

    A bar's bucket is ``floor((time + anchor_offset) / tf) * tf - anchor_offset``: pass the
    server offset in seconds when ``time`` is UTC and buckets must align on server time (H4,
    D1), 0 when ``time`` already is server time. ``open``/``close`` are the first/last,
    ``high``/``low`` the extremes, volumes are summed and ``spread`` is the smallest in the
    bucket. The resulting ``time`` is the bucket's aligned start, as in MT5.
    """
    return _aggregate(rates, timeframe_seconds(timeframe), anchor_offset)


def _aggregate(rates: np.ndarray, tfs: int, anchor_offset: int) -> np.ndarray:
    out = np.empty(0, dtype=RATES_DTYPE)
    n = len(rates)
    if n == 0:
        return out
    t = rates["time"].astype(np.int64)
    bucket = (t + anchor_offset) // tfs
    starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
    ends = np.r_[starts[1:] - 1, n - 1]
    out = np.empty(len(starts), dtype=RATES_DTYPE)
    out["time"] = bucket[starts] * tfs - anchor_offset
    out["open"] = rates["open"][starts]
    out["close"] = rates["close"][ends]
    out["high"] = np.maximum.reduceat(rates["high"], starts)
    out["low"] = np.minimum.reduceat(rates["low"], starts)
    out["tick_volume"] = np.add.reduceat(rates["tick_volume"], starts)
    out["spread"] = np.minimum.reduceat(rates["spread"], starts)
    out["real_volume"] = np.add.reduceat(rates["real_volume"], starts)
    return out


# --- the market -------------------------------------------------------------------------------


@dataclass
class _BasePath:
    """The M5 path of one symbol, generated from the origin through ``n_weeks`` weeks."""

    rates: np.ndarray  # RATES_DTYPE, ``time`` in UTC
    times: np.ndarray  # ``rates["time"]`` as a contiguous int64 copy (the search key)
    regime: np.ndarray  # int8 per bar
    week_start: np.ndarray  # index into ``rates`` of each week's first bar (len n_weeks + 1)
    n_weeks: int = 0
    # state carried into the next week
    state_regime: int = REGIME_CALM
    state_logp: float = 0.0
    state_ret: float = 0.0
    state_anchor: float = 0.0
    last_close: float = 0.0


def _week_times(week: int) -> np.ndarray:
    """UTC open times of the M5 bars of trading week ``week`` (week 0 starts at the origin)."""
    ws = _WEEK0_UTC + week * _WEEK
    return np.arange(max(ws, ORIGIN_UTC), ws + _OPEN_SECONDS, _BASE_SECONDS, dtype=np.int64)


def _week_of(t_utc: int) -> int:
    return (t_utc - _WEEK0_UTC) // _WEEK


class SyntheticMarket:
    """A seeded synthetic market: one deterministic price path per symbol.

    Paths are generated lazily and cached on the instance, so repeated and growing requests
    (a clock-driven simulator) cost a slice, not a regeneration. Each path and aggregate keeps
    its bar times as a contiguous int64 array: a range is found by binary search on it in
    O(log n) (a search on the strided ``time`` field of the structured array would copy the
    whole column first, O(n) per call).
    """

    _AGG_CACHE_SIZE = 16
    _WEEKS_AHEAD = 4  # generate a little past what was asked to amortise extensions

    def __init__(self, seed: int = 7) -> None:
        self.seed = int(seed)
        self._paths: dict[str, _BasePath] = {}
        self._agg: OrderedDict[tuple[str, int, int], tuple[int, np.ndarray, np.ndarray]] = (
            OrderedDict()
        )

    # -- public API ----------------------------------------------------------------------------

    def rates(
        self,
        symbol: str,
        timeframe: str | int,
        start_utc: int,
        end_utc: int,
        *,
        server_utc_offset_hours: int = 2,
    ) -> np.ndarray:
        """Bars of ``symbol`` whose open time (UTC) is in ``[start_utc, end_utc)``.

        ``timeframe`` is a name ("M5") or an MT5 constant. The returned ``time`` is server
        time (``utc + server_utc_offset_hours * 3600``).
        """
        spec = self._spec(symbol)
        tfs = timeframe_seconds(timeframe)
        off = int(server_utc_offset_hours) * 3600
        start_utc, end_utc = int(start_utc), int(end_utc)
        lo = max(start_utc, ORIGIN_UTC - _DAY)
        if end_utc <= lo:
            return np.empty(0, dtype=RATES_DTYPE)
        if end_utc - ORIGIN_UTC > _MAX_SPAN_SECONDS:
            raise ValueError(
                f"synthetic history is limited to 30 years after the origin (end_utc={end_utc})"
            )
        path = self._ensure(spec, _week_of(end_utc + tfs - 1))
        if tfs == _BASE_SECONDS:
            src, t = path.rates, path.times
        elif tfs < _BASE_SECONDS:
            src = self._refine_m1(spec, path, start_utc, end_utc)
            t = src["time"]
        else:
            src, t = self._aggregated(spec.name, path, tfs, off)
        i0, i1 = np.searchsorted(t, start_utc, "left"), np.searchsorted(t, end_utc, "left")
        out = src[i0:i1].copy()
        out["time"] += off
        return out

    def regimes(self, symbol: str, start_utc: int, end_utc: int) -> tuple[np.ndarray, np.ndarray]:
        """The hidden regime of each M5 bar in ``[start_utc, end_utc)``: ``(time_utc, regime)``.

        For diagnostics and tests only: a model never sees this.
        """
        spec = self._spec(symbol)
        path = self._ensure(spec, _week_of(int(end_utc) - 1))
        t = path.times
        i0, i1 = np.searchsorted(t, start_utc, "left"), np.searchsorted(t, end_utc, "left")
        return t[i0:i1].copy(), path.regime[i0:i1].copy()

    # -- internals -----------------------------------------------------------------------------

    @staticmethod
    def _spec(symbol: str) -> SymbolSpec:
        try:
            return SYMBOLS[symbol]
        except KeyError:
            raise KeyError(
                f"unknown synthetic symbol {symbol!r}; known: {sorted(SYMBOLS)}"
            ) from None

    def _ensure(self, spec: SymbolSpec, last_week: int) -> _BasePath:
        path = self._paths.get(spec.name)
        if path is None:
            logp0 = 0.0
            path = _BasePath(
                rates=np.empty(0, dtype=RATES_DTYPE),
                times=np.empty(0, dtype=np.int64),
                regime=np.empty(0, dtype=np.int8),
                week_start=np.zeros(1, dtype=np.int64),
                state_logp=logp0,
                state_anchor=logp0,
                last_close=round(spec.initial_price, spec.digits),
            )
            self._paths[spec.name] = path
        if last_week >= path.n_weeks:
            self._extend(spec, path, last_week + 1 + self._WEEKS_AHEAD)
        return path

    def _extend(self, spec: SymbolSpec, path: _BasePath, n_weeks: int) -> None:
        """Generate weeks ``[path.n_weeks, n_weeks)`` and append them to ``path``."""
        w0 = path.n_weeks
        crc = zlib.crc32(spec.name.encode())
        times, eps, unif, hi_e, lo_e, tv_e, sp_e, wk_first = [], [], [], [], [], [], [], []
        gaps = []
        for w in range(w0, n_weeks):
            tw = _week_times(w)
            n = len(tw)
            rng = np.random.default_rng([self.seed, crc, _BASE_SECONDS, w])
            times.append(tw)
            eps.append(rng.standard_normal(n))
            unif.append(rng.random(n))
            hi_e.append(np.abs(rng.standard_normal(n)))
            lo_e.append(np.abs(rng.standard_normal(n)))
            tv_e.append(rng.standard_normal(n))
            sp_e.append(rng.standard_normal(n))
            gaps.append(float(rng.standard_normal()))
            first = np.zeros(n, dtype=bool)
            first[0] = True
            wk_first.append(first)
        t = np.concatenate(times)
        n = len(t)
        hour = (t // 3600) % 24
        season = _HOUR_VOL[hour]
        sigma_bar = spec.annual_vol * math.sqrt(_BASE_SECONDS / _YEAR_SECONDS)
        sigma_day = spec.annual_vol * math.sqrt(_DAY / _YEAR_SECONDS)
        sig = sigma_bar * season

        # per-bar transition thresholds: stay with prob 1 - dt/spell, else jump by _EXIT row
        cum = []
        for r in range(4):
            leave = _BASE_SECONDS / _MEAN_SPELL_SECONDS[r]
            row = _EXIT[r] * leave
            row[r] = 1.0 - leave
            cum.append((*np.cumsum(row).tolist()[:3], 2.0))
        k_calm = 1.0 - 0.5 ** (_BASE_SECONDS / _CALM_PULL_HALF_LIFE)
        k_level = 1.0 - 0.5 ** (_BASE_SECONDS / _LEVEL_PULL_HALF_LIFE)

        # the sequential part: Markov chain + AR(1) returns (a plain loop over Python floats)
        eps_l, u_l, sig_l = (
            np.concatenate(eps).tolist(),
            np.concatenate(unif).tolist(),
            sig.tolist(),
        )
        first_l = np.concatenate(wk_first).tolist()
        gap_iter = iter(gaps)
        reg, logp, ret, anchor = (
            path.state_regime,
            path.state_logp,
            path.state_ret,
            path.state_anchor,
        )
        logp_open = [0.0] * n
        logp_close = [0.0] * n
        regs = [0] * n
        drift, phi, vol = _DRIFT, _PHI, _VOL
        gap_sigma = 0.25 * sigma_day
        for i in range(n):
            if first_l[i]:
                g = next(gap_iter)
                if w0 > 0 or i > 0:  # no gap before the very first bar
                    logp += gap_sigma * g
                ret = 0.0
            c = cum[reg]
            x = u_l[i]
            nr = 0 if x < c[0] else 1 if x < c[1] else 2 if x < c[2] else 3
            if nr != reg:
                reg = nr
                if reg == REGIME_CALM:
                    anchor = logp
            s = sig_l[i] * vol[reg]
            ret = drift[reg] * s + phi[reg] * ret + s * eps_l[i] - k_level * logp
            if reg == REGIME_CALM:
                ret -= k_calm * (logp - anchor)
            logp_open[i] = logp
            logp += ret
            logp_close[i] = logp
            regs[i] = reg
        path.state_regime, path.state_logp, path.state_ret, path.state_anchor = (
            reg,
            logp,
            ret,
            anchor,
        )

        # the vectorised part: prices, ranges, spread, volume
        digits, p0 = spec.digits, spec.initial_price
        close = np.round(p0 * np.exp(np.asarray(logp_close)), digits)
        first = np.concatenate(wk_first)
        open_ = np.empty(n)
        open_[1:] = close[:-1]
        open_[0] = path.last_close
        open_[first] = np.round(p0 * np.exp(np.asarray(logp_open)[first]), digits)
        if w0 == 0:
            open_[0] = round(p0, digits)
        reg_arr = np.asarray(regs, dtype=np.int8)
        vol_mult = np.asarray(_VOL)[reg_arr]
        px_sig = sig * vol_mult * close
        high = np.round(np.maximum(open_, close) + 0.5 * px_sig * np.concatenate(hi_e), digits)
        low = np.round(np.minimum(open_, close) - 0.5 * px_sig * np.concatenate(lo_e), digits)
        low = np.maximum(low, spec.point)
        spread_mult = _HOUR_SPREAD[hour] * np.where(reg_arr == REGIME_VOLATILE, 1.6, 1.0)
        spread = np.rint(spec.spread_points * spread_mult * (1.0 + 0.12 * np.concatenate(sp_e)))
        spread = np.maximum(spread, 0)
        ticks = spec.ticks_per_minute * (_BASE_SECONDS / 60) * season * vol_mult
        ticks = np.rint(ticks * np.exp(0.25 * np.concatenate(tv_e) - 0.03125))
        ticks = np.maximum(ticks, 5)

        new = np.empty(n, dtype=RATES_DTYPE)
        new["time"] = t
        new["open"], new["high"], new["low"], new["close"] = open_, high, low, close
        new["tick_volume"] = ticks.astype(np.uint64)
        new["spread"] = spread.astype(np.int32)
        new["real_volume"] = 0
        path.last_close = float(close[-1])

        lens = np.array([len(x) for x in times], dtype=np.int64)
        base = len(path.rates)
        path.week_start = np.concatenate([path.week_start, base + np.cumsum(lens)])
        path.rates = np.concatenate([path.rates, new])
        path.times = np.concatenate([path.times, t.astype(np.int64)])
        path.regime = np.concatenate([path.regime, reg_arr])
        path.n_weeks = n_weeks
        logger.debug(
            "synthetic %s: generated weeks %d..%d (%d M5 bars)", spec.name, w0, n_weeks - 1, n
        )

    def _aggregated(
        self, symbol: str, path: _BasePath, tfs: int, off: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``tfs`` bars of the whole path and their contiguous times (cached)."""
        key = (symbol, tfs, off)
        hit = self._agg.get(key)
        if hit is not None and hit[0] == len(path.rates):
            self._agg.move_to_end(key)
            return hit[1], hit[2]
        agg = _aggregate(path.rates, tfs, off)
        times = np.ascontiguousarray(agg["time"], dtype=np.int64)
        self._agg[key] = (len(path.rates), agg, times)
        self._agg.move_to_end(key)
        while len(self._agg) > self._AGG_CACHE_SIZE:
            self._agg.popitem(last=False)
        return agg, times

    def _refine_m1(
        self, spec: SymbolSpec, path: _BasePath, start_utc: int, end_utc: int
    ) -> np.ndarray:
        """M1 bars for the weeks covering ``[start_utc, end_utc)``, consistent with M5.

        Each M5 bar is split into five M1 bars along a Brownian bridge from its open to its
        close, clipped to its range; one M1 bar takes the M5 high and one the M5 low, and the
        tick volume is split so that the M1 bars aggregate back to the M5 bar exactly.
        """
        wa = max(_week_of(max(start_utc, ORIGIN_UTC)), 0)
        wb = min(_week_of(end_utc - 1), path.n_weeks - 1)
        if wb < wa:
            return np.empty(0, dtype=RATES_DTYPE)
        crc = zlib.crc32(spec.name.encode())
        parts = []
        k = 5
        for w in range(wa, wb + 1):
            m5 = path.rates[path.week_start[w] : path.week_start[w + 1]]
            n = len(m5)
            if n == 0:
                continue
            rng = np.random.default_rng([self.seed, crc, 60, w])
            steps = rng.standard_normal((n, k))
            ex_hi = np.abs(rng.standard_normal((n, k)))
            ex_lo = np.abs(rng.standard_normal((n, k)))
            ih = rng.integers(0, k, n)
            il = rng.integers(0, k, n)
            wts = rng.gamma(2.0, 1.0, (n, k))

            o, h, lo, c = m5["open"], m5["high"], m5["low"], m5["close"]
            scale = (h - lo)[:, None] / 2.5 + spec.point
            walk = np.cumsum(steps, axis=1) * scale
            frac = np.arange(1, k + 1) / k
            bridge = o[:, None] + walk - frac * walk[:, -1:] + frac * (c - o)[:, None]
            closes = np.clip(np.round(bridge, spec.digits), lo[:, None], h[:, None])
            closes[:, -1] = c
            opens = np.empty_like(closes)
            opens[:, 0] = o
            opens[:, 1:] = closes[:, :-1]
            sub_sig = scale * 0.3
            highs = np.minimum(
                np.round(np.maximum(opens, closes) + ex_hi * sub_sig, spec.digits), h[:, None]
            )
            lows = np.maximum(
                np.round(np.minimum(opens, closes) - ex_lo * sub_sig, spec.digits), lo[:, None]
            )
            rows = np.arange(n)
            highs[rows, ih] = h
            lows[rows, il] = lo
            tv = m5["tick_volume"].astype(np.int64)
            cw = np.cumsum(wts, axis=1)
            cw = cw / cw[:, -1:]
            alloc = np.floor((tv - k)[:, None] * cw).astype(np.int64)
            ticks = 1 + np.diff(np.concatenate([np.zeros((n, 1), np.int64), alloc], axis=1), axis=1)

            out = np.empty(n * k, dtype=RATES_DTYPE)
            out["time"] = (m5["time"][:, None] + 60 * np.arange(k)).ravel()
            out["open"], out["high"] = opens.ravel(), highs.ravel()
            out["low"], out["close"] = lows.ravel(), closes.ravel()
            out["tick_volume"] = ticks.ravel().astype(np.uint64)
            out["spread"] = np.repeat(m5["spread"], k)
            out["real_volume"] = 0
            parts.append(out)
        if not parts:
            return np.empty(0, dtype=RATES_DTYPE)
        return np.concatenate(parts)


@lru_cache(maxsize=4)
def _market(seed: int) -> SyntheticMarket:
    return SyntheticMarket(seed)


def synthetic_rates(
    symbol: str,
    timeframe: str,
    start_utc: int,
    end_utc: int,
    *,
    seed: int = 7,
    server_utc_offset_hours: int = 2,
) -> np.ndarray:
    """Synthetic :data:`RATES_DTYPE` bars of ``symbol`` with open time (UTC) in ``[start_utc, end_utc)``.

    ``time`` is expressed in broker server time (``utc + server_utc_offset_hours * 3600``).
    Deterministic per ``(seed, symbol, timeframe, bar time)`` whatever range is requested;
    paths are cached per seed in a small module-level LRU of :class:`SyntheticMarket`.
    """
    if timeframe not in TIMEFRAMES:
        raise ValueError(f"unsupported timeframe {timeframe!r}; use one of {list(TIMEFRAMES)}")
    return _market(int(seed)).rates(
        symbol, timeframe, start_utc, end_utc, server_utc_offset_hours=server_utc_offset_hours
    )
