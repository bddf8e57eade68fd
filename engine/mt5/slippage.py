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


def measure(
    process: SlippageProcess,
    *,
    symbol: str = "EURUSD",
    sizes: tuple[float, ...] = (0.1, 1.0, 5.0, 20.0),
    hours: tuple[int, ...] = (12, 3, 21),
    n: int = 1000,
    day_utc: int | None = None,
) -> list[dict[str, float]]:
    """Fill ``n`` market orders per (size, hour) on a seeded synthetic market through
    ``SimulatedTerminal.order_send`` (buys that open, sells that close them; deviation
    unlimited) and return mean/q50/q90 adverse slippage in points with the market state
    (spread, volatility in points) at that hour: the table of ``docs/execution-slippage.md``."""
    from engine.mt5 import protocol as P
    from engine.mt5.sim import SimulatedTerminal, SyntheticFeed
    from engine.mt5.synthetic import ORIGIN_UTC
    from engine.sizing import return_volatility

    day = day_utc if day_utc is not None else ORIGIN_UTC + 23 * 86_400  # a Wednesday
    at = [day]
    term = SimulatedTerminal(
        SyntheticFeed(seed=7, symbols=[symbol]),
        clock=lambda: at[0],
        balance=1e12,
        leverage=1000,
        slippage=process,
    )
    info = term.symbol_info(symbol) if term.initialize() else None
    if info is None:
        raise RuntimeError(f"simulated terminal: no symbol {symbol}")
    point = info.point
    rows: list[dict[str, float]] = []
    for hour in hours:
        at[0] = day + hour * 3600
        tick = term.symbol_info_tick(symbol)
        rates = term.copy_rates_from_pos(symbol, P.TIMEFRAME_M5, 1, process.vol_window + 1)
        if tick is None or rates is None:
            raise RuntimeError(f"simulated terminal: no market for {symbol} at hour {hour}")
        vol = return_volatility(rates["close"], process.vol_window) * tick.bid / point
        for size in sizes:
            slips: list[float] = []
            ticket = 0
            for i in range(n):
                buy = i % 2 == 0
                asked = tick.ask if buy else tick.bid
                r = term.order_send(
                    {
                        "action": P.TRADE_ACTION_DEAL,
                        "symbol": symbol,
                        "volume": size,
                        "type": P.ORDER_TYPE_BUY if buy else P.ORDER_TYPE_SELL,
                        "price": asked,
                        "deviation": 1_000_000,
                        "type_filling": P.ORDER_FILLING_FOK,
                        **({} if buy else {"position": ticket}),
                    }
                )
                if r is None or r.retcode != P.TRADE_RETCODE_DONE:
                    raise RuntimeError(f"order_send: {r}")
                ticket = r.order
                slips.append(((r.price - asked) if buy else (asked - r.price)) / point)
            a = np.asarray(slips)
            rows.append(
                {
                    "hour_utc": hour,
                    "size": size,
                    "spread": (tick.ask - tick.bid) / point,
                    "volatility": vol,
                    "expected": process.mean_points(
                        spread_points=(tick.ask - tick.bid) / point,
                        vol_points=vol,
                        volume=size,
                        hour_utc=hour,
                    ),
                    "mean": float(a.mean()),
                    "q50": float(np.quantile(a, 0.5)),
                    "q90": float(np.quantile(a, 0.9)),
                }
            )
    return rows


def main(argv: list[str] | None = None) -> None:
    """``python -m engine.mt5.slippage``: print the measured slippage table (Markdown)."""
    import argparse

    ap = argparse.ArgumentParser(description="Measure the simulated slippage process.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=1000, help="fills per (size, hour)")
    ns = ap.parse_args(argv)
    rows = measure(SlippageProcess(seed=ns.seed), n=ns.n)
    print("| hour UTC | size (lots) | spread | volatility | expected | mean | q50 | q90 |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['hour_utc']:.0f} | {r['size']:g} | {r['spread']:.0f} | {r['volatility']:.1f}"
            f" | {r['expected']:.2f} | {r['mean']:.2f} | {r['q50']:.0f} | {r['q90']:.0f} |"
        )


if __name__ == "__main__":
    main()
