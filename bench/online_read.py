"""Online read of one symbol's full feature set — service ``trend_v2``: 46 tabular features of
``trend_v2_fv`` plus the 64x9 float32 sequence of ``bar_sequence_fv`` — via the engine's reader
vs the Feast SDK vs a raw redis-py HGETALL of the same key (and the 13-feature ``trend_v1`` row
for reference), measured interleaved in one run on a private Redis.

    .venv/bin/python bench/online_read.py [--n 2000]
"""

from __future__ import annotations

import sys
from pathlib import Path

# the project root goes before bench/ on the path: a bench script's name (e.g. engine.py) must
# never shadow a package of the project
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import logging
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

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
    from feature_repo.pipeline.store import FEATURE_VIEW, SEQ_VIEW, V2_VIEW, feast_apply, open_store
    from feature_repo.pipeline.transforms import (
        FEATURE_NAMES,
        SEQ_CHANNELS,
        SEQ_FIELD,
        SEQ_LEN,
        TREND_V1_FEATURES,
    )
    from titanovax.redis_local import LocalRedis
    from titanovax.settings import PlatformSettings

    with tempfile.TemporaryDirectory() as tmp, LocalRedis() as srv:
        s = PlatformSettings(
            home=Path(tmp), redis_url=srv.url, symbols=["EURUSD", "GBPUSD"], timeframe="M5"
        )
        feast_apply(s)
        start = datetime(2026, 1, 5, tzinfo=UTC)
        backfill(s, start, start + timedelta(days=2))
        store = open_store(s)
        v2_service, v1_service = (
            store.get_feature_service("trend_v2"),
            store.get_feature_service("trend_v1"),
        )
        r: Any = redis.Redis.from_url(s.require_redis_url())
        v2 = OnlineFeatureReader.from_manifest(
            r,
            {
                "feature_view": V2_VIEW,
                "features": list(FEATURE_NAMES),
                "sequence": {
                    "feature_view": SEQ_VIEW,
                    "field": SEQ_FIELD,
                    "seq_len": SEQ_LEN,
                    "channels": list(SEQ_CHANNELS),
                },
            },
            project=s.feast_project,
        )
        v1 = OnlineFeatureReader(
            r, project=s.feast_project, feature_view=FEATURE_VIEW, features=list(TREND_V1_FEATURES)
        )
        key = entity_key("symbol", "EURUSD", s.feast_project)
        rows = [{"symbol": "EURUSD"}]
        cases: dict[str, Callable[[], Any]] = {
            "engine reader, trend_v2 + seq (one HMGET)": lambda: v2.read("EURUSD"),
            "Feast SDK get_online_features(trend_v2)": lambda: store.get_online_features(
                features=v2_service, entity_rows=rows
            ).to_dict(),
            "raw redis-py HGETALL (no decoding)": lambda: r.hgetall(key),
            "engine reader, trend_v1 (13 features)": lambda: v1.read("EURUSD"),
            "Feast SDK get_online_features(trend_v1)": lambda: store.get_online_features(
                features=v1_service, entity_rows=rows
            ).to_dict(),
        }
        # same values first: the comparison is only fair if both read the same row
        sdk = cases["Feast SDK get_online_features(trend_v2)"]()
        row = v2.read("EURUSD")
        assert all(row.values[f] == sdk[f][0] for f in FEATURE_NAMES)
        assert row.sequence is not None and np.array_equal(
            row.sequence.ravel(), np.asarray(sdk[SEQ_FIELD][0], np.float32)
        )
        nbytes = sum(len(k) + len(v) for k, v in r.hgetall(key).items())
        times: dict[str, list[float]] = {k: [] for k in cases}
        for _ in range(50):
            for fn in cases.values():
                fn()
        for _ in range(args.n):  # interleaved: CPU speed drifts within seconds here
            for name, fn in cases.items():
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1e6)
        base = float(np.percentile(times["engine reader, trend_v2 + seq (one HMGET)"], 50))
        print(
            f"online read of one symbol: trend_v2 = {len(FEATURE_NAMES)} features + seq {SEQ_LEN}x{len(SEQ_CHANNELS)} float32 "
            f"(hash of {nbytes} bytes incl. trend_v1), n={args.n} each, interleaved"
        )
        print(f"{'reader':45s} {'p50 µs':>9s} {'p99 µs':>9s} {'p50 / engine v2':>16s}")
        for name, ts in times.items():
            p50, p99 = np.percentile(ts, 50), np.percentile(ts, 99)
            print(f"{name:45s} {p50:9.1f} {p99:9.1f} {p50 / base:16.2f}")


if __name__ == "__main__":
    main()
