"""Point-in-time retrieval: Feast ``get_historical_features`` on the project's offline store
(DuckDB) against the peer it replaced, Feast's ``file`` offline store (dask), in the same run,
on the same registry, parquet and entity rows (bar closes of one symbol of the seeded synthetic
market, M5). Both stores must return the same values; the script checks it.

The file store's cost grows much faster than linearly with the entity rows (with the former
4-day TTL, one year of H1 bars, 6,229 rows, took 52 s and 10.7 GiB there; 58k M5 bars could not
finish), so it runs only up to ``--file-max`` rows.

    .venv/bin/python bench/historical.py [--days 10] [--repeat 5] [--file-max 2000]
"""

from __future__ import annotations

import sys
from pathlib import Path

# the project root goes before bench/ on the path: a bench script's name must never shadow a
# package of the project
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import logging
import shutil
import tempfile
import time
import warnings
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd


def _timed(fn: Any, repeat: int) -> tuple[list[float], pd.DataFrame]:
    times, out = [], pd.DataFrame()
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, out


def _same(a: pd.DataFrame, b: pd.DataFrame, names: list[str]) -> bool:
    """Same rows with features (the file store leaves out rows without any), same values."""
    a, b = (
        d.dropna(subset=names).sort_values("event_timestamp").reset_index(drop=True) for d in (a, b)
    )
    if len(a) != len(b):
        return False
    return bool(
        np.allclose(
            a[names].to_numpy(float), b[names].to_numpy(float), rtol=0, atol=0, equal_nan=True
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--days", type=int, default=10, help="days of M5 bars in the offline store")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument(
        "--file-max", type=int, default=2000, help="largest entity frame sent to the file store"
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("py.warnings").setLevel(logging.ERROR)  # ibis's deprecation notices
    warnings.filterwarnings("ignore")

    from feast import FeatureStore

    from feature_repo.pipeline.backfill import backfill
    from feature_repo.pipeline.store import bar_closes, feast_apply, open_store
    from feature_repo.pipeline.transforms import TREND_V1_FEATURES
    from titanovax.redis_local import LocalRedis
    from titanovax.settings import FEATURE_REPO, PlatformSettings

    with tempfile.TemporaryDirectory() as tmp, LocalRedis() as srv:
        s = PlatformSettings(
            home=Path(tmp) / "home", redis_url=srv.url, symbols=["EURUSD"], timeframe="M5"
        )
        feast_apply(s)
        start = datetime(2026, 1, 5, tzinfo=UTC)
        end = start + timedelta(days=args.days)
        backfill(s, start - timedelta(days=3), end, materialise=False)
        entity_all = bar_closes(s, s.symbols, s.timeframe, start, end)
        duck = open_store(s)
        # the peer: the same repo and registry with the file (dask) offline store
        peer_repo = Path(tmp) / "repo_file"
        shutil.copytree(FEATURE_REPO, peer_repo, ignore=shutil.ignore_patterns("__pycache__"))
        yaml_path = peer_repo / "feature_store.yaml"
        yaml_path.write_text(yaml_path.read_text().replace("type: duckdb", "type: file"))
        peer = FeatureStore(repo_path=str(peer_repo))
        assert type(peer.config.offline_store).__name__ != type(duck.config.offline_store).__name__

        names = list(TREND_V1_FEATURES)
        sizes = sorted({n for n in (250, 500, 1000, 2000, len(entity_all)) if n <= len(entity_all)})
        print(
            f"get_historical_features, service trend_v1 ({len(names)} features), {args.days} days of M5 bars of one symbol "
            f"({len(entity_all)} bar closes); DuckDB x{args.repeat}, file store x{max(1, args.repeat // 2)} up to {args.file_max} rows"
        )
        print(
            f"{'entity rows':>11s} {'duckdb p50 s':>12s} {'duckdb max s':>12s} {'file p50 s':>10s} {'file/duckdb':>11s} {'same values':>11s}"
        )
        svc, psvc = duck.get_feature_service("trend_v1"), peer.get_feature_service("trend_v1")
        for n in sizes:
            ent = entity_all.tail(n).reset_index(drop=True)
            duck.get_historical_features(entity_df=ent.head(10), features=svc).to_df()  # warm-up
            d_t, d_out = _timed(
                lambda e=ent: duck.get_historical_features(entity_df=e, features=svc).to_df(),
                args.repeat,
            )
            line = f"{n:11d} {np.median(d_t):12.3f} {max(d_t):12.3f}"
            if n <= args.file_max:
                f_t, f_out = _timed(
                    lambda e=ent: peer.get_historical_features(entity_df=e, features=psvc).to_df(),
                    max(1, args.repeat // 2),
                )
                line += f" {np.median(f_t):10.3f} {np.median(f_t) / np.median(d_t):10.1f}x {'yes' if _same(d_out, f_out, names) else 'NO':>11s}"
            else:
                line += f" {'(skipped)':>10s} {'':>11s} {'':>11s}"
            print(line)
        v2 = duck.get_feature_service("trend_v2")
        t, out = _timed(
            lambda: duck.get_historical_features(entity_df=entity_all, features=v2).to_df(),
            args.repeat,
        )
        print(
            f"DuckDB, service trend_v2 (46 features + the 64x9 sequence), {len(entity_all)} rows: "
            f"p50 {np.median(t):.3f} s, max {max(t):.3f} s, {len(out.columns) - 2} columns"
        )


if __name__ == "__main__":
    main()
