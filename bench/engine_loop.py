"""Engine benchmarks, measured in one run on the same bars:

1. tick-to-decision p50/p99 with the stage breakdown (feature read, predict, risk/sizing,
   order, total) — model in-process (the ONNX fallback path) and via serving over HTTP;
2. backtest throughput: decided bars/s through the full engine (risk, sizing, MT5 order path
   on the simulator, journal) against a vectorised numpy loop over the same bars (one batched
   ONNX call, positions and after-cost P&L as array operations);
3. with two spans, the long span's cost per decision against the short one's, in lockstep
   (:func:`lockstep`): on the very same bars (fresh short engines tiling the long span) and
   against the short span repeated, by kind of bar and by fifth of the run.

The model is a small real XGBoost → ONNX bundle fitted here on earlier synthetic bars (the
training helper's bundles plug in the same way through ``--bundle``). Serving: ``--serving-url``
(with ``--serving-token``) uses a running service; otherwise the bench tries to start the
BentoML service on the bundle and reports why when it cannot.

    .venv/bin/python bench/engine_loop.py [--spans 3,60] [--no-serving] [--bundle DIR]
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import itertools
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

# run as `python bench/engine_loop.py`: the repository root goes on the path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

START = 1_768_204_800  # 2026-01-12 00:00 UTC, a Monday
SYMBOLS = ["EURUSD", "GBPUSD", "USDJPY", "XAUUSD"]
HORIZON = 6
SEGMENT_S = 5 * 86_400
STAGES = ("feature_ms", "predict_ms", "risk_ms", "order_ms", "total_ms")


def make_bundle(out: Path, names: list[str], symbols: list[str]) -> Path:
    """Fit a small XGBoost on 10 days of synthetic bars before START, export ONNX, write
    model.onnx + manifest.json (with bundle_sha256)."""
    import xgboost as xgb

    from engine.mt5 import TIMEFRAMES
    from feature_repo.pipeline.ingest import open_platform_terminal
    from titanovax.engine_world import precompute_features
    from titanovax.settings import PlatformSettings
    from training.export import xgb_to_onnx

    s = PlatformSettings(symbols=symbols)
    t0, t1 = START - 14 * 86_400, START - 86_400
    term = open_platform_terminal(s, clock=lambda: t1)
    feats = precompute_features(term, symbols, "M5", t0, t1, 2, names)
    xs, ys = [], []
    for sym in symbols:
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
    model.get_booster().save_model(str(out / "xgb_booster.ubj"))  # serving's TreeSHAP
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
        "symbols": symbols,
        "label_horizon": HORIZON,
        "bundle_sha256": hashlib.sha256(data).hexdigest(),
        "train_range": [t0, t1],
        "test_range": [START, START + 7 * 86_400],
        "metrics": {},
        "feature_views": ["trend_fv"],
        "native_booster": "xgb_booster.ubj",
        "explanation_outputs": {
            "regime_state": None,
            "regime_probabilities": None,
            "member_weights": None,
            "members": [{"name": "xgb", "probabilities": "probabilities"}],
        },
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


def _engine(world: Any, model: Any, journal_target: str, *, durable: bool = True) -> Any:
    from engine.config import RiskLimits
    from engine.journal import Journal
    from engine.loop import Engine

    return Engine(
        terminal=world.terminal,
        features=world.features,
        model=model,
        journal=Journal(journal_target, durable=durable),
        limits=RiskLimits(daily_loss_limit=0.5, max_drawdown=0.9, max_consecutive_losses=0),
        lots=0.1,
        magic=4242,
        clock=lambda: float(world.now[0]),
        sleep=lambda s: None,
    )


def vectorised(
    world: Any, sess: Any, min_conf: float, symbols: list[str]
) -> tuple[float, float, int, float, dict[str, dict[int, int]]]:
    """The same bars as one numpy program: batched ONNX, positions, after-spread P&L (closes
    are bid prices, so a round trip costs one spread: half a spread per unit of position change)."""
    from engine.mt5 import TIMEFRAMES

    off = 7200
    world.set_time(max(int(world.features._tables[s][0][-1]) for s in symbols))  # all visible
    t0, c0 = time.perf_counter(), time.process_time()
    total, n = 0.0, 0
    positions: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for sym in symbols:
        t, x = world.features._tables[sym]
        keep = t > START  # the engine decides closes in (START, end]
        t, x = t[keep], x[keep]
        rates = world.terminal.copy_rates_range(
            sym, TIMEFRAMES["M5"], int(t[0]) + off - 300, int(t[-1]) + off - 300
        )
        close_time = rates["time"].astype(np.int64) - off + 300
        idx = np.searchsorted(close_time, t)
        if not np.array_equal(close_time[np.minimum(idx, len(close_time) - 1)], t):
            raise AssertionError(f"{sym}: bars and feature rows are not aligned")
        close = rates["close"][idx]
        spread = rates["spread"][idx] * world.terminal.symbol_info(sym).point
        p = sess.run(["probabilities"], {"input": x.astype(np.float32)})[0]
        k = p.argmax(1)
        pos = np.where(p[np.arange(len(k)), k] >= min_conf, k - 1, 0)
        pnl = pos[:-1] * np.diff(close) - 0.5 * np.abs(np.diff(pos, prepend=0))[:-1] * spread[:-1]
        total += float(pnl.sum())
        n += len(t)
        positions[sym] = (t, pos)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    return (
        dt,
        cpu,
        n,
        total,
        {s: dict(zip(t.tolist(), p.tolist(), strict=True)) for s, (t, p) in positions.items()},
    )


# -- per-stage share: the engine's stages timed by wrapping its own methods on the instance --
STAGE_HOOKS = (  # (stage, object path on the engine, method)
    ("account (terminal -> risk)", "", "_observe_account"),
    ("features", "features", "read"),
    ("model", "model", "predict"),
    ("plan (quotes, sizing, risk)", "", "_plan"),
    ("orders (executor, terminal, intents)", "", "_move_position"),
    ("journal: decided()", "journal", "decided"),
    ("journal: record()", "journal", "record"),
    ("journal: commit()", "journal", "commit"),
    ("metrics + stats", "", "_finish"),
)
TERMINAL = "  of which in the simulated terminal"  # nested in the stages above
TERMINAL_CALLS = (
    "account_info",
    "positions_get",
    "history_deals_get",
    "symbol_info",
    "symbol_info_tick",
    "copy_rates_from_pos",
    "order_send",
    "order_check",
)


def _timed(fn: Any, acc: dict[str, float], key: str) -> Any:
    def wrapper(*a: Any, **k: Any) -> Any:
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            acc[key] = acc.get(key, 0.0) + time.perf_counter() - t

    return wrapper


def instrument(engine: Any) -> dict[str, float]:
    """Wrap the engine's stage methods (present ones only) with timers; returns the totals
    (seconds). ``metrics + stats`` is ``_finish`` minus the journal's ``record``."""
    acc: dict[str, float] = {}
    for stage, path, name in STAGE_HOOKS:
        obj = getattr(engine, path) if path else engine
        fn = getattr(obj, name, None)
        if fn is not None:
            setattr(obj, name, _timed(fn, acc, stage))
    for name in TERMINAL_CALLS:
        setattr(engine.terminal, name, _timed(getattr(engine.terminal, name), acc, TERMINAL))
    return acc


def print_shares(title: str, acc: dict[str, float], wall: float, n: int) -> None:
    acc = dict(acc)
    nested = acc.pop(TERMINAL, 0.0)
    if "metrics + stats" in acc:
        acc["metrics + stats"] -= acc.get("journal: record()", 0.0) + acc.get(
            "journal: commit()", 0.0
        )
    acc["other (loop, lock, records)"] = wall - sum(acc.values())
    print(f"\n{title}: {n} decisions in {wall:.2f} s = {wall / n * 1e6:.1f} us/decision")
    print(f"  {'stage':<40}{'share':>8}{'us/decision':>14}")
    for k, v in sorted(acc.items(), key=lambda kv: -kv[1]):
        print(f"  {k:<40}{v / wall:>8.1%}{v / n * 1e6:>14.1f}")
    print(f"  {TERMINAL:<40}{nested / wall:>8.1%}{nested / n * 1e6:>14.1f}")


def print_segment_stages(segs: list[tuple[Any, ...]]) -> None:
    """Along the instrumented run, by 5-day segment: µs per decision spent in the journal,
    in the simulated terminal (nested in the stages), in the engine's other timed stages
    (without the terminal) and in all (CPU): which part, if any, grows with the run."""
    if len(segs) < 3:
        return
    print("  along the run (stage timers on), us per decision by 5-day segment (stages: wall):")
    print(f"    {'segment':<9}{'journal':>9}{'terminal':>10}{'other stages':>14}{'all (CPU)':>11}")
    for a, b in itertools.pairwise(segs):
        n = b[2] - a[2]
        if n <= 0:
            continue
        d = {k: b[3].get(k, 0.0) - a[3].get(k, 0.0) for k in b[3]}
        journal = sum(v for k, v in d.items() if k.startswith("journal"))
        terminal = d.get(TERMINAL, 0.0)
        # the terminal is nested in the stages, record() and commit() in _finish's
        nested = terminal + d.get("journal: record()", 0.0) + d.get("journal: commit()", 0.0)
        other = sum(v for k, v in d.items() if k != TERMINAL and not k.startswith("journal"))
        other -= nested
        print(
            f"    {a[0]:<9}{journal / n * 1e6:>9.1f}{terminal / n * 1e6:>10.1f}"
            f"{other / n * 1e6:>14.1f}{(b[1] - a[1]) / n * 1e6:>11.1f}"
        )


def _component(path: str, name: str) -> str:
    if "engine/loop.py" in path:
        return "loop.py" + (": deal scan in _observe_account" if "listcomp" in name else "")
    if "engine/execution.py" in path:
        return "execution.py" + (": find_existing deal scan" if name == "find_existing" else "")
    if "engine/journal.py" in path or "sqlite3" in name:
        return "journal (journal.py + sqlite3)"
    if "json" in path:
        return "json (journal columns, risk state)"
    if "engine/mt5/" in path:
        return "simulated terminal (engine/mt5)"
    if "prometheus_client" in path or "engine/metrics.py" in path:
        return "metrics (prometheus_client)"
    if "engine/risk.py" in path or "engine/sizing.py" in path:
        return "risk + sizing"
    if "engine/backtest.py" in path:
        return "features + precomputed answers (backtest.py)"
    if "numpy" in path or "numpy" in name:
        return "numpy"
    if "hashlib" in name or "base64" in path or "sha256" in name:
        return "client order ids (sha256, base32)"
    return "other (builtins, dataclasses, enum, logging)"


def profile_components(world: Any, bundle: Path, symbols: list[str]) -> None:
    """cProfile of one in-memory backtest (predictions precomputed when available), its
    ``tottime`` summed by component (the profiler inflates call-heavy Python: read shares)."""
    import cProfile
    import pstats

    import engine.backtest as bt
    from engine.serving_client import OnnxModel

    model: Any = OnnxModel.from_dir(bundle)
    if hasattr(bt, "PrecomputedModel"):
        model = bt.PrecomputedModel.score(model, world.features, symbols)
    e = _engine(world, model, ":memory:")
    prof = cProfile.Profile()
    prof.enable()
    res = bt.run_backtest(e, world.closes, symbols, world.set_time)
    prof.disable()
    agg: dict[str, float] = {}
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    for (path, _, name), (_, _, tt, _, _) in stats.items():
        k = _component(path, name)
        agg[k] = agg.get(k, 0.0) + tt
    total = sum(agg.values())
    print(f"\ncProfile by component ({res.decisions} decisions, tottime shares)")
    for k, v in sorted(agg.items(), key=lambda kv: -kv[1]):
        print(f"  {k:<52}{v / total:>7.1%}")


def journal_fingerprint(journal: Any) -> tuple[list[Any], list[Any], Any]:
    """Everything the journal holds except wall-clock stamps and measured latencies."""
    rows = [{k: v for k, v in r.items() if k != "latency_ms"} for r in journal.rows()]
    intents = [
        {k: v for k, v in vars(it).items() if k not in ("created_at", "updated_at")}
        for it in journal.intents()
    ]
    return rows, intents, journal.load_state("risk")


def run_engine(
    world: Any,
    bundle: Path,
    journal_target: str,
    symbols: list[str],
    *,
    precomputed: bool,
    stages: bool = False,
    segments: list[tuple[Any, ...]] | None = None,
    durable: bool = True,
) -> tuple[Any, Any, float, float, dict[str, float] | None]:
    """One engine backtest: ``(engine, result, wall s, cpu s, stage totals)``; the up-front
    batched scoring (if any) counts in both times."""
    import engine.backtest as bt
    from engine.serving_client import OnnxModel

    model: Any = OnnxModel.from_dir(bundle)
    e = _engine(world, model, journal_target, durable=durable)
    acc = instrument(e) if stages else None
    if stages:  # the whole on_bar: the decision and its journal commit
        on_bar = e.on_bar

        def timed_on_bar(symbol: str, bar_close: int) -> Any:
            t = time.perf_counter()
            try:
                return on_bar(symbol, bar_close)
            finally:
                e.bench_on_bar_ms.append((time.perf_counter() - t) * 1e3)

        e.bench_on_bar_ms = []
        e.on_bar = timed_on_bar
    t0, c0 = time.perf_counter(), time.process_time()
    if precomputed:
        e.model = bt.PrecomputedModel.score(model, world.features, symbols)
        if acc is not None:
            e.model.predict = _timed(e.model.predict, acc, "model")
    set_time = world.set_time
    if segments is not None:  # (segment, CPU s, decisions, stage totals) at each 5-day boundary

        def set_time(t: int) -> None:
            k = (t - START - 1) // SEGMENT_S
            if not segments or segments[-1][0] != k:
                segments.append((k, time.process_time(), e.stats.bars, dict(acc or {})))
            world.set_time(t)

    res = bt.run_backtest(e, world.closes, symbols, set_time)
    if segments is not None:
        segments.append((-1, time.process_time(), e.stats.bars, dict(acc or {})))
    return e, res, time.perf_counter() - t0, time.process_time() - c0, acc


class _NoMetrics:
    """Ablation only (:func:`ablation`): a metrics sink that records nothing."""

    def __getattr__(self, name: str) -> Any:
        return self

    def __call__(self, *a: Any, **k: Any) -> Any:
        return self


ABLATIONS = ("none", "metrics", "decision row", "metrics + decision row")


def ablation(
    make_world: Callable[[], Any], bundle: Path, symbols: list[str], vec_rate: float, runs: int = 3
) -> None:
    """What the engine's backtest would cost without parts it cannot do without: the
    Prometheus metrics (a sink that records nothing) and the journal's decision row
    (``record`` skipped), alone and together, predictions precomputed, journal ``:memory:``.
    Not a mode of the engine: a bound on what removing them could give, against the 1/10
    target. Variants interleaved ``runs`` times, best CPU time of each."""
    import engine.backtest as bt
    from engine.serving_client import OnnxModel

    best: dict[str, float] = {}
    n = 0
    for _ in range(runs):
        for name in ABLATIONS:
            w = make_world()
            model = bt.PrecomputedModel.score(OnnxModel.from_dir(bundle), w.features, symbols)
            e = _engine(w, model, ":memory:")
            if "metrics" in name:
                e.metrics = _NoMetrics()
            if "decision row" in name:
                e.journal.record = lambda rec: None
            c0 = time.process_time()
            res = bt.run_backtest(e, w.closes, symbols, w.set_time)
            cpu = time.process_time() - c0
            n = res.decisions
            best[name] = min(best.get(name, float("inf")), cpu)
    print(
        f"\nablation, {n} decisions, predictions precomputed, journal :memory: (best CPU of {runs}):"
    )
    print(f"  {'removed':<26}{'us/decision':>12}{'dec/CPU s':>11}{'ratio':>9}")
    for name in ABLATIONS:
        rate = n / best[name]
        print(
            f"  {name:<26}{best[name] / n * 1e6:>12.1f}{rate:>11,.0f}"
            f"{rate / vec_rate:>9.4f}  (1/{vec_rate / rate:,.0f})"
        )
    print(
        f"  target: >= 0.1 of the vectorised loop's {vec_rate:,.0f}/CPU s = {1e7 / vec_rate:.1f} us/decision"
    )


def lockstep(
    make_world: Callable[[int, int], Any],
    bundle: Path,
    symbols: list[str],
    short_days: int,
    long_days: int,
    journal: Callable[[str], str],
    *,
    aligned: bool = False,
) -> dict[str, Any]:
    """The long span and short ones decided in turn, one close (all symbols) each, on one
    thread: the long span's engine goes through its run once while fresh short-span engines
    (new world, new journal) go through theirs beside it. Both are timed by the thread's CPU
    clock around the same kind of step, so the drift of a shared machine's speed (which moved
    sequential runs of the same span by 25 % here) falls on both alike.

    ``aligned=False``: every short run is the span's first ``short_days`` (the bench's short
    backtest, again and again). ``aligned=True``: the short runs tile the long span, each a
    fresh engine started at the beginning of its window, so both engines decide the very same
    bar at each step, and what differs is only what the long engine carries from the days
    before (journal, deals, positions): whether the cost per decision grows with the run.

    ``make_world(start, end)``: a backtest world over ``(start, end]``; ``journal(tag)``: the
    journal target of each engine. Returns CPU µs per decision of both, by kind of bar, and by
    fifth of the long run."""
    import engine.backtest as bt
    from engine.serving_client import OnnxModel

    onnx = OnnxModel.from_dir(bundle)
    window = short_days * 86_400

    def start(t0: int, days: int, tag: str) -> tuple[Any, Any]:
        w = make_world(t0, t0 + days * 86_400)
        model = bt.PrecomputedModel.score(onnx, w.features, symbols)
        e = _engine(w, model, journal(tag), durable=False)
        return w, e

    # CPU s and decisions by side and by kind of bar (True: with orders)
    kinds = {side: {True: [0.0, 0], False: [0.0, 0]} for side in ("long", "short")}

    def step(w: Any, e: Any, close: int, side: str) -> float:
        c0 = time.thread_time()
        w.set_time(close)
        total = time.thread_time() - c0
        for sym in symbols:
            c = time.thread_time()
            rec = e.on_bar(sym, close)
            dt = time.thread_time() - c
            total += dt
            if rec is not None:
                slot = kinds[side][rec.order_request is not None]
                slot[0] += dt
                slot[1] += 1
        return total

    wl, el = start(START, long_days, f"long{long_days}")
    runs = 0
    ws, es = start(START, short_days, f"short{short_days}-{runs}")
    it = iter(ws.closes)
    at = 0  # aligned: the window of the running short engine
    fifths = 5
    per = max(1, len(wl.closes) // fifths)
    cpu = {"long": [0.0] * fifths, "short": [0.0] * fifths}
    n = {"long": [0] * fifths, "short": [0] * fifths}
    gc.freeze()
    try:
        for i, close in enumerate(wl.closes):
            k = min(i // per, fifths - 1)
            cpu["long"][k] += step(wl, el, close, "long")
            n["long"][k] += len(symbols)
            if aligned:
                c = close
                if (close - START - 1) // window != at:  # the next window: a fresh engine
                    es.journal.close()
                    runs += 1
                    at = (close - START - 1) // window
                    ws, es = start(START + at * window, short_days, f"short{short_days}-{runs}")
                if close not in ws.closes:
                    raise AssertionError(f"close {close} is not in the short world's bars")
            else:
                nxt = next(it, None)
                if nxt is None:  # the short run ended: a fresh one (world, engine, journal)
                    es.journal.close()
                    runs += 1
                    ws, es = start(START, short_days, f"short{short_days}-{runs}")
                    it = iter(ws.closes)
                    nxt = next(it)
                c = nxt
            cpu["short"][k] += step(ws, es, c, "short")
            n["short"][k] += len(symbols)
    finally:
        gc.unfreeze()
        el.journal.close()
        es.journal.close()
    us = {side: sum(cpu[side]) / sum(n[side]) * 1e6 for side in cpu}
    return {
        "long_us": us["long"],
        "short_us": us["short"],
        "short_runs": runs + 1,
        "kinds": {  # side -> (us per bar with orders, us per bar without, share with orders)
            side: (
                by[True][0] / max(by[True][1], 1) * 1e6,
                by[False][0] / max(by[False][1], 1) * 1e6,
                by[True][1] / max(by[True][1] + by[False][1], 1),
            )
            for side, by in kinds.items()
        },
        "fifths": [
            (cpu["long"][k] / n["long"][k] * 1e6, cpu["short"][k] / n["short"][k] * 1e6)
            for k in range(fifths)
            if n["long"][k] and n["short"][k]
        ],
    }


def print_lockstep(title: str, r: dict[str, Any], short_days: int, long_days: int) -> None:
    print(
        f"  {title}: {long_days}-day {r['long_us']:.1f} us/decision (CPU), {short_days}-day "
        f"{r['short_us']:.1f} ({r['short_runs']} runs beside it): {long_days}-day per decision "
        f"= {r['long_us'] / r['short_us']:.3f}x the {short_days}-day (<= 1: no slower)"
    )
    (lo, ln, lf), (so, sn, sf) = r["kinds"]["long"], r["kinds"]["short"]
    print(
        f"    bars with orders {lo:.1f} vs {so:.1f} us ({lo / so:.3f}x), without {ln:.1f} vs "
        f"{sn:.1f} us ({ln / sn:.3f}x); with orders {lf:.1%} of the long span's bars, "
        f"{sf:.1%} of the short's; the long span's costs at the short's mix: "
        f"{(sf * lo + (1 - sf) * ln) / (sf * so + (1 - sf) * sn):.3f}x"
    )
    print(
        "    by fifth of the long run, long/short: "
        + ", ".join(f"{a / b:.3f}" for a, b in r["fifths"])
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--spans", default="3,60", help="backtest spans in days, comma-separated")
    ap.add_argument("--symbols", default=",".join(SYMBOLS), help="comma-separated symbols")
    ap.add_argument("--serving-bars", type=int, default=300, help="bars decided through serving")
    ap.add_argument("--no-serving", action="store_true", help="skip the serving measurement")
    ap.add_argument(
        "--bundle",
        type=Path,
        default=None,
        help="model.onnx + manifest.json (default: fit a small one)",
    )
    ap.add_argument(
        "--cprofile",
        type=int,
        default=0,
        help="also print a cProfile of an N-day run by component (0: off)",
    )
    ap.add_argument(
        "--explain-compare",
        action="store_true",
        help="only compare tick-to-decision via serving with explanations on (journaled + "
        "contributions worker calling /v1/explain) and off, interleaved in one run",
    )
    ap.add_argument(
        "--bar-gap-ms",
        type=float,
        default=50.0,
        help="--explain-compare: wall time between bar closes, both modes (live M5: 300000)",
    )
    ap.add_argument(
        "--ablate",
        action="store_true",
        help="also time the short span without the metrics and/or the journal's decision row "
        "(a bound, not a mode of the engine)",
    )
    ap.add_argument("--serving-url", default=None)
    ap.add_argument("--serving-token", default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    symbols = [s.strip().upper() for s in args.symbols.split(",") if s.strip()]
    spans = [int(d) for d in args.spans.split(",")]

    import engine.backtest as bt
    from feature_repo.pipeline.transforms import TREND_V1_FEATURES
    from titanovax.engine_world import backtest_world
    from titanovax.settings import PlatformSettings

    has_pre = hasattr(bt, "PrecomputedModel")
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        names = list(TREND_V1_FEATURES)
        t = time.perf_counter()
        bundle = args.bundle or make_bundle(tmp / "bundle", names, symbols)
        manifest = json.loads((bundle / "manifest.json").read_text())
        names = list(manifest["features"])
        min_conf = float(manifest.get("min_confidence", 0.0))
        print(
            f"bundle: {bundle} ({manifest.get('model_version')}, sha256 {manifest['bundle_sha256'][:12]}…) in {time.perf_counter() - t:.1f} s"
        )
        s = PlatformSettings(symbols=symbols, home=tmp / "home")
        if args.explain_compare:
            explain_compare(
                args,
                bundle,
                manifest,
                tmp,
                lambda: backtest_world(s, START, START + 3 * 86_400, names),
                symbols,
            )
            return
        summary = []
        pre_rate: dict[int, float] = {}  # span -> precomputed engine decisions per CPU s
        for days in spans:
            end = START + days * 86_400

            def world(end: int = end) -> Any:
                return backtest_world(s, START, end, names)

            w = world()
            n_bars = len(w.closes) * len(symbols)
            print(
                f"\n=== span {days} days: {len(w.closes)} closes x {len(symbols)} symbols "
                f"= {n_bars} decisions (M5, synthetic market, journal in memory) ==="
            )
            e_bar, r_bar, wall_bar, cpu_bar, _ = run_engine(
                w, bundle, ":memory:", symbols, precomputed=False
            )
            engine_runs = [("engine, model per bar (ONNX)", wall_bar, cpu_bar)]
            same_journal = None
            file_runs: list[tuple[str, float, float]] = []  # shown, not in the ratio
            segs: list[tuple[Any, ...]] = []
            if has_pre:
                w2 = world()
                e_pre, _, wall_pre, cpu_pre, _ = run_engine(
                    w2, bundle, ":memory:", symbols, precomputed=True, segments=segs
                )
                engine_runs.append(("engine, predictions precomputed", wall_pre, cpu_pre))
                pre_rate[days] = e_pre.stats.bars / cpu_pre
                same_journal = journal_fingerprint(e_pre.journal) == journal_fingerprint(
                    e_bar.journal
                )
                # what `tx engine run --mode backtest` runs: a new SQLite file, not durable
                e_file, _, wall_file, cpu_file, _ = run_engine(
                    world(),
                    bundle,
                    str(tmp / f"backtest-{days}d.sqlite"),
                    symbols,
                    precomputed=True,
                    durable=False,
                )
                file_runs.append(("  same, journal a file (tx's default)", wall_file, cpu_file))
                same_journal = same_journal and journal_fingerprint(
                    e_file.journal
                ) == journal_fingerprint(e_bar.journal)
            sess = _onnx_session(bundle)
            vec = [vectorised(world(), sess, min_conf, symbols) for _ in range(3)]
            wall_vec = float(np.median([v[0] for v in vec]))
            cpu_vec = float(np.median([v[1] for v in vec]))
            _, _, n_vec, pnl, vec_pos = vec[0]
            n = r_bar.decisions
            print(f"  {'':<36}{'decisions/s':>14}{'per CPU s':>12}{'us/decision':>13}")
            for name, wall, cpu in engine_runs + file_runs:
                print(f"  {name:<36}{n / wall:>14,.0f}{n / cpu:>12,.0f}{wall / n * 1e6:>13.1f}")
            print(
                f"  {'vectorised numpy loop (median of 3)':<36}{n_vec / wall_vec:>14,.0f}"
                f"{n_vec / cpu_vec:>12,.0f}{wall_vec / n_vec * 1e6:>13.2f}"
            )
            best_wall = min(r[1] for r in engine_runs)
            best_cpu = min(r[2] for r in engine_runs)
            ratio_wall = (n / best_wall) / (n_vec / wall_vec)
            ratio_cpu = (n / best_cpu) / (n_vec / cpu_vec)
            print(
                f"  ratio engine / vectorised: {ratio_wall:.4f} wall (1/{1 / ratio_wall:,.0f}), "
                f"{ratio_cpu:.4f} CPU (1/{1 / ratio_cpu:,.0f}); target >= 0.1"
            )
            if same_journal is not None:
                print(
                    "  journal with precomputed predictions (memory and file) identical to "
                    f"per-bar: {same_journal}"
                )
            if len(segs) > 2:
                print(
                    "  along the run (precomputed), decisions per CPU s by 5-day segment: "
                    + ", ".join(
                        f"{(b[2] - a[2]) / (b[1] - a[1]):,.0f}"
                        for a, b in itertools.pairwise(segs)
                        if b[1] > a[1]
                    )
                )
            side = {"long": 1, "short": -1, "flat": 0}
            rows = [r for r in e_bar.journal.rows() if r["decision"] in side]
            same = sum(
                vec_pos[r["symbol"]].get(int(r["bar_close"])) == side[r["decision"]] for r in rows
            )
            print(
                f"  model decision equal to the vectorised loop's on {same}/{len(rows)} bars "
                f"({n_bars - len(rows)} refused before the model); verdicts {r_bar.counts}"
            )
            print(
                f"  P&L at 0.1 lot: vectorised {pnl * 0.1 * 100_000:,.2f} (quote ccy, no fills), "
                f"engine equity {r_bar.equity:,.2f} USD"
            )
            stage_segs: list[tuple[Any, ...]] = []
            _, r4, wall4, _, acc = run_engine(
                world(),
                bundle,
                ":memory:",
                symbols,
                precomputed=has_pre,
                stages=True,
                segments=stage_segs,
            )
            assert acc is not None
            print_shares(
                f"  per-stage share, {days} days, journal in memory"
                + (", predictions precomputed" if has_pre else ""),
                acc,
                wall4,
                r4.decisions,
            )
            print_segment_stages(stage_segs)
            summary.append(
                (
                    days,
                    n,
                    n / best_wall,
                    n / best_cpu,
                    ratio_wall,
                    ratio_cpu,
                    same,
                    len(rows),
                    same_journal,
                )
            )
            if args.ablate and has_pre and days == spans[0]:
                ablation(world, bundle, symbols, n_vec / cpu_vec)

        # -- the short span with the journal on disk (SQLite WAL, durable: a WAL flush per commit point)
        days = spans[0]
        wd = backtest_world(s, START, START + days * 86_400, names)
        e_d, r_d, wall_d, _, acc_d = run_engine(
            wd, bundle, str(tmp / "journal.sqlite"), symbols, precomputed=has_pre, stages=True
        )
        assert acc_d is not None
        _print_stages(
            f"tick-to-decision, {days} days, journal SQLite on disk (stage timers on)",
            e_d.stats.stages_ms,
        )
        full = np.array(e_d.bench_on_bar_ms)
        print(
            f"  on_bar including the journal commit(s) (durable: the decision row written): "
            f"p50 {np.percentile(full, 50):.3f} ms, p99 {np.percentile(full, 99):.3f} ms, "
            f"n {len(full)}"
        )
        print(f"  {r_d.decisions / wall_d:,.0f} decisions/s")
        print_shares(
            f"  per-stage share, {days} days, journal on disk", acc_d, wall_d, r_d.decisions
        )

        print("\nsummary (best engine run per span; ratio = engine / vectorised decisions/s)")
        print(
            f"  {'days':>5}{'decisions':>10}{'dec/s':>9}{'dec/CPU s':>11}{'ratio wall':>12}"
            f"{'ratio CPU':>11}{'same as vectorised':>20}{'journal =':>11}"
        )
        for days, n, rw, rc, qw, qc, same, nrows, sj in summary:
            print(
                f"  {days:>5}{n:>10}{rw:>9,.0f}{rc:>11,.0f}{qw:>12.4f}{qc:>11.4f}"
                f"{f'{same}/{nrows}':>20}{sj!s:>11}"
            )
        if len(summary) >= 2:
            a, b = summary[0], summary[-1]
            print(
                f"  {b[0]}-day vs {a[0]}-day engine decisions per CPU s: {b[3] / a[3]:.2f}x, per wall s: "
                f"{b[2] / a[2]:.2f}x (>= 1: the long span is no slower per decision)"
            )
        if len(spans) >= 2 and has_pre:
            # the load of a shared machine drifts during the run: the short span once more
            # after the long one, so the long run is compared with the two runs around it
            d0, d1 = spans[0], spans[-1]
            w0 = backtest_world(s, START, START + d0 * 86_400, names)
            e0, _, _, cpu0, _ = run_engine(w0, bundle, ":memory:", symbols, precomputed=True)
            before, after, long_rate = pre_rate[d0], e0.stats.bars / cpu0, pre_rate[d1]
            print(
                f"  precomputed, decisions per CPU s: {d0}-day {before:,.0f}, then {d1}-day "
                f"{long_rate:,.0f}, then {d0}-day again {after:,.0f}: {d1}-day / mean of the "
                f"{d0}-day runs = {long_rate / ((before + after) / 2):.2f}x"
            )

        if len(spans) >= 2 and has_pre:
            d0, d1 = spans[0], spans[-1]
            print(
                f"\nlockstep, the {d1}-day engine beside fresh {d0}-day ones (predictions precomputed, "
                "one close of each in turn, CPU time of the thread):"
            )
            for run, (title, target, aligned) in enumerate(
                (
                    (
                        "the same bars, journal file, durable=False (a backtest's choice)",
                        "file",
                        True,
                    ),
                    (
                        "the short span's first days again, journal file, durable=False",
                        "file",
                        False,
                    ),
                    ("the short span's first days again, journal SQLite :memory:", "memory", False),
                ),
            ):

                def journal(tag: str, run: int = run, target: str = target) -> str:
                    return (
                        str(tmp / f"lockstep{run}-{tag}.sqlite") if target == "file" else ":memory:"
                    )

                r = lockstep(
                    lambda a, b: backtest_world(s, a, b, names),
                    bundle,
                    symbols,
                    d0,
                    d1,
                    journal,
                    aligned=aligned,
                )
                print_lockstep(title, r, d0, d1)

        if args.cprofile:
            profile_components(
                backtest_world(s, START, START + args.cprofile * 86_400, names), bundle, symbols
            )

        if not args.no_serving:
            serving(
                args,
                bundle,
                manifest,
                tmp,
                lambda: backtest_world(s, START, START + spans[0] * 86_400, names),
                symbols,
            )


def _onnx_session(bundle: Path) -> Any:
    from engine.serving_client import OnnxModel

    return OnnxModel.from_dir(bundle).session


def serving(
    args: Any, bundle: Path, manifest: dict[str, Any], tmp: Path, world: Any, symbols: list[str]
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
        closes = w.closes[: max(1, args.serving_bars // len(symbols))]
        for c in closes[:5]:  # warm the connection
            w.set_time(c)
            try:
                client.predict(w.features.read(symbols[0]))
            except Exception as exc:
                print(f"\nvia serving: not measured — {url} answered: {exc!r}")
                return
        e = _engine(w, client, ":memory:")
        w.set_time(closes[0])
        e.replay(closes, symbols, w.set_time)
        _print_stages(
            f"tick-to-decision, model via serving ({url}, POST {client.path})", e.stats.stages_ms
        )
    finally:
        if proc is not None:
            from serving.server import stop_server

            stop_server(proc)


def explain_compare(
    args: Any,
    bundle: Path,
    manifest: dict[str, Any],
    tmp: Path,
    world: Any,
    symbols: list[str],
    rounds: int = 6,
) -> None:
    """Tick-to-decision with explanations on and off, in one run against one serving: the
    bars are decided in ``rounds`` alternating blocks (off, on, off, on, ...), each block a
    fresh engine on a fresh file journal. "On": the engine journals probabilities,
    explanation and feature vector, and the contributions worker runs next to it (its own
    thread and journal connection, POST /v1/explain). "Off": ``explain=False``, no worker.

    Bars arrive ``--bar-gap-ms`` apart in both modes (live M5 bars are 300 s apart; a replay
    without any gap would measure a worker competing with back-to-back decisions, which
    never happens live): the worker explains each bar in the gap after its commit."""
    from engine.explain_worker import ExplainClient, ExplainWorker
    from engine.serving_client import ServingClient

    url, token, proc = args.serving_url, args.serving_token, None
    if url is None:
        url, token, proc = _start_serving(bundle, manifest, tmp)
    try:
        w0 = world()
        n_per = max(1, args.serving_bars // len(symbols))
        closes = w0.closes[:n_per]
        stages: dict[bool, list[dict[str, float]]] = {False: [], True: []}
        stored = 0
        for i in range(rounds):
            on = bool(i % 2)
            w = world()
            client = ServingClient(url, timeout_s=2.0, token=token)
            for c in closes[:3]:  # warm the connection
                w.set_time(c)
                client.predict(w.features.read(symbols[0]))
            target = str(tmp / f"explain-{i}.sqlite")
            e = _engine(w, client, target)
            e.explain = on
            worker = None
            if on:
                worker = ExplainWorker(
                    target,
                    e.journal.scope,
                    ExplainClient(url, token=token),
                    poll_s=0.005,
                    batch=len(symbols),
                ).start()
            w.set_time(closes[0])
            gap = args.bar_gap_ms / 1e3

            def paced(t: int, w: Any = w, gap: float = gap) -> None:
                time.sleep(gap)  # the time until the next bar closes (both modes alike)
                w.set_time(t)

            e.replay(closes, symbols, paced)
            stages[on] += e.stats.stages_ms
            if worker is not None:
                worker.drain(120)
                worker.stop()
                stored += worker.stored
                rows = e.journal.rows()
                assert all(r["explanation"] and r["features"] for r in rows if r["model_version"])
            client.close()
        print(
            f"\ntick-to-decision via serving ({url}), explanations off vs on, {rounds} interleaved blocks"
        )
        print(
            f"  {'':<22}{'n':>7}{'total p50 ms':>14}{'total p99 ms':>14}{'predict p50':>13}{'predict p99':>13}"
        )
        for on in (False, True):
            pc = _pcts(stages[on])
            tot, pre = pc["total_ms"], pc["predict_ms"]
            label = "explanations on" if on else "explanations off"
            print(
                f"  {label:<22}{tot[2]:>7}{tot[0]:>14.3f}{tot[1]:>14.3f}{pre[0]:>13.3f}{pre[1]:>13.3f}"
            )
        print(
            f"  contributions stored by the worker meanwhile: {stored}; "
            f"bars {args.bar_gap_ms:g} ms apart"
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
    booster = bundle / str(manifest.get("native_booster", ""))
    tag = importer._save(
        store,
        "tx_bench",
        "1",
        "champion",
        (bundle / "model.onnx").read_bytes(),
        manifest,
        source="bench",
        booster=booster.read_bytes()
        if manifest.get("native_booster") and booster.is_file()
        else None,
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
