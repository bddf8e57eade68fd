"""Engine benchmarks, measured in one run on the same bars:

1. tick-to-decision p50/p99 with the stage breakdown (feature read, predict, risk/sizing,
   order, total) — model in-process (the ONNX fallback path) and via serving over HTTP;
2. backtest throughput: decided bars/s through the full engine (risk, sizing, MT5 order path
   on the simulator, journal) against a vectorised numpy loop over the same bars (one batched
   ONNX call, positions and after-cost P&L as array operations).

The model is a small real XGBoost → ONNX bundle fitted here on earlier synthetic bars (the
training helper's bundles plug in the same way through ``--bundle``). Serving: ``--serving-url``
(with ``--serving-token``) uses a running service; otherwise the bench tries to start the
BentoML service on the bundle and reports why when it cannot.

    .venv/bin/python bench/engine_loop.py [--days 5] [--serving-bars 300] [--bundle DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

# run as `python bench/engine_loop.py`: the repository root goes on the path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

START = 1_768_204_800  # 2026-01-12 00:00 UTC, a Monday
SYMBOLS = ["EURUSD", "GBPUSD"]
HORIZON = 6
STAGES = ("feature_ms", "predict_ms", "risk_ms", "order_ms", "total_ms")


def make_bundle(out: Path, names: list[str]) -> Path:
    """Fit a small XGBoost on 10 days of synthetic bars before START, export ONNX, write
    model.onnx + manifest.json (with bundle_sha256)."""
    import xgboost as xgb

    from engine.mt5 import TIMEFRAMES
    from feature_repo.pipeline.ingest import open_platform_terminal
    from titanovax.engine_world import precompute_features
    from titanovax.settings import PlatformSettings
    from training.export import xgb_to_onnx

    s = PlatformSettings(symbols=SYMBOLS)
    t0, t1 = START - 14 * 86_400, START - 86_400
    term = open_platform_terminal(s, clock=lambda: t1)
    feats = precompute_features(term, SYMBOLS, "M5", t0, t1, 2, names)
    xs, ys = [], []
    for sym in SYMBOLS:
        rates = term.copy_rates_range(sym, TIMEFRAMES["M5"], t0 + 7200 - 300, t1 + 7200)
        assert rates is not None, term.last_error()
        close_at = dict(
            zip(
                (rates["time"].astype(np.int64) - 7200 + 300).tolist(),
                rates["close"].tolist(),
                strict=True,
            )
        )
        t, x = feats[sym]
        fwd = np.array(
            [
                close_at.get(int(ti) + HORIZON * 300, np.nan) / close_at.get(int(ti), np.nan) - 1
                for ti in t
            ]
        )
        ok = np.isfinite(fwd)
        dead = 0.5 * np.nanmedian(np.abs(fwd))
        ys.append(np.where(fwd[ok] > dead, 2, np.where(fwd[ok] < -dead, 0, 1)))
        xs.append(x[ok])
    model = xgb.XGBClassifier(n_estimators=60, max_depth=4, tree_method="hist", n_jobs=1)
    model.fit(np.vstack(xs).astype(np.float32), np.concatenate(ys))
    data = xgb_to_onnx(SimpleNamespace(booster=model), len(names)).SerializeToString()
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.onnx").write_bytes(data)
    manifest = {
        "model_name": "tx_bench",
        "model_version": "bench-1",
        "feature_service": "trend_v1",
        "feature_view": "trend_fv",
        "features": names,
        "input_name": "input",
        "prob_output": "probabilities",
        "classes": ["short", "flat", "long"],
        "positions": [-1, 0, 1],
        "min_confidence": 0.4,
        "timeframe": "M5",
        "symbols": SYMBOLS,
        "label_horizon": HORIZON,
        "bundle_sha256": hashlib.sha256(data).hexdigest(),
        "train_range": [t0, t1],
        "test_range": [START, START + 7 * 86_400],
        "metrics": {},
        "feature_views": ["trend_fv"],
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


def _pcts(stages: list[dict[str, float]]) -> dict[str, tuple[float, float, int]]:
    out = {}
    for k in STAGES:
        v = np.array([s[k] for s in stages if k in s])
        if len(v):
            out[k] = (float(np.percentile(v, 50)), float(np.percentile(v, 99)), len(v))
    return out


def _print_stages(title: str, stages: list[dict[str, float]]) -> None:
    print(f"\n{title}")
    print(f"  {'stage':<12}{'p50 ms':>10}{'p99 ms':>10}{'n':>8}")
    for k, (p50, p99, n) in _pcts(stages).items():
        print(f"  {k.removesuffix('_ms'):<12}{p50:>10.3f}{p99:>10.3f}{n:>8}")


def _engine(world: Any, model: Any, journal_target: str) -> Any:
    from engine.config import RiskLimits
    from engine.journal import Journal
    from engine.loop import Engine

    return Engine(
        terminal=world.terminal,
        features=world.features,
        model=model,
        journal=Journal(journal_target),
        limits=RiskLimits(daily_loss_limit=0.5, max_drawdown=0.9, max_consecutive_losses=0),
        lots=0.1,
        magic=4242,
        clock=lambda: float(world.now[0]),
        sleep=lambda s: None,
    )


def vectorised(
    world: Any, sess: Any, min_conf: float
) -> tuple[float, int, float, dict[str, dict[int, int]]]:
    """The same bars as one numpy program: batched ONNX, positions, after-spread P&L (closes
    are bid prices, so a round trip costs one spread: half a spread per unit of position change)."""
    from engine.mt5 import TIMEFRAMES

    world.set_time(max(int(world.features._tables[s][0][-1]) for s in SYMBOLS))  # every bar visible
    t0 = time.perf_counter()
    total, n = 0.0, 0
    positions: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for sym in SYMBOLS:
        t, x = world.features._tables[sym]
        rates = world.terminal.copy_rates_range(
            sym, TIMEFRAMES["M5"], int(t[0]) + 7200 - 300, int(t[-1]) + 7200 - 300
        )
        close_time = rates["time"].astype(np.int64) - 7200 + 300
        idx = np.searchsorted(close_time, t)
        if not np.array_equal(close_time[np.minimum(idx, len(close_time) - 1)], t):
            raise AssertionError(f"{sym}: bars and feature rows are not aligned")
        close = rates["close"][idx]
        spread = rates["spread"][idx] * 1e-5
        p = sess.run(["probabilities"], {"input": x.astype(np.float32)})[0]
        k = p.argmax(1)
        pos = np.where(p[np.arange(len(k)), k] >= min_conf, k - 1, 0)
        pnl = pos[:-1] * np.diff(close) - 0.5 * np.abs(np.diff(pos, prepend=0))[:-1] * spread[:-1]
        total += float(pnl.sum())
        n += len(t)
        positions[sym] = (t, pos)
    dt = time.perf_counter() - t0
    return (
        dt,
        n,
        total,
        {s: dict(zip(t.tolist(), p.tolist(), strict=True)) for s, (t, p) in positions.items()},
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--days", type=int, default=5, help="days of M5 bars to backtest (2 symbols)")
    ap.add_argument("--serving-bars", type=int, default=300, help="bars decided through serving")
    ap.add_argument(
        "--bundle",
        type=Path,
        default=None,
        help="model.onnx + manifest.json (default: fit a small one)",
    )
    ap.add_argument("--serving-url", default=None)
    ap.add_argument("--serving-token", default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)

    from engine.serving_client import OnnxModel
    from feature_repo.pipeline.transforms import TREND_V1_FEATURES
    from titanovax.engine_world import backtest_world
    from titanovax.settings import PlatformSettings

    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        names = list(TREND_V1_FEATURES)
        t = time.perf_counter()
        bundle = args.bundle or make_bundle(tmp / "bundle", names)
        manifest = json.loads((bundle / "manifest.json").read_text())
        names = list(manifest["features"])
        print(
            f"bundle: {bundle} ({manifest.get('model_version')}, sha256 {manifest['bundle_sha256'][:12]}…) in {time.perf_counter() - t:.1f} s"
        )
        s = PlatformSettings(symbols=SYMBOLS, home=tmp / "home")
        end = START + args.days * 86_400

        def world() -> Any:
            return backtest_world(s, START, end, names)

        w = world()
        n_bars = len(w.closes) * len(SYMBOLS)
        print(
            f"bars: {len(w.closes)} closes x {len(SYMBOLS)} symbols = {n_bars} decisions (M5, synthetic market)"
        )

        # -- in-process (the ONNX fallback path), journal on disk (SQLite WAL, synchronous=FULL)
        from engine.backtest import run_backtest

        local = OnnxModel.from_dir(bundle)
        e = _engine(w, local, str(tmp / "journal.sqlite"))
        res = run_backtest(e, w.closes, SYMBOLS, w.set_time)
        _print_stages(
            "tick-to-decision, model in-process (ONNX), journal SQLite on disk", e.stats.stages_ms
        )
        print(f"  verdicts {res.counts}  refusals {res.refusals}  equity {res.equity:.2f}")

        w2 = world()
        e2 = _engine(w2, OnnxModel.from_dir(bundle), ":memory:")
        res2 = run_backtest(e2, w2.closes, SYMBOLS, w2.set_time)

        w3 = world()
        dt_vec, n_vec, pnl, vec_pos = vectorised(
            w3, local.session, float(manifest.get("min_confidence", 0.0))
        )
        side = {"long": 1, "short": -1, "flat": 0}
        rows = [r for r in e.journal.rows() if r["decision"] in side]
        same = sum(
            vec_pos[r["symbol"]].get(int(r["bar_close"])) == side[r["decision"]] for r in rows
        )
        print("\nbacktest throughput (same bars)")
        print(
            f"  engine, journal on disk    {res.bars_per_s:>12,.0f} bars/s  ({res.decisions} in {res.seconds:.2f} s)"
        )
        print(
            f"  engine, journal in memory  {res2.bars_per_s:>12,.0f} bars/s  ({res2.decisions} in {res2.seconds:.2f} s)"
        )
        print(
            f"  vectorised numpy loop      {n_vec / dt_vec:>12,.0f} bars/s  ({n_vec} in {dt_vec * 1e3:.1f} ms)"
        )
        print(
            f"  ratio vectorised / engine  {(n_vec / dt_vec) / res2.bars_per_s:>12,.0f}x (in-memory journal)"
        )
        print(
            f"  same model decision as the engine on {same}/{len(rows)} bars; P&L at 0.1 lot: vectorised "
            f"{pnl * 0.1 * 100_000:,.2f} USD, engine {(res.equity or 0) - 10_000:,.2f} USD (fills, refusals, open position)"
        )

        # -- via serving
        serving(args, bundle, manifest, tmp, world, names)


def serving(
    args: Any, bundle: Path, manifest: dict[str, Any], tmp: Path, world: Any, names: list[str]
) -> None:
    """Decide ``--serving-bars`` bars with the model behind HTTP serving."""
    from engine.serving_client import ServingClient

    url, token, proc = args.serving_url, args.serving_token, None
    if url is None:
        try:
            url, token, proc = _start_serving(bundle, manifest, tmp)
        except Exception as exc:  # the bench reports, never hides, why serving is missing
            print(
                f"\nvia serving: not measured — could not start the BentoML service here: {exc!r}"
            )
            return
    try:
        w = world()
        client = ServingClient(url, timeout_s=2.0, token=token)
        closes = w.closes[: max(1, args.serving_bars // len(SYMBOLS))]
        for c in closes[:5]:  # warm the connection
            w.set_time(c)
            try:
                client.predict(w.features.read(SYMBOLS[0]))
            except Exception as exc:
                print(f"\nvia serving: not measured — {url} answered: {exc!r}")
                return
        e = _engine(w, client, ":memory:")
        w.set_time(closes[0])
        e.replay(closes, SYMBOLS, w.set_time)
        _print_stages(
            f"tick-to-decision, model via serving ({url}, POST {client.path})", e.stats.stages_ms
        )
    finally:
        if proc is not None:
            from serving.server import stop_server

            stop_server(proc)


def _start_serving(bundle: Path, manifest: dict[str, Any], tmp: Path) -> tuple[str, str, Any]:
    from serving import importer
    from serving.server import start_server, wait_ready
    from titanovax.redis_local import free_port

    home = tmp / "bentoml"
    store = importer._model_store(home)
    tag = importer._save(
        store,
        "tx_bench",
        "1",
        "champion",
        (bundle / "model.onnx").read_bytes(),
        manifest,
        source="bench",
    )
    token = "bench-token"
    port = free_port()
    proc = start_server(
        host="127.0.0.1",
        port=port,
        model_tag=str(tag),
        bentoml_home=home,
        log_path=tmp / "serving.log",
        token=token,
        tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}",
        model_name="tx_bench",
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, 180, proc=proc, log_path=tmp / "serving.log", token=token)
    return url, token, proc


if __name__ == "__main__":
    main()
