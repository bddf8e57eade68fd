"""The explanation columns on a PostgreSQL journal: an engine's decisions carry
probabilities, explanation, feature vector (and a sequence) and later contributions; a
``decisions`` table of the older layout gets the columns on open. A database of its own
(tx_xui_journal_<pid> on 127.0.0.1:5432), created and dropped by the test."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from engine.config import RiskLimits
from engine.journal import Journal, decode_sequence
from engine.loop import Engine
from tests.unit.faults import MONDAY_0800, ClockFeatures, ScriptedModel, closes, sim_terminal

pytestmark = pytest.mark.integration


class _SeqFeatures(ClockFeatures):
    def read(self, symbol: str):  # type: ignore[no-untyped-def]
        row = super().read(symbol)
        seq = np.arange(6, dtype=np.float32).reshape(3, 2) + self.now[0] % 7
        return dataclasses.replace(row, sequence=seq)


def test_postgres_journal_when_the_engine_decides_then_rows_carry_the_explanation_and_later_contributions(
    pg_url: str,
) -> None:
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as db:  # the older layout, one old row
        db.execute(
            "CREATE TABLE decisions (scope TEXT NOT NULL, symbol TEXT NOT NULL, bar_close BIGINT"
            " NOT NULL, decided_at DOUBLE PRECISION NOT NULL, feature_time DOUBLE PRECISION,"
            " model_version TEXT, decision TEXT NOT NULL, target_lots DOUBLE PRECISION, verdict"
            " TEXT NOT NULL, reason TEXT, order_request TEXT, order_result TEXT, retcode INTEGER,"
            " latency_ms TEXT NOT NULL, reason_code TEXT, trading_state TEXT,"
            " PRIMARY KEY (scope, symbol, bar_close))"
        )
        db.execute(
            "INSERT INTO decisions (scope, symbol, bar_close, decided_at, decision, verdict,"
            " latency_ms) VALUES ('0:1:x', 'EURUSD', 1, 1.0, 'flat', 'hold', '{}')"
        )
    now = [MONDAY_0800]
    engine = Engine(
        terminal=sim_terminal(now),
        features=_SeqFeatures(now),
        model=ScriptedModel(1),
        journal=Journal(pg_url),
        limits=RiskLimits(),
        magic=61,
        clock=lambda: float(now[0]),
        sleep=lambda s: None,
    )
    engine.replay(closes(n=3), ["EURUSD"], lambda t: now.__setitem__(0, t))
    pending = engine.journal.lacking_contributions()
    assert [r["bar_close"] for r in pending] == closes(n=3)
    assert pending[0]["sequence"] == (np.arange(6).reshape(3, 2) + closes(n=1)[0] % 7).tolist()
    for r in pending:
        engine.journal.set_contributions(r["symbol"], r["bar_close"], {"contributions": {"f0": 1}})
    assert engine.journal.lacking_contributions() == []
    rows = engine.journal.rows()
    assert all(
        r["probabilities"]["long"] == 0.8 and r["features"] == {"f0": 0.0, "f1": 1.0} for r in rows
    )
    assert all(r["contributions"] == {"contributions": {"f0": 1}} for r in rows)
    assert decode_sequence(rows[0]["feature_sequence"])[0] == pytest.approx(
        [MONDAY_0800 % 7, 1 + MONDAY_0800 % 7]
    )
    engine.journal.set_scope("0:1:x")
    (old,) = engine.journal.rows()
    assert old["explanation"] is None and old["features"] is None
