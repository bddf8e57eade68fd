"""Streaming freshness: time from a bar's close to its features being visible in Redis.

What runs: the real pusher (:class:`FeaturePusher.run`, the loop behind ``tx features stream``)
against the simulated terminal on a simulated, accelerated market clock (M5 bars, ``--speed``
market seconds per wall second), for two symbols, writing every view (``trend_fv``,
``trend_v2_fv``, ``bar_sequence_fv``) of every symbol per bar. Each bar close maps to a wall
instant ``R0 + (close - T0) / speed``; the pusher sleeps until it, waits until the terminal
shows the bar closed, reads the last bars, computes, writes.

What is measured: a separate observer process subscribed to Redis keyspace notifications
stamps the wall time at which it sees each symbol's HSET, reads that row's ``_ts:trend_v2_fv``
(the bar it belongs to) and records ``seen - mapped close`` — wake-up jitter + bar read +
feature computation + write + notification delivery, all in wall time on this machine. What is
not: a real terminal's tick-to-bar delay (MT5 opens a bar on its first tick) and network hops.
Both writers are measured, one after the other: the direct one (Feast's bytes, one pipelined
round trip) and the Feast SDK's ``write_to_online_store``.

    .venv/bin/python bench/freshness.py [--bars 60] [--speed 600]
"""

from __future__ import annotations

import sys
from pathlib import Path

# the project root goes before bench/ on the path: a bench script's name (e.g. engine.py) must
# never shadow a package of the project
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import json
import logging
import multiprocessing as mp
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

SYMBOLS = ["EURUSD", "GBPUSD"]


def observe(
    url: str, project: str, r0: float, t0: float, speed: float, n_events: int, out: str, ready: Any
) -> None:
    """Observer process: keyspace events → (symbol, bar close, wall seen, latency ms)."""
    import redis

    from engine.online_format import decode_timestamp, entity_key

    r: Any = redis.Redis.from_url(url)
    db = int(url.rsplit("/", 1)[1] or 0)
    keys = {entity_key("symbol", s, project): s for s in SYMBOLS}
    ps = r.pubsub()
    ps.psubscribe(f"__keyspace@{db}__:*")
    ps.get_message(timeout=1.0)  # the subscribe confirmation
    ready.set()
    rec: list[dict[str, Any]] = []
    while len(rec) < n_events:
        msg = ps.get_message(timeout=30.0)
        seen = time.time()
        if msg is None:
            break
        if msg["type"] != "pmessage" or msg["data"] != b"hset":
            continue
        key = msg["channel"].split(b":", 1)[1]
        sym = keys.get(key)
        if sym is None:
            continue
        ts = r.hget(key, "_ts:trend_v2_fv")
        if ts is None:
            continue
        close = decode_timestamp(ts)
        rec.append(
            {
                "symbol": sym,
                "close": close,
                "latency_ms": (seen - (r0 + (close - t0) / speed)) * 1e3,
            }
        )
    Path(out).write_text(json.dumps(rec))


def run_writer(writer: str, settings: Any, bars: int, speed: float, tmp: Path) -> dict[str, Any]:
    import redis

    from feature_repo.pipeline.ingest import open_platform_terminal
    from feature_repo.pipeline.stream import FeaturePusher

    r = redis.Redis.from_url(settings.redis_url)
    r.flushdb()
    t0 = datetime(2026, 1, 14, 9, 0, 7, tzinfo=UTC).timestamp()  # a Wednesday morning (market time)
    clock_state: dict[str, float] = {}

    def clock() -> float:
        return clock_state["t0"] + (time.time() - clock_state["r0"]) * speed

    terminal = open_platform_terminal(settings, clock=lambda: int(clock()))
    pusher = FeaturePusher(settings, terminal, writer=writer)
    clock_state.update(t0=t0, r0=time.time())
    pusher.push_bar(int(t0 // 300 * 300))  # warm caches (imports, first feed generation)
    r.flushdb()
    clock_state.update(t0=t0, r0=time.time() + 0.5)
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    out = tmp / f"seen-{writer}.json"
    proc = ctx.Process(
        target=observe,
        args=(
            settings.redis_url,
            settings.feast_project,
            clock_state["r0"],
            t0,
            speed,
            bars * len(SYMBOLS),
            str(out),
            ready,
        ),
    )
    proc.start()
    ready.wait(60)
    pusher.stats.fetch_s.clear()
    pusher.stats.compute_s.clear()
    pusher.stats.write_s.clear()
    pusher.run(
        clock=clock, sleep=lambda dt: time.sleep(max(dt, 0.0) / speed), max_bars=bars, poll_s=0.5
    )
    proc.join(60)
    rec = json.loads(out.read_text())
    lat = np.array([x["latency_ms"] for x in rec])
    st = pusher.stats
    return {
        "writer": writer,
        "events": len(rec),
        "bars": len({x["close"] for x in rec}),
        "p50": float(np.percentile(lat, 50)),
        "p99": float(np.percentile(lat, 99)),
        "max": float(lat.max()),
        "fetch": float(np.median(st.fetch_s) * 1e3),
        "compute": float(np.median(st.compute_s) * 1e3),
        "write": float(np.median(st.write_s) * 1e3),
        "write_p99": float(np.percentile(st.write_s, 99) * 1e3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--bars", type=int, default=60, help="bar closes per writer")
    ap.add_argument(
        "--speed",
        type=float,
        default=600.0,
        help="market seconds per wall second (M5: 600 = a bar every 0.5 s)",
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from feature_repo.pipeline.store import feast_apply
    from titanovax.redis_local import LocalRedis
    from titanovax.settings import PlatformSettings

    with tempfile.TemporaryDirectory() as tmp, LocalRedis() as srv:
        import redis

        redis.Redis.from_url(srv.url).config_set("notify-keyspace-events", "Kh")
        s = PlatformSettings(home=Path(tmp), redis_url=srv.url, symbols=SYMBOLS, timeframe="M5")
        feast_apply(s)  # the Feast writer needs the registry
        results = [run_writer(w, s, args.bars, args.speed, Path(tmp)) for w in ("direct", "feast")]
    print(
        f"streaming freshness, bar close → visible in Redis (observer process, keyspace events); "
        f"{len(SYMBOLS)} symbols x 3 views per bar, M5 at {args.speed:.0f}x, {args.bars} bars per writer"
    )
    print(
        f"{'writer':8s} {'rows':>5s} {'p50 ms':>8s} {'p99 ms':>8s} {'max ms':>8s} | median per bar: {'read':>6s} {'compute':>8s} {'write':>6s} (write p99)"
    )
    for x in results:
        print(
            f"{x['writer']:8s} {x['events']:5d} {x['p50']:8.1f} {x['p99']:8.1f} {x['max']:8.1f} |                 "
            f"{x['fetch']:6.1f} {x['compute']:8.1f} {x['write']:6.1f} ({x['write_p99']:.1f})"
        )
    d, f = results
    print(
        f"p99 feast / direct: {f['p99'] / d['p99']:.2f}; budget 100 ms p99: direct {'met' if d['p99'] <= 100 else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
