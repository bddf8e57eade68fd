"""The simulated terminal's slippage process: adverse slippage that depends on the state of
the market and the order, with a seeded random part.

A real market order is filled away from the quoted price by an amount that grows with the
spread (a wide book is a thin book), with recent volatility (the price moves while the order
travels), with size (an order larger than the depth at the touch walks the book; impact
grows roughly with the square root of size) and with the session (liquidity thins at the
daily rollover and in Asian hours). The fixed ``slippage_points`` of the simulator had none of
that, so nothing learned from simulated fills could be true. With a :class:`SlippageProcess`
the simulated terminal draws, for each market fill (``order_send``, never ``order_check``)::

    mean   = base_points + session_mult(hour UTC) × (spread_k × spread
                                                     + vol_k × volatility
                                                     + impact_points × sqrt(volume / depth_lots))
    points = mean × LogNormal(−σ²/2, σ)        (the random factor has mean 1)

in points, adverse (a buy fills higher, a sell lower), rounded to whole points stochastically
(floor, plus one with probability of the fraction: unbiased). ``spread`` is the quote's spread
in points; ``volatility`` is the standard deviation of the last ``vol_window`` one-bar returns
of the symbol's base bars (:func:`engine.sizing.return_volatility`, the measure of the cost
formula ``0.25 × spread + 0.05 × volatility``) times the price, in points, so the defaults
``spread_k = 0.25``, ``vol_k = 0.05`` make the process's no-impact, normal-session mean equal to
the formula the training backtest charges.

**Deviation.** With ``requote`` (the default of a configured process) a draw larger than the
request's ``deviation`` is not filled: ``order_send`` answers ``TRADE_RETCODE_REQUOTE``
(10004), volume 0 and the quote's bid/ask, as MT5 does under instant/request execution; the
executor retries with a fresh tick and a new draw. Without ``requote`` (market execution) the
deviation is ignored, as before.

Without a process (the default, ``TX_SIM_SLIPPAGE_ENABLED=false``) the terminal behaves as it
always did: a constant ``slippage_points`` and no requotes.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

__all__ = ["DEFAULT_SESSIONS", "SlippageProcess", "parse_sessions"]

DEFAULT_SESSIONS = "21-22:2.5,23-6:1.5"
"""Hour-of-day (UTC) multipliers: the rollover (21–22 UTC) and the Asian session (23–06 UTC)."""

_SESSION = re.compile(r"^\s*(\d{1,2})(?:\s*-\s*(\d{1,2}))?\s*:\s*([0-9.]+)\s*$")


def parse_sessions(spec: str) -> dict[int, float]:
    """``"21-22:2.5,23-6:1.5"`` → ``{21: 2.5, 22: 2.5, 23: 1.5, 0: 1.5, …, 6: 1.5}``; a range
    wraps past midnight; hours not named have multiplier 1. Raises ``ValueError`` naming the
    bad part."""
    out: dict[int, float] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        m = _SESSION.match(part)
        if m is None:
            raise ValueError(f"sessions: {part!r} is not 'H:mult' or 'H1-H2:mult'")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        mult = float(m.group(3))
        if not (0 <= lo <= 23 and 0 <= hi <= 23):
            raise ValueError(f"sessions: hours in {part!r} must be 0..23")
        if mult <= 0:
            raise ValueError(f"sessions: multiplier in {part!r} must be > 0")
        h = lo
        while True:
            out[h] = mult
            if h == hi:
                break
            h = (h + 1) % 24
    return out


@dataclass
class SlippageProcess:
    """State-dependent adverse slippage of market fills (see the module docstring)."""

    base_points: float = 0.0
    spread_k: float = 0.25
    vol_k: float = 0.05
    vol_window: int = 24
    impact_points: float = 2.0
    depth_lots: float = 5.0
    sessions: str = DEFAULT_SESSIONS
    noise_sigma: float = 0.5
    seed: int = 0
    requote: bool = True
    _mult: dict[int, float] = field(init=False, repr=False)
    _rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("base_points", "spread_k", "vol_k", "impact_points", "noise_sigma"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.depth_lots <= 0:
            raise ValueError("depth_lots must be > 0")
        if self.vol_window < 2:
            raise ValueError("vol_window must be >= 2")
        self._mult = parse_sessions(self.sessions)
        self._rng = np.random.default_rng(self.seed)

    def session_mult(self, hour_utc: int) -> float:
        """The liquidity multiplier of an hour of the day (UTC)."""
        return self._mult.get(int(hour_utc) % 24, 1.0)

    def mean_points(
        self, *, spread_points: float, vol_points: float, volume: float, hour_utc: int
    ) -> float:
        """Expected adverse slippage in points for this state and size."""
        state = (
            self.spread_k * max(spread_points, 0.0)
            + self.vol_k * max(vol_points, 0.0)
            + self.impact_points * math.sqrt(max(volume, 0.0) / self.depth_lots)
        )
        return self.base_points + self.session_mult(hour_utc) * state

    def draw(self, *, spread_points: float, vol_points: float, volume: float, hour_utc: int) -> int:
        """One fill's adverse slippage, whole points (random factor with mean 1, unbiased
        rounding)."""
        mean = self.mean_points(
            spread_points=spread_points, vol_points=vol_points, volume=volume, hour_utc=hour_utc
        )
        s = self.noise_sigma
        x = mean * (math.exp(s * float(self._rng.standard_normal()) - s * s / 2) if s > 0 else 1.0)
        whole = math.floor(x)
        return int(whole + (1 if self._rng.random() < x - whole else 0))
