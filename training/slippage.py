"""A quantile model of slippage learned from journaled fills (issue 14, part 2).

**Data.** Every filled order is a ``fills`` row of the engine journal
(:class:`engine.journal.Fill`): signed adverse slippage in points, the quote's spread, the
recent volatility (the cost formula's measure), size, side, hour (UTC) and venue.
:func:`simulate_fills` makes such rows for real: the simulated terminal with its
state-dependent slippage process (:mod:`engine.mt5.slippage`) behind the engine's own
:class:`engine.execution.OrderExecutor`, journaling each fill as the engine does.

**Model.** Two XGBoost boosters on the features of :func:`engine.slippage_model.feature_names`
(spread, volatility, volume, side, hour, venue and symbol one-hots): the mean
(``reg:squarederror``, the expected cost the gate and the backtest charge) and one
multi-quantile booster (``reg:quantileerror`` with ``quantile_alpha`` = the quantile levels).

**Discrete prices.** A fill price is a whole number of points, so slippage is an integer and
the quantile of an integer variable sits on a step of its CDF: the empirical coverage of a
fitted quantile jumps by a whole point's probability mass (10-15 % here). The model is fitted,
as "quantiles for counts" do (Machado & Santos Silva, JASA 2005), on the jittered target
``slippage + U(-0.5, 0.5)`` (seeded), whose quantiles are continuous; the mean is unchanged
(the jitter has mean 0) and calibration is measured on the jittered held-out target with an
independent draw. The raw coverage ``P(slippage <= q̂)`` is reported next to it.

**Evaluation.** Fills are split by time (oldest ``1 - holdout`` train, newest ``holdout``
held out). On the held-out fills: the coverage of each quantile, its pinball loss, and the
same losses of the fixed formula ``0.25 × spread + 0.05 × volatility`` (one number used as
every quantile, since it has no distribution) as the baseline; mean absolute error of the
mean against the formula's.

**Promotion.** :func:`gate` passes when the held-out mean pinball loss is below the fixed
formula's and every quantile's coverage is within ``tolerance`` of its level; then
:func:`promote` moves the ``champion`` alias of ``tx_slippage`` (the old champion becomes
``previous``), audited through :func:`training.registry.move_aliases` exactly like the trading
model's alias moves.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from engine.journal import Fill
from engine.slippage_model import (
    CHAMPION,
    MODEL_NAME,
    FixedSlippage,
    LearnedSlippage,
    feature_names,
)
from titanovax.settings import PlatformSettings

log = logging.getLogger(__name__)

QUANTILES = (0.1, 0.5, 0.9)
EXPERIMENT = "slippage"


@dataclass(frozen=True)
class FitConfig:
    """What to fit and how to judge it."""

    quantiles: tuple[float, ...] = QUANTILES
    holdout: float = 0.25  # newest share of fills held out
    tolerance: float = 0.05  # |coverage - q| allowed by the gate
    min_holdout: int = 200  # fewer held-out fills: no verdict (refused)
    rounds: int = 300
    max_depth: int = 5
    eta: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.quantiles or any(not 0 < q < 1 for q in self.quantiles):
            raise ValueError("quantiles must be in (0, 1)")
        if not 0 < self.holdout < 1:
            raise ValueError("holdout must be in (0, 1)")


# --- data -------------------------------------------------------------------------------------
def read_fills(target: str | Path, scope: str | None = None) -> list[Fill]:
    """Fills of one journal (SQLite path or ``postgresql://`` URL): of ``scope``, or of every
    scope in it, oldest first."""
    from engine.journal import open_journal

    j = open_journal(target)
    try:
        scopes = [scope] if scope else j.fill_scopes()
        out: list[Fill] = []
        for s in scopes:
            j.set_scope(s)
            out.extend(j.fills())
    finally:
        j.close()
    out.sort(key=lambda f: (f.filled_at, f.client_id))
    return out


def fills_frame(fills: Sequence[Fill]) -> pd.DataFrame:
    """The fills as a frame; rows without slippage, spread or volatility (a terminal read that
    failed at the fill, an answer without price) cannot be learned from: they are counted in
    ``frame.attrs["excluded"]`` and logged, not silently dropped."""
    df = pd.DataFrame([asdict(f) for f in fills])
    if df.empty:
        raise ValueError("no fills to learn from (journal empty or no fills in this scope)")
    need = ["slippage_points", "spread_points", "volatility_points"]
    ok = df[need].notna().all(axis=1)
    excluded = int((~ok).sum())
    if excluded:
        log.warning("%d of %d fills lack slippage/spread/volatility: not used", excluded, len(df))
    df = df[ok].sort_values(["filled_at", "client_id"], kind="stable").reset_index(drop=True)
    df.attrs["excluded"] = excluded
    return df


def design(df: pd.DataFrame, names: Sequence[str]) -> np.ndarray:
    """The feature matrix of ``df`` in ``names`` order (see :func:`feature_names`)."""
    x = np.zeros((len(df), len(names)), dtype=np.float32)
    cols = {
        "spread_points": df["spread_points"].to_numpy(float),
        "vol_points": df["volatility_points"].to_numpy(float),
        "volume": df["volume"].to_numpy(float),
        "side_buy": (df["side"] == "buy").to_numpy(float),
        "hour_utc": df["hour_utc"].to_numpy(float) % 24,
    }
    venue, symbol = df["venue"].to_numpy(), df["symbol"].to_numpy()
    for i, n in enumerate(names):
        if n in cols:
            x[:, i] = cols[n]
        elif n.startswith("venue="):
            x[:, i] = venue == n[6:]
        elif n.startswith("symbol="):
            x[:, i] = symbol == n[7:]
    return x


def split_by_time(df: pd.DataFrame, holdout: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Oldest ``1 - holdout`` of the fills, newest ``holdout`` (``df`` sorted by time)."""
    cut = round(len(df) * (1 - holdout))
    if cut < 1 or cut >= len(df):
        raise ValueError(f"{len(df)} fills cannot be split {1 - holdout:.0%}/{holdout:.0%}")
    return df.iloc[:cut].reset_index(drop=True), df.iloc[cut:].reset_index(drop=True)


def jittered(y: np.ndarray, seed: int) -> np.ndarray:
    """``y + U(-0.5, 0.5)``: the continuous version of a whole-point slippage (see the
    module docstring)."""
    return y + np.random.default_rng(seed).uniform(-0.5, 0.5, len(y))


def pinball(y: np.ndarray, pred: np.ndarray, q: float) -> float:
    """Mean pinball (quantile) loss of ``pred`` as the ``q`` quantile of ``y``."""
    d = y - pred
    return float(np.mean(np.maximum(q * d, (q - 1) * d)))


# --- fit and evaluate -------------------------------------------------------------------------
def fit_boosters(x: np.ndarray, y: np.ndarray, cfg: FitConfig) -> tuple[Any, Any]:
    """The mean and the multi-quantile booster on ``(x, y)`` (``y`` jittered)."""
    import xgboost as xgb

    common = {
        "tree_method": "hist",
        "max_depth": cfg.max_depth,
        "eta": cfg.eta,
        "min_child_weight": 20,
        "subsample": 0.8,
        "seed": cfg.seed,
        "nthread": 2,
    }
    d = xgb.DMatrix(x, label=y)
    mean = xgb.train({**common, "objective": "reg:squarederror"}, d, cfg.rounds)
    quant = xgb.train(
        {
            **common,
            "objective": "reg:quantileerror",
            "quantile_alpha": np.asarray(cfg.quantiles, dtype=float),
        },
        d,
        cfg.rounds,
    )
    return mean, quant


def evaluate(
    model: LearnedSlippage,
    test: pd.DataFrame,
    cfg: FitConfig,
    baseline: FixedSlippage | None = None,
) -> dict[str, Any]:
    """Held-out calibration of ``model`` and of the fixed formula (see the module docstring)."""
    base = baseline or FixedSlippage()
    y = test["slippage_points"].to_numpy(float)
    yj = jittered(y, cfg.seed + 1)  # an independent draw from the training jitter
    pred = model.predict(design(test, model.features))
    fixed = base.spread_k * test["spread_points"].to_numpy(float).clip(0) + base.vol_k * test[
        "volatility_points"
    ].to_numpy(float).clip(0)
    per_q: list[dict[str, float]] = []
    for i, q in enumerate(cfg.quantiles):
        p = pred["q"][:, i]
        per_q.append(
            {
                "q": q,
                "coverage": float(np.mean(yj <= p)),
                "coverage_raw": float(np.mean(y <= p)),
                "fixed_coverage": float(np.mean(yj <= fixed)),
                "pinball": pinball(yj, p, q),
                "fixed_pinball": pinball(yj, fixed, q),
            }
        )
    return {
        "n_test": len(test),
        "quantiles": per_q,
        "pinball_mean": float(np.mean([r["pinball"] for r in per_q])),
        "fixed_pinball_mean": float(np.mean([r["fixed_pinball"] for r in per_q])),
        "max_coverage_error": float(max(abs(r["coverage"] - r["q"]) for r in per_q)),
        "mae_mean": float(np.mean(np.abs(y - pred["mean"]))),
        "fixed_mae": float(np.mean(np.abs(y - fixed))),
        "bias_mean": float(np.mean(pred["mean"] - y)),
        "fixed_bias": float(np.mean(fixed - y)),
        "observed_mean": float(np.mean(y)),
    }


def gate(ev: dict[str, Any], cfg: FitConfig) -> dict[str, Any]:
    """Promote only when the held-out pinball loss beats the fixed formula's and every
    quantile's coverage is within ``cfg.tolerance``; the decision names its reason."""
    if ev["n_test"] < cfg.min_holdout:
        ok, why = False, f"{ev['n_test']} held-out fills < {cfg.min_holdout}"
    elif ev["pinball_mean"] >= ev["fixed_pinball_mean"]:
        ok, why = (
            False,
            f"pinball {ev['pinball_mean']:.3f} not below the fixed formula's "
            f"{ev['fixed_pinball_mean']:.3f}",
        )
    elif ev["max_coverage_error"] > cfg.tolerance:
        ok, why = (
            False,
            f"coverage off by {ev['max_coverage_error']:.3f} > tolerance {cfg.tolerance}",
        )
    else:
        ok, why = (
            True,
            f"pinball {ev['pinball_mean']:.3f} < fixed {ev['fixed_pinball_mean']:.3f}, "
            f"coverage within {ev['max_coverage_error']:.3f} <= {cfg.tolerance}",
        )
    return {"promote": ok, "reason": why, "tolerance": cfg.tolerance}


@dataclass
class FitResult:
    """What :func:`fit` did: evaluation, gate decision, registry version, alias moves."""

    evaluation: dict[str, Any]
    decision: dict[str, Any]
    n_train: int
    n_excluded: int
    model_uri: str | None = None
    run_id: str | None = None
    version: str | None = None
    promoted: bool = False
    aliases: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def train_model(
    df: pd.DataFrame, cfg: FitConfig, out_dir: Path
) -> tuple[LearnedSlippage, pd.DataFrame, pd.DataFrame]:
    """Split ``df`` by time, fit on the older part, write the model folder ``out_dir``
    (``manifest.json``, ``mean.ubj``, ``quantiles.ubj``) and return it with the split."""
    train, test = split_by_time(df, cfg.holdout)
    venues = sorted(train["venue"].unique())
    symbols = sorted(train["symbol"].unique())
    names = feature_names(venues, symbols)
    y = jittered(train["slippage_points"].to_numpy(float), cfg.seed)
    mean, quant = fit_boosters(design(train, names), y, cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    mean.save_model(str(out_dir / "mean.ubj"))
    quant.save_model(str(out_dir / "quantiles.ubj"))
    manifest = {
        "model_name": MODEL_NAME,
        "features": names,
        "quantiles": list(cfg.quantiles),
        "target": "slippage_points (adverse positive) + U(-0.5, 0.5) jitter",
        "mean_file": "mean.ubj",
        "quantiles_file": "quantiles.ubj",
        "train_range_utc": [float(train["filled_at"].iloc[0]), float(train["filled_at"].iloc[-1])],
        "test_range_utc": [float(test["filled_at"].iloc[0]), float(test["filled_at"].iloc[-1])],
        "n_train": len(train),
        "n_test": len(test),
        "venues": venues,
        "symbols": symbols,
        "config": asdict(cfg),
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return LearnedSlippage.from_dir(out_dir), train, test


def slippage_settings(settings: PlatformSettings) -> PlatformSettings:
    """The platform settings with ``model_name = tx_slippage`` (the registry helpers of
    :mod:`training.registry` act on ``settings.model_name``)."""
    return settings.model_copy(update={"model_name": MODEL_NAME})


def fit(
    settings: PlatformSettings,
    fills: Sequence[Fill] | pd.DataFrame,
    cfg: FitConfig | None = None,
    *,
    register: bool = True,
    promote_if_passed: bool = True,
    actor: str | None = None,
) -> FitResult:
    """Fit, evaluate on the newest fills, log to MLflow (experiment ``slippage``), register
    ``tx_slippage`` and, when the gate passes, move ``champion`` (audited)."""
    import mlflow

    cfg = cfg or FitConfig()
    df = fills if isinstance(fills, pd.DataFrame) else fills_frame(fills)
    excluded = int(df.attrs.get("excluded", 0))
    with tempfile.TemporaryDirectory(prefix="tx_slippage_") as tmp:  # logged, then removed
        work = Path(tmp)
        model, train, test = train_model(df, cfg, work / "slippage")
        ev = evaluate(model, test, cfg)
        decision = gate(ev, cfg)
        res = FitResult(ev, decision, len(train), excluded)
        mlflow.set_tracking_uri(settings.tracking_uri)
        mlflow.set_experiment(EXPERIMENT)
        with mlflow.start_run(run_name="slippage-quantiles") as run:  # FAILED if anything raises
            res.run_id = run.info.run_id
            mlflow.log_params({**asdict(cfg), "n_train": len(train), "n_excluded": excluded})
            metrics = {k: v for k, v in ev.items() if isinstance(v, int | float)}
            for r in ev["quantiles"]:
                for k in ("coverage", "coverage_raw", "pinball", "fixed_pinball", "fixed_coverage"):
                    metrics[f"{k}_q{r['q']:g}"] = r[k]
            mlflow.log_metrics(metrics)
            mlflow.log_dict(ev, "evaluation.json")
            mlflow.set_tag("gate", json.dumps(decision))
            if register:
                manifest = json.loads((work / "slippage" / "manifest.json").read_text())
                info = mlflow.pyfunc.log_model(
                    name="model",
                    python_model=str(Path(__file__).with_name("slippage_pyfunc.py")),
                    artifacts={"slippage": str(work / "slippage")},
                    metadata={"tx_manifest": manifest},
                    input_example=pd.DataFrame(
                        design(test.head(3), model.features).astype(np.float64),
                        columns=model.features,
                    ),
                    pip_requirements=[f"xgboost=={_xgb_version()}", "pandas", "numpy"],
                )
                mv = mlflow.register_model(info.model_uri, MODEL_NAME)
                res.version = str(mv.version)
                res.model_uri = info.model_uri
    if res.version is not None:
        from training.registry import client_for, current_aliases

        s = slippage_settings(settings)
        client = client_for(s)
        client.set_model_version_tag(MODEL_NAME, res.version, "gate", json.dumps(decision))
        if decision["promote"] and promote_if_passed:
            promote(settings, res.version, evidence={**decision, **_evidence(ev)}, actor=actor)
            res.promoted = True
            pull_champion(settings)  # this host's engine reads $TX_HOME/slippage/champion
        res.aliases = current_aliases(client, MODEL_NAME)
    log.info(
        "slippage model: pinball %.3f vs fixed %.3f, coverage error %.3f -> %s",
        ev["pinball_mean"],
        ev["fixed_pinball_mean"],
        ev["max_coverage_error"],
        decision["reason"],
    )
    return res


def _evidence(ev: dict[str, Any]) -> dict[str, Any]:
    return {
        "n_test": ev["n_test"],
        "pinball_mean": ev["pinball_mean"],
        "fixed_pinball_mean": ev["fixed_pinball_mean"],
        "coverage": {f"q{r['q']:g}": r["coverage"] for r in ev["quantiles"]},
    }


def _xgb_version() -> str:
    import xgboost

    return str(xgboost.__version__)


def promote(
    settings: PlatformSettings,
    version: str,
    *,
    evidence: dict[str, Any],
    actor: str | None = None,
) -> dict[str, Any]:
    """``champion`` ← ``version``, ``previous`` ← the old champion; one audit record
    (:func:`training.registry.move_aliases`, model ``tx_slippage``)."""
    from training.registry import PREVIOUS, client_for, current_aliases, move_aliases

    s = slippage_settings(settings)
    before = current_aliases(client_for(s), MODEL_NAME)
    moves: dict[str, str | None] = {CHAMPION: str(version)}
    if before.get(CHAMPION) and before[CHAMPION] != str(version):
        moves[PREVIOUS] = before[CHAMPION]
    return move_aliases(
        s, moves, action="promote", version=str(version), evidence=evidence, actor=actor
    )


def champion_dir(settings: PlatformSettings) -> Path:
    """Where the promoted model is pulled on this host (the engine's default
    ``TX_ENGINE_SLIPPAGE_MODEL_DIR``)."""
    return settings.home / "slippage" / CHAMPION


def pull_champion(
    settings: PlatformSettings, out_dir: Path | None = None, ref: str = CHAMPION
) -> dict[str, Any]:
    """Fetch ``tx_slippage`` at alias or version ``ref`` into ``out_dir`` (default
    :func:`champion_dir`): the model folder (``manifest.json`` with ``model_version``,
    ``mean.ubj``, ``quantiles.ubj``), written aside and moved in place so a half pull never
    shows. Raises :class:`training.registry.BundleError` when there is no such version."""
    import shutil

    import mlflow

    from training.registry import resolve_version

    s = slippage_settings(settings)
    version = resolve_version(s, ref)
    out = Path(out_dir) if out_dir is not None else champion_dir(settings)
    out.parent.mkdir(parents=True, exist_ok=True)
    from training.registry import client_for

    uri = client_for(s).get_model_version_download_uri(MODEL_NAME, version)
    with tempfile.TemporaryDirectory(prefix="tx_slip_pull_", dir=out.parent) as tmp:
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=uri, dst_path=str(Path(tmp) / "dl"), tracking_uri=s.tracking_uri
            )
        )
        found = sorted(local.rglob("manifest.json"))
        if not found:
            from training.registry import BundleError

            raise BundleError(f"{MODEL_NAME} v{version}: no manifest.json in the model")
        stage = Path(tmp) / "model"
        shutil.copytree(found[0].parent, stage)
        m = json.loads((stage / "manifest.json").read_text(encoding="utf-8"))
        m["model_version"] = version
        (stage / "manifest.json").write_text(json.dumps(m, indent=2), encoding="utf-8")
        LearnedSlippage.from_dir(stage)  # readable before it replaces the old one
        if out.exists():
            shutil.rmtree(out)
        stage.rename(out)
    log.info("pulled %s v%s (%s) into %s", MODEL_NAME, version, ref, out)
    return {"model_name": MODEL_NAME, "ref": ref, "version": version, "dir": str(out)}


def load_champion(
    settings: PlatformSettings, fallback: Any = None
) -> LearnedSlippage | FixedSlippage | Any:
    """The registry's ``tx_slippage@champion`` as an estimator (training side: the backtest's
    costs, ``tx slippage show``); ``fallback`` (default :class:`FixedSlippage`) when there is
    none or the registry cannot be read (logged)."""
    fb = fallback if fallback is not None else FixedSlippage()
    try:
        with tempfile.TemporaryDirectory(prefix="tx_slip_") as tmp:
            got = pull_champion(settings, Path(tmp) / "m")
            return LearnedSlippage.from_dir(got["dir"])
    except Exception as exc:
        log.info("slippage: no champion in %s (%s): the fixed formula", settings.tracking_uri, exc)
        return fb


def fit_from_journal(
    settings: PlatformSettings,
    journal: str | Path,
    cfg: FitConfig | None = None,
    *,
    scope: str | None = None,
    promote_if_passed: bool = True,
) -> FitResult:
    """:func:`fit` on the fills of a journal (the CLI's and the DAG's door)."""
    return fit(settings, read_fills(journal, scope), cfg, promote_if_passed=promote_if_passed)


# --- fills for real: the simulated terminal behind the engine's order path -------------------
SIZES = (0.01, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0)


def _market_open(t: int) -> bool:
    """FX hours of the synthetic market (UTC): Sunday 22:00 to Friday 21:00."""
    import datetime as dt

    d = dt.datetime.fromtimestamp(t, dt.UTC)
    wd, h = d.weekday(), d.hour
    return not (wd == 5 or (wd == 4 and h >= 21) or (wd == 6 and h < 22))


def simulate_fills(
    journal: str | Path,
    n: int,
    *,
    seed: int = 0,
    symbols: Sequence[str] = ("EURUSD",),
    venues: int = 2,
    start_utc: int | None = None,
    process: Any = None,
    magic: int = 77_000_001,
    feed: Any = None,
    times: Sequence[int] | None = None,
    timeframe: str = "M5",
    sizes: Sequence[float] = SIZES,
) -> dict[str, Any]:
    """Send ``n`` market orders through :class:`engine.execution.OrderExecutor` to simulated
    terminals with slippage on, journaling every fill into ``journal`` (the engine's
    ``fills`` table, one scope per venue). Without ``start_utc`` the clock starts four weeks
    into the synthetic market, or an hour after the journal's newest fill.

    The clock walks forward 5-95 minutes per order across FX hours (so every hour, spread and
    volatility state is seen), sizes are drawn from :data:`SIZES`, sides at random: each order
    opens a position or closes the open one (both are fills). Venue ``k`` (``k`` = 0, 1, …) is a
    terminal of its own login whose process slips ``k`` points more at base and ``1 + k/2``
    times the impact, so the venue one-hot carries information. The deviation is unlimited
    (market execution), so the draws are not censored by requotes.

    ``feed`` (a :class:`engine.mt5.sim.BarFeed` whose times are UTC, default the synthetic
    market) and ``times`` (UTC clock readings, one order each, instead of the random walk; ``n``
    is then ``len(times)``) place the orders on given bars: :func:`simulate_export_fills` uses
    them to fill on a real export's own bars. ``timeframe`` is the bars of the journaled
    volatility (the feed's base timeframe)."""
    from dataclasses import replace

    from engine.config import ExecutionConfig
    from engine.execution import OrderExecutor
    from engine.journal import journal_scope, open_journal
    from engine.mt5 import TIMEFRAMES
    from engine.mt5 import protocol as mt5
    from engine.mt5.sim import SimulatedTerminal, SyntheticFeed
    from engine.mt5.slippage import SlippageProcess
    from engine.mt5.synthetic import ORIGIN_UTC

    clock_times = sorted(int(t) for t in times) if times is not None else None
    if clock_times is not None:
        n = len(clock_times)
    if n < 1:
        raise ValueError("n must be >= 1")
    if venues < 1:
        raise ValueError("venues must be >= 1")
    rng = np.random.default_rng(seed)
    base = process if process is not None else SlippageProcess(seed=seed, requote=False)
    now = [int(start_utc if start_utc is not None else ORIGIN_UTC + 28 * 86_400)]
    cfg = ExecutionConfig(deviation_points=1_000_000, retry_backoff_s=0.0)
    j = open_journal(journal, durable=False)
    if (
        start_utc is None and clock_times is None
    ):  # continue after the journal's newest fill: new fills are the newest
        for sc in j.fill_scopes():
            j.set_scope(sc)
            last = j.fills()
            if last:
                now[0] = max(now[0], int(last[-1].filled_at) + 3600)
    legs = []
    for k in range(venues):
        proc = replace(
            base,
            seed=base.seed + 1000 * k,
            base_points=base.base_points + k,
            impact_points=base.impact_points * (1 + k / 2),
        )
        term = SimulatedTerminal(
            feed if feed is not None else SyntheticFeed(seed=7, symbols=list(symbols)),
            clock=lambda: now[0],
            server_utc_offset_hours=0 if feed is not None else 2,
            balance=1e12,
            leverage=1000,
            login=50_000_001 + k,
            slippage=proc,
        )
        term.initialize()
        for s in symbols:
            term.symbol_select(s, True)
        ex = OrderExecutor(
            term,
            j,
            cfg,
            magic=magic,
            login=term.login,
            sleep=lambda _s: None,
            timeframe=TIMEFRAMES[timeframe],
        )
        legs.append((term, ex, journal_scope(term.login, magic, "fills-sim")))
    open_pos: dict[
        tuple[int, str], tuple[int, int, float]
    ] = {}  # (venue, symbol) -> ticket,side,vol
    done = failed = 0
    try:
        for i in range(n):
            if clock_times is not None:
                now[0] = clock_times[i]
            else:
                now[0] += int(rng.integers(5, 96)) * 60
                while not _market_open(now[0]):
                    now[0] += 3600
            k = int(rng.integers(venues))
            sym = str(symbols[int(rng.integers(len(symbols)))])
            term, ex, scope = legs[k]
            j.set_scope(scope)
            held = open_pos.pop((k, sym), None)
            if held is None:
                buy = bool(rng.random() < 0.5)
                vol = float(sizes[int(rng.integers(len(sizes)))])
                intent, position = f"sim:{i}:open:{'buy' if buy else 'sell'}", None
            else:
                ticket, side, vol = held
                buy = side < 0
                intent, position = f"sim:{i}:close:{ticket}", ticket
            out = ex.execute(
                sym,
                now[0],
                intent,
                order_type=mt5.ORDER_TYPE_BUY if buy else mt5.ORDER_TYPE_SELL,
                volume=vol,
                now_utc=float(now[0]),
                position=position,
            )
            if not out.ok:
                failed += 1
                log.warning("simulated order %s failed: %s %s", intent, out.reason, out.detail)
                continue
            done += 1
            if position is None:
                res = out.results[-1]
                open_pos[(k, sym)] = (int(res.get("order", 0)), 1 if buy else -1, vol)
    finally:
        j.close()
    return {
        "journal": str(journal),
        "orders": n,
        "filled": done,
        "failed": failed,
        "venues": [scope for _t, _e, scope in legs],
        "last_utc": now[0],
    }


def export_window_feed(
    path: Path, broker_tz: str, start_utc: int, end_utc: int, *, column_sources: Any = None
) -> tuple[Any, str, str]:
    """``(feed, symbol, timeframe)``: an :class:`engine.mt5.sim.ExportFeed` holding only the
    bars of the export at ``path`` whose UTC open time is in ``[start_utc, end_utc)``, with
    server time turned into UTC by the file's broker time rule (``broker_tz``,
    :func:`engine.mt5.brokertime.parse_rule`), so the feed's offset is 0. Nothing at or after
    ``end_utc`` is in it: a terminal over it cannot quote, and a slippage draw cannot measure
    volatility on, a later bar."""
    from dataclasses import replace

    from engine.mt5.brokertime import parse_rule
    from engine.mt5.exports import read_export
    from engine.mt5.sim import ExportFeed

    e = read_export(path, fill=column_sources)
    rates = e.rates.copy()
    rates["time"] = parse_rule(broker_tz).to_utc(rates["time"].astype(np.int64))
    keep = (rates["time"] >= start_utc) & (rates["time"] < end_utc)
    rates = rates[keep]
    rates = rates[np.unique(rates["time"], return_index=True)[1]]  # sorted, one bar per time
    if len(rates) == 0:
        raise ValueError(f"{path.name}: no bars in [{start_utc}, {end_utc}) UTC")
    return ExportFeed([replace(e, rates=rates)], server_utc_offset_hours=0), e.symbol, e.timeframe


def simulate_export_fills(
    journal: str | Path,
    path: Path,
    broker_tz: str,
    start_utc: int,
    end_utc: int,
    n: int,
    *,
    seed: int = 0,
    process: Any = None,
) -> dict[str, Any]:
    """Fills on a real export's own bars in ``[start_utc, end_utc)`` (a training window): up to
    ``n`` market orders, at the closes of bars drawn at random (seeded, without replacement)
    from the window, through the simulated terminal over :func:`export_window_feed` with the
    slippage process on, so each draw sees that bar's real spread, the file's recent
    volatility and the bar's hour (UTC); sizes from :data:`SIZES`, one venue. The first
    ``vol_window`` bars are skipped (no volatility yet). Returns :func:`simulate_fills`'s
    summary with the window and the venue."""
    from engine.mt5 import timeframe_seconds
    from engine.mt5.slippage import SlippageProcess

    proc = process if process is not None else SlippageProcess(seed=seed, requote=False)
    feed, symbol, tf = export_window_feed(path, broker_tz, start_utc, end_utc)
    step = timeframe_seconds(tf)
    t = feed.rates(symbol, tf, start_utc, end_utc)["time"].astype(np.int64)
    closes = t[proc.vol_window + 1 :] + step  # a bar's close: the terminal quotes that bar
    closes = closes[closes <= end_utc]
    if len(closes) == 0:
        raise ValueError(f"{path.name}: too few bars in the window for a fill")
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(closes), size=min(n, len(closes)), replace=False))
    out = simulate_fills(
        journal,
        len(pick),
        seed=seed,
        symbols=[symbol],
        venues=1,
        process=proc,
        feed=feed,
        times=[int(x) for x in closes[pick]],
        timeframe=tf,
    )
    out.update(symbol=symbol, timeframe=tf, window_utc=[int(start_utc), int(end_utc)])
    return out
