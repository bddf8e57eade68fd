"""Out-of-sample, after-cost results on the real MT5 exports (``tx report real-exports``).

Each file of ``configs/real_exports_v1.yaml`` goes through the platform as a live symbol would:

1. **lake** — the simulated terminal replays the export; ingest converts its server time to UTC
   with the file's broker time rule, Great Expectations validates every UTC day (hard failures
   are quarantined and left out, soft flags kept), the feature task writes the offline parquet
   of every view. This lives in ``$TX_HOME/real_exports/<file>/`` and is reused while the file,
   the rule, the range and the pipeline code are unchanged (``prepared.json``).
2. **dataset** — :func:`training.dataset.build_dataset`: labels from the lake, features through
   Feast ``get_historical_features`` on each experiment's feature service, the builder's
   timestamp checks.
3. **split** — purged, embargoed at the file's explicit ``test_start``; every model is scored on
   the same test bars (those every experiment has features for).
4. **models** — each experiment's recipe as configured (``trend_v1``: XGBoost on 13 features;
   ``trend_v2``: XGBoost + transformer + regime-weighted ensemble), untuned here.
5. **backtest** — cost-aware, block-bootstrap CIs, beside always-flat, buy-and-hold and momentum
   under the same costs.

Numbers are reported as they come out.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from titanovax.settings import PROJECT_ROOT, PlatformSettings
from training.config import CONFIG_DIR

log = logging.getLogger(__name__)

BASELINES = ("flat", "buy_and_hold", "momentum")
LEARNED = "+policy"  # suffix of an experiment's row under its learned decision policy
LEARNED_SLIP = " (learned slippage)"  # suffix of a row costed with the file's learned slippage
_PIPELINE_CODE = (PROJECT_ROOT / "feature_repo" / "pipeline", PROJECT_ROOT / "engine" / "mt5")


@dataclass
class Prepared:
    """A file's lake and offline store, with what validation did to it."""

    settings: PlatformSettings
    symbol: str
    timeframe: str
    start: datetime  # UTC open time of the first bar
    test_start: datetime
    end: datetime  # UTC close time of the last bar
    bars: int
    quarantined_days: int
    quarantined_rows: int
    flagged_rows: int
    reused: bool

    def summary(self) -> dict[str, Any]:
        keys = ("bars", "quarantined_days", "quarantined_rows", "flagged_rows", "reused")
        return {k: getattr(self, k) for k in keys}


@dataclass
class FileResult:
    file: str
    symbol: str
    timeframe: str
    broker_tz: str
    train_rows: dict[str, int]
    test_rows: int
    test_range: tuple[str, str]
    models: dict[str, dict[str, float]]  # experiment → backtest metrics (+ accuracy)
    baselines: dict[str, dict[str, float]]
    lake: dict[str, Any] = field(default_factory=dict)
    # experiment → the decision policy learned on the training window's purged folds
    policies: dict[str, dict[str, Any]] = field(default_factory=dict)
    # the baselines on the same test bars under the file's learned slippage
    baselines_learned: dict[str, dict[str, float]] = field(default_factory=dict)
    # the slippage model learned from simulated fills on the file's training window
    slippage: dict[str, Any] = field(default_factory=dict)
    # the grid strategy on the file's test range (training.grid_report.evaluate)
    grid: dict[str, Any] = field(default_factory=dict)
    generated_at: str = ""


def _server_to_utc(s: str, rule: Any) -> datetime:
    server = int(pd.Timestamp(s, tz="UTC").timestamp())
    return datetime.fromtimestamp(int(rule.to_utc(np.array([server]))[0]), tz=UTC)


def _fingerprint(path: Path, entry: dict[str, Any]) -> str:
    h = hashlib.sha256(path.read_bytes())
    h.update(
        json.dumps({k: entry[k] for k in ("broker_tz", "start", "end")}, sort_keys=True).encode()
    )
    for root in _PIPELINE_CODE:
        for src in sorted(root.rglob("*.py")) + sorted(root.rglob("*.yaml")):
            h.update(src.read_bytes())
    return h.hexdigest()


def _counts(done: dict[str, Any]) -> dict[str, int]:
    return {
        k: int(done[k]) for k in ("bars", "quarantined_days", "quarantined_rows", "flagged_rows")
    }


def prepare(entry: dict[str, Any], raw_dir: Path, base: PlatformSettings) -> Prepared:
    """The file's lake and offline features, built through ingest → validate → features."""
    from engine.mt5 import timeframe_seconds
    from engine.mt5.brokertime import parse_rule
    from engine.mt5.exports import parse_export_name
    from feature_repo.pipeline import lake
    from feature_repo.pipeline.ingest import ingest
    from feature_repo.pipeline.store import build_features, feast_apply
    from feature_repo.pipeline.validate import BatchQuarantined, validate_interval

    name = entry["file"]
    parsed = parse_export_name(name)
    if parsed is None:
        raise ValueError(f"{name}: not an export file name SYMBOL_TF[__source].csv")
    symbol, tf = parsed
    rule = parse_rule(entry["broker_tz"])
    step = timeframe_seconds(tf)
    start, test_start = (
        _server_to_utc(entry["start"], rule),
        _server_to_utc(entry["test_start"], rule),
    )
    end = datetime.fromtimestamp(_server_to_utc(entry["end"], rule).timestamp() + step, tz=UTC)

    home = base.home / "real_exports" / Path(name).stem
    exports = home / "exports"  # the feed sees this one file only
    exports.mkdir(parents=True, exist_ok=True)
    link = exports / name
    if not link.exists():
        link.symlink_to((raw_dir / name).resolve())
    s = base.model_copy(
        update={
            "home": home,
            "mt5_exports": exports,
            "symbols": [symbol],
            "timeframe": tf,
            "broker_tz": entry["broker_tz"],
        }
    )
    marker = home / "prepared.json"
    fp = _fingerprint(raw_dir / name, entry)
    done = json.loads(marker.read_text()) if marker.exists() else {}
    reused = done.get("fingerprint") == fp
    if not reused:  # a changed file, rule, range or pipeline: rebuild from scratch
        for folder in (s.staging_dir, s.lake_dir, s.quarantine_dir, s.home / "offline"):
            if folder.exists():
                shutil.rmtree(folder)
    feast_apply(
        s
    )  # always (the registry follows the repo's current definitions); makes the offline folders
    if reused:
        log.info("%s: lake and offline store reused (%s)", name, marker)
        return Prepared(s, symbol, tf, start, test_start, end, **_counts(done), reused=True)
    ingest(s, symbol, tf, start, end)
    try:
        report = validate_interval(s, symbol, tf, start, end)
        parts = report.partitions
    except BatchQuarantined as exc:  # the bad days stay in quarantine, the rest is in the lake
        parts = exc.report.partitions
        log.warning("%s: %d day(s) quarantined", name, sum(not p["success"] for p in parts))
    build_features(s, symbol, tf, start, end)
    bars = len(lake.read_bars(s.lake_dir, symbol, tf, start, end))
    q = [p for p in parts if not p["success"]]
    done = {
        "fingerprint": fp,
        "bars": bars,
        "quarantined_days": len(q),
        "quarantined_rows": int(sum(p["rows"] for p in q)),
        "flagged_rows": int(sum(p.get("flagged_rows", 0) for p in parts)),
        "prepared_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    marker.write_text(json.dumps(done, indent=1))
    return Prepared(s, symbol, tf, start, test_start, end, **_counts(done), reused=False)


def learned_slippage(
    entry: dict[str, Any], raw_dir: Path, p: Prepared, spec: dict[str, Any]
) -> tuple[Any, dict[str, Any]]:
    """The file's slippage model, learned from fills on its own training window only.

    :func:`training.slippage.simulate_export_fills` sends ``slippage_fills`` market orders
    at the closes of bars drawn from ``[start, test_start)`` (UTC) of the export, through the
    engine's order executor to the simulated terminal with its state-dependent slippage
    process (:mod:`engine.mt5.slippage`), over a feed that holds no bar at or after
    ``test_start``; :func:`training.slippage.train_model` fits the quantile model on the
    oldest 75 % of those fills and :func:`training.slippage.evaluate` calibrates it on the
    newest 25 % (both still inside the training window). Nothing is registered in MLflow:
    the model is the file's own, written to ``$TX_HOME/real_exports/<file>/slippage``.
    Returns ``(model, summary)``."""
    from training.slippage import (
        FitConfig,
        evaluate,
        fills_frame,
        gate,
        read_fills,
        simulate_export_fills,
        train_model,
    )

    home = p.settings.home
    journal = home / "slippage_fills.sqlite"
    journal.unlink(missing_ok=True)  # the fills of this run only
    seed = int(spec.get("slippage_seed", 0))
    sim = simulate_export_fills(
        journal,
        raw_dir / entry["file"],
        entry["broker_tz"],
        int(p.start.timestamp()),
        int(p.test_start.timestamp()),
        int(spec.get("slippage_fills", 3000)),
        seed=seed,
    )
    df = fills_frame(read_fills(journal))
    cfg = FitConfig(seed=seed)
    model, train, test = train_model(df, cfg, home / "slippage")
    ev = evaluate(model, test, cfg)
    summary = {
        "fills": len(df),
        "orders": int(sim["orders"]),
        "failed": int(sim["failed"]),
        "excluded": int(df.attrs.get("excluded", 0)),
        "n_train": len(train),
        "window_utc": sim["window_utc"],
        "last_fill_utc": float(df["filled_at"].max()),
        "venue": str(df["venue"].iloc[0]),
        "observed_mean_points": float(df["slippage_points"].mean()),
        # the states the model has seen: a tree model cannot follow a test spread outside them
        "fill_spread_points": [
            float(df["spread_points"].min()),
            float(df["spread_points"].median()),
            float(df["spread_points"].max()),
        ],
        "evaluation": ev,
        "gate": gate(ev, cfg),
    }
    return model, summary


def _per_trade(
    costs: Any, learned: Any, ds: pd.DataFrame, turnover: np.ndarray
) -> dict[str, float]:
    """Mean slippage per unit traded over the bars where a position changes (``turnover``):
    fixed formula vs learned model, in basis points of price and in points."""
    fixed = np.asarray(costs.slippage(ds), dtype=float)
    learn = np.asarray(learned.slippage(ds), dtype=float)
    sp = ds["spread_points"].to_numpy(dtype=float)
    sr = ds["spread_ret"].to_numpy(dtype=float) if "spread_ret" in ds else np.full(len(ds), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        to_pts = np.where(sr > 0, sp / sr, np.nan)  # close / point
    m = turnover > 0
    if not m.any():
        return {"trades": 0.0}
    return {
        "trades": float(m.sum()),
        "fixed_bp": float(np.mean(fixed[m]) * 1e4),
        "learned_bp": float(np.mean(learn[m]) * 1e4),
        "fixed_points": float(np.nanmean(fixed[m] * to_pts[m])),
        "learned_points": float(np.nanmean(learn[m] * to_pts[m])),
        "half_spread_bp": float(np.mean(sr[m]) / 2 * 1e4),
        "spread_points_median": float(np.median(sp[m])),
    }


def evaluate_file(
    entry: dict[str, Any], raw_dir: Path, spec: dict[str, Any], base: PlatformSettings
) -> FileResult:
    from engine.mt5 import timeframe_seconds
    from training.backtest import (
        Costs,
        EstimatorSlippage,
        SpreadVolSlippage,
        backtest,
        baselines,
        pnl_frame,
        positions_from_proba,
    )
    from training.config import load_config
    from training.dataset import build_dataset
    from training.models import EnsembleModel
    from training.policy import learn_policy, oof_predictions, policy_positions
    from training.splits import purged_train_test
    from training.train import fit_model, make_model, model_data

    p = prepare(entry, raw_dir, base)
    h = int(spec["horizon_bars"])
    commission = float(spec["commission"])
    embargo = pd.Timedelta(seconds=h * timeframe_seconds(p.timeframe))
    splits: dict[str, tuple[Any, pd.DataFrame, pd.DataFrame]] = {}
    for name in spec.get("experiments", ["trend_v1"]):
        cfg = load_config(name)
        ds = build_dataset(
            p.settings,
            [p.symbol],
            p.timeframe,
            p.start,
            p.end,
            horizon=h,
            feature_service=cfg.feature_service,
            label_kw={"commission": commission},
        )
        tr, te = purged_train_test(ds, pd.Timestamp(p.test_start), embargo)
        splits[name] = (cfg, ds.iloc[tr].reset_index(drop=True), ds.iloc[te].reset_index(drop=True))
    common = set.intersection(*(set(te["event_timestamp"]) for _, _, te in splits.values()))
    costs = Costs(
        commission=commission,
        slippage=SpreadVolSlippage(float(spec["slippage_spread_k"]), float(spec["slippage_vol_k"])),
    )
    n_boot = int(spec.get("n_boot", 500))
    slip_summary: dict[str, Any] = {}
    learned: Costs | None = None
    if spec.get("learned_slippage", False):
        est, slip_summary = learned_slippage(entry, raw_dir, p, spec)
        learned = Costs(
            commission=commission,
            slippage=EstimatorSlippage(
                est,
                volume=float(spec.get("slippage_volume", 0.1)),
                venue=slip_summary["venue"],
                fallback=costs.slippage,  # type: ignore[arg-type]
            ),
        )
    models: dict[str, dict[str, float]] = {}
    policies: dict[str, dict[str, Any]] = {}
    test = pd.DataFrame()
    for name, (cfg, train, te) in splits.items():
        test = te[te["event_timestamp"].isin(common)].reset_index(drop=True)
        log.info(
            "%s %s: fitting %s (%s) on %d rows", p.symbol, p.timeframe, name, cfg.family, len(train)
        )
        model = fit_model(make_model(cfg), train, cfg, p.timeframe)
        data = model_data(test, cfg.feature_service)
        proba = model.predict_proba(data)
        acc = float((proba.argmax(axis=1) == test["label"].to_numpy()).mean())
        legacy = positions_from_proba(proba, float(spec["min_confidence"]))
        m = backtest(test, legacy, p.timeframe, costs, n_boot=n_boot)
        m["accuracy"] = acc
        models[name] = m
        if learned is not None:  # the same positions, costed with the learned slippage
            models[f"{name}{LEARNED_SLIP}"] = {
                **backtest(test, legacy, p.timeframe, learned, n_boot=n_boot),
                "accuracy": acc,
            }
            if not slip_summary.get("per_trade"):  # the first model's trades
                turnover = pnl_frame(test, legacy, p.timeframe, costs)["turnover"].to_numpy()
                slip_summary["per_trade"] = {
                    "model": name,
                    **_per_trade(costs, learned, test, turnover),
                }
        if spec.get("learned_policy", True):  # chosen on the training split's folds only
            folds = oof_predictions(train, cfg, p.timeframe)
            policy = learn_policy(
                train,
                cfg,
                p.timeframe,
                costs,
                min_confidence=float(spec["min_confidence"]),
                folds=folds,
            )
            regime = model.regime.predict(data) if isinstance(model, EnsembleModel) else None
            pos = policy_positions(test, proba, policy, costs, regime=regime)
            lm = backtest(test, pos, p.timeframe, costs, n_boot=n_boot)
            lm["accuracy"] = acc
            models[f"{name}{LEARNED}"] = lm
            policies[name] = _policy_row(policy, pos, legacy)
            if learned is not None:  # chosen on the same folds, under the learned costs
                lpol = learn_policy(
                    train,
                    cfg,
                    p.timeframe,
                    learned,
                    min_confidence=float(spec["min_confidence"]),
                    folds=folds,
                )
                lpos = policy_positions(test, proba, lpol, learned, regime=regime)
                models[f"{name}{LEARNED}{LEARNED_SLIP}"] = {
                    **backtest(test, lpos, p.timeframe, learned, n_boot=n_boot),
                    "accuracy": acc,
                }
                policies[f"{name}{LEARNED_SLIP}"] = _policy_row(lpol, lpos, legacy)
    grid: dict[str, Any] = {}
    if spec.get("grid", False):  # the grid report's own computation on the file's test range
        from training.grid_report import evaluate as grid_evaluate

        grid = grid_evaluate(
            raw_dir, entry, spec, engine=bool(spec.get("grid_engine", True)), n_boot=n_boot
        )
    return FileResult(
        file=entry["file"],
        symbol=p.symbol,
        timeframe=p.timeframe,
        broker_tz=entry["broker_tz"],
        train_rows={n: len(tr) for n, (_, tr, _) in splits.items()},
        test_rows=len(test),
        test_range=(
            f"{test['event_timestamp'].min():%Y-%m-%d}",
            f"{test['event_timestamp'].max():%Y-%m-%d}",
        ),
        models=models,
        baselines=baselines(test, p.timeframe, costs, n_boot=n_boot),
        lake=p.summary(),
        policies=policies,
        baselines_learned=(
            baselines(test, p.timeframe, learned, n_boot=n_boot) if learned is not None else {}
        ),
        slippage=slip_summary,
        grid=grid,
    )


def _policy_row(policy: Any, pos: np.ndarray, legacy: np.ndarray) -> dict[str, Any]:
    """A learned policy's line of the report's policy table."""
    from training.policy import describe

    return {
        "policy": describe(policy),
        "valid_net_chosen": policy.stats["valid_net_chosen"],
        "valid_net_legacy": policy.stats["valid_net_legacy"],
        "folds": len(policy.stats["folds"]),
        "test_exposure": float(np.mean(np.asarray(pos) != 0)),
        "test_exposure_legacy": float(np.mean(np.asarray(legacy) != 0)),
        "decision_policy": policy.to_dict(),
    }


def _fmt_ci(m: dict[str, float], key: str, scale: float = 1.0, digits: int = 2) -> str:
    lo, hi = m.get(f"{key}_ci_low", float("nan")), m.get(f"{key}_ci_high", float("nan"))
    return f"{m[key] * scale:+.{digits}f} [{lo * scale:+.{digits}f}, {hi * scale:+.{digits}f}]"


_LABELS = {"flat": "always flat", "buy_and_hold": "buy & hold", "momentum": "momentum (24 bars)"}


def _split_name(name: str) -> tuple[str, bool, bool]:
    """``(experiment, learned policy?, learned slippage?)`` of a row name."""
    slip = name.endswith(LEARNED_SLIP)
    n = name.removesuffix(LEARNED_SLIP)
    return n.removesuffix(LEARNED), n.endswith(LEARNED), slip


def _model_label(name: str) -> str:
    from training.config import load_config

    base, learned, slip = _split_name(name)
    cfg = load_config(base)
    fam = "XGBoost" if cfg.family == "xgboost" else "XGB + transformer ensemble"
    rule = "**learned policy**" if learned else "old rule (top ≥ min_conf)"
    return f"{base}{LEARNED if learned else ''}: {fam}, {rule}{LEARNED_SLIP if slip else ''}"


def _row(head: str, label: str, costs: str, m: dict[str, float], acc: str) -> str:
    return (
        f"{head}| {label} | {costs} | {_fmt_ci(m, 'net_return', 100)} | {_fmt_ci(m, 'sharpe')} "
        f"| {m['max_drawdown'] * 100:.2f} | {m['trades']:.0f} | {m['exposure']:.3f} "
        f"| {m['hit_rate']:.2f} | {m['profit_factor']:.2f} | {acc} |"
    )


def _header(
    results: list[FileResult], spec: dict[str, Any], raw_dir: Path, exps: list[str]
) -> list[str]:
    from training.grid_report import BALANCE, REPORT_GRID, REPORT_LIMITS

    g = REPORT_GRID
    any_slip = any(r.slippage for r in results)
    any_grid = any(r.grid for r in results)
    out = [
        "# Real MT5 exports: out-of-sample results after costs",
        "",
        f"Generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `{spec.get('_invocation', 'tx report real-exports')}` "
        f"from `{raw_dir}` (files read in place, never copied) with `training/configs/real_exports_v1.yaml`. "
        "Numbers as they came out, not tuned. How each row was produced:",
        "",
        "* **Models, old rule** — every file went through the platform: ingest (broker time rule per "
        "file) → Great Expectations validation → offline features → point-in-time dataset through Feast "
        "`get_historical_features` → purged split at the file's `test_start` (embargo = label horizon) → "
        f"models {', '.join(f'`{e}`' for e in exps)} with their configured parameters, untuned here "
        f"(label horizon {spec['horizon_bars']} bars), trading the top class when its probability ≥ "
        f"{spec['min_confidence']} (`training/real_exports.py`).",
        "* **`+policy` rows** — the same model's probabilities through its **learned decision policy**, "
        "chosen on the training window's purged walk-forward validation folds by after-cost P&L (the "
        "test window is never read; policy table below; docs/execution-policy.md).",
    ]
    if any_slip:
        out.append(
            "* **`(learned slippage)` rows** — the same test bars costed with a slippage model learned "
            "for that file alone. There is no real broker, so its fills are **simulated from the file's "
            f"own bars**: {spec.get('slippage_fills', 3000)} market orders at the closes of bars drawn at "
            "random from the file's **training window** `[start, test_start)` only, sent through the "
            "engine's order executor to the simulated terminal over a feed that holds no bar at or after "
            "`test_start`, with its state-dependent slippage process (`engine/mt5/slippage.py`: the bar's "
            "real spread, the file's recent volatility, the hour in UTC by the file's broker time rule, "
            "order sizes 0.01–20 lots, lognormal noise). The quantile model of `training/slippage.py` "
            "(XGBoost mean + quantiles 0.1/0.5/0.9) is fitted on the oldest 75 % of those fills and "
            "calibrated on the newest 25 % (table below; not registered in MLflow). The backtest then "
            "charges, per unit traded, the model's mean prediction for each bar's spread, volatility and "
            f"hour at {spec.get('slippage_volume', 0.1)} lots (`training.backtest.EstimatorSlippage`, the "
            "hook of `costs.slippage_model: champion`) instead of the fixed formula (a bar quoted "
            "with a zero spread pays the formula: its point/close ratio is unknown). `+policy (learned "
            "slippage)` is the policy chosen on the same validation folds under those learned costs.",
        )
    if any_grid:
        out.append(
            "* **Grid rows** — `training.grid_report.evaluate` (the computation of `tx report grid`) on "
            "the file's test range of raw bars (server time, no lake validation, so its bar count differs "
            "slightly): the grid's lots as a position (1.0 = fully loaded) through the same backtest under "
            f"the fixed costs. Grid: the `TX_GRID_*` defaults, not tuned — spacing {g.spacing_atr:g} "
            f"ATR({g.atr_period}), at most {g.max_levels} levels of {g.lots:g} lots, basket take-profit "
            f"{g.basket_tp_atr:g} ATR per lot, direction `{g.direction}` (EMA({g.trend_period}) slope filter), "
            f"caps {REPORT_LIMITS.max_lots:g} lots / {REPORT_LIMITS.max_levels} levels / basket loss "
            f"{REPORT_LIMITS.max_basket_drawdown:.0%} of a {BALANCE:,.0f} USD account; one row per "
            "`reverse_mode`. The engine replay of the same bars (strategy `grid`, simulated terminal, "
            "spread paid, no slippage) is in the grid table below, next to the vectorised result.",
        )
    out += [
        "* **Baselines** — always flat, buy & hold and momentum (sign of the last 24 bars) on the "
        "models' test bars, under the fixed costs"
        + (" and under the file's learned slippage." if any_slip else "."),
        "",
        "Fixed costs on every position change: half the bar's own spread per unit, commission "
        f"{spec['commission']}, slippage {spec['slippage_spread_k']}×spread + {spec['slippage_vol_k']}×recent "
        "one-bar volatility; learned costs replace only that slippage term. Net return = sum of per-bar "
        "net log returns over the test range (in %); Sharpe annualised (252 days); [90 % CI] from a "
        f"moving-block bootstrap of per-bar P&L ({spec.get('n_boot', 500)} resamples). All model and "
        "baseline rows of a file are scored on the same test bars."
        + (
            f" Per-file results reused from earlier `tx report real-exports` runs of this code (their `result.json`, evaluated at): {'; '.join(spec['_reused'])}."
            if spec.get("_reused")
            else ""
        ),
        "",
    ]
    return out


def render(results: list[FileResult], spec: dict[str, Any], raw_dir: Path) -> str:
    exps = list(spec.get("experiments", ["trend_v1"]))
    for r in results:  # a reused result may carry more models than this run asked for
        exps += [n for n in (_split_name(k)[0] for k in r.models) if n not in exps]
    lines = _header(results, spec, raw_dir, exps)
    lines += [
        "| symbol | TF | test range (UTC) | test bars | strategy | slippage | net % [90 % CI] | Sharpe [90 % CI] | max DD % | trades | exposure | hit rate | PF | accuracy |",
        "|---|---|---|---:|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]

    def order(name: str) -> tuple[bool, int, bool]:
        base, learned, slip = _split_name(name)
        return slip, exps.index(base), learned

    for r in results:
        head = (
            f"| {r.symbol} | {r.timeframe} | {r.test_range[0]} → {r.test_range[1]} | {r.test_rows} "
        )
        for n in sorted(r.models, key=order):
            m = r.models[n]
            lines.append(
                _row(
                    head,
                    _model_label(n),
                    "learned" if _split_name(n)[2] else "fixed",
                    m,
                    f"{m['accuracy']:.3f}",
                )
            )
        if r.grid:
            gh = (
                f"| {r.symbol} | {r.timeframe} | {r.grid['range'][0]} → {r.grid['range'][1]} "
                f"| {r.grid['test_bars']} "
            )
            for mode, row in r.grid["grids"].items():
                lines.append(_row(gh, f"grid, reverse_mode={mode}", "fixed", row["metrics"], "—"))
        for b in BASELINES:
            lines.append(_row(head, _LABELS[b], "fixed", r.baselines[b], "—"))
        for b in BASELINES if r.baselines_learned else ():
            lines.append(
                _row(head, f"{_LABELS[b]}{LEARNED_SLIP}", "learned", r.baselines_learned[b], "—")
            )
    if any(r.policies for r in results):
        lines += [
            "",
            "Learned decision policies (`engine/policy.py`, chosen by `training/policy.py` on the "
            "purged walk-forward validation folds of each training window by after-cost P&L with the "
            "costs named; the test window is never read; docs/execution-policy.md). Validation net = "
            "sum of per-bar net log returns over the folds' validation bars (in %); exposure = share "
            "of test bars in the market.",
            "",
            "| symbol | TF | model | chosen policy | validation net %: chosen / old rule | best trading candidate on validation (net %) | folds | test exposure: learned / old |",
            "|---|---|---|---|---|---|---:|---|",
        ]
        for r in results:
            for n, pol in r.policies.items():
                st = (pol.get("decision_policy") or {}).get("stats", {})
                bt = st.get("best_trading")
                best = (
                    f"margin≥{bt['min_margin']:g}, edge≥{bt['min_edge_cost_ratio']:g}×cost "
                    f"({bt['net'] * 100:+.2f}, {bt['trades']:.0f} trades)"
                    if bt
                    else ("none trades" if "best_trading" in st else "not recorded by that run")
                )
                lines.append(
                    f"| {r.symbol} | {r.timeframe} | {n} | {pol['policy']} "
                    f"| {pol['valid_net_chosen'] * 100:+.2f} / {pol['valid_net_legacy'] * 100:+.2f} "
                    f"| {best} | {pol['folds']} | {pol['test_exposure']:.3f} / {pol['test_exposure_legacy']:.3f} |"
                )
    lines += _slippage_table(results)
    lines += _grid_table(results)
    lines += [
        "",
        "| file | broker time | bars in lake | quarantined days (rows) | soft-flagged rows | train rows |",
        "|---|---|---:|---:|---:|---|",
    ]
    for r in results:
        lk = r.lake
        train = ", ".join(f"{n} {k}" for n, k in r.train_rows.items())
        lines.append(
            f"| `{r.file}` | `{r.broker_tz}` | {lk['bars']} | {lk['quarantined_days']} ({lk['quarantined_rows']}) | {lk['flagged_rows']} | {train} |"
        )
    lines.append("")
    return "\n".join(lines)


def _slippage_table(results: list[FileResult]) -> list[str]:
    rows = [r for r in results if r.slippage]
    if not rows:
        return []
    out = [
        "",
        "Learned slippage per file: fills simulated on the file's own training-window bars (above); "
        "held-out = the newest 25 % of those fills. Coverage = share of held-out fills at or below "
        "the predicted quantile (jittered target, `training/slippage.py`; raw integer slippage in "
        "brackets); pinball = mean pinball loss over the three quantiles, the fixed formula used as "
        "every quantile for comparison; gate = the promotion gate of `tx slippage fit` (reported, "
        "nothing is promoted). Held-out mean slippage in points: observed, learned model's mean "
        "prediction, fixed formula. Per trade = mean slippage charged per unit traded on the test "
        "bars where the first model's old-rule position changes (basis points of price over all "
        "of them; points over those with a nonzero spread: a zero-spread bar has no point/close "
        "ratio, and there the learned costs fall back to the fixed formula). "
        "The model knows only the spreads its fills saw (tree models do not extrapolate): where "
        "the test window's spreads lie outside the training window's, its cost follows the "
        "nearest spread it saw, not the test bar's.",
        "",
        "| symbol | TF | fills: train / held-out (failed) | last fill (UTC) < test start | coverage q0.1 / q0.5 / q0.9 | pinball: learned / fixed | gate | held-out mean pts: observed / learned / fixed | spread pts: fills min–max (median) / test trades median | per trade on test: fixed → learned |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s = r.slippage
        ev = s["evaluation"]
        cov = " / ".join(f"{q['coverage']:.3f} ({q['coverage_raw']:.3f})" for q in ev["quantiles"])
        last = datetime.fromtimestamp(s["last_fill_utc"], tz=UTC)
        start = datetime.fromtimestamp(s["window_utc"][1], tz=UTC)
        pt = s.get("per_trade") or {}
        per = (
            f"{pt['fixed_bp']:.2f} bp ({pt['fixed_points']:.1f} pts) → {pt['learned_bp']:.2f} bp "
            f"({pt['learned_points']:.1f} pts) over {pt['trades']:.0f} trades of `{pt['model']}`"
            if pt.get("trades")
            else "no trades"
        )
        fs, tsp = s.get("fill_spread_points"), pt.get("spread_points_median")
        spreads = (
            f"{fs[0]:g}–{fs[2]:g} (median {fs[1]:g}) / {tsp:g}"
            if fs is not None and tsp is not None
            else "not recorded by that run"
        )
        obs = ev["observed_mean"]
        lines_gate = ("passes" if s["gate"]["promote"] else "fails") + f": {s['gate']['reason']}"
        out.append(
            f"| {r.symbol} | {r.timeframe} | {s['n_train']} / {ev['n_test']} ({s['failed']}) "
            f"| {last:%Y-%m-%d %H:%M} < {start:%Y-%m-%d %H:%M} | {cov} "
            f"| {ev['pinball_mean']:.2f} / {ev['fixed_pinball_mean']:.2f} | {lines_gate} "
            f"| {obs:.2f} / {obs + ev['bias_mean']:.2f} / {obs + ev['fixed_bias']:.2f} | {spreads} | {per} |"
        )
    return out


def _grid_table(results: list[FileResult]) -> list[str]:
    rows = [r for r in results if r.grid]
    if not rows:
        return []
    out = [
        "",
        "Grid: the engine's replay of the same bars next to the vectorised run (orders; account "
        "result in USD, spread paid, no slippage; the two must agree, tests/unit/test_grid.py), the "
        "grid's actions, and buy & hold on the grid's own bars under the fixed costs.",
        "",
        "| symbol | TF | reverse_mode | engine orders / vectorised | engine USD / vectorised USD | actions | buy & hold on these bars, net % [90 % CI] |",
        "|---|---|---|---:|---:|---|---|",
    ]
    for r in rows:
        bh = r.grid["baselines"].get("buy_and_hold")
        for mode, row in r.grid["grids"].items():
            e = row.get("engine")
            eng_o = f"{e['orders']} / {row['orders']}" if e else f"— / {row['orders']}"
            eng_u = f"{e['usd']:+.2f} / {row['usd']:+.2f}" if e else f"— / {row['usd']:+.2f}"
            acts = ", ".join(f"{k} {v}" for k, v in sorted(row["actions"].items()))
            out.append(
                f"| {r.symbol} | {r.timeframe} | {mode} | {eng_o} | {eng_u} | {acts} "
                f"| {_fmt_ci(bh, 'net_return', 100) if bh else '—'} |"
            )
    return out


@contextlib.contextmanager
def _with_redis(base: PlatformSettings) -> Iterator[PlatformSettings]:
    """Feast's repo names an online store; the report only reads the offline one, but a
    private redis-server stands in when ``TX_REDIS_URL`` is unset, as in every other run."""
    if base.redis_url:
        yield base
        return
    from titanovax.redis_local import LocalRedis

    with LocalRedis() as r:
        yield base.model_copy(update={"redis_url": r.url})


def run_report(
    raw_dir: Path,
    config: Path | None = None,
    only: list[str] | None = None,
    settings: PlatformSettings | None = None,
    experiments: list[str] | None = None,
    reuse: bool = False,
) -> tuple[list[FileResult], dict[str, Any]]:
    """Evaluate every configured file present in ``raw_dir`` (``experiments`` overrides the
    spec's list)."""
    from rich.console import Console
    from rich.progress import Progress

    from titanovax.progress import interactive

    spec = yaml.safe_load((config or CONFIG_DIR / "real_exports_v1.yaml").read_text())
    if experiments:
        spec["experiments"] = list(experiments)
    inv = ["tx report real-exports"]
    if only:
        inv.append(f"--only {','.join(only)}")
    if experiments:
        inv.append(f"--experiments {','.join(experiments)}")
    if reuse:
        inv.append("--reuse-results")
    spec["_invocation"] = " ".join(inv)
    entries = [e for e in spec["files"] if not only or any(o in e["file"] for o in only)]
    results = []
    with (
        _with_redis(settings or PlatformSettings()) as base,
        Progress(transient=True, console=Console(stderr=True), disable=not interactive()) as bar,
    ):
        task = bar.add_task("real exports", total=len(entries))
        for entry in entries:
            bar.update(task, description=entry["file"])
            if not (raw_dir / entry["file"]).is_file():
                log.warning("%s not in %s: skipped", entry["file"], raw_dir)
            else:
                out = base.home / "real_exports" / Path(entry["file"]).stem / "result.json"
                r = _reusable(out, spec) if reuse else None
                if r is None:
                    r = evaluate_file(entry, raw_dir, spec, base)
                    r.generated_at = datetime.now(UTC).isoformat(timespec="minutes")
                    out.write_text(json.dumps(asdict(r), indent=1, default=str))
                else:
                    spec.setdefault("_reused", []).append(f"{r.file} ({r.generated_at})")
                results.append(r)
            bar.advance(task)
    if not results:
        raise FileNotFoundError(f"none of the configured exports is in {raw_dir}")
    return results, spec


def _expected_rows(spec: dict[str, Any]) -> set[str]:
    exps = list(spec.get("experiments", ["trend_v1"]))
    rows = set(exps) | (
        {f"{e}{LEARNED}" for e in exps} if spec.get("learned_policy", True) else set()
    )
    if spec.get("learned_slippage", False):
        rows |= {f"{r}{LEARNED_SLIP}" for r in rows}
    return rows


def _reusable(path: Path, spec: dict[str, Any]) -> FileResult | None:
    """A file's result of an earlier run with the same rows, or None."""
    if not path.exists():
        return None
    raw = json.loads(path.read_text())
    if not _expected_rows(spec) <= set(raw.get("models", {})):  # rows of more models: kept
        return None
    if spec.get("grid", False) and not raw.get("grid"):
        return None
    if not raw.get("generated_at"):  # written before the field: the file's time
        mtime = datetime.fromtimestamp(path.stat().st_mtime, tz=UTC)
        raw["generated_at"] = mtime.isoformat(timespec="minutes")
    raw["test_range"] = tuple(raw["test_range"])
    return FileResult(**raw)


def real_exports_report(
    raw_dir: Path,
    out: Path | None = None,
    config: Path | None = None,
    only: list[str] | None = None,
    settings: PlatformSettings | None = None,
    experiments: list[str] | None = None,
    reuse: bool = False,
) -> str:
    """Evaluate every configured file present in ``raw_dir``; write the markdown to ``out``.

    ``reuse``: take a file's ``result.json`` from an earlier run when it has the same rows
    (the report then says which files and when they were evaluated)."""
    results, spec = run_report(raw_dir, config, only, settings, experiments, reuse)
    text = render(results, spec, raw_dir)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    return text
