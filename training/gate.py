"""The promotion gate: challenger against the current champion on the same, most recent
out-of-sample window (the challenger's test window), after costs.

Both bundles are scored through their own ONNX graphs on the window's rows (each with its own
feature service and decision threshold); per-bar portfolio P&L uses the challenger's cost
model for both. Rules, all required (thresholds in the config's ``gate`` section):

1. ONNX parity of the challenger passed (≤ 1e-5) and its single-row p50 latency is within budget;
2. with a champion: the point estimate of the annualised net Sharpe difference (challenger −
   champion) is above ``min_sharpe_gain``; the significance rule ``sharpe_test`` holds —
   ``bootstrap`` (default): the paired moving-block bootstrap CI of that difference has its
   lower bound above ``-sharpe_ci_tolerance`` (non-inferiority within a tolerance); ``dm``: the
   one-sided Diebold-Mariano test (:func:`training.stats.diebold_mariano`, Newey-West variance
   with lag ``label horizon - 1`` or ``dm_lag``, Harvey-Leybourne-Newbold correction) on the
   per-bar net P&L difference finds the challenger better, p < ``dm_alpha`` (superiority) —
   and the challenger's max drawdown is not worse than the champion's by more than
   ``max_drawdown_tolerance`` (relative). Both statistics are always computed and recorded in
   the evidence (audit row, ``gate`` tag), whichever rule decides;
3. without a champion: the challenger beats always-flat after costs (net return > 0).

Passing moves ``champion`` to the challenger (the old champion becomes ``previous``); failing
sets ``challenger`` (for shadowing) when parity passed. Every move is audited
(:mod:`training.registry`), and the decision is also a ``gate`` tag on the version.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from titanovax.settings import PlatformSettings
from training.backtest import (
    Costs,
    bars_per_year,
    block_bootstrap_index,
    max_drawdown,
    pnl_frame,
    portfolio_pnl,
    positions_from_proba,
    slippage_for_costs,
)
from training.config import GateConfig
from training.export import PARITY_TOLERANCE
from training.registry import (
    CHALLENGER,
    CHAMPION,
    PREVIOUS,
    client_for,
    current_aliases,
    move_aliases,
)
from training.stats import diebold_mariano

log = logging.getLogger(__name__)


@dataclass
class GateDecision:
    version: str
    promoted: bool
    reason: str
    previous_champion: str | None
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Bundle:
    version: str
    manifest: dict[str, Any]
    onnx_bytes: bytes


def load_bundle(settings: PlatformSettings, version: str) -> Bundle:
    """The registered version's manifest and ONNX bytes."""
    import mlflow
    from mlflow.models import Model

    client = client_for(settings)
    uri = client.get_model_version_download_uri(settings.model_name, str(version))
    with tempfile.TemporaryDirectory(prefix="tx_gate_") as tmp:
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=uri, dst_path=tmp, tracking_uri=settings.tracking_uri
            )
        )
        mlmodel = Model.load(str(local / "MLmodel"))
        manifest = dict((mlmodel.metadata or {}).get("tx_manifest") or {})
        onnx_file = (mlmodel.flavors.get("onnx") or {}).get("data", "model.onnx")
        data = (local / onnx_file).read_bytes()
    return Bundle(str(version), manifest, data)


def bundle_positions(bundle: Bundle, window: pd.DataFrame) -> np.ndarray:
    """Positions the bundle takes on the window's rows (its features, its threshold)."""
    from training.dataset import sequence_tensor
    from training.export import onnx_predict, onnx_session

    m = bundle.manifest
    x = window[m["features"]].to_numpy(np.float32)
    seq = sequence_tensor(window) if m.get("sequence") else None
    proba = onnx_predict(onnx_session(bundle.onnx_bytes), x, seq)
    if m.get("decision_policy") is None:  # a bundle from before decision policies
        return positions_from_proba(proba, float(m.get("min_confidence", 0.5)))
    from training.policy import manifest_regime, policy_positions

    return policy_positions(
        window,
        proba,
        m["decision_policy"],
        costs_from_manifest(m),
        regime=manifest_regime(m, window),
    )


def costs_from_manifest(m: dict[str, Any]) -> Costs:
    c = m.get("costs") or {}
    return Costs(
        commission=float(c.get("commission", 0.0)),
        slippage=slippage_for_costs(c),
        swap_long_per_day=float(c.get("swap_long_per_day", 0.0)),
        swap_short_per_day=float(c.get("swap_short_per_day", 0.0)),
    )


def paired_sharpe_diff(
    a: np.ndarray, b: np.ndarray, ann: float, cfg: GateConfig
) -> dict[str, float]:
    """Sharpe(a) − Sharpe(b) on aligned per-bar P&L with a paired moving-block bootstrap CI."""

    def sharpe(m: np.ndarray) -> np.ndarray:
        sd = m.std(axis=-1, ddof=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(sd > 0, m.mean(axis=-1) / sd * np.sqrt(ann), 0.0)

    n = len(a)
    point = float(sharpe(a[None])[0] - sharpe(b[None])[0])
    if n < 8:
        return {"diff": point, "ci_low": float("-inf"), "ci_high": float("inf"), "n": float(n)}
    idx = block_bootstrap_index(
        n, cfg.n_boot, max(2, round(np.sqrt(n))), np.random.default_rng(cfg.seed)
    )
    diffs = sharpe(a[idx]) - sharpe(b[idx])
    lo, hi = np.quantile(diffs, [(1 - cfg.ci) / 2, 1 - (1 - cfg.ci) / 2])
    return {"diff": point, "ci_low": float(lo), "ci_high": float(hi), "n": float(n)}


def decide(
    challenger_pnl: pd.Series,
    champion_pnl: pd.Series | None,
    *,
    timeframe: str,
    cfg: GateConfig,
    parity: float,
    latency_us: float,
    label_horizon: int = 1,
) -> tuple[bool, str, dict[str, Any]]:
    """The gate's rules on per-bar portfolio P&L (indexed by bar close). Pure function.

    ``label_horizon``: the challenger's label horizon in bars (the DM test's default lag is
    ``label_horizon - 1``)."""
    ev: dict[str, Any] = {
        "parity_max_abs_diff": parity,
        "latency_p50_us": latency_us,
        "latency_budget_us": cfg.latency_budget_us,
    }
    if not parity <= PARITY_TOLERANCE:
        return False, f"ONNX parity failed ({parity:.2e} > {PARITY_TOLERANCE:g})", ev
    if not latency_us <= cfg.latency_budget_us:
        return (
            False,
            f"single-row latency {latency_us:.0f} µs over budget {cfg.latency_budget_us:.0f} µs",
            ev,
        )
    ch = challenger_pnl.to_numpy(dtype=float)
    ev.update(
        {
            "challenger_net_return": float(ch.sum()),
            "challenger_max_drawdown": max_drawdown(ch),
            "window_bars": len(ch),
        }
    )
    if champion_pnl is None:
        net = float(ch.sum())
        if not net > 0.0:
            return (
                False,
                f"net return {net:.5f} does not beat always-flat 0.00000 (no champion yet)",
                ev,
            )
        return True, f"net return {net:.5f} > always-flat 0.00000 (no champion yet)", ev
    common = challenger_pnl.index.intersection(champion_pnl.index)
    a = challenger_pnl.loc[common].to_numpy(dtype=float)
    b = champion_pnl.loc[common].to_numpy(dtype=float)
    ann = bars_per_year(timeframe)
    sd = paired_sharpe_diff(a, b, ann, cfg)
    dd_a, dd_b = max_drawdown(a), max_drawdown(b)
    lag = cfg.dm_lag if cfg.dm_lag is not None else max(int(label_horizon) - 1, 0)
    dm = diebold_mariano(a, b, lag) if len(common) >= 8 else None
    ev.update(
        {
            "sharpe_test": cfg.sharpe_test,
            "sharpe_diff": sd["diff"],
            "sharpe_diff_ci": [sd["ci_low"], sd["ci_high"]],
            "ci_level": cfg.ci,
            "dm_stat": dm.stat if dm else None,
            "dm_p_value": dm.p_value if dm else None,
            "dm_lag": lag,
            "dm_alpha": cfg.dm_alpha,
            "dm_mean_pnl_diff": dm.mean_diff if dm else None,
            "aligned_bars": len(common),
            "challenger_max_drawdown": dd_a,
            "champion_max_drawdown": dd_b,
            "champion_net_return": float(b.sum()),
            "challenger_net_return": float(a.sum()),
        }
    )
    if len(common) < 8:
        return False, f"only {len(common)} bars scored by both models", ev
    if not sd["diff"] > cfg.min_sharpe_gain:
        return (
            False,
            f"net Sharpe difference {sd['diff']:+.2f} not above {cfg.min_sharpe_gain:+.2f}",
            ev,
        )
    if cfg.sharpe_test == "dm":
        assert dm is not None  # len(common) >= 8 here
        if not dm.p_value < cfg.dm_alpha:
            return (
                False,
                f"Diebold-Mariano: challenger not significantly better (DM* {dm.stat:+.2f}, p {dm.p_value:.3f} >= {cfg.dm_alpha:g}, lag {lag})",
                ev,
            )
        evidence = f"DM* {dm.stat:+.2f}, p {dm.p_value:.3g}, lag {lag}"
    else:
        if not sd["ci_low"] > -cfg.sharpe_ci_tolerance:
            return (
                False,
                f"Sharpe difference CI lower bound {sd['ci_low']:+.2f} below -{cfg.sharpe_ci_tolerance:.2f}",
                ev,
            )
        evidence = f"CI {sd['ci_low']:+.2f}..{sd['ci_high']:+.2f}"
    if not dd_a <= dd_b * (1 + cfg.max_drawdown_tolerance) + 1e-12:
        return (
            False,
            f"max drawdown {dd_a:.5f} worse than champion's {dd_b:.5f} beyond {cfg.max_drawdown_tolerance:.0%}",
            ev,
        )
    return True, f"net Sharpe +{sd['diff']:.2f} ({evidence}), drawdown {dd_a:.5f} vs {dd_b:.5f}", ev


def window_dataset(
    settings: PlatformSettings, manifests: list[dict[str, Any]], start: datetime, end: datetime
) -> pd.DataFrame:
    """Rows of the OOS window with the features of every manifest's feature service (through
    Feast), the challenger's labels' P&L columns first."""
    from training.dataset import build_dataset

    first = manifests[0]
    frames = []
    for m in manifests:
        ds = build_dataset(
            settings,
            list(first["symbols"]),
            first["timeframe"],
            start,
            end,
            horizon=int(m.get("label_horizon", 1)),
            feature_service=m["feature_service"],
        )
        frames.append(ds)
    out = frames[0]
    keys = ["symbol", "event_timestamp"]
    for extra in frames[1:]:
        new = [c for c in extra.columns if c not in out.columns]
        out = out.merge(extra[keys + new], on=keys, how="inner")
    return out.sort_values(["event_timestamp", "symbol"]).reset_index(drop=True)


def _gate_config(manifest: dict[str, Any]) -> GateConfig:
    return GateConfig.model_validate(manifest.get("gate") or {})


def evaluate_gate(
    settings: PlatformSettings,
    version: str,
    *,
    window: pd.DataFrame | None = None,
    cfg: GateConfig | None = None,
) -> GateDecision:
    """Score ``version`` and the current champion on the challenger's test window and apply
    the rules; moves nothing.

    ``window``: the OOS rows to score (features of both bundles, ``ret_next``, ``spread_ret``);
    default: built through Feast for the challenger's ``test_range``."""
    client = client_for(settings)
    current = current_aliases(client, settings.model_name).get(CHAMPION)
    chal = load_bundle(settings, version)
    champ = load_bundle(settings, current) if current and current != str(version) else None
    m = chal.manifest
    cfg = cfg or _gate_config(m)
    if window is None:
        start, end = (datetime.fromisoformat(t) for t in m["test_range"])
        window = window_dataset(settings, [m] + ([champ.manifest] if champ else []), start, end)
    costs = costs_from_manifest(m)
    tf = m["timeframe"]
    chal_pnl = portfolio_pnl(pnl_frame(window, bundle_positions(chal, window), tf, costs))
    champ_pnl = (
        portfolio_pnl(pnl_frame(window, bundle_positions(champ, window), tf, costs))
        if champ
        else None
    )
    parity = float(
        m.get(
            "parity_max_abs_diff",
            (m.get("metrics") or {}).get("onnx_parity_max_abs_diff", float("inf")),
        )
    )
    latency = float(m.get("onnx_latency_us", 0.0))
    ok, reason, ev = decide(
        chal_pnl,
        champ_pnl,
        timeframe=tf,
        cfg=cfg,
        parity=parity,
        latency_us=latency,
        label_horizon=int(m.get("label_horizon", 1)),
    )
    ev.update(
        {
            "challenger": str(version),
            "champion": champ.version if champ else None,
            "window": [str(window["event_timestamp"].min()), str(window["event_timestamp"].max())],
        }
    )
    log.info("gate for %s v%s: %s", settings.model_name, version, reason)
    return GateDecision(str(version), ok, reason, current, ev)


def apply_decision(
    settings: PlatformSettings, decision: GateDecision, *, actor: str | None = None
) -> GateDecision:
    """Move the aliases a gate decision calls for (audited) and tag the version with it.

    Refuses to act on a stale decision: the champion must still be the one it was compared with."""
    client = client_for(settings)
    aliases = current_aliases(client, settings.model_name)
    version = decision.version
    if aliases.get(CHAMPION) != decision.previous_champion:
        raise RuntimeError(
            f"champion moved since the gate ran ({decision.previous_champion} → {aliases.get(CHAMPION)}): run the gate again"
        )
    ev = {"reason": decision.reason, **decision.evidence}
    if decision.promoted:
        moves: dict[str, str | None] = {CHAMPION: version}
        current = decision.previous_champion
        if current and current != version:
            moves[PREVIOUS] = current
        if aliases.get(CHALLENGER) == version:
            moves[CHALLENGER] = None
        move_aliases(settings, moves, action="promote", version=version, evidence=ev, actor=actor)
    elif float(decision.evidence.get("parity_max_abs_diff", float("inf"))) <= PARITY_TOLERANCE:
        move_aliases(
            settings,
            {CHALLENGER: version},
            action="refuse→challenger",
            version=version,
            evidence=ev,
            actor=actor,
        )
    client.set_model_version_tag(
        settings.model_name, version, "gate", json.dumps(decision.to_dict(), default=str)[:4900]
    )
    from training.registry import record_gate_in_description

    record_gate_in_description(settings, version, decision.to_dict())  # readable in the UI
    return decision


class AlreadyChampion(ValueError):
    """The version asked to be promoted already holds the ``champion`` alias."""


def promote(
    settings: PlatformSettings,
    version: str,
    *,
    window: pd.DataFrame | None = None,
    cfg: GateConfig | None = None,
    actor: str | None = None,
) -> GateDecision:
    """Gate ``version`` (:func:`evaluate_gate`) and move the aliases (:func:`apply_decision`).
    A version that already is the champion is refused (:class:`AlreadyChampion`): gating it
    against itself would only write a no-op audit row."""
    current = current_aliases(client_for(settings), settings.model_name).get(CHAMPION)
    if current is not None and str(current) == str(version):
        raise AlreadyChampion(f"{settings.model_name} v{version} already is the champion")
    return apply_decision(
        settings, evaluate_gate(settings, version, window=window, cfg=cfg), actor=actor
    )
