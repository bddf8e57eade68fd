"""Live versus expected on a PostgreSQL engine journal (same rows, same verdicts as SQLite), in
a database of its own that the test creates and drops."""

from __future__ import annotations

import os
from collections.abc import Iterator

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

ADMIN = os.environ.get("TX_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
DB = f"tx_test_monitor_perf_{os.getpid()}"


@pytest.fixture()
def pg_url() -> Iterator[str]:
    psycopg = pytest.importorskip("psycopg")
    try:
        admin = psycopg.connect(ADMIN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL at {ADMIN}: {exc}")
    admin.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    admin.execute(f"CREATE DATABASE {DB}")
    try:
        yield ADMIN.rsplit("/", 1)[0] + f"/{DB}"
    finally:
        admin.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        admin.close()


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
