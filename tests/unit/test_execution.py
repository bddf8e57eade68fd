"""The MT5 order path, retcode by retcode, against the real simulator behind a fault-injecting
wrapper (tests/unit/faults.py): bounded retries, filling-mode discovery and cache, client
order ids, write-ahead intents, a crash between order_send and the journal, reconciliation."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import ExecutionConfig, RiskLimits, SizingConfig
from engine.execution import client_order_id
from engine.journal import Intent
from engine.loop import Engine
from engine.mt5 import protocol as mt5
from engine.sizing import lots_for_risk, round_volume, stop_prices
from tests.unit.faults import (
    MONDAY_0800,
    Crash,
    FaultyTerminal,
    ScriptedModel,
    make_engine,
    sim_terminal,
)

pytestmark = pytest.mark.unit

FOK, IOC = mt5.ORDER_FILLING_FOK, mt5.ORDER_FILLING_IOC


def _engine(
    tmp_path: Path,
    now: list[int],
    terminal: FaultyTerminal,
    *,
    model: ScriptedModel | None = None,
    sizing: SizingConfig | None = None,
    execution: ExecutionConfig | None = None,
    limits: RiskLimits | None = None,
) -> Engine:
    return make_engine(
        tmp_path,
        now,
        terminal=terminal,
        model=model,
        sizing=sizing,
        limits=limits,
        execution=execution or ExecutionConfig(max_retries=3, retry_backoff_s=0.0),
    )


def _world(tmp_path: Path, script: list = (), **kw) -> tuple[list[int], FaultyTerminal, Engine]:  # type: ignore[assignment,type-arg]
    now = [MONDAY_0800]
    term = FaultyTerminal(sim_terminal(now, balance=kw.pop("balance", 10_000.0)), script, **kw)
    return now, term, _engine(tmp_path, now, term)


def _deals(term: FaultyTerminal) -> list[mt5.TradeDeal]:
    return list(term.inner.history_deals_get(0, 2**31) or ())


# --- success and retried answers ---------------------------------------------------------------
@pytest.mark.parametrize("retcode", [mt5.TRADE_RETCODE_REQUOTE, mt5.TRADE_RETCODE_PRICE_CHANGED])
def test_order_when_broker_requotes_once_then_retries_with_a_fresh_price_and_fills_once(
    tmp_path: Path, retcode: int
) -> None:
    now, term, e = _world(tmp_path, [retcode])
    rec = e.on_bar("EURUSD", now[0])
    assert rec is not None and rec.verdict == "sent" and rec.retcode == mt5.TRADE_RETCODE_DONE
    assert len(term.sent) == 2 and len(_deals(term)) == 1 and "price" in term.sent[1]
    assert [a["retcode"] for a in rec.order_result["results"][0]["attempts"]] == [retcode, 10009]  # type: ignore[index]


def test_order_when_broker_has_no_prices_beyond_the_retry_budget_then_refuses_no_prices(
    tmp_path: Path,
) -> None:
    now, term, e = _world(tmp_path, [mt5.TRADE_RETCODE_PRICE_OFF] * 10)
    rec = e.on_bar("EURUSD", now[0])
    assert rec is not None and rec.verdict == "error" and rec.reason_code == "no_prices"
    assert len(term.sent) == 4 and _deals(term) == []  # 1 try + max_retries=3


def test_order_when_broker_rejects_once_then_retries_and_fills(tmp_path: Path) -> None:
    now, term, e = _world(tmp_path, [mt5.TRADE_RETCODE_REJECT])
    rec = e.on_bar("EURUSD", now[0])
    assert (
        rec is not None and rec.verdict == "sent" and len(term.sent) == 2 and len(_deals(term)) == 1
    )


@pytest.mark.parametrize(
    "retcode", [mt5.TRADE_RETCODE_CONNECTION, 10012]
)  # 10012: TRADE_RETCODE_TIMEOUT
def test_order_when_reply_is_lost_on_the_connection_then_it_is_found_by_client_id_and_not_resent(
    tmp_path: Path, retcode: int
) -> None:
    now, term, e = _world(tmp_path, [("lost", retcode)])
    rec = e.on_bar("EURUSD", now[0])
    assert rec is not None and rec.verdict == "sent"
    assert rec.order_result["results"][0]["status"] == "recovered"  # type: ignore[index]
    assert len(term.sent) == 1 and len(e.positions("EURUSD")) == 1


def test_order_when_connection_fails_before_execution_then_it_retries_and_fills_exactly_once(
    tmp_path: Path,
) -> None:
    now, term, e = _world(
        tmp_path, [mt5.TRADE_RETCODE_CONNECTION]
    )  # not executed: the lookup finds nothing
    rec = e.on_bar("EURUSD", now[0])
    assert (
        rec is not None
        and rec.verdict == "sent"
        and len(term.sent) == 2
        and len(e.positions("EURUSD")) == 1
    )


def test_order_when_order_send_returns_none_then_it_retries_and_fills_exactly_once(
    tmp_path: Path,
) -> None:
    now, term, e = _world(tmp_path, ["none"])
    rec = e.on_bar("EURUSD", now[0])
    assert (
        rec is not None
        and rec.verdict == "sent"
        and len(term.sent) == 2
        and len(e.positions("EURUSD")) == 1
    )


# --- answers that are final ----------------------------------------------------------------------
def test_order_when_market_closed_then_no_retry_and_refused_market_closed(tmp_path: Path) -> None:
    now, term, e = _world(tmp_path, [mt5.TRADE_RETCODE_MARKET_CLOSED])
    rec = e.on_bar("EURUSD", now[0])
    assert rec is not None and rec.verdict == "error" and rec.reason_code == "market_closed"
    assert len(term.sent) == 1 and _deals(term) == []


def test_order_when_account_has_no_money_then_no_retry_and_the_engine_goes_reducing(
    tmp_path: Path,
) -> None:
    now, term, e = _world(tmp_path, balance=20.0)  # the real simulator answers 10019 for 0.1 lot
    rec = e.on_bar("EURUSD", now[0])
    assert rec is not None and rec.verdict == "error" and rec.reason_code == "no_money"
    assert rec.retcode == mt5.TRADE_RETCODE_NO_MONEY and len(term.sent) == 1
    assert e.status()["trading_state"] == "REDUCING"


def test_close_when_the_position_is_already_gone_then_10036_counts_as_done(tmp_path: Path) -> None:
    now, term, e = _world(tmp_path)
    model = ScriptedModel(1)
    e.model = model
    assert e.on_bar("EURUSD", now[0]).verdict == "sent"  # type: ignore[union-attr]
    model.position = 0
    now[0] += 300
    term.script.append(mt5.TRADE_RETCODE_POSITION_CLOSED)
    rec = e.on_bar("EURUSD", now[0])
    assert rec is not None and rec.verdict == "sent"
    assert rec.order_result["results"][0]["status"] == "done"  # type: ignore[index]


# --- filling modes ---------------------------------------------------------------------------------
def test_filling_when_broker_refuses_an_advertised_mode_then_10030_reaches_it_once_ever(
    tmp_path: Path,
) -> None:
    now, term, e = _world(tmp_path, refuse_filling={FOK})  # symbol_info advertises FOK|IOC
    model = ScriptedModel(1)
    e.model = model
    assert e.on_bar("EURUSD", now[0]).verdict == "sent"  # type: ignore[union-attr]
    assert [r["type_filling"] for r in term.sent] == [FOK, IOC]
    for pos in (-1, 1, 0):  # three more bars with orders (flip, flip, flat)
        model.position = pos
        now[0] += 300
        assert e.on_bar("EURUSD", now[0]).verdict == "sent"  # type: ignore[union-attr]
    e.journal.close()
    e2 = _engine(
        tmp_path, now, term, model=ScriptedModel(-1)
    )  # restart: the cache is in the journal
    now[0] += 300
    assert e2.on_bar("EURUSD", now[0]).verdict == "sent"  # type: ignore[union-attr]
    fills = [r["type_filling"] for r in term.sent]
    assert fills.count(FOK) == 1 and len(fills) > 5 and set(fills[1:]) == {IOC}


def test_filling_when_symbol_advertises_only_ioc_then_fok_is_never_sent(tmp_path: Path) -> None:
    now = [MONDAY_0800]
    term = FaultyTerminal(sim_terminal(now, filling_mode=mt5.SYMBOL_FILLING_IOC))
    e = _engine(tmp_path, now, term)
    assert e.on_bar("EURUSD", now[0]).verdict == "sent"  # type: ignore[union-attr]
    assert [r["type_filling"] for r in term.sent] == [IOC]


# --- stops -----------------------------------------------------------------------------------------
def test_stops_when_broker_has_a_stops_level_then_sl_is_beyond_it(tmp_path: Path) -> None:
    now = [MONDAY_0800]
    term = FaultyTerminal(sim_terminal(now), stops_level=400)
    e = _engine(
        tmp_path, now, term, sizing=SizingConfig(fixed_lots=0.1, stop_atr_mult=0.1)
    )  # 0.1 ATR is far inside 400 points
    assert e.on_bar("EURUSD", now[0]).verdict == "sent"  # type: ignore[union-attr]
    req = term.sent[-1]
    tick = term.inner.symbol_info_tick("EURUSD")
    assert tick is not None and req["sl"] > 0 and (tick.bid - req["sl"]) / 1e-5 >= 400


def test_order_when_broker_answers_invalid_stops_then_stops_are_widened_and_retried_once(
    tmp_path: Path,
) -> None:
    now = [MONDAY_0800]
    term = FaultyTerminal(
        sim_terminal(now), [mt5.TRADE_RETCODE_INVALID_STOPS, mt5.TRADE_RETCODE_INVALID_STOPS]
    )
    e = _engine(tmp_path, now, term, sizing=SizingConfig(fixed_lots=0.1, stop_atr_mult=1.0))
    rec = e.on_bar("EURUSD", now[0])
    assert (
        rec is not None
        and rec.verdict == "error"
        and rec.retcode == mt5.TRADE_RETCODE_INVALID_STOPS
    )
    assert (
        len(term.sent) == 2 and term.sent[1]["sl"] < term.sent[0]["sl"]
    )  # a buy's stop moved further down


# --- idempotency, crash, reconciliation ----------------------------------------------------------
def test_client_order_id_when_inputs_repeat_then_it_repeats_and_fits_the_comment() -> None:
    a = client_order_id(1, 42, "EURUSD", 1000, "open:buy")
    assert a == client_order_id(1, 42, "EURUSD", 1000, "open:buy") and len(a) <= 31
    assert (
        len(
            {
                a,
                client_order_id(1, 42, "EURUSD", 1300, "open:buy"),
                client_order_id(1, 42, "EURUSD", 1000, "open:sell"),
                client_order_id(2, 42, "EURUSD", 1000, "open:buy"),
            }
        )
        == 4
    )


def test_engine_when_it_crashes_between_order_send_and_journal_write_then_restart_neither_loses_nor_duplicates(
    tmp_path: Path,
) -> None:
    now, term, e = _world(tmp_path, ["crash"])
    with pytest.raises(Crash):
        e.on_bar("EURUSD", now[0])
    pending = e.journal.intents("pending")
    assert len(pending) == 1 and not e.journal.decided("EURUSD", now[0])
    e.journal.close()

    e2 = _engine(tmp_path, now, term)  # restart on the same journal and terminal
    report = e2.reconcile()
    assert report["recovered"] == [pending[0].client_id] and report["unknown_positions"] == []
    assert e2.journal.intent(pending[0].client_id).status == "recovered"  # type: ignore[union-attr]
    rec = e2.on_bar("EURUSD", now[0])  # the same bar again: nothing new, the row shows the order
    assert rec is not None and rec.verdict == "sent" and rec.order_result is not None
    assert [o["client_id"] for o in rec.order_result["executed_before_restart"]] == [
        pending[0].client_id
    ]
    assert len(term.sent) == 1 and len(e2.positions("EURUSD")) == 1 and len(_deals(term)) == 1


def test_engine_when_it_crashes_after_the_intent_but_before_the_send_then_restart_sends_it_once(
    tmp_path: Path,
) -> None:
    now, term, e = _world(tmp_path)

    def die(request: dict) -> None:  # type: ignore[type-arg]
        raise Crash("died before the order left")

    term.order_send = die  # type: ignore[method-assign,assignment]
    with pytest.raises(Crash):
        e.on_bar("EURUSD", now[0])
    cid = e.journal.intents("pending")[0].client_id
    del term.order_send
    e.journal.close()

    e2 = _engine(tmp_path, now, term)
    assert e2.reconcile()["not_sent"] == [cid]
    rec = e2.on_bar("EURUSD", now[0])
    assert (
        rec is not None
        and rec.verdict == "sent"
        and rec.order_result["results"][0]["client_id"] == cid
    )  # type: ignore[index]
    assert len(e2.positions("EURUSD")) == 1 and e2.journal.intent(cid).status == "done"  # type: ignore[union-attr]


def test_reconcile_when_the_terminal_holds_a_position_the_journal_never_saw_then_it_is_reported(
    tmp_path: Path,
) -> None:
    now, term, e = _world(tmp_path)
    e.journal.intent_begin(Intent("tx-earlier", "EURUSD", now[0] - 300, "open:buy", {}))
    term.inner.order_send(
        {
            "action": mt5.TRADE_ACTION_DEAL,
            "symbol": "EURUSD",
            "volume": 0.2,
            "type": mt5.ORDER_TYPE_SELL,
            "magic": 42,
            "comment": "manual",
            "type_filling": FOK,
        }
    )
    report = e.reconcile()
    assert report["positions"] == 1 and len(report["unknown_positions"]) == 1
    rec = e.on_bar("EURUSD", now[0])  # the engine trades the net position: -0.2 → +0.1
    assert rec is not None and rec.verdict == "sent" and e.positions_view()[0]["volume"] == 0.1


def test_kill_with_flatten_when_positions_are_open_then_all_are_closed_and_state_halted(
    tmp_path: Path,
) -> None:
    now, _term, e = _world(tmp_path)
    e.on_bar("EURUSD", now[0])
    e.on_bar("GBPUSD", now[0])
    assert len(e.positions()) == 2
    out = e.kill(flatten=True)
    assert out["state"] == "HALTED" and [f["status"] for f in out["flattened"]] == ["done", "done"]
    assert e.positions() == ()


# --- sizing and the gate ------------------------------------------------------------------------
def test_sizing_when_risking_a_fraction_of_equity_then_lots_round_down_to_the_step() -> None:
    # 0.5 % of 10k = 50 USD over a 25-point stop at 1 USD/point/lot → 2 lots ...
    assert (
        lots_for_risk(
            10_000,
            0.005,
            0.00025,
            tick_size=1e-5,
            tick_value=1.0,
            volume_min=0.01,
            volume_step=0.01,
            volume_max=100,
        )
        == 2.0
    )
    # ... 0.3 % → 1.2; 3 USD over a 7-point stop → 0.4285… → 0.42 (never rounded up)
    assert (
        lots_for_risk(
            10_000,
            0.003,
            0.00025,
            tick_size=1e-5,
            tick_value=1.0,
            volume_min=0.01,
            volume_step=0.01,
            volume_max=100,
        )
        == 1.2
    )
    assert (
        lots_for_risk(
            1_000,
            0.003,
            0.00007,
            tick_size=1e-5,
            tick_value=1.0,
            volume_min=0.01,
            volume_step=0.01,
            volume_max=100,
        )
        == 0.42
    )
    assert round_volume(0.004, 0.01, 0.01, 100) == 0.0 and round_volume(250, 0.01, 0.01, 100) == 100
    assert round_volume(0.37, 0.1, 0.1, 5) == 0.3


def test_stop_prices_when_requested_inside_the_stops_level_then_pushed_beyond_it() -> None:
    sl, tp = stop_prices(
        True,
        bid=1.1000,
        ask=1.1002,
        sl_distance=0.0001,
        tp_distance=0.0001,
        stops_level=30,
        freeze_level=0,
        point=1e-5,
        digits=5,
    )
    assert sl == pytest.approx(1.1000 - 0.00031) and tp == pytest.approx(1.1000 + 0.00031)
    sl, _ = stop_prices(
        False,
        bid=1.1000,
        ask=1.1002,
        sl_distance=0.002,
        tp_distance=0,
        stops_level=30,
        freeze_level=0,
        point=1e-5,
        digits=5,
    )
    assert sl == pytest.approx(1.1022)


def test_engine_when_risk_sizing_is_configured_then_the_order_volume_follows_equity_and_atr(
    tmp_path: Path,
) -> None:
    now = [MONDAY_0800]
    term = FaultyTerminal(sim_terminal(now))
    e = _engine(
        tmp_path,
        now,
        term,
        sizing=SizingConfig(risk_per_trade=0.002, stop_atr_mult=2.0),
        limits=RiskLimits(max_position_lots=50, max_total_lots=50),
    )
    rec = e.on_bar("EURUSD", now[0])
    assert rec is not None and rec.verdict == "sent"
    req = term.sent[-1]
    tick = term.inner.symbol_info_tick("EURUSD")
    assert tick is not None
    risked = (tick.bid - req["sl"]) / 1e-5 * 1.0 * req["volume"]  # USD at 1 USD/point/lot
    assert 20.0 * 0.8 < risked <= 20.0 + 1e-6  # ≈ 0.2 % of 10k, rounded down to 0.01 lot


def test_engine_when_expected_edge_does_not_cover_spread_and_slippage_then_refuses(
    tmp_path: Path,
) -> None:
    now = [MONDAY_0800]
    term = FaultyTerminal(sim_terminal(now))
    weak = ScriptedModel(1, {"short": 0.32, "flat": 0.33, "long": 0.35})
    e = _engine(tmp_path, now, term, model=weak, execution=ExecutionConfig(min_edge_cost_ratio=1.0))
    rec = e.on_bar("EURUSD", now[0])
    assert (
        rec is not None
        and rec.verdict == "refused"
        and rec.reason_code == "edge_below_cost"
        and term.sent == []
    )
    strong = ScriptedModel(1, {"short": 0.0, "flat": 0.05, "long": 0.95})
    e.model = strong
    now[0] += 300
    assert e.on_bar("EURUSD", now[0]).verdict == "sent"  # type: ignore[union-attr]
