"""The router's ``routes`` journal table on PostgreSQL: the same rows as on SQLite."""

from __future__ import annotations

import json

import pytest

from engine.config import ExecutionConfig
from engine.journal import Journal
from engine.router import OrderRouter, open_venues, parse_venues
from tests.pg import database_name, scratch_database
from tests.unit.faults import MONDAY_0800
from tests.unit.test_router import MAGIC, VENUES, _buy

pytestmark = pytest.mark.integration


def test_routes_when_the_journal_is_postgres_then_choice_reason_and_ranking_are_kept() -> None:
    now = [MONDAY_0800]
    with scratch_database(database_name("router_routes")) as url:
        journal = Journal(url)
        journal.set_scope("1001:42:paper")
        configs = parse_venues(json.dumps(VENUES))
        r = OrderRouter(
            open_venues(configs, clock=lambda: now[0]), journal, ExecutionConfig(), magic=MAGIC
        ).bind(login=1001)
        out = _buy(r, now, MONDAY_0800)
        rows = journal.routes(out.client_id)
        journal.close()
    assert [(x["attempt"], x["venue"], x["status"]) for x in rows] == [
        (1, "c", "chosen"),
        (2, "c", "done"),
    ]
    assert rows[0]["reason"].startswith("cheapest healthy venue: cost")
    assert {x["venue"] for x in rows[0]["ranking"]} == {"a", "b", "c"}
