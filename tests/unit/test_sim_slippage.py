"""The simulated terminal's slippage process (engine.mt5.slippage): the statistics of the
fills it produces follow its configuration — larger orders, higher volatility and thin
sessions slip more, by the configured amounts — and a draw beyond the request's deviation is a
10004 REQUOTE, as MT5 answers under instant execution. Everything goes through
``SimulatedTerminal.order_send``, the door the engine uses (except the volatility sweep, which
needs a market state the synthetic feed does not let us choose)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine.mt5 import protocol as P
from engine.mt5.settings import SimSlippageSettings
from engine.mt5.sim import SimulatedTerminal, SyntheticFeed
from engine.mt5.slippage import SlippageProcess, parse_sessions
from engine.mt5.synthetic import ORIGIN_UTC
from engine.sizing import return_volatility

pytestmark = pytest.mark.unit

DAY = 86_400
WEDNESDAY = ORIGIN_UTC + 23 * DAY  # 2024-01-24 00:00 UTC


def _terminal(proc: SlippageProcess, at: list[int]) -> SimulatedTerminal:
    t = SimulatedTerminal(
        SyntheticFeed(seed=7, symbols=["EURUSD"]),
        clock=lambda: at[0],
        balance=1e12,
        leverage=1000,
        slippage=proc,
    )
    assert t.initialize()
    return t


def _slips(t: SimulatedTerminal, volume: float, n: int, deviation: int = 10_000) -> list[float]:
    """Adverse slippage (points) of ``n`` market orders of ``volume``: buys that open, sells
    that close them (at most one position open)."""
    point = t.symbol_info("EURUSD").point
    out: list[float] = []
    ticket = 0
    for i in range(n):
        tick = t.symbol_info_tick("EURUSD")
        buy = i % 2 == 0
        r = t.order_send(
            {
                "action": P.TRADE_ACTION_DEAL,
                "symbol": "EURUSD",
                "volume": volume,
                "type": P.ORDER_TYPE_BUY if buy else P.ORDER_TYPE_SELL,
                "price": tick.ask if buy else tick.bid,
                "deviation": deviation,
                "type_filling": P.ORDER_FILLING_FOK,
                **({} if buy else {"position": ticket}),
            }
        )
        assert r.retcode == P.TRADE_RETCODE_DONE, r
        ticket = r.order
        asked = tick.ask if buy else tick.bid
        out.append(round(((r.price - asked) if buy else (asked - r.price)) / point, 6))
    return out


def _state(t: SimulatedTerminal, window: int = 24) -> tuple[float, float]:
    """(spread points, volatility points) the terminal sees now."""
    info, tick = t.symbol_info("EURUSD"), t.symbol_info_tick("EURUSD")
    rates = t.copy_rates_from_pos("EURUSD", P.TIMEFRAME_M5, 1, window + 1)
    vol = return_volatility(rates["close"], window)
    return (tick.ask - tick.bid) / info.point, vol * tick.bid / info.point


def test_slippage_when_size_grows_then_mean_and_quantiles_grow_as_sqrt_impact() -> None:
    # Arrange: a noon fill (multiplier 1), impact 4 points at the 5-lot depth
    at = [WEDNESDAY + 12 * 3600]
    proc = SlippageProcess(impact_points=4.0, depth_lots=5.0, seed=11)
    t = _terminal(proc, at)
    spread, vol = _state(t)
    # Act
    by_size = {v: np.array(_slips(t, v, 1500)) for v in (0.1, 1.0, 5.0, 20.0)}
    # Assert: every fill adverse; the mean within 5 % of the configured mean; q50/q90 rise
    means = []
    for v, s in by_size.items():
        want = proc.mean_points(spread_points=spread, vol_points=vol, volume=v, hour_utc=12)
        assert (s >= 0).all()
        assert s.mean() == pytest.approx(want, rel=0.05), (v, s.mean(), want)
        means.append(s.mean())
    assert means == sorted(means) and means[-1] > 2 * means[0]
    q = {v: np.quantile(s, [0.5, 0.9]) for v, s in by_size.items()}
    assert q[20.0][0] > q[0.1][0] and q[20.0][1] > q[1.0][1] > q[0.1][1]
    # the size-driven part is square-root: 20 lots add 2x the impact of 5 lots
    base = proc.mean_points(spread_points=spread, vol_points=vol, volume=0.0, hour_utc=12)
    assert (means[3] - base) / (means[2] - base) == pytest.approx(2.0, rel=0.12)


def test_slippage_when_session_is_thin_then_it_is_larger_by_the_configured_multipliers() -> None:
    # Arrange: only the impact term (spread_k = vol_k = 0), so the hour is the only state
    proc = SlippageProcess(
        spread_k=0.0, vol_k=0.0, impact_points=6.0, sessions="21-22:2.5,23-6:1.5", seed=5
    )
    at = [0]
    t = _terminal(proc, at)
    means = {}
    for hour in (12, 3, 21):  # London/NY, Asian, rollover
        at[0] = WEDNESDAY + hour * 3600
        means[hour] = float(np.mean(_slips(t, 5.0, 2000)))
    # Assert: 1x, 1.5x, 2.5x of the same 6-point impact
    assert means[12] == pytest.approx(6.0, rel=0.05)
    assert means[3] / means[12] == pytest.approx(1.5, rel=0.07)
    assert means[21] / means[12] == pytest.approx(2.5, rel=0.07)


def test_slippage_when_volatility_rises_then_the_draws_rise_by_vol_k() -> None:
    proc = SlippageProcess(spread_k=0.0, vol_k=0.05, impact_points=0.0, seed=3)
    calm = [proc.draw(spread_points=0, vol_points=40, volume=1, hour_utc=12) for _ in range(4000)]
    wild = [proc.draw(spread_points=0, vol_points=400, volume=1, hour_utc=12) for _ in range(4000)]
    assert np.mean(calm) == pytest.approx(2.0, rel=0.06)
    assert np.mean(wild) == pytest.approx(20.0, rel=0.05)
    assert np.quantile(wild, 0.9) > 5 * np.quantile(calm, 0.9)


def test_slippage_when_seeded_then_two_runs_give_the_same_fills() -> None:
    def run() -> list[float]:
        return _slips(_terminal(SlippageProcess(seed=9), [WEDNESDAY + 12 * 3600]), 1.0, 50)

    assert run() == run()


def test_order_send_when_slippage_exceeds_the_deviation_then_requote_and_nothing_fills() -> None:
    # Arrange: a large mean (base 30 points) against deviations of 0 and 1000 points
    t = _terminal(SlippageProcess(base_points=30.0, noise_sigma=0.0), [WEDNESDAY + 12 * 3600])
    tick = t.symbol_info_tick("EURUSD")
    req = {
        "action": P.TRADE_ACTION_DEAL,
        "symbol": "EURUSD",
        "volume": 1.0,
        "type": P.ORDER_TYPE_BUY,
        "price": tick.ask,
        "deviation": 10,
        "type_filling": P.ORDER_FILLING_FOK,
    }
    # Act
    r = t.order_send(req)
    # Assert: REQUOTE, no deal, no position, the current prices in the answer
    assert r.retcode == P.TRADE_RETCODE_REQUOTE and r.deal == 0 and r.volume == 0.0
    assert (r.bid, r.ask) == (tick.bid, tick.ask) and "deviation 10" in r.comment
    assert t.positions_total() == 0
    # order_check never draws: it validates as before
    assert t.order_check(req).retcode == 0
    ok = t.order_send({**req, "deviation": 1000})
    assert ok.retcode == P.TRADE_RETCODE_DONE and ok.price > tick.ask
    # market execution (requote off): the deviation is ignored and the order slips
    m = _terminal(
        SlippageProcess(base_points=30.0, noise_sigma=0.0, requote=False), [WEDNESDAY + 12 * 3600]
    )
    assert m.order_send(req).retcode == P.TRADE_RETCODE_DONE


def test_settings_when_env_configures_the_process_then_sim_terminals_use_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert SimSlippageSettings().process() is None  # default: off, today's fills
    monkeypatch.setenv("TX_SIM_SLIPPAGE_ENABLED", "true")
    monkeypatch.setenv("TX_SIM_SLIPPAGE_DEPTH_LOTS", "2.5")
    monkeypatch.setenv("TX_SIM_SLIPPAGE_SESSIONS", "22-1:3")
    proc = SimSlippageSettings().process()
    assert proc is not None and proc.depth_lots == 2.5
    assert [proc.session_mult(h) for h in (21, 22, 23, 0, 1, 2)] == [1, 3, 3, 3, 3, 1]
    from engine.mt5.gateway import open_terminal

    term = open_terminal("sim", sim_feed=SyntheticFeed(seed=7, symbols=["EURUSD"]))
    assert isinstance(term, SimulatedTerminal) and term.slippage is not None
    monkeypatch.setenv("TX_SIM_SLIPPAGE_DEPTH_LOTS", "0")
    with pytest.raises(ValueError, match="depth_lots"):
        SimSlippageSettings()
    monkeypatch.setenv("TX_SIM_SLIPPAGE_DEPTH_LOTS", "1")
    monkeypatch.setenv("TX_SIM_SLIPPAGE_SESSIONS", "3-4")
    with pytest.raises(ValueError, match="sessions"):
        SimSlippageSettings()


@pytest.mark.parametrize("bad", ["25:2", "3-4", "1:0", "x:1"])
def test_parse_sessions_when_malformed_then_error_names_the_part(bad: str) -> None:
    with pytest.raises(ValueError, match="sessions"):
        parse_sessions(bad)
    assert math.isclose(parse_sessions("23-1:2")[0], 2.0)


def test_measure_cli_when_run_then_prints_the_table_with_mean_rising_in_size() -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "engine.mt5.slippage", "--seed", "1", "--n", "300"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.splitlines()
    rows = [[float(x) for x in line.strip("|").split("|")] for line in out[2:]]
    assert len(rows) == 12  # 3 sessions x 4 sizes
    for hour in (12, 3, 21):
        means = [r[5] for r in rows if r[0] == hour]
        assert means == sorted(means), (hour, means)
        for r in rows:  # the measured mean is the configured expectation
            assert r[5] == pytest.approx(r[4], rel=0.1)


def test_env_example_documents_every_sim_slippage_setting() -> None:
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / ".env.example").read_text()
    documented = set(re.findall(r"^#?\s*(TX_[A-Z0-9_]+)=", text, re.M))
    names = {f"TX_SIM_SLIPPAGE_{n}".upper() for n in SimSlippageSettings.model_fields}
    assert names <= documented, sorted(names - documented)
    for name, field in SimSlippageSettings.model_fields.items():
        assert field.description, name
