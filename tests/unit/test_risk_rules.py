"""One scenario per risk rule: the order is refused with the rule's reason code (and the
trading state moves where the rule says). Pure checks use :func:`check_order` /
:class:`RiskManager`; engine-level checks run the real engine on the real simulator."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from engine.config import RiskLimits
from engine.journal import Journal, journal_scope
from engine.loop import Engine
from engine.risk import Reason, RiskManager, RiskState, TradingState, check_order
from tests.unit.faults import (
    MONDAY_0800,
    ClockFeatures,
    ScriptedModel,
    closes,
    make_engine,
)

pytestmark = pytest.mark.unit

DAY = 86_400


def _engine(
    tmp_path: Path,
    now: list[int],
    limits: RiskLimits | None = None,
    model: ScriptedModel | None = None,
    features: object | None = None,
    terminal: object | None = None,
) -> Engine:
    return make_engine(
        tmp_path, now, terminal=terminal, features=features, model=model, limits=limits, magic=11
    )


# --- kill switch and trading state -----------------------------------------------------------
def test_order_when_kill_switch_engaged_in_config_then_refuses_with_kill_switch() -> None:
    v = check_order(RiskLimits(kill_switch=True), current_lots=0, target_lots=0.1)
    assert not v.allowed and v.reason is Reason.KILL_SWITCH


def test_engine_when_operator_kills_then_halted_survives_a_restart_and_refuses_until_resumed(
    tmp_path: Path,
) -> None:
    now = [MONDAY_0800]
    e = _engine(tmp_path, now)
    e.kill(detail="test")
    e.journal.close()

    e2 = _engine(tmp_path, now)  # restart on the same journal
    assert e2.risk.state.trading_state is TradingState.HALTED
    rec = e2.on_bar("EURUSD", now[0])
    assert rec is not None and rec.verdict == "refused" and rec.reason_code == "kill_switch"
    assert e2.positions() == ()
    e2.resume()
    now[0] += 300
    rec = e2.on_bar("EURUSD", now[0])
    assert rec is not None and rec.verdict == "sent" and len(e2.positions()) == 1


def test_order_when_trading_halted_then_denies_even_a_reduction() -> None:
    st = RiskState(trading_state=TradingState.HALTED, state_reason="max_drawdown")
    v = check_order(RiskLimits(), st, current_lots=0.1, target_lots=0.0)
    assert not v.allowed and v.reason is Reason.MAX_DRAWDOWN


# --- money limits ---------------------------------------------------------------------------
def test_order_when_daily_loss_limit_hit_then_halts_and_refuses() -> None:
    rm = RiskManager(RiskLimits(daily_loss_limit=0.03, max_drawdown=0.5))
    rm.observe_equity(10_000.0, MONDAY_0800)
    rm.observe_equity(9_750.0, MONDAY_0800 + 3600)  # -2.5 %: still ACTIVE
    assert (
        rm.state.trading_state is TradingState.ACTIVE
        and rm.check(current_lots=0, target_lots=0.1).allowed
    )
    rm.observe_equity(9_690.0, MONDAY_0800 + 7200)  # -3.1 %
    v = rm.check(current_lots=0, target_lots=0.1)
    assert rm.state.trading_state is TradingState.HALTED
    assert not v.allowed and v.reason is Reason.DAILY_LOSS_LIMIT


def test_daily_loss_halt_when_the_next_utc_day_starts_then_trading_resumes() -> None:
    rm = RiskManager(RiskLimits(daily_loss_limit=0.03, max_drawdown=0.5))
    rm.observe_equity(10_000.0, MONDAY_0800)
    rm.observe_equity(9_600.0, MONDAY_0800 + 3600)
    assert rm.state.trading_state is TradingState.HALTED
    rm.observe_equity(9_600.0, MONDAY_0800 + DAY)
    assert rm.state.trading_state is TradingState.ACTIVE and rm.state.day_start_equity == 9_600.0


def test_engine_when_equity_is_below_the_days_start_by_more_than_the_limit_then_halts_and_refuses(
    tmp_path: Path,
) -> None:
    now = [MONDAY_0800]
    # the engine (account 50000001, magic 11, paper) restarts on a day that began at 20k equity
    j = Journal(tmp_path / "j.sqlite", journal_scope(50_000_001, 11, "paper"))
    j.save_state(
        "risk",
        RiskState(day="2026-01-12", day_start_equity=20_000.0, peak_equity=20_000.0).to_json(),
    )
    j.close()
    e = _engine(tmp_path, now, RiskLimits(daily_loss_limit=0.03, max_drawdown=0.9))
    rec = e.on_bar("EURUSD", now[0])
    assert rec is not None and rec.verdict == "refused" and rec.reason_code == "daily_loss_limit"
    assert e.status()["trading_state"] == "HALTED" and e.positions() == ()


def test_order_when_trailing_drawdown_exceeds_limit_then_halts_and_refuses() -> None:
    rm = RiskManager(RiskLimits(daily_loss_limit=0.0, max_drawdown=0.10))
    rm.observe_equity(10_000.0, MONDAY_0800)
    rm.observe_equity(12_000.0, MONDAY_0800 + DAY)  # new peak
    rm.observe_equity(10_900.0, MONDAY_0800 + 2 * DAY)  # 9.2 % off the peak
    assert rm.state.trading_state is TradingState.ACTIVE
    rm.observe_equity(10_750.0, MONDAY_0800 + 3 * DAY)  # 10.4 % off the peak
    v = rm.check(current_lots=0, target_lots=0.1)
    assert not v.allowed and v.reason is Reason.MAX_DRAWDOWN
    rm.resume()  # the operator's call: the peak restarts at the current equity
    assert rm.check(current_lots=0, target_lots=0.1).allowed and rm.state.peak_equity == 10_750.0


# --- exposure and rate -------------------------------------------------------------------------
def test_order_when_symbol_exposure_exceeds_max_position_then_refuses() -> None:
    v = check_order(RiskLimits(max_position_lots=0.5), current_lots=0, target_lots=-0.6)
    assert not v.allowed and v.reason is Reason.MAX_POSITION
    assert check_order(
        RiskLimits(max_position_lots=0.5), current_lots=0.2, target_lots=-0.5
    ).allowed


def test_order_when_total_exposure_across_symbols_exceeds_limit_then_refuses() -> None:
    v = check_order(
        RiskLimits(max_position_lots=1.0, max_total_lots=1.0),
        current_lots=0,
        target_lots=0.4,
        other_lots=0.7,
    )
    assert not v.allowed and v.reason is Reason.MAX_TOTAL_EXPOSURE


def test_engine_when_a_second_symbol_would_exceed_total_exposure_then_refuses_it(
    tmp_path: Path,
) -> None:
    now = [MONDAY_0800]
    e = _engine(tmp_path, now, RiskLimits(max_position_lots=0.1, max_total_lots=0.15))
    assert e.on_bar("EURUSD", now[0]).verdict == "sent"  # type: ignore[union-attr]
    rec = e.on_bar("GBPUSD", now[0])
    assert rec is not None and rec.verdict == "refused" and rec.reason_code == "max_total_exposure"


def test_order_when_rate_exceeds_max_orders_per_minute_then_refuses() -> None:
    st = RiskState(order_times=[1000.0, 1010.0, 1020.0])
    v = check_order(
        RiskLimits(max_orders_per_minute=3), st, current_lots=0, target_lots=0.1, now=1030.0
    )
    assert not v.allowed and v.reason is Reason.MAX_ORDERS_PER_MINUTE
    assert check_order(
        RiskLimits(max_orders_per_minute=3), st, current_lots=0, target_lots=0.1, now=1061.0
    ).allowed


def test_engine_when_the_model_flips_faster_than_the_order_rate_then_refuses(
    tmp_path: Path,
) -> None:
    now = [MONDAY_0800]
    model = ScriptedModel(1)
    e = _engine(tmp_path, now, RiskLimits(max_orders_per_minute=1), model=model)
    assert e.on_bar("EURUSD", now[0]).verdict == "sent"  # type: ignore[union-attr]
    model.position = (
        -1
    )  # flip: close + open (or even the close alone) is over the rate within the same minute
    now[0] += 10
    rec = e.on_bar("EURUSD", now[0])
    assert (
        rec is not None and rec.verdict == "refused" and rec.reason_code == "max_orders_per_minute"
    )


def test_order_when_consecutive_losses_reach_limit_then_reducing_and_only_reductions_pass() -> None:
    rm = RiskManager(RiskLimits(max_consecutive_losses=3))
    rm.observe_closed_trades([(1, -5.0), (2, 3.0), (3, -1.0), (4, -2.0)])
    assert rm.state.consecutive_losses == 2 and rm.state.trading_state is TradingState.ACTIVE
    rm.observe_closed_trades([(4, -2.0), (5, -0.5)])  # ticket 4 already counted
    assert rm.state.consecutive_losses == 3 and rm.state.trading_state is TradingState.REDUCING
    v = rm.check(current_lots=0.0, target_lots=0.1)
    assert not v.allowed and v.reason is Reason.MAX_CONSECUTIVE_LOSSES
    assert rm.check(current_lots=0.2, target_lots=0.0).allowed  # closing is still allowed


def test_losing_streak_reducing_when_the_next_utc_day_starts_then_trading_resumes_with_a_fresh_count() -> (
    None
):
    rm = RiskManager(RiskLimits(max_consecutive_losses=2))
    rm.observe_equity(10_000.0, MONDAY_0800)
    rm.observe_closed_trades([(1, -1.0), (2, -1.0)])
    assert rm.state.trading_state is TradingState.REDUCING
    rm.observe_equity(9_998.0, MONDAY_0800 + 3600)  # same day: still reducing
    assert rm.state.trading_state is TradingState.REDUCING
    rm.observe_equity(9_998.0, MONDAY_0800 + DAY)
    assert rm.state.trading_state is TradingState.ACTIVE and rm.state.consecutive_losses == 0
    assert rm.check(current_lots=0.0, target_lots=0.1).allowed


# --- market context -------------------------------------------------------------------------
def test_order_when_features_are_older_than_limit_then_refuses_stale() -> None:
    v = check_order(
        RiskLimits(max_feature_age_s=60), current_lots=0, target_lots=0.1, feature_age_s=75
    )
    assert not v.allowed and v.reason is Reason.STALE_FEATURES


def test_engine_when_the_feature_row_is_not_of_the_decided_bar_then_refuses_stale(
    tmp_path: Path,
) -> None:
    now = [MONDAY_0800]
    e = _engine(tmp_path, now, features=ClockFeatures(now, lag_s=300))  # the previous bar's row
    rec = e.on_bar("EURUSD", now[0])
    assert rec is not None and rec.verdict == "refused" and rec.reason_code == "stale_features"
    assert (
        rec.reason is not None and rec.reason.startswith("stale_features") and e.positions() == ()
    )


def test_order_when_spread_is_wider_than_limit_then_refuses() -> None:
    v = check_order(
        RiskLimits(max_spread_points=30), current_lots=0, target_lots=0.1, spread_points=42
    )
    assert not v.allowed and v.reason is Reason.WIDE_SPREAD


def test_engine_when_the_live_spread_exceeds_the_limit_then_refuses_wide_spread(
    tmp_path: Path,
) -> None:
    now = [MONDAY_0800]
    e = _engine(
        tmp_path, now, RiskLimits(max_spread_points=1)
    )  # the synthetic EURUSD spread is ~12 points
    rec = e.on_bar("EURUSD", now[0])
    assert rec is not None and rec.verdict == "refused" and rec.reason_code == "wide_spread"


def test_order_when_market_closed_then_refuses() -> None:
    v = check_order(RiskLimits(), current_lots=0, target_lots=0.1, market_open=False)
    assert not v.allowed and v.reason is Reason.MARKET_CLOSED


def test_engine_when_deciding_on_a_saturday_then_refuses_market_closed(tmp_path: Path) -> None:
    saturday = MONDAY_0800 - 2 * DAY  # the last tick is Friday night's
    now = [saturday]
    e = _engine(tmp_path, now)
    rec = e.on_bar("EURUSD", saturday)
    assert rec is not None and rec.verdict == "refused" and rec.reason_code == "market_closed"


def test_order_when_state_is_reducing_then_an_increase_is_refused_and_a_reduction_allowed() -> None:
    st = RiskState(trading_state=TradingState.REDUCING, state_reason="no_money")
    v = check_order(RiskLimits(), st, current_lots=0.1, target_lots=-0.1)  # a flip adds risk
    assert not v.allowed and v.reason is Reason.NO_MONEY
    assert check_order(RiskLimits(), st, current_lots=0.1, target_lots=0.0).allowed


# --- config ---------------------------------------------------------------------------------
def test_risk_limits_when_assigned_then_frozen_and_negative_limits_are_rejected() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        RiskLimits().kill_switch = True  # type: ignore[misc]
    with pytest.raises(ValueError, match="max_drawdown"):
        RiskLimits(max_drawdown=-0.1)


def test_risk_state_when_serialised_then_round_trips() -> None:
    st = RiskState(
        trading_state=TradingState.REDUCING,
        state_reason="x",
        consecutive_losses=4,
        order_times=[1.0],
    )
    assert RiskState.from_json(st.to_json()) == st


def test_engine_when_replaying_a_day_then_every_bar_is_journaled_with_stage_latencies(
    tmp_path: Path,
) -> None:
    now = [MONDAY_0800]
    e = _engine(tmp_path, now)
    e.replay(closes(n=5), ["EURUSD"], lambda t: now.__setitem__(0, t))
    rows = e.journal.rows()
    assert [r["verdict"] for r in rows] == ["sent", "hold", "hold", "hold", "hold"]
    stages = {"feature_ms", "predict_ms", "risk_ms", "order_ms", "send_ms", "broker_ms"}
    assert stages | {"total_ms"} <= set(rows[0]["latency_ms"])
    sent = rows[0]["latency_ms"]  # tick-to-send: after the model, before the order's end
    assert sent["predict_ms"] < sent["send_ms"] < sent["total_ms"]
    assert 0 < sent["broker_ms"] < sent["order_ms"]  # the broker's part: inside order_send
    assert all("broker_ms" not in r["latency_ms"] for r in rows[1:])
    assert all("send_ms" not in r["latency_ms"] for r in rows[1:])  # holds send nothing
    assert all(r["trading_state"] == "ACTIVE" and r["model_version"] == "7" for r in rows)


def test_engine_stats_when_a_run_outgrows_the_bound_then_the_newest_bars_are_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import engine.loop

    monkeypatch.setattr(engine.loop, "STATS_KEEP", 3)  # a live engine runs for months
    now = [MONDAY_0800]
    e = _engine(tmp_path, now)
    e.replay(closes(n=5), ["EURUSD"], lambda t: now.__setitem__(0, t))
    assert e.stats.bars == 5 and len(e.stats.latencies_ms) == len(e.stats.stages_ms) == 3
    assert list(e.stats.latencies_ms) == [r["latency_ms"]["total_ms"] for r in e.journal.rows()[2:]]


def test_engine_when_killed_before_the_send_then_the_bar_has_no_send_time(tmp_path: Path) -> None:
    now = [MONDAY_0800]
    e = _engine(tmp_path, now)
    check = e.risk.check

    def kill_after_the_checks(**kw: Any) -> Any:  # the kill lands between plan and send
        v = check(**kw)
        e.killed.set()
        return v

    e.risk.check = kill_after_the_checks  # type: ignore[method-assign]
    rec = e.on_bar("EURUSD", now[0])
    assert rec is not None and rec.reason_code == "killed", rec
    assert rec.order_result is not None and "order_ms" in rec.latency_ms
    assert "send_ms" not in rec.latency_ms  # the send gate said no: nothing left the engine


def test_engine_when_reducing_and_the_model_flips_then_it_closes_without_opening_the_other_side(
    tmp_path: Path,
) -> None:
    now = [MONDAY_0800]
    model = ScriptedModel(1)
    e = _engine(tmp_path, now, model=model)
    assert e.on_bar("EURUSD", now[0]).verdict == "sent"  # type: ignore[union-attr]
    e.risk.set_state(TradingState.REDUCING, Reason.OPERATOR, "test")
    model.position = -1
    now[0] += 300
    rec = e.on_bar("EURUSD", now[0])
    assert (
        rec is not None and rec.verdict == "sent" and rec.target_lots == 0.0 and e.positions() == ()
    )


def test_engine_when_deciding_a_bar_then_one_positions_view_serves_it_until_an_order(
    tmp_path: Path,
) -> None:
    """A bridge terminal answers each ``positions_get`` over the network: a hold or a flip
    asks once (an ask after an order would go to the terminal again: the account moved);
    another thread (the console) asks the terminal itself while the bar is decided."""
    import threading

    now = [MONDAY_0800]
    model = ScriptedModel(1)
    e = _engine(tmp_path, now, model=model)
    calls: list[dict[str, Any]] = []
    real = e.terminal.positions_get
    depth = threading.local()

    def counted(**kw: Any) -> Any:  # the engine's calls (the simulator calls itself too)
        if not getattr(depth, "n", 0):
            calls.append(kw)
        depth.n = getattr(depth, "n", 0) + 1
        try:
            return real(**kw)
        finally:
            depth.n -= 1

    e.terminal.positions_get = counted  # type: ignore[method-assign]
    assert e.on_bar("EURUSD", now[0]).verdict == "sent"  # type: ignore[union-attr]
    opened = len(calls)
    now[0] += 300
    calls.clear()
    assert e.on_bar("EURUSD", now[0]).verdict == "hold"  # type: ignore[union-attr]
    assert len(calls) == 1 and calls == [{}]
    seen: list[int] = []
    predict = model.predict

    def predict_and_look(row: Any) -> Any:  # runs on the deciding thread, mid-bar
        n = len(calls)
        t = threading.Thread(target=lambda: seen.append(len(e.positions("EURUSD"))))
        t.start()
        t.join()
        assert len(calls) == n + 1  # the other thread went to the terminal
        return predict(row)

    model.predict = predict_and_look  # type: ignore[method-assign]
    model.position = -1  # a flip: close the long, open a short
    now[0] += 300
    calls.clear()
    rec = e.on_bar("EURUSD", now[0])
    assert rec is not None and rec.verdict == "sent" and rec.target_lots < 0
    assert seen == [1]
    assert opened <= 2
    # the other thread's own call, then the bar's one view (its close and open need no other)
    assert calls == [{"symbol": "EURUSD"}, {}]
    assert [p.type for p in e.positions("EURUSD")] == [1]  # the short alone


def test_engine_when_a_bar_trades_then_one_symbol_info_and_one_bars_read_serve_it(
    tmp_path: Path,
) -> None:
    """The plan (ATR), the executor (filling mode, stops, the fill's point and volatility)
    read the symbol's info and its closed bars once per bar; the fill row carries the same
    volatility as a read of its own 25 bars, and a bar later reads again."""
    from engine.execution import FILL_VOL_WINDOW
    from engine.sizing import return_volatility

    now = [MONDAY_0800]
    e = _engine(tmp_path, now)
    reads: dict[str, int] = {"symbol_info": 0, "copy_rates_from_pos": 0}
    for name in reads:
        real = getattr(e.terminal, name)

        def counted(*a: Any, _real: Any = real, _name: str = name, **kw: Any) -> Any:
            reads[_name] += 1
            return _real(*a, **kw)

        setattr(e.terminal, name, counted)
    rec = e.on_bar("EURUSD", now[0])
    assert rec is not None and rec.verdict == "sent"
    assert reads == {"symbol_info": 1, "copy_rates_from_pos": 1}
    fill = e.journal.fills()[-1]
    own = e.terminal.copy_rates_from_pos("EURUSD", e.timeframe, 1, FILL_VOL_WINDOW + 1)
    assert fill.volatility == pytest.approx(return_volatility(own["close"], FILL_VOL_WINDOW))
    assert e._symbol_info("EURUSD") is not None  # outside a bar: the terminal's answer
    before = dict(reads)
    model = e.model
    model.position = -1  # type: ignore[attr-defined]  # the next bar flips: reads again
    now[0] += 300
    assert e.on_bar("EURUSD", now[0]).verdict == "sent"  # type: ignore[union-attr]
    assert reads["symbol_info"] == before["symbol_info"] + 1
    assert reads["copy_rates_from_pos"] == before["copy_rates_from_pos"] + 1
