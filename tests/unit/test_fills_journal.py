"""Every filled order of a real engine backtest (ONNX model, simulated terminal with the
slippage process, the engine's own order path) has exactly one row in the journal's ``fills``
table, and the row agrees with the terminal's deal: requested and filled price, signed
slippage, spread at send, recent volatility, size, side, hour (UTC) and venue. On SQLite and on
PostgreSQL (a database of its own, created and dropped by the test)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.backtest import ArrayFeatureSource, bar_closes, run_backtest
from engine.config import ExecutionConfig, RiskLimits, SizingConfig
from engine.execution import DONE
from engine.journal import Journal
from engine.loop import Engine
from engine.mt5 import protocol as P
from engine.mt5.sim import SimulatedTerminal, SyntheticFeed
from engine.mt5.slippage import SlippageProcess
from engine.mt5.synthetic import ORIGIN_UTC
from engine.serving_client import OnnxModel
from engine.sizing import return_volatility
from tests.unit.engine_bundles import linear_bundle, synthetic_features

pytestmark = pytest.mark.unit

DAY = 86_400
START = ORIGIN_UTC + 22 * DAY + 6 * 3600  # Tuesday 2024-01-23 06:00 UTC
SYMBOLS = ["EURUSD", "USDJPY"]


def _run(tmp_path: Path, target: str) -> tuple[Engine, SimulatedTerminal, list[int]]:
    end = START + DAY
    names, tables = synthetic_features(SYMBOLS, START, end)
    model = OnnxModel.from_dir(linear_bundle(tmp_path / "bundle", names))
    now = [end]
    term = SimulatedTerminal(
        SyntheticFeed(seed=7, symbols=SYMBOLS),
        clock=lambda: now[0],
        slippage=SlippageProcess(seed=4, impact_points=3.0, depth_lots=0.5),
    )
    assert term.initialize()
    engine = Engine(
        terminal=term,
        features=ArrayFeatureSource(names, tables, clock=lambda: float(now[0])),
        model=model,
        journal=Journal(target),
        limits=RiskLimits(max_consecutive_losses=50, daily_loss_limit=0.5, max_drawdown=0.9),
        sizing=SizingConfig(fixed_lots=0.5, stop_atr_mult=0.0),
        execution=ExecutionConfig(deviation_points=8, max_retries=6, retry_backoff_s=0.0),
        magic=31,
        clock=lambda: float(now[0]),
        sleep=lambda s: None,
        mode="backtest",
    )
    run_backtest(
        engine,
        bar_closes(term, SYMBOLS, P.TIMEFRAME_M5, START, end, 2),
        SYMBOLS,
        lambda t: now.__setitem__(0, t),
    )
    return engine, term, now


def _check(engine: Engine, term: SimulatedTerminal, now: list[int]) -> None:
    fills = engine.journal.fills()
    # every intent whose last answer was a fill has one fills row, and no other intent has one
    filled = {
        it.client_id
        for it in engine.journal.intents()
        if it.status == "done" and it.retcode in DONE
    }
    assert len(filled) >= 20
    assert {f.client_id for f in fills} == filled and len(fills) == len(filled)
    # the rows agree with the terminal's deals (the engine's orders, not SL/TP closes)
    deals = {d.order: d for d in term.history_deals_get(0, 2**31) if d.magic == 31}
    assert len(deals) == len(fills)
    requotes = 0
    for f in fills:
        d = deals[f.order_ticket]
        info = term.symbol_info(f.symbol)
        assert d.comment == f.client_id and d.symbol == f.symbol
        assert f.filled_price == pytest.approx(d.price) and f.volume == pytest.approx(d.volume)
        assert f.side == ("buy" if d.type == P.DEAL_TYPE_BUY else "sell")
        assert f.venue == f"sim:{term.login}"
        assert f.hour_utc == int(f.filled_at // 3600) % 24
        assert f.retcode == P.TRADE_RETCODE_DONE and f.deal == d.ticket
        sign = 1 if f.side == "buy" else -1
        assert f.slippage_price == pytest.approx(sign * (f.filled_price - f.requested_price))
        assert f.slippage_points == pytest.approx(f.slippage_price / info.point, abs=1e-3)
        # the terminal's process only slips adversely, and never beyond the deviation
        assert 0 <= f.slippage_points <= 8 + 1e-6
        assert f.spread_points is not None and f.spread_points > 0
        assert f.spread_price == pytest.approx(f.spread_points * info.point, rel=1e-3)
        assert f.volatility is not None and f.volatility > 0
        assert f.volatility_points == pytest.approx(
            f.volatility * f.requested_price / info.point, rel=1e-3
        )
        requotes += f.attempts - 1
    # the volatility is the cost formula's measure over the engine's 24 closed bars at the fill
    for f in fills[:: max(1, len(fills) // 5)]:
        now[0] = int(f.filled_at)
        rates = term.copy_rates_from_pos(f.symbol, P.TIMEFRAME_M5, 1, 25)
        assert rates is not None and len(rates) == 25
        assert f.volatility == pytest.approx(return_volatility(rates["close"], 24))
    print(
        f"fills={len(fills)} requoted attempts={requotes} mean slippage points="
        f"{sum(f.slippage_points or 0 for f in fills) / len(fills):.2f}"
    )
    assert {f.side for f in fills} == {"buy", "sell"}
    assert requotes > 0  # the deviation (8 points) requoted some draws; they were retried
    assert engine.journal.scope.endswith(":31:backtest")


def test_fills_when_an_engine_backtest_fills_orders_then_each_has_one_journal_row(
    tmp_path: Path,
) -> None:
    engine, term, now = _run(tmp_path, str(tmp_path / "journal.db"))
    _check(engine, term, now)
    # another scope on the same database sees none of them
    other = Journal(str(tmp_path / "journal.db"), scope="1:1:paper")
    assert other.fills() == []


@pytest.mark.integration
def test_fills_when_the_journal_is_postgres_then_each_fill_has_one_row(
    tmp_path: Path, pg_url: str
) -> None:
    engine, term, now = _run(tmp_path, pg_url)
    _check(engine, term, now)


def test_return_volatility_is_the_stdev_of_the_last_window_returns() -> None:
    import numpy as np

    c = np.array([1.0, 1.01, 0.99, 1.02, 1.0])
    r = c[1:] / c[:-1] - 1
    assert return_volatility(c, 24) == pytest.approx(float(np.std(r, ddof=1)))
    assert return_volatility(c, 2) == pytest.approx(float(np.std(r[-2:], ddof=1)))
    assert return_volatility(c[:2], 24) == 0.0


def test_venue_name_when_terminal_is_sim_bridge_or_native_then_mode_and_login() -> None:
    from engine.execution import venue_name
    from engine.mt5.resilient import ResilientTerminal

    sim = SimulatedTerminal(SyntheticFeed(seed=7, symbols=["EURUSD"]))
    assert venue_name(sim, 50_000_001) == "sim:50000001"
    # a reconnecting wrapper names its mode; its forwarding __getattr__ is not consulted
    wrapped = ResilientTerminal(lambda: sim, name="mt5-bridge")
    assert venue_name(wrapped, 123) == "bridge:123"

    class NativeTerminal:  # an unwrapped adapter: its class name
        pass

    assert venue_name(NativeTerminal(), 7) == "native:7"


def test_fill_when_the_terminal_fails_reading_the_context_then_the_fill_is_still_journaled(
    tmp_path: Path,
) -> None:
    from engine.execution import OrderExecutor

    class BarsDown(SimulatedTerminal):
        def copy_rates_from_pos(self, *a: object, **k: object) -> None:  # type: ignore[override]
            raise ConnectionError("link lost while reading bars")

    at = START + 6 * 3600
    term = BarsDown(SyntheticFeed(seed=7, symbols=["EURUSD"]), clock=lambda: at)
    assert term.initialize()
    journal = Journal(tmp_path / "j.db", scope="1:2:paper")
    ex = OrderExecutor(term, journal, ExecutionConfig(), magic=2, login=1, timeframe=5)
    out = ex.execute(
        "EURUSD", at, "open:sell", order_type=P.ORDER_TYPE_SELL, volume=0.2, now_utc=at
    )
    assert out.status == "done"
    [f] = journal.fills()
    assert f.side == "sell" and f.volume == 0.2 and f.volatility is None
    assert f.slippage_points == pytest.approx(0.0) and f.spread_points is not None
    assert journal.intent(out.client_id).status == "done"
