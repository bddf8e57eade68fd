"""A retraining asked for from outside a DAG run (the monitoring actions' asset event, an
operator) trains as of the last moment the market traded, not on a closed weekend."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from titanovax.airflow_tasks import last_market_time

pytestmark = pytest.mark.unit


def test_last_market_time_when_asked_on_a_sunday_then_fridays_close() -> None:
    sunday = datetime(2026, 12, 6, 20, 40, tzinfo=UTC)
    # FX closes Friday 17:00 New York = 22:00 UTC in December (EST)
    assert last_market_time(sunday, ["EURUSD"]) == datetime(2026, 12, 4, 22, 0, tzinfo=UTC)


def test_last_market_time_when_the_market_is_open_then_unchanged() -> None:
    wednesday = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    assert last_market_time(wednesday, ["EURUSD", "XAUUSD"]) == wednesday


def test_last_market_time_when_one_symbol_trades_then_that_moment_counts() -> None:
    # after FX reopens on Sunday 22:00 UTC the newest moment any symbol traded is now
    sunday_late = datetime(2026, 12, 6, 23, 30, tzinfo=UTC)
    assert last_market_time(sunday_late, ["EURUSD"]) == sunday_late
