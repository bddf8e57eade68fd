"""Broker server time ↔ UTC, and a detector that reads the broker's offset off its bars.

MT5 stamps bars and deals with the trade server's *wall clock* written as epoch seconds
("server time"). How that clock relates to UTC is the broker's choice, described here by a
rule:

* :class:`FixedOffset` — ``server = UTC + h`` all year (``fixed:+2``).
* :class:`NewYorkClose` — the common "New York close" convention (EET/EEST-like): server
  midnight is 17:00 in New York, so ``server = UTC + 2h`` in winter and ``UTC + 3h`` while the US
  is on daylight saving time (``ny-close``). Computed from ``zoneinfo`` ``America/New_York`` + 7h,
  so it follows the *US* DST dates (second Sunday of March, first Sunday of November), not the
  EU ones.
* :class:`ZoneRule` — any IANA zone plus a shift (``tz:Europe/Athens``, ``tz:America/New_York+7``).

:func:`parse_rule` reads ``TX_BROKER_TZ`` (falling back to the fixed ``TX_BROKER_UTC_OFFSET_HOURS``).
All conversions take an ``int`` or a numpy ``int64`` array and return the same kind.

The detector (:func:`detect_offset`) uses the FX week: trading opens Sunday 17:00 New York and
closes Friday 17:00 New York (22:00 UTC in winter, 21:00 UTC in US summer). For each weekend
gap in the bars it compares the server time of the week's close (and open) with that instant;
the difference is the broker's offset that week. :func:`check_rule` compares a configured rule
with those observations week by week and warns — in the log and in the returned
:class:`RuleCheck` — when they disagree. Bars coarser than H1 cannot show the offset (a D1 or H4
bar ends at server midnight whatever the offset) and are reported as inconclusive.
"""

from __future__ import annotations

import logging
import re
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, Protocol, overload, runtime_checkable
from zoneinfo import ZoneInfo

import numpy as np

from engine.mt5.protocol import timeframe_seconds

__all__ = [
    "BrokerTimeRule",
    "FixedOffset",
    "NewYorkClose",
    "Observation",
    "OffsetDetection",
    "RuleCheck",
    "WeekObservation",
    "ZoneRule",
    "check_rule",
    "detect_offset",
    "fx_week_close_utc",
    "parse_rule",
]

logger = logging.getLogger(__name__)

_NY = "America/New_York"
_EET = "Europe/Athens"


@runtime_checkable
class BrokerTimeRule(Protocol):
    """Server time = UTC + :meth:`offset_at_utc` (seconds), per instant."""

    @property
    def spec(self) -> str: ...

    def offset_at_utc(self, utc: np.ndarray) -> np.ndarray: ...

    def to_server(self, utc: Any) -> Any: ...

    def to_utc(self, server: Any) -> Any: ...


class _RuleBase(ABC):
    """Scalar/array plumbing shared by the rules; a rule defines :meth:`offset_at_utc`."""

    @abstractmethod
    def offset_at_utc(self, utc: np.ndarray) -> np.ndarray:
        """Server minus UTC, in seconds, at each UTC instant of ``utc``."""

    def offset_hours(self, utc: int) -> float:
        """The offset at one UTC instant, in hours."""
        return float(self.offset_at_utc(np.asarray([utc], dtype=np.int64))[0]) / 3600.0

    @overload
    def to_server(self, utc: int) -> int: ...
    @overload
    def to_server(self, utc: np.ndarray) -> np.ndarray: ...
    def to_server(self, utc: Any) -> Any:
        """UTC epoch seconds → server epoch seconds."""
        u = np.asarray(utc, dtype=np.int64)
        out = u + self.offset_at_utc(u.ravel()).reshape(u.shape)
        return int(out) if out.ndim == 0 else out

    @overload
    def to_utc(self, server: int) -> int: ...
    @overload
    def to_utc(self, server: np.ndarray) -> np.ndarray: ...
    def to_utc(self, server: Any) -> Any:
        """Server epoch seconds → UTC epoch seconds.

        Where the server clock repeats an hour (the rule's offset falls back) the earlier
        instant is taken; where it skips one (the offset springs forward) the time is read with
        the offset from before the change. For FX brokers both happen on a Sunday morning, with
        the market closed.
        """
        s = np.asarray(server, dtype=np.int64)
        flat = s.ravel()
        out = self._to_utc(flat).reshape(s.shape)
        return int(out) if out.ndim == 0 else out

    def _candidates(self, lo: int, hi: int) -> np.ndarray:
        """The distinct offsets in force between the UTC instants ``lo`` and ``hi`` (sorted);
        a server time's instant lies within 14h before / 12h after it."""
        probe = np.arange(lo, hi + 1800, 1800, dtype=np.int64)
        return np.unique(self.offset_at_utc(probe))

    def _to_utc(self, s: np.ndarray) -> np.ndarray:
        if s.size == 0:
            return s.copy()
        candidates = self._candidates(int(s.min()) - 14 * 3600, int(s.max()) + 12 * 3600)[::-1]
        out = s - candidates.min()  # fallback: inside a skipped hour
        if len(candidates) == 1:
            return out
        done = np.zeros(s.shape, dtype=bool)
        for off in candidates:  # largest offset first = the earlier instant
            u = s - off
            ok = ~done & (self.offset_at_utc(u) == off)
            out[ok] = u[ok]
            done |= ok
        return out


@dataclass(frozen=True)
class FixedOffset(_RuleBase):
    """``server = UTC + hours`` all year."""

    hours: float

    @property
    def spec(self) -> str:
        h = self.hours
        return f"fixed:{'+' if h >= 0 else '-'}{_fmt_hours(abs(h))}"

    def offset_at_utc(self, utc: np.ndarray) -> np.ndarray:
        return np.full(np.shape(utc), round(self.hours * 3600), dtype=np.int64)

    def _candidates(self, lo: int, hi: int) -> np.ndarray:
        return np.asarray([round(self.hours * 3600)], dtype=np.int64)


@dataclass(frozen=True)
class ZoneRule(_RuleBase):
    """``server`` = the wall clock of IANA ``zone``, shifted by ``shift_hours``."""

    zone: str
    shift_hours: float = 0.0

    def __post_init__(self) -> None:
        ZoneInfo(self.zone)  # raises for an unknown zone

    @property
    def spec(self) -> str:
        if not self.shift_hours:
            return f"tz:{self.zone}"
        sign = "+" if self.shift_hours > 0 else "-"
        return f"tz:{self.zone}{sign}{_fmt_hours(abs(self.shift_hours))}"

    def offset_at_utc(self, utc: np.ndarray) -> np.ndarray:
        u = np.asarray(utc, dtype=np.int64)
        if u.size == 0:
            return np.empty(u.shape, dtype=np.int64)
        y0 = datetime.fromtimestamp(int(u.min()), UTC).year - 1
        y1 = datetime.fromtimestamp(int(u.max()), UTC).year + 1
        starts, offsets = _transitions(self.zone, y0, y1)
        idx = np.searchsorted(starts, u, side="right") - 1
        return offsets[idx] + round(self.shift_hours * 3600)

    def _candidates(self, lo: int, hi: int) -> np.ndarray:
        y0 = datetime.fromtimestamp(lo, UTC).year - 1
        y1 = datetime.fromtimestamp(hi, UTC).year + 1
        starts, offsets = _transitions(self.zone, y0, y1)
        i0 = max(int(np.searchsorted(starts, lo, side="right")) - 1, 0)
        i1 = int(np.searchsorted(starts, hi, side="right"))
        return np.unique(offsets[i0:i1]) + round(self.shift_hours * 3600)


@dataclass(frozen=True)
class NewYorkClose(ZoneRule):
    """The "New York close" server clock: New York time + 7h (UTC+2 winter, UTC+3 US summer)."""

    zone: str = _NY
    shift_hours: float = 7.0

    @property
    def spec(self) -> str:
        return "ny-close"


def _zone_offset(zone: str, utc: int) -> int:
    off = datetime.fromtimestamp(utc, UTC).astimezone(ZoneInfo(zone)).utcoffset()
    return int(off.total_seconds()) if off is not None else 0


@lru_cache(maxsize=256)
def _transitions(zone: str, y0: int, y1: int) -> tuple[np.ndarray, np.ndarray]:
    """``(starts, offsets)``: from ``starts[i]`` (UTC s) on, ``zone`` is ``offsets[i]`` ahead of
    UTC; covers the years ``y0``..``y1`` (the first start is -inf). Found by probing each day
    and bisecting the days whose offset changes to the second."""
    t = int(datetime(y0, 1, 1, tzinfo=UTC).timestamp())
    end = int(datetime(y1 + 1, 1, 1, tzinfo=UTC).timestamp())
    starts, offsets = [np.iinfo(np.int64).min], [_zone_offset(zone, t)]
    while t < end:
        nxt = t + 86_400
        if _zone_offset(zone, nxt) != offsets[-1]:
            lo, hi = t, nxt  # offset(lo) == current, offset(hi) != current
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if _zone_offset(zone, mid) == offsets[-1]:
                    lo = mid
                else:
                    hi = mid
            starts.append(hi)
            offsets.append(_zone_offset(zone, hi))
        t = nxt
    return np.asarray(starts, dtype=np.int64), np.asarray(offsets, dtype=np.int64)


def _half(h: float) -> float:
    """Hours rounded to the half hour (brokers open a few minutes late, M1 closes a minute early)."""
    return round(h * 2) / 2


def _fmt_hours(h: float) -> str:
    return str(int(h)) if float(h).is_integer() else f"{h:g}"


_FIXED_RE = re.compile(r"^(?:fixed:)?\s*(?:utc)?([+-]?\d+(?:\.\d+)?)h?$", re.I)
_TZ_SHIFT_RE = re.compile(r"^(.+?)([+-]\d+(?:\.\d+)?)h?$")


def parse_rule(spec: str | None, fallback_hours: float = 2) -> FixedOffset | ZoneRule:
    """A rule from ``TX_BROKER_TZ``: ``fixed:+2`` (also ``+2``, ``2``, ``utc+2``), ``ny-close``
    (also ``nyclose``, ``new-york-close``, ``eet-ny``), ``tz:<IANA zone>[+-hours]``. Unset or
    empty: ``FixedOffset(fallback_hours)`` — the older ``TX_BROKER_UTC_OFFSET_HOURS``."""
    if spec is None or not spec.strip():
        return FixedOffset(float(fallback_hours))
    s = spec.strip()
    key = s.lower().replace("_", "-")
    if key in ("ny-close", "nyclose", "new-york-close", "eet-ny"):
        return NewYorkClose()
    if key in ("eet", "eet-eest", "eet/eest"):
        return ZoneRule(_EET)
    if s.lower().startswith("tz:"):
        zone = s[3:].strip()
        try:
            return ZoneRule(zone)
        except (ValueError, KeyError):  # ZoneInfoNotFoundError is a KeyError
            m = _TZ_SHIFT_RE.match(zone)
            if m is None:
                raise ValueError(f"unknown time zone in broker time rule {spec!r}") from None
            try:
                return ZoneRule(m.group(1), float(m.group(2)))
            except (ValueError, KeyError):
                raise ValueError(f"unknown time zone in broker time rule {spec!r}") from None
    m = _FIXED_RE.match(s)
    if m is not None:
        return FixedOffset(float(m.group(1)))
    raise ValueError(
        f"unknown broker time rule {spec!r}: use fixed:+2, ny-close, eet or tz:<zone>[+h]"
    )


# --- the detector -------------------------------------------------------------------------------


def fx_week_close_utc(utc: int) -> int:
    """The Friday 17:00 New York instant (UTC epoch seconds) nearest to ``utc``."""
    ny = ZoneInfo(_NY)
    local = datetime.fromtimestamp(utc, UTC).astimezone(ny)
    best: int | None = None
    for days in range(-4, 5):
        d = (local + timedelta(days=days)).date()
        if d.weekday() != 4:
            continue
        t = int(datetime(d.year, d.month, d.day, 17, tzinfo=ny).timestamp())
        if best is None or abs(t - utc) < abs(best - utc):
            best = t
    assert best is not None
    return best


def _fx_week_open_utc(utc: int) -> int:
    """The Sunday 17:00 New York instant nearest to ``utc``."""
    ny = ZoneInfo(_NY)
    local = datetime.fromtimestamp(utc, UTC).astimezone(ny)
    cands = []
    for days in range(-4, 5):
        d = (local + timedelta(days=days)).date()
        if d.weekday() == 6:
            cands.append(int(datetime(d.year, d.month, d.day, 17, tzinfo=ny).timestamp()))
    return min(cands, key=lambda t: abs(t - utc))


@dataclass(frozen=True)
class WeekObservation:
    """One weekend gap: the week's close and the next week's open, in server time, and the
    offsets (hours, server − UTC, rounded to the half hour) they imply against Friday 17:00
    and Sunday 17:00 New York. ``open_offset_h`` already discounts the symbol's open delay.
    Close and open are separate observations: on a DST weekend they differ, as they should."""

    close_server: int
    open_server: int
    close_utc_expected: int
    open_utc_expected: int
    close_offset_h: float
    open_offset_h: float

    @property
    def friday(self) -> str:
        return datetime.fromtimestamp(self.close_utc_expected, UTC).date().isoformat()

    @property
    def sunday(self) -> str:
        return datetime.fromtimestamp(self.open_utc_expected, UTC).date().isoformat()

    @property
    def consistent(self) -> bool:
        """Close and open imply the same offset (false on DST weekends and holiday quirks)."""
        return self.close_offset_h == self.open_offset_h


@dataclass(frozen=True)
class Observation:
    """One offset reading: at the UTC instant ``utc`` the server clock was ``offset_h`` ahead."""

    label: str  # e.g. "close 2024-03-08"
    utc: int
    offset_h: float
    us_dst: bool


@dataclass
class OffsetDetection:
    """What the bars say about the broker's offset (see :func:`detect_offset`)."""

    timeframe: str
    weeks: list[WeekObservation] = field(default_factory=list)
    conclusive: bool = True
    reason: str = ""
    open_delay_h: float = 0.0
    """How much later than Sunday 17:00 New York the week opens (1h for gold: 18:00 New York),
    read from the data: 1 when at least three weekends, and more than show 0, open an hour
    "late")."""

    @property
    def observations(self) -> list[Observation]:
        """Every close and every open as an offset reading."""
        ny = ZoneInfo(_NY)
        out = []
        for w in self.weeks:
            for kind, t, off in (
                ("close", w.close_utc_expected, w.close_offset_h),
                ("open", w.open_utc_expected, w.open_offset_h),
            ):
                day = datetime.fromtimestamp(t, UTC)
                out.append(
                    Observation(
                        f"{kind} {day.date().isoformat()}", t, off, bool(day.astimezone(ny).dst())
                    )
                )
        return out

    def _majority(self, dst: bool) -> float | None:
        obs = [o.offset_h for o in self.observations if o.us_dst == dst]
        if not obs:
            return None
        return Counter(obs).most_common(1)[0][0]

    @property
    def winter_offset_h(self) -> float | None:
        """Most common offset read outside US DST."""
        return self._majority(False)

    @property
    def summer_offset_h(self) -> float | None:
        """Most common offset read during US DST."""
        return self._majority(True)

    def mismatches(self, rule: BrokerTimeRule) -> list[tuple[str, float, float]]:
        """``(observation, observed, rule)`` for each reading where ``rule`` disagrees."""
        obs = self.observations
        if not obs:
            return []
        expected = rule.offset_at_utc(np.asarray([o.utc for o in obs], dtype=np.int64)) / 3600.0
        return [
            (o.label, o.offset_h, float(e))
            for o, e in zip(obs, expected, strict=True)
            if abs(o.offset_h - float(e)) > 0.25
        ]

    @property
    def suggested(self) -> str | None:
        """The ``TX_BROKER_TZ`` value that fits the most weekly readings (then closes): a fixed
        offset, ``ny-close`` (US DST dates) or ``tz:Europe/Athens`` (EET/EEST, EU DST dates); on
        a tie the simpler rule, in that order. ``None`` when nothing can be read."""
        if not self.conclusive:
            return None
        counts = Counter(o.offset_h for o in self.observations)
        if not counts:
            return None
        rules: list[BrokerTimeRule] = [FixedOffset(h) for h, _ in counts.most_common()]
        rules += [NewYorkClose(), ZoneRule(_EET)]

        def score(rule: BrokerTimeRule) -> tuple[int, int]:
            bad = self.mismatches(rule)
            return len(bad), sum(label.startswith("close") for label, _, _ in bad)

        # ties go to the rule that fits the closes: the market stops at 17:00 New York, while
        # many brokers reopen at server midnight whatever New York says
        best = min(rules, key=score)  # min keeps the first of full ties
        return best.spec

    def describe(self) -> str:
        if not self.conclusive:
            return f"inconclusive ({self.reason})"
        return (
            f"{len(self.weeks)} weekend(s); offset winter={self.winter_offset_h} "
            f"summer(US DST)={self.summer_offset_h}; suggested TX_BROKER_TZ={self.suggested}"
        )


def detect_offset(
    rates_time_server: np.ndarray, timeframe: str | int, *, min_gap_hours: float = 36.0
) -> OffsetDetection:
    """Infer the broker's UTC offset from the weekend gaps of bar open times (server time).

    Each gap longer than ``min_gap_hours`` is a weekend: the last bar before it ends at the
    week's close (Friday 17:00 New York), the first bar after it starts at the week's open
    (Sunday 17:00 New York, or an hour later for gold — the delay is read from the data).
    ``timeframe`` must be H1 or finer to be conclusive.
    """
    tf_s = timeframe_seconds(timeframe)
    name = timeframe if isinstance(timeframe, str) else str(timeframe)
    det = OffsetDetection(name)
    if tf_s > 3600:
        det.conclusive, det.reason = (
            False,
            f"{name} bars end at server midnight whatever the offset; use H1 or finer",
        )
        return det
    t = np.unique(np.asarray(rates_time_server, dtype=np.int64))
    if len(t) < 2:
        det.conclusive, det.reason = False, "fewer than two bars"
        return det
    gaps = np.flatnonzero(np.diff(t) > min_gap_hours * 3600)
    raw: list[tuple[int, int, int, int]] = []
    for i in gaps:
        close_server = int(t[i]) + tf_s
        open_server = int(t[i + 1])
        # the true instants are within -12..+14 h of the server stamps: search around them
        raw.append(
            (
                close_server,
                open_server,
                fx_week_close_utc(close_server - 2 * 3600),
                _fx_week_open_utc(open_server - 2 * 3600),
            )
        )
    if not raw:
        det.conclusive, det.reason = False, "no weekend gap in the bars"
        return det
    diffs = Counter(_half((o - so) / 3600) - _half((c - fc) / 3600) for c, o, fc, so in raw)
    # gold opens an hour after FX: many weekends show it; a DST weekend alone looks the same
    delay = 1.0 if diffs.get(1.0, 0) >= 3 and diffs.get(1.0, 0) > diffs.get(0.0, 0) else 0.0
    det.open_delay_h = delay
    det.weeks = [
        WeekObservation(
            c,
            o,
            fc,
            so + round(delay * 3600),
            _half((c - fc) / 3600),
            _half((o - so) / 3600) - delay,
        )
        for c, o, fc, so in raw
    ]
    return det


@dataclass
class RuleCheck:
    """A configured rule against the data: the readings where they disagree."""

    rule: str
    detection: OffsetDetection
    mismatches: list[tuple[str, float, float]] = field(
        default_factory=list
    )  # (reading, observed, rule)
    checked: int = 0
    ok: bool = True
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (``tx mt5 detect-offset``)."""
        det = self.detection
        return {
            "rule": self.rule,
            "ok": self.ok,
            "message": self.message,
            "timeframe": det.timeframe,
            "conclusive": det.conclusive,
            "weekends": len(det.weeks),
            "readings": self.checked,
            "mismatches": [list(m) for m in self.mismatches],
            "winter_offset_h": det.winter_offset_h if det.conclusive else None,
            "summer_offset_h": det.summer_offset_h if det.conclusive else None,
            "open_delay_h": det.open_delay_h,
            "suggested": det.suggested,
        }


def check_rule(
    rule: BrokerTimeRule,
    rates_time_server: np.ndarray,
    timeframe: str | int,
    *,
    tolerance: float = 0.25,
    symbol: str = "",
) -> RuleCheck:
    """Compare ``rule`` with the offsets the bars show, at every weekly close and open.

    Holidays (early closes, late opens) and a missing last hour make a few readings disagree
    with any rule; the check fails — and logs a warning — only when more than ``tolerance`` of
    the readings disagree with ``rule``.
    """
    det = detect_offset(rates_time_server, timeframe)
    res = RuleCheck(rule.spec, det)
    head = f"{symbol} {det.timeframe}".strip()
    if not det.conclusive:
        res.message = f"{head}: cannot check {rule.spec}: {det.reason}"
        return res
    res.checked = len(det.observations)
    res.mismatches = det.mismatches(rule)
    bad = len(res.mismatches)
    res.ok = bad <= tolerance * res.checked
    if res.ok:
        res.message = f"{head}: {rule.spec} agrees with {res.checked - bad}/{res.checked} weekly close/open readings"
    else:
        shown = ", ".join(f"{d}: data {o:+g}h vs rule {e:+g}h" for d, o, e in res.mismatches[:4])
        res.message = (
            f"{head}: broker time rule {rule.spec} disagrees with the data on {bad}/"
            f"{res.checked} weekly close/open readings ({shown}); the data suggest "
            f"TX_BROKER_TZ={det.suggested}"
        )
        logger.warning("%s", res.message)
    return res
