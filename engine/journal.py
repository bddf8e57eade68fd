"""The journal: every decision, taken or refused, plus write-ahead order intents and the
engine's persisted state. SQLite (WAL; durable as told under *Group commit*) by default;
PostgreSQL when the target is a ``postgresql://`` URL (``psycopg``, imported only then).

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
* ``fills`` — one row per filled order (:class:`Fill`): requested and filled price, signed
  slippage (adverse positive) in price and points, spread at send, recent volatility, size,
  side, hour (UTC) and venue; written inside the bar's transaction right after the
  ``order_send`` that filled (see ``docs/execution-slippage.md``).
* ``routes`` — one row per venue attempt of an order when several venues are configured
  (:mod:`engine.router`): client id, venue, attempt number, status (``chosen``, ``done``,
  ``recovered``, ``failed``, ``link_error``, ``in_doubt``, ``not_sent``, ``skipped``), the
  reason in words and the expected cost in points with the ranking of every venue (JSON).
* ``audit`` — one row per operator or automatic action on the trading state (kill, flatten,
  resume, reload, reduce, reconciliation reduce/resolve): when (UTC ISO), who (``actor``),
  what (``action``), why (``reason``) and what changed (``detail`` JSON: state before/after,
  positions flattened, mismatches). Appended only; :meth:`Journal.audit_rows` reads it back.

JSON columns (requests, results, latencies, probabilities, explanation, features, intents'
requests and results) are written by :func:`dumps`: compact text from msgspec that
``json.loads`` reads back as the very value ``json.dumps`` gave (it falls back to the standard
library for NaN, infinities and whatever msgspec would write differently).

**Scope.** Every row of every table carries a ``scope``: ``<account login>:<magic>:<mode>``
(set by the engine once it knows its account, :meth:`Journal.set_scope`). Two engines, or a
backtest and a paper engine, that share one database never see each other's decisions,
intents or state. A journal of an older layout (no ``scope`` column) is kept aside under
``<table>_unscoped`` and the scoped tables are created next to it.

**Group commit.** The engine writes a bar inside one transaction (:meth:`Journal.begin`);
writes outside one commit on their own, as before. A bar that sends orders has two commit
points: :meth:`Journal.checkpoint` right before ``order_send`` commits the intents and the
state written so far *synchronously* (the write-ahead rule: the intent is durable before the
order leaves), and :meth:`Journal.commit` after the bar commits the results, the decision row
and the state without waiting for the disk (PostgreSQL ``SET LOCAL synchronous_commit = off``;
SQLite simply does not flush): lost only by a power failure before the next synchronous
commit, and then the pending intents are resolved from the broker by reconciliation and the
bar is decided again. A bar that sends a second order (a flip: close, then open) checkpoints
again before it, synchronously. A bar without orders commits once, synchronously; so does a
write outside a transaction. A durable SQLite journal runs WAL with ``synchronous=NORMAL`` and
makes a synchronous commit point durable itself, ``fdatasync`` of the WAL file right after the
COMMIT (what ``synchronous=FULL`` does inside every COMMIT; see :meth:`Journal._sync` for why
by hand); when that flush fails the commit point raises :class:`JournalUnavailable` and the
order is not sent. ``sync_commits`` / ``relaxed_commits`` count the two kinds. State written
inside a transaction (:meth:`Journal.save_state`, which also takes a callable) is kept in
memory and upserted once per commit point, with its value at that moment, and only when that
value differs from the one this connection committed last (``updated_at`` is when it last
changed; after a database error or a rollback the next save writes it again).
:meth:`Journal.decided` answers from a set of decided bars loaded once per scope (the primary
key still refuses a duplicate). ``durable=False`` (backtests by default, unless
``TX_ENGINE_BACKTEST_JOURNAL_DURABLE=true``) never waits for the disk.

**Failures.** A database error other than a duplicate key (disk full, I/O error, connection
lost, a PostgreSQL statement over its ``statement_timeout``) raises
:class:`JournalUnavailable`: the engine stops trading until the journal writes again.
"""

from __future__ import annotations

import functools
import json
import logging
import operator
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import msgspec

log = logging.getLogger(__name__)
_fdatasync = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync
_msgspec_encode = msgspec.json.Encoder(enc_hook=float).encode
_msgspec_decode = msgspec.json.Decoder().decode


def dumps(value: Any) -> str:
    """A JSON column's text, written by msgspec (several times faster than the standard
    library: this runs for every JSON column of every bar) when its text reads back as a value
    equal to ``value``; otherwise ``json.dumps(value, default=float)``, as before. The text is
    compact and may spell a float differently (``1e-05`` as ``0.00001``), but ``json.loads``
    gives the same value either way. What falls back: NaN and infinities (msgspec writes
    ``null``, the standard library ``NaN``/``Infinity``), tuples, keys that are not strings,
    text that is not ASCII (the standard library escapes it), and the types msgspec encodes but
    the standard library refuses (datetime, set, bytes, dataclasses: still a ``TypeError``)."""
    try:
        out = _msgspec_encode(value)
        if out.isascii() and _msgspec_decode(out) == value:
            return out.decode()
    except (TypeError, ValueError, OverflowError, RecursionError, msgspec.MsgspecError):
        pass
    return json.dumps(value, default=float)


@functools.lru_cache(maxsize=256)
def _pg_sql(sql: str) -> str:
    """The statement with psycopg's placeholders."""
    return sql.replace("?", "%s")


_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS decisions (
    scope TEXT NOT NULL,
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
    probabilities TEXT,
    explanation TEXT,
    features TEXT,
    contributions TEXT,
    feature_sequence TEXT,
    PRIMARY KEY (scope, symbol, bar_close)
)""",
    """
CREATE TABLE IF NOT EXISTS intents (
    scope TEXT NOT NULL,
    client_id TEXT NOT NULL,
    symbol TEXT NOT NULL,
    bar_close BIGINT NOT NULL,
    intent TEXT NOT NULL,
    request TEXT NOT NULL,
    status TEXT NOT NULL,
    result TEXT,
    retcode INTEGER,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (scope, client_id)
)""",
    # a bar's intents (bar_intents) without scanning every intent of the scope
    "CREATE INDEX IF NOT EXISTS intents_bar ON intents (scope, symbol, bar_close)",
    """
CREATE TABLE IF NOT EXISTS engine_state (
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (scope, key)
)""",
)
# one row per filled order (engine.execution): the raw material of a learned slippage model
_FILLS = """
CREATE TABLE IF NOT EXISTS fills (
    scope TEXT NOT NULL,
    client_id TEXT NOT NULL,
    symbol TEXT NOT NULL,
    bar_close BIGINT NOT NULL,
    intent TEXT NOT NULL,
    venue TEXT NOT NULL,
    side TEXT NOT NULL,
    volume DOUBLE PRECISION NOT NULL,
    filled_at DOUBLE PRECISION NOT NULL,
    hour_utc INTEGER NOT NULL,
    requested_price DOUBLE PRECISION,
    filled_price DOUBLE PRECISION,
    slippage_price DOUBLE PRECISION,
    slippage_points DOUBLE PRECISION,
    spread_price DOUBLE PRECISION,
    spread_points DOUBLE PRECISION,
    volatility DOUBLE PRECISION,
    volatility_points DOUBLE PRECISION,
    retcode INTEGER,
    deal BIGINT,
    order_ticket BIGINT,
    attempts INTEGER NOT NULL,
    PRIMARY KEY (scope, client_id)
)"""
# one row per venue attempt of an order (engine.router): the routing choice and its reason
_ROUTES = """
CREATE TABLE IF NOT EXISTS routes (
    scope TEXT NOT NULL,
    client_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    symbol TEXT NOT NULL,
    intent TEXT NOT NULL,
    venue TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT NOT NULL,
    cost_points DOUBLE PRECISION,
    ranking TEXT,
    at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (scope, client_id, attempt)
)"""
# the audit table's key differs per back end (an autoincrementing id); created next to _SCHEMA
_AUDIT_SQLITE = """
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    scope TEXT NOT NULL,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    reason TEXT,
    detail TEXT NOT NULL
)"""
_AUDIT_POSTGRES = _AUDIT_SQLITE.replace(
    "INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY"
)
_AUDIT_INDEX = "CREATE INDEX IF NOT EXISTS audit_scope ON audit (scope, id)"
_TABLES = ("decisions", "intents", "engine_state")
FINAL_INTENT = frozenset({"done", "failed", "recovered"})
"""Intent statuses that need no reconciliation (``pending`` and ``not_sent`` do)."""
_JSON_DECISION = (
    "order_request",
    "order_result",
    "latency_ms",
    "probabilities",
    "explanation",
    "features",
    "contributions",
)
_EXPLAIN_COLUMNS = (
    "probabilities",
    "explanation",
    "features",
    "contributions",
    "feature_sequence",
)
"""Nullable JSON columns added to ``decisions`` by the explanations (journals of an older layout
get them through ``ALTER TABLE ... ADD COLUMN``; their old rows keep NULL)."""
_JSON_INTENT = ("request", "result")


def encode_sequence(seq: Any) -> str:
    """A float32 ``[L, C]`` array as compact JSON text (shape + base64 of its bytes)."""
    import base64

    import numpy as np

    a = np.ascontiguousarray(seq, dtype="<f4")
    return json.dumps({"shape": list(a.shape), "f4": base64.b64encode(a.tobytes()).decode()})


def decode_sequence(text: str) -> list[Any]:
    """:func:`encode_sequence`'s array back, as nested lists (a request body)."""
    import base64

    import numpy as np

    d = json.loads(text)
    a = np.frombuffer(base64.b64decode(d["f4"]), dtype="<f4").reshape(d["shape"])
    return a.tolist()  # type: ignore[no-any-return]


@dataclass
class Fill:
    """One filled order as journaled in ``fills``. Slippage is signed, adverse positive: a
    buy filled above, or a sell filled below, the requested price. Volatility is the standard
    deviation of the last 24 one-bar returns of the engine's timeframe
    (:func:`engine.sizing.return_volatility`, the cost formula's measure), in return units and
    as points of the requested price."""

    client_id: str
    symbol: str
    bar_close: int
    intent: str
    venue: str
    side: str  # buy | sell
    volume: float
    filled_at: float  # epoch seconds, UTC
    hour_utc: int
    requested_price: float | None
    filled_price: float | None
    slippage_price: float | None
    slippage_points: float | None
    spread_price: float | None
    spread_points: float | None
    volatility: float | None
    volatility_points: float | None
    retcode: int | None
    deal: int | None
    order_ticket: int | None
    attempts: int = 1


class DuplicateDecision(ValueError):
    """The (symbol, bar close) was already journaled."""


class JournalUnavailable(RuntimeError):
    """The journal cannot be read or written (disk full, I/O error, connection lost)."""


def journal_scope(login: int, magic: int, mode: str) -> str:
    """The scope of one engine's rows: ``<account login>:<magic>:<mode>``."""
    return f"{int(login)}:{int(magic)}:{mode}"


def redact_dsn(target: str) -> str:
    """``postgresql://user:secret@host/db`` → ``postgresql://user:***@host/db`` (also a
    ``password=`` keyword); a path is returned as it is."""
    import re

    out = re.sub(r"(://[^:/@\s]+):[^@\s]*@", r"\1:***@", target)
    return re.sub(r"(password=)[^&\s]+", r"\1***", out, flags=re.I)


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
    verdict: str  # "sent", "hold", "abstain" (decision policy), "refused", "error"
    reason: str | None
    order_request: dict[str, Any] | None
    order_result: dict[str, Any] | None
    retcode: int | None
    latency_ms: dict[str, float]
    reason_code: str | None = None
    trading_state: str | None = None
    probabilities: dict[str, float] | None = None  # the model's class probabilities
    explanation: dict[str, Any] | None = None  # serving's: regime state, members' votes/weights
    features: dict[str, float] | None = None  # the tabular feature vector the model scored
    contributions: dict[str, Any] | None = None  # TreeSHAP, filled later (off the hot path)
    # a sequence bundle's bar sequence (float32 [L, C]), stored as base64 so serving can be
    # asked to explain the very row it scored
    feature_sequence: Any = None


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


_DECISION_FIELDS = tuple(f.name for f in fields(DecisionRecord))
_decision_values = operator.attrgetter(*_DECISION_FIELDS)
_DECISION_JSON_AT = tuple(_DECISION_FIELDS.index(k) for k in _JSON_DECISION)
_DECISION_SEQUENCE_AT = _DECISION_FIELDS.index("feature_sequence")
_INSERT_DECISION = (
    f"INSERT INTO decisions (scope,{','.join(_DECISION_FIELDS)})"
    f" VALUES ({','.join('?' * (1 + len(_DECISION_FIELDS)))})"
    # ON CONFLICT DO NOTHING, not an integrity error: in PostgreSQL an error would abort the
    # whole group transaction
    " ON CONFLICT (scope, symbol, bar_close) DO NOTHING"
)
_FILL_FIELDS = tuple(f.name for f in fields(Fill))
_fill_values = operator.attrgetter(*_FILL_FIELDS)
_INSERT_FILL = (
    f"INSERT INTO fills (scope,{','.join(_FILL_FIELDS)})"
    f" VALUES ({','.join('?' * (1 + len(_FILL_FIELDS)))})"
    " ON CONFLICT (scope, client_id) DO NOTHING"
)
_INSERT_INTENT = (
    "INSERT INTO intents (scope, client_id, symbol, bar_close, intent, request, status,"
    " result, retcode, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
    " ON CONFLICT (scope, client_id) DO NOTHING"
)
_UPSERT_STATE = (
    "INSERT INTO engine_state (scope, key, value, updated_at) VALUES (?,?,?,?)"
    " ON CONFLICT (scope, key) DO UPDATE SET value=excluded.value,"
    " updated_at=excluded.updated_at"
)
_NOT_WRITES = ("SELECT", "BEGIN", "COMMIT", "SET LOCAL")


class Journal:
    """Decisions, intents and state in SQLite or PostgreSQL (see the module docstring)."""

    def __init__(self, target: Path | str, scope: str = "", *, durable: bool = True) -> None:
        self.target = str(target)
        self.scope = scope
        self.durable = durable
        self._lock = threading.RLock()
        self._tx = False  # a group transaction is open (begin())
        self._tx_relaxed = False  # its commit need not wait for the disk (after checkpoint())
        self._tx_intents = False  # an intent written in the open transaction (not yet durable)
        self._tx_dirty = False  # it holds a write
        self._tx_decided: list[tuple[str, int]] = []
        self._pending_state: dict[str, str | Callable[[], str]] = {}
        # engine_state values as this connection last committed them, (scope, key) -> value:
        # an unchanged value is not written again; _tx_state holds the open transaction's
        self._saved_state: dict[tuple[str, str], str] = {}
        self._tx_state: dict[tuple[str, str], str] = {}
        self._decided: set[tuple[str, int]] | None = None
        self._intent_bars: set[tuple[str, int]] | None = None
        self._decided_scope = scope
        self._wal: str | None = None  # SQLite WAL file fdatasynced at synchronous commit points
        self._wal_dir_synced = False
        self.sync_commits = 0  # commit points that waited for the disk
        self.relaxed_commits = 0  # commits that did not
        self.postgres = self.target.startswith(("postgresql://", "postgres://"))
        try:
            if self.postgres:
                import psycopg  # optional dependency: only a Postgres journal needs it

                self._db: Any = psycopg.connect(
                    self.target,
                    autocommit=True,
                    connect_timeout=5,
                    options="-c statement_timeout=5000"
                    + ("" if durable else " -c synchronous_commit=off"),
                )
                self._integrity: tuple[type[BaseException], ...] = (psycopg.errors.UniqueViolation,)
                self._errors: tuple[type[BaseException], ...] = (psycopg.Error, OSError)
            else:
                p = Path(self.target)
                if self.target != ":memory:":
                    p.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(
                    self.target, isolation_level=None, check_same_thread=False, timeout=5.0
                )
                mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                wal = durable and str(mode).lower() == "wal"
                # WAL: synchronous commit points fdatasync the WAL file themselves (_sync)
                level = "NORMAL" if wal else "FULL" if durable else "OFF"
                self._db.execute(f"PRAGMA synchronous={level}")
                self._integrity = (sqlite3.IntegrityError,)
                self._errors = (sqlite3.Error, OSError)
            self._migrate()
            for ddl in (
                *_SCHEMA,
                _FILLS,
                _ROUTES,
                _AUDIT_POSTGRES if self.postgres else _AUDIT_SQLITE,
                _AUDIT_INDEX,
            ):
                self._exec(ddl)
            self._add_explain_columns()
            if not self.postgres and wal:
                self._find_wal()
        except JournalUnavailable:
            raise
        except Exception as exc:
            raise JournalUnavailable(
                f"journal {redact_dsn(self.target)}: {type(exc).__name__}: {exc}"
            ) from exc

    def _find_wal(self) -> None:
        """The WAL file SQLite writes (it exists once a write committed): next to the
        database's real path (SQLite resolves symbolic links), else its absolute path. Flush
        what opening wrote. Without it, SQLite flushes every commit itself (FULL)."""
        for wal in (f"{os.path.realpath(self.target)}-wal", f"{os.path.abspath(self.target)}-wal"):
            if os.path.exists(wal):
                self._wal = wal
                self._sync()
                return
        log.warning("journal: no WAL file next to %s; every commit waits for the disk", self.target)
        self._db.execute("PRAGMA synchronous=FULL")

    def set_scope(self, scope: str) -> None:
        """Key every later read and write by ``scope`` (``login:magic:mode``)."""
        self.scope = scope

    # --- group commit -------------------------------------------------------------------
    @property
    def in_transaction(self) -> bool:
        """A group transaction is open."""
        return self._tx

    def begin(self) -> None:
        """Open a group transaction (nothing if one is open): later writes wait for
        :meth:`checkpoint` or :meth:`commit`."""
        if self._tx:
            return
        self._exec("BEGIN")
        self._tx, self._tx_dirty = True, False

    def checkpoint(self) -> None:
        """The write-ahead commit point (right before ``order_send``): commit what the open
        transaction holds synchronously and open the next one, whose commit need not wait for
        the disk. After the bar's first commit point only an intent written since needs a
        flush: every other write of the bar (results, fills, risk state) rides with its last,
        relaxed commit, so a bar whose intents were all written up front flushes once.
        Nothing when no transaction is open (writes were committed already)."""
        if not self._tx:
            return
        if self._tx_relaxed and not self._tx_intents:
            return  # every intent of the bar is durable already
        if self._tx_dirty or self._pending_state:
            self._commit(relaxed=False)
            self._exec("BEGIN")
            self._tx, self._tx_dirty = True, False
        self._tx_relaxed = True

    def commit(self) -> None:
        """Commit the open transaction (synchronously unless a checkpoint came first);
        nothing when none is open. Rolls back and raises :class:`JournalUnavailable` when the
        commit fails."""
        if self._tx:
            self._commit(relaxed=self._tx_relaxed)

    def _commit(self, *, relaxed: bool) -> None:
        try:
            self._flush_state()
            if relaxed and self.durable and self.postgres:
                self._exec("SET LOCAL synchronous_commit = off")
            self._exec("COMMIT")
        except Exception:
            self.rollback()
            raise
        self._tx = self._tx_intents = False
        if self._decided is not None:
            self._decided.update(self._tx_decided)
        self._tx_decided.clear()
        if self._tx_state:
            self._saved_state.update(self._tx_state)
            self._tx_state.clear()
        self._tx_relaxed = False
        if relaxed or not self.durable:
            self.relaxed_commits += 1
        else:
            self._sync()

    def _sync(self) -> None:
        """Make every commit so far durable (a synchronous commit point, just after its
        COMMIT). PostgreSQL's COMMIT already waited for its WAL flush. A durable SQLite journal
        runs ``synchronous=NORMAL`` in WAL mode (a commit is written to the WAL file, not
        flushed) and flushes the WAL file here with ``fdatasync`` — the very flush
        ``synchronous=FULL`` does inside every COMMIT, but chosen per commit: SQLite refuses to
        change ``synchronous`` inside a transaction, so toggling the pragma cannot make the
        second commit point of a bar (the second order of a flip) synchronous again. The
        directory is flushed once too, as SQLite does for a WAL file it created. Raises
        :class:`JournalUnavailable` when the flush fails (nothing may be sent then)."""
        self.sync_commits += 1
        if self._wal is None:
            return
        with self._lock:
            try:
                fd = os.open(self._wal, os.O_RDONLY)
                try:
                    _fdatasync(fd)
                finally:
                    os.close(fd)
                if not self._wal_dir_synced:
                    dfd = os.open(os.path.dirname(os.path.abspath(self._wal)), os.O_RDONLY)
                    try:
                        os.fsync(dfd)
                    finally:
                        os.close(dfd)
                    self._wal_dir_synced = True
            except OSError as exc:
                raise JournalUnavailable(f"journal: flushing {self._wal}: {exc}") from exc

    def rollback(self) -> None:
        """Drop the open transaction's writes (nothing when none is open)."""
        if not self._tx:
            return
        self._tx = self._tx_intents = False
        self._pending_state.clear()
        self._tx_decided.clear()
        self._tx_state.clear()
        self._saved_state.clear()  # a failed bar: write the state again at the next save
        self._tx_relaxed = False
        with self._lock:
            try:
                self._db.execute("ROLLBACK")
            except self._errors as exc:
                log.warning("journal: rollback failed: %s", exc)

    def _flush_state(self) -> None:
        while self._pending_state:
            key, value = self._pending_state.popitem()
            self._upsert_state(key, value() if callable(value) else value)

    def _columns(self, table: str) -> set[str] | None:
        """The table's columns, ``None`` when it does not exist."""
        if self.postgres:
            rows = self._db.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name = %s",
                (table,),
            ).fetchall()
        else:
            rows = [(r[1],) for r in self._db.execute(f"PRAGMA table_info({table})").fetchall()]
        return {r[0] for r in rows} or None

    def _migrate(self) -> None:
        """Keep tables of the unscoped layout aside (``<table>_unscoped``). Tables added
        later (``audit``) are created by ``CREATE TABLE IF NOT EXISTS`` in an older journal."""
        for table in _TABLES:
            cols = self._columns(table)
            if cols is not None and "scope" not in cols:
                aside = f"{table}_unscoped"
                if self._columns(aside) is not None:
                    aside = f"{table}_unscoped_{int(time.time())}"
                log.warning("journal: table %s has no scope column; kept as %s", table, aside)
                self._db.execute(f"ALTER TABLE {table} RENAME TO {aside}")
                if self.postgres:  # the primary key's index keeps the old name otherwise
                    self._db.execute(f"ALTER INDEX IF EXISTS {table}_pkey RENAME TO {aside}_pkey")

    def _add_explain_columns(self) -> None:
        """Give a ``decisions`` table of an older layout the explanation columns."""
        cols = self._columns("decisions") or set()
        for col in _EXPLAIN_COLUMNS:
            if col not in cols:
                self._db.execute(f"ALTER TABLE decisions ADD COLUMN {col} TEXT")

    # --- plumbing -----------------------------------------------------------------------
    def _exec(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> Any:
        write = not sql.startswith(_NOT_WRITES)
        if write:
            return self._write(sql, params)
        if self.postgres:
            sql = _pg_sql(sql)
        with self._lock:
            try:
                return self._db.execute(sql, params)
            except self._integrity:
                raise
            except self._errors as exc:
                self._saved_state.clear()  # what the database holds is not known any more
                raise JournalUnavailable(f"journal: {type(exc).__name__}: {exc}") from exc

    def _write(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> Any:
        """Execute a write: inside a group transaction it waits for the commit point, outside
        one it is committed (and, durable, flushed) at once."""
        if self._tx:
            self._tx_dirty = True
        if self.postgres:
            sql = _pg_sql(sql)
        with self._lock:
            try:
                cur = self._db.execute(sql, params)
            except self._integrity:
                raise
            except self._errors as exc:
                self._saved_state.clear()  # what the database holds is not known any more
                raise JournalUnavailable(f"journal: {type(exc).__name__}: {exc}") from exc
            if not self._tx:  # a write outside a group transaction: its own commit
                if self.durable:
                    self._sync()
                else:
                    self.relaxed_commits += 1
            return cur

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        with self._lock:
            cur = self._exec(sql, params)
            try:
                names = [c[0] for c in cur.description]
                return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
            except self._errors as exc:
                self._saved_state.clear()  # what the database holds is not known any more
                raise JournalUnavailable(f"journal: {type(exc).__name__}: {exc}") from exc

    # --- decisions ----------------------------------------------------------------------
    def record(self, rec: DecisionRecord) -> None:
        """Journal one decision; :class:`DuplicateDecision` if the bar was already journaled."""
        v = [self.scope, *_decision_values(rec)]  # the columns in _INSERT_DECISION's order
        for i in _DECISION_JSON_AT:
            if v[i + 1] is not None:
                v[i + 1] = dumps(v[i + 1])
        if v[_DECISION_SEQUENCE_AT + 1] is not None:
            v[_DECISION_SEQUENCE_AT + 1] = encode_sequence(v[_DECISION_SEQUENCE_AT + 1])
        cur = self._write(_INSERT_DECISION, v)
        if cur.rowcount == 0:
            raise DuplicateDecision(f"{rec.symbol} bar {rec.bar_close} already journaled")
        key = (rec.symbol, int(rec.bar_close))
        if self._tx:
            self._tx_decided.append(key)
        elif self._decided is not None:
            self._decided.add(key)

    def decided(self, symbol: str, bar_close: int) -> bool:
        """Whether the bar was already decided (restart: skip it). Answered from the set of
        decided bars, loaded once per scope and kept up to date by :meth:`record`."""
        if self._decided is None or self._decided_scope != self.scope:
            rows = self._query(
                "SELECT symbol, bar_close FROM decisions WHERE scope=?", (self.scope,)
            )
            self._decided = {(r["symbol"], int(r["bar_close"])) for r in rows}
            self._decided_scope = self.scope
            self._intent_bars = None
        key = (symbol, int(bar_close))
        return key in self._decided or key in self._tx_decided

    def rows(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Decisions, oldest first (or the newest ``limit``, oldest first)."""
        if limit is None:
            out = self._query(
                "SELECT * FROM decisions WHERE scope=? ORDER BY bar_close, symbol", (self.scope,)
            )
        else:
            out = self._query(
                "SELECT * FROM decisions WHERE scope=? ORDER BY bar_close DESC, symbol DESC LIMIT ?",
                (self.scope, int(limit)),
            )[::-1]
        for d in out:
            d.pop("scope", None)
            for k in _JSON_DECISION:
                d[k] = json.loads(d[k]) if d[k] else None
        return out

    def decision(self, symbol: str, bar_close: int) -> dict[str, Any] | None:
        """One decision row (JSON columns decoded), ``None`` when the bar was not decided."""
        out = self._query(
            "SELECT * FROM decisions WHERE scope=? AND symbol=? AND bar_close=?",
            (self.scope, symbol, int(bar_close)),
        )
        if not out:
            return None
        d = out[0]
        d.pop("scope", None)
        for k in _JSON_DECISION:
            d[k] = json.loads(d[k]) if d[k] else None
        return d

    def rows_upto(self, symbol: str, bar_close: int) -> list[dict[str, Any]]:
        """Decisions of ``symbol`` up to and including ``bar_close``, oldest first (the
        history an explanation of that bar may use)."""
        out = self._query(
            "SELECT * FROM decisions WHERE scope=? AND symbol=? AND bar_close<=?"
            " ORDER BY bar_close",
            (self.scope, symbol, int(bar_close)),
        )
        for d in out:
            d.pop("scope", None)
            for k in _JSON_DECISION:
                d[k] = json.loads(d[k]) if d[k] else None
        return out

    def lacking_contributions(self, limit: int = 50) -> list[dict[str, Any]]:
        """Decided bars with a feature vector but no contributions yet, oldest first (what
        the explain worker computes, off the hot path)."""
        rows = self._query(
            "SELECT symbol, bar_close, features, feature_sequence FROM decisions WHERE scope=?"
            " AND features IS NOT NULL AND contributions IS NULL"
            " ORDER BY bar_close, symbol LIMIT ?",
            (self.scope, int(limit)),
        )
        for r in rows:
            r["features"] = json.loads(r["features"])
            seq = r.pop("feature_sequence")
            if seq:
                r["sequence"] = decode_sequence(seq)
        return rows

    def set_contributions(self, symbol: str, bar_close: int, contributions: dict[str, Any]) -> None:
        """Store a decision's feature contributions (written once, after its bar committed)."""
        self._exec(
            "UPDATE decisions SET contributions=? WHERE scope=? AND symbol=? AND bar_close=?",
            (json.dumps(contributions), self.scope, symbol, int(bar_close)),
        )

    def scopes(self) -> list[str]:
        """Every scope with decisions in this database (the monitor finds an engine's by it)."""
        return [str(r["scope"]) for r in self._query("SELECT DISTINCT scope FROM decisions")]

    def counts(self) -> dict[str, int]:
        """Decisions by verdict."""
        return {
            r["verdict"]: int(r["n"])
            for r in self._query(
                "SELECT verdict, COUNT(*) AS n FROM decisions WHERE scope=? GROUP BY verdict",
                (self.scope,),
            )
        }

    def reason_counts(self) -> dict[str, int]:
        """Refusals and errors by reason code."""
        rows = self._query(
            "SELECT reason_code, COUNT(*) AS n FROM decisions"
            " WHERE scope=? AND reason_code IS NOT NULL GROUP BY reason_code",
            (self.scope,),
        )
        return {r["reason_code"]: int(r["n"]) for r in rows}

    # --- intents ------------------------------------------------------------------------
    def intent_begin(self, it: Intent) -> bool:
        """Write the intent before the order is sent; ``False`` if this client id exists.
        Inside a group transaction it is durable only from the next :meth:`checkpoint`."""
        cur = self._write(
            _INSERT_INTENT,
            (
                self.scope,
                it.client_id,
                it.symbol,
                int(it.bar_close),
                it.intent,
                dumps(it.request),
                it.status,
                dumps(it.result) if it.result is not None else None,
                it.retcode,
                it.created_at,
                it.updated_at,
            ),
        )
        if self._intent_bars is not None:
            self._intent_bars.add((it.symbol, int(it.bar_close)))
        if self._tx and cur.rowcount:
            self._tx_intents = True
        return bool(cur.rowcount)

    def intent_end(
        self, client_id: str, status: str, result: dict[str, Any] | None, retcode: int | None
    ) -> None:
        """Record the outcome of an intent."""
        self._write(
            "UPDATE intents SET status=?, result=?, retcode=?, updated_at=?"
            " WHERE scope=? AND client_id=?",
            (
                status,
                dumps(result) if result is not None else None,
                retcode,
                time.time(),
                self.scope,
                client_id,
            ),
        )

    def intent_reset(self, client_id: str, request: dict[str, Any]) -> None:
        """An intent about to be (re-)sent is ``pending`` again, whatever it said before, so a
        crash after this send is reconciled like the first one."""
        self._exec(
            "UPDATE intents SET status='pending', request=?, result=NULL, retcode=NULL,"
            " updated_at=? WHERE scope=? AND client_id=?",
            (dumps(request), time.time(), self.scope, client_id),
        )
        if self._tx:
            self._tx_intents = True

    def intent(self, client_id: str) -> Intent | None:
        """The intent with this client id, if any."""
        rows = self._query(
            "SELECT * FROM intents WHERE scope=? AND client_id=?", (self.scope, client_id)
        )
        return self._intent(rows[0]) if rows else None

    def intents(self, status: str | None = None) -> list[Intent]:
        """Intents (optionally of one status), oldest first."""
        if status is None:
            rows = self._query(
                "SELECT * FROM intents WHERE scope=? ORDER BY created_at, client_id", (self.scope,)
            )
        else:
            rows = self._query(
                "SELECT * FROM intents WHERE scope=? AND status=? ORDER BY created_at, client_id",
                (self.scope, status),
            )
        return [self._intent(r) for r in rows]

    def open_intents(self) -> list[Intent]:
        """Every intent whose status is not final (``pending``, ``not_sent``, anything but
        done/failed/recovered): what reconciliation must check against the broker."""
        final = ",".join(f"'{x}'" for x in sorted(FINAL_INTENT))
        rows = self._query(
            f"SELECT * FROM intents WHERE scope=? AND status NOT IN ({final})"
            " ORDER BY created_at, client_id",
            (self.scope,),
        )
        return [self._intent(r) for r in rows]

    def may_have_intents(self, symbol: str, bar_close: int) -> bool:
        """Whether the bar may have intents (``False``: it has none, no query needed). From a
        set of bars with intents, loaded once per scope; an intent rolled back leaves its bar
        in the set, which only costs a query."""
        if self._intent_bars is None or self._decided_scope != self.scope:
            self.decided(symbol, bar_close)  # (re)loads the decided set and the scope
            rows = self._query("SELECT symbol, bar_close FROM intents WHERE scope=?", (self.scope,))
            self._intent_bars = {(r["symbol"], int(r["bar_close"])) for r in rows}
        return (symbol, int(bar_close)) in self._intent_bars

    def bar_intents(self, symbol: str, bar_close: int) -> list[Intent]:
        """The intents of one bar, oldest first."""
        rows = self._query(
            "SELECT * FROM intents WHERE scope=? AND symbol=? AND bar_close=?"
            " ORDER BY created_at, client_id",
            (self.scope, symbol, int(bar_close)),
        )
        return [self._intent(r) for r in rows]

    def is_empty(self) -> bool:
        """No decision and no intent in this scope (a new, or a lost, journal)."""
        return not self._query(
            "SELECT 1 FROM decisions WHERE scope=? UNION ALL SELECT 1 FROM intents WHERE scope=?",
            (self.scope, self.scope),
        )

    @staticmethod
    def _intent(r: dict[str, Any]) -> Intent:
        r.pop("scope", None)
        for k in _JSON_INTENT:
            r[k] = json.loads(r[k]) if r[k] else None
        r["bar_close"] = int(r["bar_close"])
        return Intent(**r)

    # --- state --------------------------------------------------------------------------
    def save_state(self, key: str, value: str | Callable[[], str]) -> None:
        """Upsert a piece of engine state (JSON text, or a callable giving it). Inside a group
        transaction it is written once, at the next commit point, with its value then."""
        if self._tx:
            self._pending_state[key] = value
            return
        self._upsert_state(key, value() if callable(value) else value)

    def _upsert_state(self, key: str, value: str) -> None:
        """Write the value unless it is the one this connection committed last (or wrote
        earlier in the open transaction): ``updated_at`` is when the value last changed."""
        k = (self.scope, key)
        if self._tx_state.get(k, self._saved_state.get(k)) == value:
            return
        self._write(_UPSERT_STATE, (self.scope, key, value, time.time()))
        (self._tx_state if self._tx else self._saved_state)[k] = value

    def load_state(self, key: str) -> str | None:
        """The saved state under ``key``, or ``None``."""
        if key in self._pending_state:
            v = self._pending_state[key]
            return v() if callable(v) else v
        rows = self._query(
            "SELECT value FROM engine_state WHERE scope=? AND key=?", (self.scope, key)
        )
        return str(rows[0]["value"]) if rows else None

    # --- fills --------------------------------------------------------------------------
    def record_fill(self, fill: Fill) -> None:
        """Journal one fill (inside the bar's transaction when one is open); a second fill
        of the same client id is ignored (an order fills once)."""
        self._write(_INSERT_FILL, (self.scope, *_fill_values(fill)))

    def fills(self, symbol: str | None = None) -> list[Fill]:
        """Fills of this scope (optionally of one symbol), oldest first."""
        where, args = "scope=?", [self.scope]
        if symbol is not None:
            where, args = "scope=? AND symbol=?", [self.scope, symbol]
        rows = self._query(
            f"SELECT * FROM fills WHERE {where} ORDER BY filled_at, client_id", tuple(args)
        )
        out = []
        for r in rows:
            r.pop("scope", None)
            r["bar_close"] = int(r["bar_close"])
            out.append(Fill(**r))
        return out

    def fill_scopes(self) -> list[str]:
        """Every scope with fills in this database (a slippage model learns from all)."""
        return [str(r["scope"]) for r in self._query("SELECT DISTINCT scope FROM fills")]

    # --- audit --------------------------------------------------------------------------
    def audit(
        self,
        action: str,
        *,
        actor: str = "operator",
        reason: str | None = None,
        detail: dict[str, Any] | None = None,
        at: str | None = None,
    ) -> dict[str, Any]:
        """Append one audit row (committed at once outside a group transaction) and return it."""
        from datetime import UTC, datetime

        row: dict[str, Any] = {
            "scope": self.scope,
            "at": at or datetime.now(UTC).isoformat(timespec="milliseconds"),
            "actor": actor,
            "action": action,
            "reason": reason,
            "detail": json.dumps(detail or {}, default=str),
        }
        self._exec(
            "INSERT INTO audit (scope, at, actor, action, reason, detail) VALUES (?,?,?,?,?,?)",
            tuple(row.values()),
        )
        row.pop("scope")
        row["detail"] = detail or {}
        return row

    def audit_rows(self, limit: int = 50, *, scope_like: str | None = None) -> list[dict[str, Any]]:
        """The newest ``limit`` audit rows of this scope, newest first; ``scope_like`` (an SQL
        LIKE pattern, e.g. ``%:20260101:live``) reads every matching scope instead and adds
        each row's ``scope``."""
        if scope_like is None:
            where, arg = "scope=?", self.scope
        else:
            where, arg = "scope LIKE ?", scope_like
        out = self._query(
            f"SELECT id, scope, at, actor, action, reason, detail FROM audit WHERE {where}"
            " ORDER BY id DESC LIMIT ?",
            (arg, int(limit)),
        )
        for r in out:
            r["id"] = int(r["id"])
            r["detail"] = json.loads(r["detail"]) if r["detail"] else {}
            if scope_like is None:
                r.pop("scope")
        return out

    def known_client_ids(self, ids: set[str]) -> set[str]:
        """Which of ``ids`` are client ids of intents of this scope (any age)."""
        if not ids:
            return set()
        wanted = sorted(ids)
        out: set[str] = set()
        for i in range(0, len(wanted), 500):
            chunk = wanted[i : i + 500]
            rows = self._query(
                f"SELECT client_id FROM intents WHERE scope=? AND client_id IN"
                f" ({','.join('?' * len(chunk))})",
                (self.scope, *chunk),
            )
            out |= {str(r["client_id"]) for r in rows}
        return out

    # --- routes (engine.router) -----------------------------------------------------------
    def record_route(
        self,
        client_id: str,
        *,
        symbol: str,
        intent: str,
        venue: str,
        status: str,
        reason: str,
        cost_points: float | None = None,
        ranking: list[dict[str, Any]] | None = None,
    ) -> int:
        """Append one venue attempt of an order; returns its attempt number (1, 2, ...)."""
        rows = self._query(
            "SELECT COALESCE(MAX(attempt), 0) AS n FROM routes WHERE scope=? AND client_id=?",
            (self.scope, client_id),
        )
        attempt = int(rows[0]["n"]) + 1
        self._exec(
            "INSERT INTO routes (scope, client_id, attempt, symbol, intent, venue, status,"
            " reason, cost_points, ranking, at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                self.scope,
                client_id,
                attempt,
                symbol,
                intent,
                venue,
                status,
                reason,
                cost_points,
                json.dumps(ranking) if ranking is not None else None,
                time.time(),
            ),
        )
        return attempt

    def routes(self, client_id: str | None = None) -> list[dict[str, Any]]:
        """Venue attempts of this scope (of one client id), oldest first."""
        where, args = "scope=?", [self.scope]
        if client_id is not None:
            where, args = "scope=? AND client_id=?", [self.scope, client_id]
        rows = self._query(
            f"SELECT * FROM routes WHERE {where} ORDER BY at, client_id, attempt", tuple(args)
        )
        for r in rows:
            r.pop("scope", None)
            r["ranking"] = json.loads(r["ranking"]) if r["ranking"] else None
        return rows

    def intents_since(self, created_at: float) -> list[Intent]:
        """Intents created at or after ``created_at`` (epoch s), oldest first."""
        rows = self._query(
            "SELECT * FROM intents WHERE scope=? AND created_at >= ? ORDER BY created_at, client_id",
            (self.scope, float(created_at)),
        )
        return [self._intent(r) for r in rows]

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()


def open_journal(target: Path | str, scope: str = "", *, durable: bool = True) -> Journal:
    """A journal at a SQLite path or a ``postgresql://`` URL."""
    return Journal(target, scope, durable=durable)
