"""The work per decision of an engine backtest does not grow with the backtest's length.

Counted, not timed (this machine is shared): the rows the simulated terminal reads from its
feed and the items it hands the engine (deals, positions, bars, quotes, infos). With the
terminal's incremental state these bound what the terminal touches per call (a quote is two
binary searches in a window read once per week; the deals of a time range are a slice of the
time index; the account marks the open positions only). The same calendar day is decided at
the end of an 8-day run and alone in a 1-day run: the long run has accumulated several times
the deals, but the day costs no more per decision. A terminal or an engine that scanned the
run's history on each bar (every deal, every bar since the start) fails this test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.mt5 import protocol as P
from engine.mt5.sim import SimulatedTerminal, SyntheticFeed
from tests.unit.test_mt5_sim_indexed import DAY, OFF, START, SYMBOLS, Clock

pytestmark = pytest.mark.unit

TRADED = ["EURUSD", "USDJPY"]
COUNTED = (
    "account_info",
    "positions_get",
    "history_deals_get",
    "symbol_info",
    "symbol_info_tick",
    "copy_rates_from_pos",
    "copy_rates_range",
    "order_send",
)


class RowCountingFeed(SyntheticFeed):
    """The synthetic market, counting the bars it hands the terminal."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.rows = 0

    def rates(self, symbol: str, timeframe: str, start_utc: int, end_utc: int) -> np.ndarray:
        out = super().rates(symbol, timeframe, start_utc, end_utc)
        self.rows += len(out)
        return out


def _size(answer: Any) -> int:
    if answer is None:
        return 0
    if isinstance(answer, np.ndarray) or type(answer) is tuple:  # not a named tuple
        return len(answer)
    return 1


def _run(tmp_path: Path, start: int, end: int, day: int) -> tuple[dict[str, float], int]:
    """Backtest ``[start, end]``; ``(work per decision on the day starting at ``day``, deals
    at the end)``."""
    from engine.backtest import ArrayFeatureSource, PrecomputedModel, bar_closes, run_backtest
    from engine.config import RiskLimits, SizingConfig
    from engine.journal import Journal
    from engine.loop import Engine
    from engine.serving_client import OnnxModel
    from tests.unit.engine_bundles import linear_bundle, synthetic_features

    names, tables = synthetic_features(TRADED, start, end)
    clock = Clock(end)
    feed = RowCountingFeed(seed=7, symbols=SYMBOLS)
    term = SimulatedTerminal(feed, clock=clock)
    assert term.initialize()
    closes = bar_closes(term, TRADED, P.TIMEFRAME_M5, start, end, 2)
    features = ArrayFeatureSource(names, tables, clock=clock.utc)
    model = OnnxModel.from_dir(linear_bundle(tmp_path / f"bundle-{start}", names))
    engine = Engine(
        terminal=term,
        features=features,
        model=PrecomputedModel.score(model, features, TRADED),
        journal=Journal(":memory:"),
        limits=RiskLimits(max_consecutive_losses=0, daily_loss_limit=0.5, max_drawdown=0.9),
        sizing=SizingConfig(fixed_lots=0.1, stop_atr_mult=1.0, take_profit_atr_mult=1.5),
        magic=11,
        clock=clock.utc,
        sleep=lambda s: None,
    )
    counted = dict.fromkeys(COUNTED, 0)

    def counting(name: str, fn: Any) -> Any:
        def wrapper(*a: Any, **k: Any) -> Any:
            out = fn(*a, **k)
            if clock.now > day:
                counted[name] += _size(out)
            return out

        return wrapper

    for name in COUNTED:
        setattr(term, name, counting(name, getattr(term, name)))
    on_day = [c for c in closes if c > day]
    clock.set(start)
    run_backtest(engine, [c for c in closes if c <= day], TRADED, clock.set)
    rows0 = feed.rows
    run_backtest(engine, on_day, TRADED, clock.set)
    n = len(on_day) * len(TRADED)
    assert engine.stats.bars == len(closes) * len(TRADED)
    deals = term.history_deals_get(0, end + OFF + DAY) or ()
    work = {k: v / n for k, v in counted.items()}
    work["feed rows"] = (feed.rows - rows0) / n
    return work, len(deals)


def test_backtest_when_eight_days_precede_the_day_then_its_work_per_decision_is_no_larger(
    tmp_path: Path,
) -> None:
    # Arrange: the same day (the 8th) decided alone and at the end of an 8-day run
    day = START + 7 * DAY
    end = day + DAY
    # Act
    short, short_deals = _run(tmp_path, day, end, day)
    long, long_deals = _run(tmp_path, START, end, day)
    # Assert: the long run holds several times the history; the day's work is the same up to
    # the trajectory (positions and risk state differ after 7 more days); the deals asked per
    # decision are the few at the newest instant (a scan would answer the whole history)
    assert long_deals >= 5 * short_deals > 0
    total = {
        k: sum(v for n, v in w.items() if n != "feed rows")
        for k, w in (("short", short), ("long", long))
    }
    assert 0 < total["long"] <= 1.2 * total["short"]
    assert long["history_deals_get"] <= 10 < long_deals
    assert long["feed rows"] <= short["feed rows"]
