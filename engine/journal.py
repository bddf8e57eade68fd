"""The journal: every decision, taken or refused, plus write-ahead order intents and the
engine's persisted state. SQLite (WAL, synchronous=FULL) by default; PostgreSQL when the
target is a ``postgresql://`` URL (``psycopg``, imported only then).

Tables (same SQL on both back ends):

* ``decisions`` — one row per (symbol, bar close): feature time, model version, decision,
  target, verdict (``sent`` / ``hold`` / ``refused`` / ``error``), reason code and detail,
  trading state, order requests and results, last retcode, latency breakdown. Recording the
  same bar twice raises :class:`DuplicateDecision`, and :meth:`Journal.decided` lets a
  restarted engine skip bars it already handled.
* ``intents`` — write-ahead log of orders: a row (status ``pending``) is committed *before*
  ``order_send`` with the deterministic client order id, and updated with the result after.
  A crash between the two leaves a ``pending`` row that reconciliation resolves against the
  terminal's positions and deals on the next start.
* ``engine_state`` — key/value JSON (risk state, filling-mode cache) that survives restarts.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS decisions (
    symbol TEXT NOT NULL,
    bar_close BIGINT NOT NULL,
    decided_at DOUBLE PRECISION NOT NULL,
    feature_time DOUBLE PRECISION,
    model_version TEXT,
    decision TEXT NOT NULL,
    target_lots DOUBLE PRECISION,
    verdict TEXT NOT NULL,
    reason TEXT,
    order_request TEXT,
    order_result TEXT,
    retcode INTEGER,
    latency_ms TEXT NOT NULL,
    reason_code TEXT,
    trading_state TEXT,
    PRIMARY KEY (symbol, bar_close)
)""",
    """
CREATE TABLE IF NOT EXISTS intents (
    client_id TEXT PRIMARY KEY,
    symbol TEXT NOT NULL,
    bar_close BIGINT NOT NULL,
    intent TEXT NOT NULL,
    request TEXT NOT NULL,
    status TEXT NOT NULL,
    result TEXT,
    retcode INTEGER,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
)""",
    """
CREATE TABLE IF NOT EXISTS engine_state (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
)""",
)
_JSON_DECISION = ("order_request", "order_result", "latency_ms")
_JSON_INTENT = ("request", "result")


class DuplicateDecision(ValueError):
    """The (symbol, bar close) was already journaled."""


@dataclass
class DecisionRecord:
    """One decision of the engine on one closed bar, as journaled."""

    symbol: str
    bar_close: int
    decided_at: float
    feature_time: float | None
    model_version: str | None
    decision: str
    target_lots: float | None
    verdict: str  # "sent", "hold", "refused", "error"
    reason: str | None
    order_request: dict[str, Any] | None
    order_result: dict[str, Any] | None
    retcode: int | None
    latency_ms: dict[str, float]
    reason_code: str | None = None
    trading_state: str | None = None


@dataclass
class Intent:
    """A write-ahead order intent (see the module docstring)."""

    client_id: str
    symbol: str
    bar_close: int
    intent: str
    request: dict[str, Any]
    status: str = "pending"  # pending | done | failed | recovered | not_sent
    result: dict[str, Any] | None = None
    retcode: int | None = None
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)


class Journal:
    """Decisions, intents and state in SQLite or PostgreSQL (see the module docstring)."""

    def __init__(self, target: Path | str) -> None:
        self.target = str(target)
        self._lock = threading.RLock()
        self.postgres = self.target.startswith(("postgresql://", "postgres://"))
        if self.postgres:
            import psycopg  # optional dependency: only a Postgres journal needs it

            self._db: Any = psycopg.connect(self.target, autocommit=True)
            self._integrity: tuple[type[BaseException], ...] = (psycopg.errors.UniqueViolation,)
        else:
            p = Path(self.target)
            if self.target != ":memory:":
                p.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.target, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._integrity = (sqlite3.IntegrityError,)
        for ddl in _SCHEMA:
            self._exec(ddl)
        if not self.postgres:
            have = {r[1] for r in self._db.execute("PRAGMA table_info(decisions)").fetchall()}
            for col in ("reason_code", "trading_state"):  # journals of the walking skeleton
                if col not in have:
                    self._exec(f"ALTER TABLE decisions ADD COLUMN {col} TEXT")

    # --- plumbing -----------------------------------------------------------------------
    def _exec(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> Any:
        if self.postgres:
            sql = sql.replace("?", "%s")
        with self._lock:
            return self._db.execute(sql, params)

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        with self._lock:
            cur = self._exec(sql, params)
            names = [c[0] for c in cur.description]
            return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    # --- decisions ----------------------------------------------------------------------
    def record(self, rec: DecisionRecord) -> None:
        """Journal one decision; :class:`DuplicateDecision` if the bar was already journaled."""
        d = dict(vars(rec))  # shallow: the JSON columns are serialised below (asdict deep-copies)
        for k in _JSON_DECISION:
            d[k] = json.dumps(d[k]) if d[k] is not None else None
        cols = ",".join(d)
        try:
            self._exec(
                f"INSERT INTO decisions ({cols}) VALUES ({','.join('?' * len(d))})",
                list(d.values()),
            )
        except self._integrity as exc:
            raise DuplicateDecision(f"{rec.symbol} bar {rec.bar_close} already journaled") from exc

    def decided(self, symbol: str, bar_close: int) -> bool:
        """Whether the bar was already decided (restart: skip it)."""
        return bool(
            self._query(
                "SELECT 1 FROM decisions WHERE symbol=? AND bar_close=?", (symbol, int(bar_close))
            )
        )

    def rows(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Decisions, oldest first (or the newest ``limit``, oldest first)."""
        if limit is None:
            out = self._query("SELECT * FROM decisions ORDER BY bar_close, symbol")
        else:
            out = self._query(
                "SELECT * FROM decisions ORDER BY bar_close DESC, symbol DESC LIMIT ?",
                (int(limit),),
            )[::-1]
        for d in out:
            for k in _JSON_DECISION:
                d[k] = json.loads(d[k]) if d[k] else None
        return out

    def counts(self) -> dict[str, int]:
        """Decisions by verdict."""
        return {
            r["verdict"]: int(r["n"])
            for r in self._query("SELECT verdict, COUNT(*) AS n FROM decisions GROUP BY verdict")
        }

    def reason_counts(self) -> dict[str, int]:
        """Refusals and errors by reason code."""
        rows = self._query(
            "SELECT reason_code, COUNT(*) AS n FROM decisions WHERE reason_code IS NOT NULL GROUP BY reason_code"
        )
        return {r["reason_code"]: int(r["n"]) for r in rows}

    # --- intents ------------------------------------------------------------------------
    def intent_begin(self, it: Intent) -> bool:
        """Write the intent before the order is sent; ``False`` if this client id exists."""
        try:
            self._exec(
                "INSERT INTO intents (client_id, symbol, bar_close, intent, request, status, result, retcode, created_at, updated_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    it.client_id,
                    it.symbol,
                    int(it.bar_close),
                    it.intent,
                    json.dumps(it.request),
                    it.status,
                    json.dumps(it.result) if it.result is not None else None,
                    it.retcode,
                    it.created_at,
                    it.updated_at,
                ),
            )
        except self._integrity:
            return False
        return True

    def intent_end(
        self, client_id: str, status: str, result: dict[str, Any] | None, retcode: int | None
    ) -> None:
        """Record the outcome of an intent."""
        self._exec(
            "UPDATE intents SET status=?, result=?, retcode=?, updated_at=? WHERE client_id=?",
            (
                status,
                json.dumps(result) if result is not None else None,
                retcode,
                time.time(),
                client_id,
            ),
        )

    def intent(self, client_id: str) -> Intent | None:
        """The intent with this client id, if any."""
        rows = self._query("SELECT * FROM intents WHERE client_id=?", (client_id,))
        return self._intent(rows[0]) if rows else None

    def intents(self, status: str | None = None) -> list[Intent]:
        """Intents (optionally of one status), oldest first."""
        if status is None:
            rows = self._query("SELECT * FROM intents ORDER BY created_at, client_id")
        else:
            rows = self._query(
                "SELECT * FROM intents WHERE status=? ORDER BY created_at, client_id", (status,)
            )
        return [self._intent(r) for r in rows]

    @staticmethod
    def _intent(r: dict[str, Any]) -> Intent:
        for k in _JSON_INTENT:
            r[k] = json.loads(r[k]) if r[k] else None
        r["bar_close"] = int(r["bar_close"])
        return Intent(**r)

    # --- state --------------------------------------------------------------------------
    def save_state(self, key: str, value: str) -> None:
        """Upsert a piece of engine state (JSON text)."""
        self._exec(
            "INSERT INTO engine_state (key, value, updated_at) VALUES (?,?,?)"
            " ON CONFLICT (key) DO UPDATE SET value=excluded.value, updated_at=excluded.updated_at",
            (key, value, time.time()),
        )

    def load_state(self, key: str) -> str | None:
        """The saved state under ``key``, or ``None``."""
        rows = self._query("SELECT value FROM engine_state WHERE key=?", (key,))
        return str(rows[0]["value"]) if rows else None

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()


def open_journal(target: Path | str) -> Journal:
    """A journal at a SQLite path or a ``postgresql://`` URL."""
    return Journal(target)
