"""The decision journal: every decision, taken or refused, in SQLite (WAL).

One row per (symbol, bar close): recording the same bar again is refused by the primary key,
and :meth:`Journal.decided` lets a restarted engine skip bars it already handled, so a restart
neither loses an entry nor sends a second order for the same bar.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    symbol TEXT NOT NULL,
    bar_close INTEGER NOT NULL,
    decided_at REAL NOT NULL,
    feature_time REAL,
    model_version TEXT,
    decision TEXT NOT NULL,
    target_lots REAL,
    verdict TEXT NOT NULL,
    reason TEXT,
    order_request TEXT,
    order_result TEXT,
    retcode INTEGER,
    latency_ms TEXT NOT NULL,
    PRIMARY KEY (symbol, bar_close)
)
"""


@dataclass
class DecisionRecord:
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


class Journal:
    def __init__(self, path: Path | str) -> None:
        p = Path(path)
        if str(p) != ":memory:":
            p.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(p), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(_SCHEMA)

    def record(self, rec: DecisionRecord) -> None:
        d = asdict(rec)
        for k in ("order_request", "order_result", "latency_ms"):
            d[k] = json.dumps(d[k]) if d[k] is not None else None
        cols = ",".join(d)
        self._db.execute(f"INSERT INTO decisions ({cols}) VALUES ({','.join('?' * len(d))})", list(d.values()))

    def decided(self, symbol: str, bar_close: int) -> bool:
        cur = self._db.execute("SELECT 1 FROM decisions WHERE symbol=? AND bar_close=?", (symbol, bar_close))
        return cur.fetchone() is not None

    def rows(self) -> list[dict[str, Any]]:
        cur = self._db.execute("SELECT * FROM decisions ORDER BY bar_close, symbol")
        names = [c[0] for c in cur.description]
        out = []
        for r in cur.fetchall():
            d = dict(zip(names, r, strict=True))
            for k in ("order_request", "order_result", "latency_ms"):
                d[k] = json.loads(d[k]) if d[k] else None
            out.append(d)
        return out

    def counts(self) -> dict[str, int]:
        cur = self._db.execute("SELECT verdict, COUNT(*) FROM decisions GROUP BY verdict")
        return {v: int(n) for v, n in cur.fetchall()}

    def close(self) -> None:
        self._db.close()
