"""Online read of one symbol's full feature row: the engine's reader vs the Feast SDK vs a raw
redis-py HGETALL of the same key, measured interleaved in one run on a private Redis.

    .venv/bin/python bench/online_read.py [--n 2000]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=2000, help="reads per reader")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import redis

    from engine.features import OnlineFeatureReader
    from engine.online_format import entity_key
    from feature_repo.pipeline.backfill import backfill
    from feature_repo.pipeline.store import FEATURE_SERVICE, FEATURE_VIEW, feast_apply, open_store
    from feature_repo.pipeline.transforms import FEATURE_NAMES
    from infra.redis_local import LocalRedis
    from infra.settings import PlatformSettings

    with tempfile.TemporaryDirectory() as tmp, LocalRedis() as srv:
        s = PlatformSettings(home=Path(tmp), redis_url=srv.url, symbols=["EURUSD"], timeframe="M5")
        feast_apply(s)
        start = datetime(2026, 1, 5, tzinfo=UTC)
        backfill(s, start, start + timedelta(days=2))
        store = open_store(s)
        service = store.get_feature_service(FEATURE_SERVICE)
        r = redis.Redis.from_url(s.redis_url)
        reader = OnlineFeatureReader(r, project=s.feast_project, feature_view=FEATURE_VIEW, features=list(FEATURE_NAMES))
        key = entity_key("symbol", "EURUSD", s.feast_project)
        cases = {
            "engine reader (redis-py + own decoder)": lambda: reader.read("EURUSD"),
            "Feast SDK get_online_features().to_dict()": lambda: store.get_online_features(
                features=service, entity_rows=[{"symbol": "EURUSD"}]
            ).to_dict(),
            "raw redis-py HGETALL (no decoding)": lambda: r.hgetall(key),
        }
        # same values first: the comparison is only fair if both read the same row
        sdk = cases["Feast SDK get_online_features().to_dict()"]()
        row = reader.read("EURUSD")
        assert all(row.values[f] == sdk[f][0] for f in FEATURE_NAMES)
        times: dict[str, list[float]] = {k: [] for k in cases}
        for _ in range(50):
            for fn in cases.values():
                fn()
        for _ in range(args.n):  # interleaved: CPU speed drifts within seconds here
            for name, fn in cases.items():
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1e6)
        base = float(np.percentile(times["engine reader (redis-py + own decoder)"], 50))
        print(f"online read of one symbol, {len(FEATURE_NAMES)} features, n={args.n} each, interleaved")
        print(f"{'reader':45s} {'p50 µs':>9s} {'p99 µs':>9s} {'p50 / engine':>13s}")
        for name, ts in times.items():
            p50, p99 = np.percentile(ts, 50), np.percentile(ts, 99)
            print(f"{name:45s} {p50:9.1f} {p99:9.1f} {p50 / base:13.2f}")


if __name__ == "__main__":
    main()
