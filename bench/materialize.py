"""Batch materialisation throughput: offline parquet → Redis through Feast ``materialize``
(the ``market_data`` DAG's last task), per view and for all three views at once, on a private
Redis, for ``--days`` of M5 bars of two symbols.

Feast's ``materialize`` scans the rows of the interval in the offline store and writes the
latest row per entity (per symbol) of each view; rows/s below counts offline rows scanned over
the interval. For scale, the same run also times building the offline features (compute +
parquet, the DAG's ``features`` task) and the streaming pusher's direct writer writing every
one of those rows to Redis (pipelined, 500 rows per round trip) — more work than Feast does,
since it writes every row where Feast writes the latest per entity.

    .venv/bin/python bench/materialize.py [--days 5]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

# the project root goes before bench/ on the path: a bench script's name (e.g. engine.py) must
# never shadow a package of the project
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import logging
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--days", type=int, default=5)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)

    import redis

    from feature_repo.pipeline.ingest import ingest
    from feature_repo.pipeline.store import (
        VIEWS,
        build_features,
        feast_apply,
        materialize,
        offline_dir,
        open_store,
    )
    from feature_repo.pipeline.stream import DirectWriter
    from feature_repo.pipeline.validate import validate_interval
    from titanovax.redis_local import LocalRedis
    from titanovax.settings import PlatformSettings

    with tempfile.TemporaryDirectory() as tmp, LocalRedis() as srv:
        s = PlatformSettings(
            home=Path(tmp), redis_url=srv.url, symbols=["EURUSD", "GBPUSD"], timeframe="M5"
        )
        feast_apply(s)
        start = datetime(2026, 1, 12, tzinfo=UTC)  # Monday; history from the week before
        end = start + timedelta(days=args.days)
        for sym in s.symbols:
            ingest(s, sym, s.timeframe, start - timedelta(days=7), end)
            validate_interval(s, sym, s.timeframe, start - timedelta(days=7), end)
        t0 = time.perf_counter()
        built = [build_features(s, sym, s.timeframe, start, end) for sym in s.symbols]
        build_s = time.perf_counter() - t0
        rows = {v: sum(b.view_rows[v] for b in built) for v in VIEWS}
        store = open_store(s)
        r: Any = redis.Redis.from_url(s.require_redis_url())
        materialize(
            s, start, start + timedelta(hours=1), s.timeframe, store=store
        )  # warm-up: imports, registry
        res: list[tuple[str, int, float]] = []
        for view in VIEWS:
            r.flushdb()
            t0 = time.perf_counter()
            materialize(s, start, end, s.timeframe, views=(view,), store=store)
            res.append((view, rows[view], time.perf_counter() - t0))
        r.flushdb()
        t0 = time.perf_counter()
        materialize(s, start, end, s.timeframe, store=store)
        res.append(("all three views", sum(rows.values()), time.perf_counter() - t0))
        r.flushdb()
        t0 = time.perf_counter()
        materialize(s, end - timedelta(days=1), end, s.timeframe, store=store)
        daily_s = time.perf_counter() - t0

        # peer: every row through the direct writer
        frames = {
            v: pd.concat([pd.read_parquet(p) for p in sorted(offline_dir(s, v).glob("*.parquet"))])
            for v in VIEWS
        }
        writer = DirectWriter(r, s.feast_project)
        r.flushdb()
        n_direct = 0
        t0 = time.perf_counter()
        for view, df in frames.items():
            recs = df.to_dict("records")
            for i in range(0, len(recs), 500):
                pipe = r.pipeline(transaction=False)
                for row in recs[i : i + 500]:
                    key, mapping = writer.encode(str(row["symbol"]), {view: row})
                    pipe.hset(key, mapping=mapping)  # type: ignore[arg-type]
                pipe.execute()
                n_direct += len(recs[i : i + 500])
        direct_s = time.perf_counter() - t0

    n_rows = sum(rows.values())
    print(
        f"batch materialisation, {args.days} days of M5 x {len(s.symbols)} symbols, private Redis, one run"
    )
    print(f"{'step':48s} {'rows':>7s} {'seconds':>8s} {'rows/s':>9s}")
    print(
        f"{'build offline features (3 views, compute+parquet)':48s} {n_rows:7d} {build_s:8.2f} {n_rows / build_s:9.0f}"
    )
    for name, n, sec in res:
        print(f"{'feast materialize: ' + name:48s} {n:7d} {sec:8.2f} {n / sec:9.0f}")
    print(f"{'feast materialize: one daily interval, 3 views':48s} {'':7s} {daily_s:8.2f}")
    print(
        f"{'peer: direct writer, writes EVERY row (500/trip)':48s} {n_direct:7d} {direct_s:8.2f} {n_direct / direct_s:9.0f}"
    )
    allv = res[-1]
    print(
        "note: Feast scans every row of the interval but writes only the latest per symbol and view; "
        f"the direct writer encodes and writes all {n_direct} rows (throughput ratio direct/feast "
        f"{(n_direct / direct_s) / (allv[1] / allv[2]):.2f})"
    )


if __name__ == "__main__":
    main()
