"""The engine under real faults, process by process (marker ``faults``; also ``slow``).

The broker is ``tx mt5 serve-sim`` in its own process, so its positions and deals survive the
engine; the engine is a real process (``python -m titanovax.faults engine``) over the bridge,
a private redis-server and a SQLite or PostgreSQL journal; serving is the real BentoML service.
See :mod:`titanovax.faults` for the harness and ``bench/faults.py`` for the figures.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from titanovax.faults import FAULTS, outage_scenario, sigkill_trials

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.slow]

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def _postgres_or_skip() -> None:
    psycopg = pytest.importorskip("psycopg")
    try:
        psycopg.connect(PG_ADMIN, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL at {PG_ADMIN}: {exc}")


@pytest.mark.parametrize(("backend", "trials"), [("sqlite", 30), ("postgres", 20)])
def test_sigkill_when_the_engine_dies_at_any_point_then_no_duplicate_no_lost_row_no_false_intent(
    tmp_path: Path, backend: str, trials: int
) -> None:
    if backend == "postgres":
        _postgres_or_skip()
    results = sigkill_trials(trials, backend=backend, workdir=tmp_path, seed=11)
    assert len(results) == trials
    assert sum(r.killed for r in results) >= trials * 0.7  # most first runs really died
    assert {r.how.split(":")[0] for r in results} >= {"intent_begin", "order_send", "random"}
    bad = [(r.trial, r.how, r.check.detail) for r in results if not r.check.ok]
    assert bad == []
    assert sum(r.check.orders for r in results) >= trials * 4  # the trials did trade
    assert all(r.check.rows == 6 for r in results)


@pytest.mark.parametrize("fault", FAULTS)
def test_outage_when_a_dependency_hangs_dies_or_fills_up_then_fail_closed_and_kill_within_1s(
    tmp_path: Path, fault: str
) -> None:
    r = outage_scenario(fault, tmp_path)
    assert r.outage_rows >= 3  # a row per bar, with the fault's reason code
    assert r.detail["sends_in_outage"] == 0  # fail closed
    if fault == "disk_full":
        assert r.metric >= 1  # tx_engine_journal_errors_total (tx_engine_journal_up was 0)
    else:
        assert r.metric >= 3  # tx_engine_refusals_total{reason=...}
    assert r.recovery_s is not None  # it trades again once the dependency is back
    assert r.kill_answer["killed"] and r.kill_latency_s <= 1.0
    # no order_send after the ack; only an order already in flight at the ack may still land
    in_flight = int(bool(r.kill_answer["order_in_flight"]))
    assert r.sends_after_kill == 0 and r.orders_on_broker_after_kill <= in_flight
    assert r.rows_missing == 0
