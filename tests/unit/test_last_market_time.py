"""A retraining asked for from outside a DAG run (the monitoring actions' asset event, an
operator) trains as of the last moment the market traded, not on a closed weekend."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from titanovax.airflow_tasks import data_as_of, last_market_time

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


def _lake_until(home: Path, last_close: datetime) -> None:
    """A lake whose newest M5 bar of EURUSD closes at ``last_close`` (one day partition)."""
    day = last_close - timedelta(minutes=5)
    part = home / "lake" / "symbol=EURUSD" / "timeframe=M5" / f"date={day:%Y-%m-%d}"
    part.mkdir(parents=True)
    closes = pd.date_range(end=last_close, periods=12, freq="5min", tz="UTC")
    pd.DataFrame({"close_time": closes}).to_parquet(part / "bars.parquet")


def test_data_as_of_when_sunday_reopened_but_lake_ends_friday_then_fridays_last_bar(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the CI failure of stop 21: Sunday 22:48 UTC, FX open again, the lake ends Friday 22:00;
    # a test window ending "now" held 0 rows and `fit` failed
    monkeypatch.setenv("TX_HOME", str(tmp_path))
    friday_close = datetime(2026, 12, 4, 22, 0, tzinfo=UTC)
    _lake_until(tmp_path, friday_close)
    sunday_open = datetime(2026, 12, 6, 22, 48, tzinfo=UTC)
    assert last_market_time(sunday_open, ["EURUSD"]) == sunday_open
    assert data_as_of(sunday_open, ["EURUSD"]) == friday_close


def test_data_as_of_when_the_lake_is_current_then_the_market_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TX_HOME", str(tmp_path))
    wednesday = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    _lake_until(tmp_path, wednesday + timedelta(hours=1))  # bars after `at` are not seen
    assert data_as_of(wednesday, ["EURUSD"]) == wednesday


def test_data_as_of_when_nothing_is_ingested_then_the_market_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TX_HOME", str(tmp_path))
    sunday = datetime(2026, 12, 6, 20, 40, tzinfo=UTC)
    assert data_as_of(sunday, ["EURUSD"]) == datetime(2026, 12, 4, 22, 0, tzinfo=UTC)
