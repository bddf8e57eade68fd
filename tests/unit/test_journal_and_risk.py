"""Journal and minimal risk layer."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import RiskLimits
from engine.journal import DecisionRecord, Journal
from engine.risk import Reason, check_order

pytestmark = pytest.mark.unit


def _rec(bar_close: int, verdict: str = "sent") -> DecisionRecord:
    return DecisionRecord("EURUSD", bar_close, 1.0, float(bar_close), "3", "long", 0.1, verdict, None, {"orders": []}, {"results": []}, 10009, {"total_ms": 1.2})


def test_journal_when_reopened_after_a_restart_then_entries_survive_and_bars_are_known(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.sqlite")
    j.record(_rec(100))
    j.record(_rec(400, "refused"))
    j.close()
    j2 = Journal(tmp_path / "j.sqlite")
    assert j2.decided("EURUSD", 100) and j2.decided("EURUSD", 400) and not j2.decided("EURUSD", 700)
    assert j2.counts() == {"sent": 1, "refused": 1}
    assert j2.rows()[0]["latency_ms"] == {"total_ms": 1.2}


def test_journal_when_the_same_bar_is_recorded_twice_then_it_is_refused(tmp_path: Path) -> None:
    import sqlite3

    j = Journal(tmp_path / "j.sqlite")
    j.record(_rec(100))
    with pytest.raises(sqlite3.IntegrityError):
        j.record(_rec(100))


def test_check_order_when_kill_switch_engaged_then_refuses() -> None:
    v = check_order(RiskLimits(kill_switch=True), current_lots=0, target_lots=0.1)
    assert not v.allowed and v.reason is Reason.KILL_SWITCH


def test_check_order_when_target_exceeds_max_position_then_refuses() -> None:
    v = check_order(RiskLimits(max_position_lots=0.5), current_lots=0, target_lots=-0.6)
    assert not v.allowed and v.reason is Reason.MAX_POSITION


def test_check_order_within_limits_then_allows() -> None:
    assert check_order(RiskLimits(max_position_lots=0.5), current_lots=0.2, target_lots=-0.5).allowed


def test_risk_limits_are_frozen() -> None:
    import dataclasses

    with pytest.raises(dataclasses.FrozenInstanceError):
        RiskLimits().kill_switch = True  # type: ignore[misc]


def test_settings_when_symbols_are_comma_separated_in_env_then_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.config import EngineSettings
    from infra.settings import PlatformSettings

    monkeypatch.setenv("TX_SYMBOLS", "eurusd, XAUUSD")
    assert PlatformSettings().symbols == ["EURUSD", "XAUUSD"]
    assert EngineSettings().symbols == ["EURUSD", "XAUUSD"]
