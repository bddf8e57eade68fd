"""The grid strategy (engine/grid.py): levels as price moves against, basket take-profit, reverse
safety in each mode, the risk caps (a refused add is journaled with its reason), spacing that
widens with volatility, the trend filter against the ``ta`` library, and the engine backtest
agreeing with the vectorised one on the same bars."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.config import GridConfig, GridLimits, parse_strategies
from engine.grid import GridAction, GridStrategy, ema_last, market_signals
from engine.mt5.protocol import RATES_DTYPE
from engine.risk import Reason, check_grid_add, check_grid_basket
from training.grid_backtest import run_engine_grid, simulate_grid

pytestmark = pytest.mark.unit

T0 = 1_704_067_200  # 2024-01-01 00:00 UTC (server time = UTC in these replays)


def _bars(close: np.ndarray, *, wick: float = 0.0002, spread: int = 10) -> np.ndarray:
    n = len(close)
    a = np.zeros(n, RATES_DTYPE)
    a["time"] = T0 + np.arange(n) * 300
    o = np.concatenate([[close[0]], close[:-1]])
    a["open"], a["close"] = np.round(o, 5), np.round(close, 5)
    a["high"] = np.round(np.maximum(o, close) + wick, 5)
    a["low"] = np.round(np.minimum(o, close) - wick, 5)
    a["spread"], a["tick_volume"] = spread, 100
    return a


def _walk(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    drift = np.repeat(rng.normal(0, 0.00015, n // 200 + 1), 200)[:n]
    return 1.10 * np.exp(np.cumsum(drift + rng.normal(0, 0.0004, n)))


def _run(g: GridStrategy, closes: list[float], trends: list[int], atr: float = 0.001, vr=1.0):
    """Feed bars to ``g``, applying every proposed action at the close; all actions."""
    seen: list[GridAction] = []
    for i, (c, tr) in enumerate(zip(closes, trends, strict=True)):
        for a in g.on_bar(close=c, atr=atr, trend=tr, vol_ratio=vr):
            seen.append(a)
            g.apply(a, price=c, time=i)
    return seen


CFG = GridConfig(spacing_atr=1.0, max_levels=4, lots=0.1, lot_multiplier=2.0, basket_tp_atr=1.0)


def test_grid_when_price_moves_against_then_adds_levels_up_to_max_with_lot_progression() -> None:
    g = GridStrategy(CFG)
    acts = _run(g, [1.1000, 1.0995, 1.0989, 1.0979, 1.0969, 1.0959, 1.0949], [1] + [0] * 6)
    assert [a.kind for a in acts] == ["open", "add", "add", "add"]  # 1.0995: < 1 ATR: no add
    assert [lv.lots for lv in g.state.levels] == pytest.approx([0.1, 0.2, 0.4, 0.8])
    assert [lv.price for lv in g.state.levels] == [1.1000, 1.0989, 1.0979, 1.0969]
    assert acts[1].reason == "level_reached" and "level 2" in acts[1].detail
    assert len(g.state.levels) == CFG.max_levels  # no fifth level at 1.0959 / 1.0949


def test_grid_when_basket_gains_tp_atr_per_lot_then_closes_all_levels() -> None:
    g = GridStrategy(CFG)
    _run(g, [1.1000, 1.0989, 1.0978], [1, 0, 0])
    avg = g.state.avg_price  # 0.1 @1.1000, 0.2 @1.0989, 0.4 @1.0978
    below = g.on_bar(close=avg + 0.00099, atr=0.001, trend=0)
    assert not any(a.kind == "close_all" for a in below)
    acts = g.on_bar(close=avg + 0.0010001, atr=0.001, trend=0)
    assert [(a.kind, a.reason) for a in acts] == [("close_all", "basket_tp")]
    g.apply(acts[0])
    assert not g.state.open and g.state.direction == 0


@pytest.mark.parametrize("mode", ["flatten", "reverse", "stop_adding"])
def test_grid_when_trend_turns_against_then_acts_per_reverse_mode(mode: str) -> None:
    cfg = GridConfig(max_levels=5, lots=0.1, reverse_mode=mode)  # type: ignore[arg-type]
    g = GridStrategy(cfg)
    _run(g, [1.1000, 1.0989], [1, 0])
    assert len(g.state.levels) == 2 and g.state.direction == 1
    acts = g.on_bar(close=1.0980, atr=0.001, trend=-1)
    kinds = [(a.kind, a.reason) for a in acts]
    if mode == "flatten":
        assert kinds == [("close_all", "trend_against")]
    elif mode == "reverse":
        assert kinds == [("close_all", "trend_against"), ("open", "reverse")]
        assert acts[1].direction == -1 and acts[1].lots == pytest.approx(0.1)
    else:
        assert kinds == [("stop_adding", "trend_against")]
    for a in acts:
        g.apply(a, price=1.0980)
    if mode == "flatten":
        assert not g.state.open
    elif mode == "reverse":
        assert g.state.direction == -1 and len(g.state.levels) == 1
    else:  # no add while the trend stays against, though price moved 2 ATRs further
        assert g.on_bar(close=1.0960, atr=0.001, trend=-1) == []
        assert len(g.state.levels) == 2
        back = g.on_bar(close=1.0960, atr=0.001, trend=0)  # cleared: resume, then add
        assert [a.kind for a in back] == ["resume_adding", "add"]


def test_grid_when_volatility_rises_then_spacing_widens_and_a_one_atr_move_adds_nothing() -> None:
    cfg = GridConfig(spacing_atr=1.0, max_levels=5, lots=0.1, vol_widen=1.0)
    g = GridStrategy(cfg)
    assert g.spacing(0.001, 1.0) == pytest.approx(0.001)
    assert g.spacing(0.001, 2.0) == pytest.approx(0.002)
    assert g.spacing(0.001, 0.5) == pytest.approx(0.001)  # never narrower than spacing_atr
    assert GridStrategy(GridConfig(vol_widen=0.0)).spacing(0.001, 3.0) == pytest.approx(0.001)
    _run(g, [1.1000], [1])
    assert g.on_bar(close=1.0989, atr=0.001, trend=0, vol_ratio=2.0) == []
    assert [a.kind for a in g.on_bar(close=1.0979, atr=0.001, trend=0, vol_ratio=2.0)] == ["add"]
    # and from bars: a calm stretch then a wild one gives a fast/slow ATR ratio above 1
    calm = 1.10 + np.cumsum(np.full(300, 0.00001))
    rates = _bars(calm, wick=0.0001)
    wild = _bars(calm, wick=0.0001)
    wild["high"][-14:] += 0.002
    sig_calm, sig_wild = market_signals(rates, cfg), market_signals(wild, cfg)
    assert sig_calm.vol_ratio == pytest.approx(1.0, abs=0.05)
    assert sig_wild.vol_ratio > 3
    assert g.spacing(sig_wild.atr, sig_wild.vol_ratio) > sig_wild.atr * 3


def test_trend_filter_ema_equals_the_ta_library_on_the_same_window() -> None:
    ta = pytest.importorskip("ta")
    close = _walk(400, 5)
    for period, back in ((50, 0), (50, 10), (20, 3)):
        ref = ta.trend.EMAIndicator(pd.Series(close), window=period).ema_indicator()
        assert ema_last(close, period, back) == pytest.approx(
            float(ref.iloc[len(close) - 1 - back]), rel=1e-12
        )
    up = _bars(1.10 + np.arange(400) * 0.0001)
    down = _bars(1.10 - np.arange(400) * 0.0001)
    assert market_signals(up, CFG).trend == 1 and market_signals(down, CFG).trend == -1


def test_risk_caps_when_levels_lots_or_basket_loss_exceed_then_refuse_with_reason() -> None:
    lim = GridLimits(max_lots=0.3, max_levels=3, max_basket_drawdown=0.02)
    assert check_grid_add(lim, levels=2, grid_lots=0.2, add_lots=0.1).allowed
    v = check_grid_add(lim, levels=3, grid_lots=0.2, add_lots=0.1)
    assert not v.allowed and v.reason is Reason.GRID_MAX_LEVELS
    v = check_grid_add(lim, levels=2, grid_lots=0.25, add_lots=0.1)
    assert not v.allowed and v.reason is Reason.GRID_MAX_EXPOSURE
    assert check_grid_basket(lim, basket_pnl=-199.0, equity=10_000).allowed
    v = check_grid_basket(lim, basket_pnl=-200.0, equity=10_000)
    assert not v.allowed and v.reason is Reason.GRID_BASKET_DRAWDOWN


def test_strategy_setting_when_parsed_then_per_symbol_and_bad_values_refused() -> None:
    assert parse_strategies("grid", ["EURUSD", "XAUUSD"]) == {"EURUSD": "grid", "XAUUSD": "grid"}
    assert parse_strategies("xauusd=both", ["EURUSD", "XAUUSD"]) == {
        "EURUSD": "model",
        "XAUUSD": "both",
    }
    with pytest.raises(ValueError, match="SYMBOL=model"):
        parse_strategies("EURUSD=martingale", ["EURUSD"])


def test_engine_grid_when_exposure_cap_reached_then_add_refused_and_journaled(
    tmp_path: Path,
) -> None:
    # warm-up, then a steady fall: the long grid adds a level per ATR until the cap refuses
    cfg = GridConfig(
        spacing_atr=1.0, max_levels=6, lots=0.1, direction="long", trend_threshold=50.0
    )
    lim = GridLimits(max_lots=0.3, max_levels=8, max_basket_drawdown=0.0)
    n0 = cfg.bars_needed
    fall = 1.10 - np.concatenate([np.zeros(n0), np.arange(1, 60) * 0.0004])
    rates = _bars(fall)
    jp = tmp_path / "grid.sqlite"
    res = run_engine_grid(rates, "EURUSD", "M5", cfg, lim, journal_path=jp)
    assert res.actions.get("open:grid_start") == 1
    assert res.actions.get("add:level_reached", 0) == 2  # 0.1 + 0.1 + 0.1 = the cap
    assert res.actions.get("refused:grid_max_exposure", 0) >= 1
    from engine.journal import Journal

    j = Journal(str(jp))
    j.set_scope(next(s for s in j.scopes() if s.endswith(":backtest")))
    rows = [r for r in j.rows() if r["reason_code"] == "grid_max_exposure"]
    assert rows, "the refused add has a decision row with its reason code"
    r = rows[-1]
    req = (
        r["order_request"]
        if isinstance(r["order_request"], dict)
        else json.loads(r["order_request"])
    )
    refused = [a for a in req["grid"]["actions"] if a["status"] == "refused"]
    assert refused[0]["kind"] == "add" and "grid lots 0.3 + 0.1" in refused[0]["refusal"]
    assert r["verdict"] == "refused" and "grid_max_exposure" in r["reason"]
    assert req["grid"]["state"]["levels"] == 3
    sent = [x for x in j.rows() if x["verdict"] == "sent"]
    assert len(sent) == 3 and all(x["decision"] == "grid" for x in sent)
    j.close()
    # the vectorised backtest refuses the same add
    run = simulate_grid(rates, "EURUSD", "M5", cfg, lim)
    assert (
        run.counts().get("refused:grid_max_exposure", 0) == res.actions["refused:grid_max_exposure"]
    )


@pytest.mark.parametrize("mode", ["flatten", "reverse", "stop_adding"])
def test_engine_and_vectorised_grid_when_replayed_on_the_same_bars_then_agree(mode: str) -> None:
    """Same orders and same actions; final equity within 0.01 % of the balance (rounding of
    per-deal profits to cents)."""
    rates = _bars(_walk(2500, 11))
    rates["spread"] = np.random.default_rng(2).integers(5, 25, len(rates))
    cfg = GridConfig(
        max_levels=4,
        lots=0.1,
        lot_multiplier=1.5,
        basket_stop_atr=3.0,
        reverse_mode=mode,  # type: ignore[arg-type]
    )
    lim = GridLimits(max_lots=0.6, max_levels=8, max_basket_drawdown=0.01)
    run = simulate_grid(rates, "EURUSD", "M5", cfg, lim)
    res = run_engine_grid(rates, "EURUSD", "M5", cfg, lim)
    print(mode, run.counts(), run.orders, run.final_equity, res.orders, res.equity)
    assert run.orders > 100
    assert res.orders == run.orders
    assert res.actions == run.counts()
    assert res.equity == pytest.approx(run.final_equity, abs=1e-4 * 10_000)


def test_engine_both_when_model_and_grid_trade_one_symbol_then_model_never_closes_grid_levels(
    tmp_path: Path,
) -> None:
    from engine.backtest import ArrayFeatureSource, bar_closes, run_backtest
    from engine.config import RiskLimits, SizingConfig
    from engine.grid import GridRunner
    from engine.journal import Journal
    from engine.loop import Engine
    from engine.mt5 import protocol as P
    from engine.mt5.sim import SimulatedTerminal, SyntheticFeed
    from engine.mt5.synthetic import ORIGIN_UTC
    from engine.serving_client import OnnxModel
    from tests.unit.engine_bundles import linear_bundle, synthetic_features

    start = ORIGIN_UTC + 22 * 86_400 + 6 * 3600
    end = start + 86_400
    names, tables = synthetic_features(["EURUSD"], start, end)
    now = [end]
    term = SimulatedTerminal(SyntheticFeed(seed=7, symbols=["EURUSD"]), clock=lambda: now[0])
    assert term.initialize()
    cfg = GridConfig(spacing_atr=1.0, max_levels=4, lots=0.1, trend_threshold=0.2)
    engine = Engine(
        terminal=term,
        features=ArrayFeatureSource(names, tables, clock=lambda: float(now[0])),
        model=OnnxModel.from_dir(linear_bundle(tmp_path / "bundle", names)),
        journal=Journal(str(tmp_path / "j.sqlite")),
        limits=RiskLimits(
            max_position_lots=5, max_total_lots=5, max_consecutive_losses=0, max_drawdown=0.9
        ),
        sizing=SizingConfig(fixed_lots=0.2, stop_atr_mult=0.0),
        magic=77,
        clock=lambda: float(now[0]),
        sleep=lambda s: None,
        mode="backtest",
        grid=GridRunner(cfg, GridLimits(max_lots=1.0), {"EURUSD": "both"}),
    )
    run_backtest(
        engine,
        bar_closes(term, ["EURUSD"], P.TIMEFRAME_M5, start, end, 2),
        ["EURUSD"],
        lambda t: now.__setitem__(0, t),
    )
    intents = engine.journal.intents()
    grid_ids = {it.client_id for it in intents if it.intent.startswith(("grid:open", "grid:add"))}
    model_opens = [it for it in intents if it.intent.startswith("open:")]
    deals = term.history_deals_get(0, 2**31) or ()
    grid_positions = {int(d.position_id) for d in deals if d.comment in grid_ids}
    model_closes = {
        int(it.intent.split(":")[1]) for it in intents if it.intent.startswith("close:")
    }
    print(f"grid levels {len(grid_positions)}, model opens {len(model_opens)}")
    assert len(grid_positions) >= 5 and len(model_opens) >= 5 and model_closes
    assert not model_closes & grid_positions  # the model closes its own positions only
    rows = engine.journal.rows()
    both = [
        r
        for r in rows
        if isinstance(r["order_request"], dict)
        and "grid" in r["order_request"]
        and r["order_request"].get("orders")
    ]
    assert both, "bars where the model sent orders carry the grid's actions too"
    assert all(r["decision"] != "grid" for r in rows)  # the model's decision stays in the row


def test_engine_grid_when_restarted_mid_run_then_state_reloads_and_result_matches(
    tmp_path: Path,
) -> None:
    """The grid's levels survive an engine restart (engine_state ``grid:<symbol>``): a run
    stopped halfway and continued by a new engine on the same journal and terminal ends where
    the uninterrupted vectorised run ends."""
    from engine.backtest import ArrayFeatureSource, bar_closes
    from engine.grid import GridRunner, NoModel
    from engine.journal import Journal
    from engine.loop import Engine
    from engine.mt5 import protocol as P
    from engine.mt5.exports import Export
    from engine.mt5.sim import ExportFeed, SimulatedTerminal
    from training.grid_backtest import BACKTEST_LIMITS

    rates = _bars(_walk(1500, 21))
    cfg = GridConfig(max_levels=4, lots=0.1, reverse_mode="reverse")
    lim = GridLimits(max_lots=1.0)
    feed = ExportFeed([Export("EURUSD", "M5", rates, Path("EURUSD_M5.csv"))], 0)
    end = int(rates["time"][-1]) + 300
    now = [end]
    term = SimulatedTerminal(feed, clock=lambda: now[0], server_utc_offset_hours=0)
    assert term.initialize()
    first = int(rates["time"][cfg.bars_needed - 1]) + 300
    closes = bar_closes(term, ["EURUSD"], P.TIMEFRAME_M5, first - 1, end, 0)

    def engine() -> Engine:
        return Engine(
            terminal=term,
            features=ArrayFeatureSource([], {}, clock=lambda: float(now[0])),
            model=NoModel(),
            journal=Journal(str(tmp_path / "j.sqlite")),
            limits=BACKTEST_LIMITS,
            magic=5,
            clock=lambda: float(now[0]),
            server_utc_offset_hours=0,
            sleep=lambda s: None,
            mode="backtest",
            grid=GridRunner(cfg, lim, {"EURUSD": "grid"}),
        )

    run = simulate_grid(rates, "EURUSD", "M5", cfg, lim)
    assert closes[0] == int(rates["time"][run.start]) + 300
    # stop right after a bar, past the middle, that leaves the grid holding levels
    half = next(k for k in range(len(closes) // 2, len(closes)) if run.lots[run.start + k]) + 1
    a = engine()
    a.replay(closes[:half], ["EURUSD"], lambda c: now.__setitem__(0, c))
    levels = len(a.grid.grid(a, "EURUSD").state.levels) if a.grid else 0
    a.journal.close()
    b = engine()
    assert b.grid is not None
    assert levels > 0  # the split falls inside an open grid
    assert len(b.grid.grid(b, "EURUSD").state.levels) == levels  # reloaded from the journal
    b.replay(closes[half:], ["EURUSD"], lambda c: now.__setitem__(0, c))
    acct = term.account_info()
    assert acct is not None
    assert acct.equity == pytest.approx(run.final_equity, abs=1.0)
    assert len([d for d in term.history_deals_get(0, 2**31) or () if d.magic == 5]) == run.orders
