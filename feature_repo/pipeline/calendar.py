"""The FX / metals market calendar used by validation to tell allowed gaps from holes.

Every window is defined in New York wall-clock time, the convention the OTC FX market and
most MT5 brokers follow (the "New York close" at 17:00 is the daily rollover and the weekly
open/close), and converted to UTC with the America/New_York zone, so US daylight saving is
handled. A broker whose server time is misconfigured by up to ``tolerance`` still passes.

The session logic (weekend, daily breaks) is the market's and is written here; the holiday
dates come from the maintained ``holidays`` library (US federal holidays, the NYSE calendar
with its early closes, and the UK (England) bank holidays), not from hand-written date code.

Closed windows (UTC intervals in which bars may be missing without being flagged):

* **weekend** - Friday 17:00 New York to Sunday 17:00 (FX) / 18:00 (metals) New York;
* **Christmas and New Year** - 25 December and 1 January (the days themselves, from
  ``holidays``' US calendar without observed shifts), from 12:00 New York the day before to
  04:00 New York the day after (brokers close early on 24/31 December and reopen late);
* **daily rollover break** - FX majors: 16:55 to 17:10 New York every trading day (some
  brokers drop the 23:55 and 00:00 server-time bars); metals (XAU, XAG): 17:00 to 18:00 New
  York (gold's daily maintenance break);
* **Good Friday** - metals only (the NYSE/COMEX holiday): Thursday 17:00 New York to the
  weekly open;
* **US holidays and early closes** - metals only: on an NYSE holiday or early-close day
  (Independence Day, Thanksgiving and the day after it, Martin Luther King Day, ...) gold
  halts early, from 13:00 to 18:00 New York.

Holiday sessions (:meth:`MarketCalendar.holiday_session`): the days around those closures and
UK bank holidays (London, the largest FX centre, is shut: thin, short sessions), whose
hour-of-day profile says nothing about the broker's clock.

Each window is widened by ``tolerance`` on both sides. Everything else is market time: a
missing bar there is a gap off the calendar.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import holidays
import numpy as np
from dateutil.easter import easter

__all__ = ["FX_MAJORS", "METALS", "MarketCalendar", "calendar_for", "easter_sunday"]

NEW_YORK = ZoneInfo("America/New_York")

METALS = ("XAU", "XAG", "GOLD", "SILVER", "XPT", "XPD")
FX_MAJORS = ("EUR", "GBP", "USD", "JPY", "CHF", "AUD", "NZD", "CAD")


def easter_sunday(year: int) -> date:
    """Gregorian Easter Sunday (``dateutil.easter``)."""
    return easter(year)


@functools.cache
def _fx_closed_days(year: int) -> frozenset[date]:
    """25 December and 1 January of ``year`` as the US calendar names them (not observed)."""
    us = holidays.country_holidays("US", years=year, observed=False)
    return frozenset(d for d, name in us.items() if name in ("Christmas Day", "New Year's Day"))


@functools.cache
def _nyse(year: int) -> dict[date, str]:
    """NYSE holidays and early closes (``holidays``' financial calendar) of ``year``."""
    full = holidays.financial_holidays("NYSE", years=year)
    half = holidays.financial_holidays("NYSE", years=year, categories=("half_day",))
    return {**dict(full.items()), **dict(half.items())}


@functools.cache
def _uk_bank_holidays(year: int) -> frozenset[date]:
    return frozenset(holidays.country_holidays("GB", subdiv="ENG", years=year))


def _weekday(d: date) -> bool:
    return d.weekday() < 5


def _ny(d: date, hh: int, mm: int = 0) -> int:
    """Epoch seconds of New York wall-clock ``d hh:mm``."""
    return int(datetime.combine(d, time(hh, mm), tzinfo=NEW_YORK).timestamp())


@dataclass(frozen=True)
class MarketCalendar:
    """The closed windows of one symbol class (see the module docstring)."""

    name: str
    weekly_open_ny: tuple[int, int]
    daily_break_ny: tuple[tuple[int, int], tuple[int, int]]
    good_friday_closed: bool
    tolerance: timedelta = timedelta(hours=1)

    def with_tolerance(self, tolerance: timedelta) -> MarketCalendar:
        return MarketCalendar(
            self.name, self.weekly_open_ny, self.daily_break_ny, self.good_friday_closed, tolerance
        )

    def closed_windows(self, start_s: int, end_s: int) -> np.ndarray:
        """Merged closed windows ``[[a, b), ...]`` (epoch seconds, UTC) overlapping the span."""
        tol = int(self.tolerance.total_seconds())
        d0 = datetime.fromtimestamp(start_s, NEW_YORK).date() - timedelta(days=3)
        d1 = datetime.fromtimestamp(end_s, NEW_YORK).date() + timedelta(days=3)
        out: list[tuple[int, int]] = []
        (bh, bm), (eh, em) = self.daily_break_ny
        oh, om = self.weekly_open_ny
        d = d0
        while d <= d1:
            wd = d.weekday()
            if wd == 4:  # Friday close -> Sunday open
                out.append((_ny(d, 17), _ny(d + timedelta(days=2), oh, om)))
            elif wd < 4:
                out.append((_ny(d, bh, bm), _ny(d, eh, em)))
            d += timedelta(days=1)
        out += self._holiday_windows(d0, d1)
        if not out:
            return np.empty((0, 2), dtype=np.int64)
        arr = np.array(sorted(out), dtype=np.int64)
        arr[:, 0] -= tol
        arr[:, 1] += tol
        merged = [list(arr[0])]
        for a, b in arr[1:]:
            if a <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        return np.array(merged, dtype=np.int64)

    def _holiday_windows(self, d0: date, d1: date) -> list[tuple[int, int]]:
        oh, om = self.weekly_open_ny
        out = []
        d = d0
        while d <= d1:
            if d in _fx_closed_days(d.year):
                out.append((_ny(d - timedelta(days=1), 12), _ny(d + timedelta(days=1), 4)))
            name = _nyse(d.year).get(d, "") if self.good_friday_closed else ""
            if name == "Good Friday":
                out.append((_ny(d - timedelta(days=1), 17), _ny(d + timedelta(days=2), oh, om)))
            elif name and _weekday(d) and d not in _fx_closed_days(d.year):
                out.append((_ny(d, 13), _ny(d, 18)))  # metals: early halt on US holidays
            d += timedelta(days=1)
        return out

    def holiday_session(self, start_s: int, end_s: int) -> bool:
        """Does ``[start_s, end_s)`` touch a holiday closure (24-26 December, 31 December -
        2 January, Good Friday and US holiday early closes for metals) or a UK bank holiday?
        Such days trade a part of their hours, or thinly."""
        tol = int(self.tolerance.total_seconds())
        d0 = datetime.fromtimestamp(start_s, NEW_YORK).date() - timedelta(days=2)
        d1 = datetime.fromtimestamp(end_s, NEW_YORK).date() + timedelta(days=2)
        if any(a - tol < end_s and start_s < b + tol for a, b in self._holiday_windows(d0, d1)):
            return True
        first = datetime.fromtimestamp(start_s, NEW_YORK).date()
        last = datetime.fromtimestamp(max(start_s, end_s - 1), NEW_YORK).date()
        d = first
        while d <= last:
            if d in _uk_bank_holidays(d.year) and _weekday(d):
                return True
            d += timedelta(days=1)
        return False

    def weekly_open(self, t_s: int) -> int:
        """The calendar's weekly open (UTC epoch seconds) nearest to ``t_s``."""
        day = datetime.fromtimestamp(t_s, NEW_YORK).date()
        sunday = day + timedelta(
            days=(6 - day.weekday()) if day.weekday() >= 3 else -(day.weekday() + 1)
        )
        oh, om = self.weekly_open_ny
        return _ny(sunday, oh, om)

    def on_weekly_open(self, t_s: int) -> bool:
        """Is ``t_s`` the calendar's weekly open, within ``tolerance``?"""
        return abs(t_s - self.weekly_open(t_s)) <= int(self.tolerance.total_seconds())

    def covers(self, gap_start_s: np.ndarray, gap_end_s: np.ndarray) -> np.ndarray:
        """For each missing span ``[start, end)``: does one closed window contain it whole?"""
        gs = np.asarray(gap_start_s, dtype=np.int64)
        ge = np.asarray(gap_end_s, dtype=np.int64)
        if gs.size == 0:
            return np.zeros(0, dtype=bool)
        win = self.closed_windows(int(gs.min()), int(ge.max()))
        if len(win) == 0:
            return np.zeros(gs.size, dtype=bool)
        i = np.searchsorted(win[:, 0], gs, side="right") - 1
        ok = i >= 0
        ic = np.clip(i, 0, None)
        return ok & (win[ic, 0] <= gs) & (win[ic, 1] >= ge)


FX_CALENDAR = MarketCalendar(
    "fx", weekly_open_ny=(17, 0), daily_break_ny=((16, 55), (17, 10)), good_friday_closed=False
)
METALS_CALENDAR = MarketCalendar(
    "metals", weekly_open_ny=(18, 0), daily_break_ny=((17, 0), (18, 0)), good_friday_closed=True
)


def calendar_for(symbol: str, tolerance: timedelta | None = None) -> MarketCalendar:
    """The calendar of ``symbol``'s class: metals (XAU/XAG/GOLD/...) or FX (everything else)."""
    sym = symbol.upper()
    cal = METALS_CALENDAR if any(sym.startswith(m) for m in METALS) else FX_CALENDAR
    return cal if tolerance is None else cal.with_tolerance(tolerance)
