"""The stack's restart backoff policy and its start history (no processes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from titanovax.restart_backoff import BASE_S, MAX_S, WINDOW_S, delay, record

pytestmark = pytest.mark.unit


def test_delay_when_starts_are_few_or_old_then_none() -> None:
    assert delay([], 1000.0) == 0
    assert delay([990.0, 995.0], 1000.0) == 0
    assert delay([1000.0 - WINDOW_S - 1] * 5, 1000.0) == 0


def test_delay_when_a_crash_loop_goes_on_then_it_doubles_up_to_the_cap() -> None:
    assert delay([990.0, 995.0, 998.0], 1000.0) == BASE_S
    assert delay([990.0, 993.0, 995.0, 998.0], 1000.0) == 2 * BASE_S
    assert delay([999.0] * 20, 1000.0) == MAX_S


def test_record_when_called_then_history_keeps_the_window_and_the_delayed_start(
    tmp_path: Path,
) -> None:
    state = tmp_path / "restarts" / "engine.json"
    assert [record(state, t) for t in (100.0, 101.0, 102.0)] == [0, 0, 0]
    assert record(state, 103.0) == BASE_S
    assert json.loads(state.read_text()) == [100.0, 101.0, 102.0, 103.0 + BASE_S]
    state.write_text("not json")  # a damaged file is a fresh history, never a crash
    assert record(state, 500.0) == 0
