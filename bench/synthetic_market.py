"""Synthetic market generation: two years of M5 bars for one symbol, from a cold path cache.

What runs: :class:`engine.mt5.synthetic.SyntheticMarket` generating EURUSD M5 over 730 days
from a fresh instance (no cached weeks), ``--repeat`` times with different seeds. The peer,
measured in the same run: reading the same number of rows back from an in-memory numpy copy
(``np.copy`` of the generated array), the floor any generator is compared against.

This replaces the unit test's former ``elapsed < 2.0`` assertion: speed is a benchmark's
question (percentiles on this machine, a ratio against a peer), not a pass/fail of the suite.

    .venv/bin/python bench/synthetic_market.py [--repeat 5]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import json
import time

import numpy as np

from engine.mt5.synthetic import SyntheticMarket

DAY = 86_400


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--days", type=int, default=730)
    args = ap.parse_args()
    origin = 1_704_067_200  # 2024-01-01 00:00 UTC
    gen, copy = [], []
    rows = 0
    for i in range(args.repeat):
        t0 = time.perf_counter()
        r = SyntheticMarket(11 + i).rates("EURUSD", "M5", origin, origin + args.days * DAY)
        gen.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        np.copy(r)
        copy.append(time.perf_counter() - t0)
        rows = len(r)
    g, c = np.array(gen), np.array(copy)
    print(
        json.dumps(
            {
                "rows": rows,
                "generate_s": {"p50": float(np.median(g)), "p95": float(np.quantile(g, 0.95))},
                "copy_s": {"p50": float(np.median(c)), "p95": float(np.quantile(c, 0.95))},
                "ratio_generate_over_copy_p50": float(np.median(g) / max(np.median(c), 1e-9)),
                "rows_per_s_p50": float(rows / np.median(g)),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
