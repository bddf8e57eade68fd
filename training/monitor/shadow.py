"""Shadow A/B: the challenger scored in shadow against the champion on the same live bars,
after costs — and the registry acts on significant evidence.

**Join.** Serving appends one line per scored row to the shadow log (``shadow.jsonl``,
:class:`serving.runtime.ShadowScorer`): ``symbol``, ``feature_time`` (the bar close the
features belong to) and each model's ``model_version`` and ``position``. Lines of the current
champion and challenger versions are kept, one per (symbol, bar) (the first; several engines
or retries may ask for the same bar). They are joined with the bar lake labelled as in
training (:func:`training.labels.make_labels` with the challenger's label horizon: ``ret_next``
and ``spread_ret`` of bars whose label is realised), and each model's positions go through the
backtest's own P&L (:func:`training.backtest.pnl_frame`, the challenger's cost model as the
gate uses, :func:`training.gate.costs_from_manifest`) → per-bar portfolio P&L of both models
on exactly the same bars.

**Statistics** on the per-bar difference ``d = challenger − champion`` over ``N`` aligned bars:

* the one-sided Diebold-Mariano/HLN test (:func:`training.stats.diebold_mariano`, Newey-West
  lag ``label horizon − 1``), both ways: ``p_better`` (challenger higher), ``p_worse``;
* a paired moving-block bootstrap (block ``√N``) interval of the mean of ``d`` at
  ``1 − 2·alpha`` (each tail ``alpha``), and the gate's paired Sharpe-difference interval.

**Rules** (``TX_MONITOR_SHADOW_*``): with ``N ≥ shadow_min_bars``,

* *better*: ``p_better < alpha`` and the bootstrap interval above 0 → the promotion gate
  (:func:`training.gate.decide`, significance rule ``dm``) runs on this live evidence and
  :func:`training.gate.apply_decision` moves the aliases (audited, ``source: shadow_ab`` and
  the shadow statistics in the audit row's evidence);
* *worse*: ``p_worse < alpha`` and the interval below 0 → the ``challenger`` alias is removed
  (action ``retire``, audited with the same evidence);
* otherwise ``ok`` with "not enough evidence". Fewer bars: ``ok``, not enough evidence yet.

Serving is asked to reload after a move (:func:`training.registry.notify_serving`).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from titanovax.settings import PlatformSettings
from training.monitor.result import CheckResult
from training.monitor.settings import ModelMonitorSettings

log = logging.getLogger(__name__)

CHECK = "shadow_ab"
ACTOR = "monitor:shadow_ab"


def read_shadow_log(path: Path, champion: str, challenger: str) -> pd.DataFrame:
    """Scored lines of this champion/challenger pair: ``symbol``, ``event_timestamp``,
    ``pos_champion``, ``pos_challenger`` (one row per symbol and bar, the first)."""
    rows: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line of a writer killed mid-write
            if r.get("outcome") != "scored":
                continue
            ch, cl = r.get("champion") or {}, r.get("challenger") or {}
            if (
                str(ch.get("model_version")) != champion
                or str(cl.get("model_version")) != challenger
            ):
                continue
            rows.append(
                {
                    "symbol": r["symbol"],
                    "event_timestamp": r["feature_time"],
                    "pos_champion": int(ch["position"]),
                    "pos_challenger": int(cl["position"]),
                }
            )
    df = pd.DataFrame(rows, columns=["symbol", "event_timestamp", "pos_champion", "pos_challenger"])
    df["event_timestamp"] = pd.to_datetime(df["event_timestamp"], utc=True)
    return df.drop_duplicates(["symbol", "event_timestamp"], keep="first")


def realised_bars(
    lake_root: Path, symbol: str, timeframe: str, start: datetime, end: datetime, horizon: int
) -> pd.DataFrame:
    """Lake bars labelled as in training (``ret_next``, ``spread_ret`` of realised bars)."""
    from feature_repo.pipeline.lake import read_bars, symbol_point
    from training.labels import make_labels

    point = symbol_point(lake_root, symbol)
    if point is None:
        raise LookupError(f"no symbol metadata (point) for {symbol} in the lake {lake_root}")
    bars = read_bars(lake_root, symbol, timeframe, start, end)
    if bars.empty:
        return pd.DataFrame(columns=["symbol", "event_timestamp", "ret_next", "spread_ret"])
    lab = make_labels(bars, horizon=horizon, point=point)
    return lab[["symbol", "event_timestamp", "ret_next", "spread_ret"]]


def shadow_pnl(
    shadow: pd.DataFrame, realised: pd.DataFrame, timeframe: str, manifest: dict[str, Any]
) -> pd.DataFrame:
    """Per-bar portfolio P&L of both models on the joined bars: columns ``champion``,
    ``challenger``, indexed by bar close."""
    from training.backtest import pnl_frame, portfolio_pnl
    from training.gate import costs_from_manifest

    ds = shadow.merge(realised, on=["symbol", "event_timestamp"], how="inner")
    ds = ds.dropna(subset=["ret_next"]).sort_values(["symbol", "event_timestamp"])
    ds = ds.reset_index(drop=True)
    costs = costs_from_manifest(manifest)
    return pd.DataFrame(
        {
            who: portfolio_pnl(pnl_frame(ds, ds[f"pos_{who}"].to_numpy(), timeframe, costs))
            for who in ("champion", "challenger")
        }
    )


def paired_mean_interval(
    d: np.ndarray, level: float, *, n_boot: int = 2000, seed: int = 17
) -> tuple[float, float]:
    """Paired moving-block bootstrap interval (block ``√n``) of the mean of ``d``."""
    from training.backtest import block_bootstrap_index

    n = len(d)
    idx = block_bootstrap_index(n, n_boot, max(2, round(np.sqrt(n))), np.random.default_rng(seed))
    means = d[idx].mean(axis=1)
    a = (1 - level) / 2
    lo, hi = np.quantile(means, [a, 1 - a])
    return float(lo), float(hi)


def ab_statistics(pnl: pd.DataFrame, lag: int, alpha: float, timeframe: str) -> dict[str, Any]:
    """DM both ways, the paired bootstrap interval of the mean difference, the Sharpe gap."""
    from training.backtest import bars_per_year
    from training.config import GateConfig
    from training.gate import paired_sharpe_diff
    from training.stats import diebold_mariano

    a = pnl["challenger"].to_numpy(float)
    b = pnl["champion"].to_numpy(float)
    better = diebold_mariano(a, b, lag)
    worse = diebold_mariano(b, a, lag)
    level = 1 - 2 * alpha
    lo, hi = paired_mean_interval(a - b, level)
    sd = paired_sharpe_diff(a, b, bars_per_year(timeframe), GateConfig())
    return {
        "n_bars": len(a),
        "dm_stat": better.stat,
        "dm_p_value": better.p_value,
        "dm_p_value_worse": worse.p_value,
        "dm_lag": lag,
        "mean_pnl_diff": better.mean_diff,
        "bootstrap_interval": [lo, hi],
        "bootstrap_level": level,
        "sharpe_diff": sd["diff"],
        "sharpe_diff_ci": [sd["ci_low"], sd["ci_high"]],
        "alpha": alpha,
        "challenger_net": float(a.sum()),
        "champion_net": float(b.sum()),
        "window": [str(pnl.index.min()), str(pnl.index.max())],
    }


def shadow_ab(
    *,
    settings: PlatformSettings,
    shadow_log: Path | None = None,
    lake_root: Path | None = None,
    cfg: ModelMonitorSettings | None = None,
    act: bool | None = None,
    now: datetime | None = None,
) -> list[CheckResult]:
    """The check (see the module docstring) for ``settings.model_name``'s champion and
    challenger aliases; moves aliases when ``act`` (default ``cfg.shadow_act``)."""
    from training.config import GateConfig
    from training.gate import GateDecision, apply_decision, decide, load_bundle
    from training.registry import (
        CHALLENGER,
        CHAMPION,
        client_for,
        current_aliases,
        move_aliases,
        notify_serving,
    )

    cfg = cfg or ModelMonitorSettings()
    act = cfg.shadow_act if act is None else act
    at = now or datetime.now(UTC)
    path = Path(shadow_log or settings.home / "serving" / "shadow.jsonl")
    lake = Path(lake_root or settings.lake_dir)
    aliases = current_aliases(client_for(settings), settings.model_name)
    champ_v, chal_v = aliases.get(CHAMPION), aliases.get(CHALLENGER)
    subject = f"{settings.model_name}@v{chal_v}" if chal_v else settings.model_name

    def result(status: str, detail: str, **kw: Any) -> list[CheckResult]:
        return [CheckResult(CHECK, subject, status, detail, at, **kw)]  # type: ignore[arg-type]

    if not champ_v or not chal_v or champ_v == chal_v:
        return result("skipped", f"no challenger in shadow (aliases: {aliases or 'none'})")
    if not path.exists():
        return result("skipped", f"no shadow log at {path}")
    shadow = read_shadow_log(path, champ_v, chal_v)
    if shadow.empty:
        return result("skipped", f"no scored shadow rows of v{champ_v} vs v{chal_v} in {path}")
    chal = load_bundle(settings, chal_v)
    m = chal.manifest
    tf = str(m.get("timeframe", "M5"))
    horizon = int(m.get("label_horizon", 1))
    start = shadow["event_timestamp"].min().to_pydatetime() - timedelta(days=1)
    end = shadow["event_timestamp"].max().to_pydatetime() + timedelta(days=2)
    try:
        realised = pd.concat(
            [
                realised_bars(lake, s, tf, start, end, horizon)
                for s in sorted(shadow["symbol"].unique())
            ],
            ignore_index=True,
        )
    except LookupError as exc:
        return result("skipped", str(exc))
    pnl = shadow_pnl(shadow, realised, tf, m)
    n = len(pnl)
    gate_cfg = GateConfig.model_validate(m.get("gate") or {})
    lag = gate_cfg.dm_lag if gate_cfg.dm_lag is not None else max(horizon - 1, 0)
    if n < max(cfg.shadow_min_bars, 8):
        return result(
            "ok",
            f"not enough evidence yet: {n} realised bars scored by both < {cfg.shadow_min_bars} (TX_MONITOR_SHADOW_MIN_BARS)",
            metrics={"shadow_bars": float(n)},
            evidence={"champion": champ_v, "challenger": chal_v},
        )
    st = ab_statistics(pnl, lag, cfg.shadow_alpha, tf)
    st.update({"champion": champ_v, "challenger": chal_v, "source": "shadow_ab"})
    metrics = {
        "shadow_bars": float(n),
        "shadow_dm_stat": float(st["dm_stat"]),
        "shadow_dm_p_value": float(st["dm_p_value"]),
        "shadow_mean_pnl_diff": float(st["mean_pnl_diff"]),
        "shadow_bootstrap_low": st["bootstrap_interval"][0],
        "shadow_bootstrap_high": st["bootstrap_interval"][1],
    }
    lo, hi = st["bootstrap_interval"]
    text = (
        f"challenger v{chal_v} vs champion v{champ_v} over {n} bars: mean diff "
        f"{st['mean_pnl_diff']:+.3g}/bar, DM* {st['dm_stat']:+.2f} (p better {st['dm_p_value']:.3g}, "
        f"p worse {st['dm_p_value_worse']:.3g}), bootstrap {st['bootstrap_level']:.0%} "
        f"[{lo:+.3g}, {hi:+.3g}]"
    )
    if st["dm_p_value"] < cfg.shadow_alpha and lo > 0:
        live_cfg = gate_cfg.model_copy(update={"sharpe_test": "dm", "dm_alpha": cfg.shadow_alpha})
        ok, reason, ev = decide(
            pnl["challenger"],
            pnl["champion"],
            timeframe=tf,
            cfg=live_cfg,
            parity=float(m.get("parity_max_abs_diff", float("inf"))),
            latency_us=float(m.get("onnx_latency_us", 0.0)),
            label_horizon=horizon,
        )
        ev.update({"challenger": chal_v, "champion": champ_v, "shadow": st, "source": "shadow_ab"})
        decision = GateDecision(chal_v, ok, f"live shadow A/B: {reason}", champ_v, ev)
        st["gate"] = {"promoted": ok, "reason": reason}
        if act:
            apply_decision(settings, decision, actor=ACTOR)
            if ok:
                notify_serving(settings)
        verb = (
            ("promoted" if ok else "gate refused")
            if act
            else ("would promote" if ok else "gate would refuse")
        )
        return result("warn", f"{text}: better; {verb}: {reason}", metrics=metrics, evidence=st)
    if st["dm_p_value_worse"] < cfg.shadow_alpha and hi < 0:
        if act:
            move_aliases(
                settings,
                {CHALLENGER: None},
                action="retire",
                version=chal_v,
                evidence={"reason": f"live shadow A/B: challenger worse ({text})", **st},
                actor=ACTOR,
            )
            notify_serving(settings)
        verb = "retired" if act else "would retire"
        return result("warn", f"{text}: worse; {verb}", metrics=metrics, evidence=st)
    return result("ok", f"{text}: not enough evidence", metrics=metrics, evidence=st)


def check(ctx: Any) -> list[CheckResult]:
    """``shadow_ab`` for the monitoring runner: the registry and lake of the platform, the
    shadow log of the serving settings (``TX_SERVING_SHADOW_LOG``)."""
    from serving.settings import ServingSettings

    log_path = ServingSettings(home=ctx.settings.home).shadow_log_path
    if not log_path.exists():  # no shadow at all: do not even ask the registry
        return [
            CheckResult(
                CHECK, ctx.settings.model_name, "skipped", f"no shadow log at {log_path}", ctx.now
            )
        ]
    return shadow_ab(settings=ctx.settings, shadow_log=log_path, now=ctx.now)
