"""Out-of-sample, after-cost results on the real MT5 exports (``tx report real-exports``).

For each file of ``configs/real_exports_v1.yaml``: bars → the platform's own feature transforms
(``compute_features``, the code behind the offline store) and labels → the timestamp checks of
the dataset builder → a purged, embargoed chronological split at the file's explicit
``test_start`` → the trend_v1 recipe (XGBoost on the 13 trend_v1 features, parameters from
``trend_v1.yaml``, untuned here) → the cost-aware backtest on the test range with block-bootstrap
CIs, beside the always-flat, buy-and-hold and momentum baselines under the same costs.

The report bypasses Feast on purpose (the files are not in a lake); the features are the same
functions the offline store runs. Numbers are reported as they come out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from training.config import CONFIG_DIR

log = logging.getLogger(__name__)


@dataclass
class FileResult:
    file: str
    symbol: str
    timeframe: str
    train_rows: int
    test_rows: int
    test_range: tuple[str, str]
    model: dict[str, float]
    baselines: dict[str, dict[str, float]]
    accuracy: float


def _server_to_utc(s: str, offset_h: int) -> pd.Timestamp:
    return pd.Timestamp(s, tz="UTC") - pd.Timedelta(hours=offset_h)


def load_bars(path: Path, offset_h: int) -> tuple[pd.DataFrame, str, str, float]:
    from engine.mt5 import timeframe_seconds
    from engine.mt5.exports import read_export

    ex = read_export(path)
    r = ex.rates
    step = pd.Timedelta(seconds=timeframe_seconds(ex.timeframe))
    t = pd.to_datetime(r["time"].astype("int64") - offset_h * 3600, unit="s", utc=True)
    bars = pd.DataFrame(
        {
            "time": t,
            "close_time": t + step,
            "symbol": ex.symbol,
            "open": r["open"],
            "high": r["high"],
            "low": r["low"],
            "close": r["close"],
            "tick_volume": r["tick_volume"],
            "spread": r["spread"],
        }
    )
    return bars, ex.symbol, ex.timeframe, float(10.0 ** -ex.digits)


def evaluate_file(entry: dict[str, Any], raw_dir: Path, spec: dict[str, Any]) -> FileResult:
    from engine.mt5 import timeframe_seconds
    from feature_repo.pipeline.transforms import TREND_V1_FEATURES, compute_features
    from training.backtest import (
        Costs,
        SpreadVolSlippage,
        backtest,
        baselines,
        positions_from_proba,
    )
    from training.config import load_config
    from training.dataset import assert_point_in_time
    from training.labels import make_labels
    from training.models import ModelData, XGBModel
    from training.splits import purged_train_test

    off = int(entry["utc_offset_hours"])
    bars, symbol, tf, point = load_bars(raw_dir / entry["file"], off)
    start, test_start, end = (_server_to_utc(str(entry[k]), off) for k in ("start", "test_start", "end"))
    bars = bars[(bars["time"] >= start) & (bars["time"] <= end)].reset_index(drop=True)
    h = int(spec["horizon_bars"])
    names = list(TREND_V1_FEATURES)
    feats = compute_features(bars, point, names=names)
    labels = make_labels(bars, horizon=h, point=point, commission=float(spec["commission"]))
    ds = labels.merge(feats, on=["symbol", "event_timestamp"], how="inner").sort_values("event_timestamp").reset_index(drop=True)
    assert_point_in_time(ds)
    embargo = pd.Timedelta(seconds=h * timeframe_seconds(tf))
    tr, te = purged_train_test(ds, test_start, embargo)
    train, test = ds.iloc[tr].reset_index(drop=True), ds.iloc[te].reset_index(drop=True)
    cfg = load_config(spec.get("experiment", "trend_v1"))
    model = XGBModel(cfg.model).fit(ModelData(train[names].to_numpy(np.float32), None, train["label"].to_numpy()))
    proba = model.predict_proba(ModelData(test[names].to_numpy(np.float32)))
    pos = positions_from_proba(proba, float(spec["min_confidence"]))
    costs = Costs(commission=float(spec["commission"]), slippage=SpreadVolSlippage(float(spec["slippage_spread_k"]), float(spec["slippage_vol_k"])))
    n_boot = int(spec.get("n_boot", 500))
    return FileResult(
        file=entry["file"],
        symbol=symbol,
        timeframe=tf,
        train_rows=len(train),
        test_rows=len(test),
        test_range=(f"{test['event_timestamp'].min():%Y-%m-%d}", f"{test['event_timestamp'].max():%Y-%m-%d}"),
        model=backtest(test, pos, tf, costs, n_boot=n_boot),
        baselines=baselines(test, tf, costs, n_boot=n_boot),
        accuracy=float((proba.argmax(axis=1) == test["label"].to_numpy()).mean()),
    )


def _fmt_ci(m: dict[str, float], key: str, scale: float = 1.0, digits: int = 2) -> str:
    lo, hi = m.get(f"{key}_ci_low", float("nan")), m.get(f"{key}_ci_high", float("nan"))
    return f"{m[key] * scale:+.{digits}f} [{lo * scale:+.{digits}f}, {hi * scale:+.{digits}f}]"


def render(results: list[FileResult], spec: dict[str, Any], raw_dir: Path) -> str:
    lines = [
        "# Real MT5 exports: out-of-sample results after costs",
        "",
        f"Generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `tx report real-exports` from `{raw_dir}` with "
        f"`training/configs/real_exports_v1.yaml` (model: the {spec.get('experiment', 'trend_v1')} recipe, XGBoost on the 13 "
        f"trend_v1 features; label horizon {spec['horizon_bars']} bars; trade when max probability ≥ {spec['min_confidence']}).",
        "Costs on every position change: half the bar's own spread per unit, commission "
        f"{spec['commission']}, slippage {spec['slippage_spread_k']}×spread + {spec['slippage_vol_k']}×recent one-bar volatility. "
        "Net return = sum of per-bar net log returns over the test range (in %); Sharpe annualised (252 days); "
        f"[90 % CI] from a moving-block bootstrap of per-bar P&L ({spec.get('n_boot', 500)} resamples). "
        "Baselines run on the same bars with the same costs. Numbers as they came out, not tuned.",
        "",
        "| symbol | TF | test range (UTC) | test bars | model net % [CI] | model Sharpe [CI] | max DD % | trades | hit rate | PF | accuracy "
        "| flat net % | buy&hold net % (Sharpe) | momentum net % (Sharpe) |",
        "|---|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in results:
        m, b = r.model, r.baselines
        lines.append(
            f"| {r.symbol} | {r.timeframe} | {r.test_range[0]} → {r.test_range[1]} | {r.test_rows} | {_fmt_ci(m, 'net_return', 100)} "
            f"| {_fmt_ci(m, 'sharpe')} | {m['max_drawdown'] * 100:.2f} | {m['trades']:.0f} | {m['hit_rate']:.2f} | {m['profit_factor']:.2f} "
            f"| {r.accuracy:.3f} | {b['flat']['net_return'] * 100:+.2f} | {b['buy_and_hold']['net_return'] * 100:+.2f} ({b['buy_and_hold']['sharpe']:+.2f}) "
            f"| {b['momentum']['net_return'] * 100:+.2f} ({b['momentum']['sharpe']:+.2f}) |"
        )
    lines += ["", "Files: " + ", ".join(f"`{r.file}` (train {r.train_rows} rows)" for r in results), ""]
    return "\n".join(lines)


def real_exports_report(raw_dir: Path, out: Path | None = None, config: Path | None = None, only: list[str] | None = None) -> str:
    """Evaluate every configured file present in ``raw_dir``; write the markdown to ``out``."""
    spec = yaml.safe_load((config or CONFIG_DIR / "real_exports_v1.yaml").read_text())
    results = []
    for entry in spec["files"]:
        if only and not any(o in entry["file"] for o in only):
            continue
        if not (raw_dir / entry["file"]).is_file():
            log.warning("%s not in %s: skipped", entry["file"], raw_dir)
            continue
        log.info("evaluating %s", entry["file"])
        results.append(evaluate_file(entry, raw_dir, spec))
    if not results:
        raise FileNotFoundError(f"none of the configured exports is in {raw_dir}")
    text = render(results, spec, raw_dir)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    return text
