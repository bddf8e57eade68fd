"""The FX / metals market calendar used by validation to tell allowed gaps from holes.

Every window is defined in New York wall-clock time, the convention the OTC FX market and
most MT5 brokers follow (the "New York close" at 17:00 is the daily rollover and the weekly
open/close), and converted to UTC with the America/New_York zone, so US daylight saving is
handled. A broker whose server time is misconfigured by up to ``tolerance`` still passes.

Closed windows (UTC intervals in which bars may be missing without being flagged):

* **weekend** - Friday 17:00 New York to Sunday 17:00 (FX) / 18:00 (metals) New York;
* **holidays** - 25 December and 1 January, from 12:00 New York the day before to 04:00 New
  York the day after (brokers close early on 24/31 December and reopen late);
* **daily rollover break** - FX majors: 16:55 to 17:10 New York every trading day (some
  brokers drop the 23:55 and 00:00 server-time bars); metals (XAU, XAG): 17:00 to 18:00 New
  York (gold's daily maintenance break);
* **Good Friday** - metals only: Thursday 17:00 New York to the weekly open.

Each window is widened by ``tolerance`` on both sides. Everything else is market time: a
missing bar there is a gap off the calendar.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import numpy as np

__all__ = ["FX_MAJORS", "METALS", "MarketCalendar", "calendar_for", "easter_sunday"]

NEW_YORK = ZoneInfo("America/New_York")

METALS = ("XAU", "XAG", "GOLD", "SILVER", "XPT", "XPD")
FX_MAJORS = ("EUR", "GBP", "USD", "JPY", "CHF", "AUD", "NZD", "CAD")


def easter_sunday(year: int) -> date:
    """Gregorian Easter Sunday (anonymous Gregorian algorithm)."""
    a, b, c = year % 19, year // 100, year % 100
    d, e = b // 4, b % 4
    f = (b + 8) // 25
    g = (b - f + 1) // 3
    h = (19 * a + b - d - g + 15) % 30
    i, k = c // 4, c % 4
    ll = (32 + 2 * e + 2 * i - h - k) % 7
    m = (a + 11 * h + 22 * ll) // 451
    month = (h + ll - 7 * m + 114) // 31
    day = (h + ll - 7 * m + 114) % 31 + 1
    return date(year, month, day)


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
            if (d.month, d.day) in ((12, 25), (1, 1)):
                out.append((_ny(d - timedelta(days=1), 12), _ny(d + timedelta(days=1), 4)))
            if self.good_friday_closed and d == easter_sunday(d.year) - timedelta(days=2):
                out.append((_ny(d - timedelta(days=1), 17), _ny(d + timedelta(days=2), oh, om)))
            d += timedelta(days=1)
        return out

    def holiday_session(self, start_s: int, end_s: int) -> bool:
        """Does ``[start_s, end_s)`` touch a holiday closure (24-26 December, 31 December -
        2 January, Good Friday for metals)? Such days trade a part of their hours only."""
        tol = int(self.tolerance.total_seconds())
        d0 = datetime.fromtimestamp(start_s, NEW_YORK).date() - timedelta(days=2)
        d1 = datetime.fromtimestamp(end_s, NEW_YORK).date() + timedelta(days=2)
        return any(a - tol < end_s and start_s < b + tol for a, b in self._holiday_windows(d0, d1))

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
