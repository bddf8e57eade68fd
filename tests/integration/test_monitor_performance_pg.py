"""Live versus expected on a PostgreSQL engine journal (same rows, same verdicts as SQLite), in
a database of its own that the test creates and drops."""

from __future__ import annotations

import pytest

from tests.unit.test_monitor_performance import (
    BREACH_CODE,
    SCOPE,
    edge_positions,
    journal_live,
    run,
    world,  # noqa: F401  (the fixture)
)

pytestmark = pytest.mark.integration


def test_live_vs_expected_on_a_postgres_journal_when_the_edge_is_gone_then_breach_and_other_scopes_unread(
    world: dict[str, object],  # noqa: F811
    pg_url: str,
) -> None:
    import pandas as pd

    live: pd.DataFrame = world["live"]  # type: ignore[assignment]
    journal_live(pg_url, live, edge_positions(live["ret_next"].to_numpy(), 0.40, seed=2))

    [r] = run(world, pg_url)  # type: ignore[misc, arg-type]
    [other] = run(world, pg_url, version="9")  # type: ignore[misc, arg-type]

    assert r.status == "breach" and r.evidence["code"] == BREACH_CODE, r.detail
    assert r.evidence["scope"] == SCOPE and r.metrics["live_bars"] == len(live)
    assert other.status == "skipped"
