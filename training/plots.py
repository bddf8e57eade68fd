"""Evaluation plots logged to MLflow: equity and drawdown against the baselines, calibration,
confusion matrix, feature importance and a SHAP summary from XGBoost's own ``pred_contribs``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from training.backtest import Costs, equity_curve, momentum_positions
from training.labels import CLASSES


def _xgb_member(model: Any) -> Any:
    from training.models import EnsembleModel, XGBModel

    if isinstance(model, XGBModel):
        return model
    if isinstance(model, EnsembleModel):
        return model.xgb
    return None


def write_plots(
    out: Path,
    test: pd.DataFrame,
    pos: np.ndarray,
    proba: np.ndarray,
    y: np.ndarray,
    model: Any,
    feature_names: list[str],
    timeframe: str,
    costs: Costs,
) -> list[Path]:
    """Write the PNGs into ``out``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        files.append(out / name)
        fig.savefig(files[-1], dpi=90)
        plt.close(fig)

    # equity + drawdown, model vs baselines
    n = len(test)
    curves = {
        "model (net)": equity_curve(test, pos, timeframe, costs),
        "buy & hold": equity_curve(test, np.ones(n, dtype=np.int64), timeframe, costs),
        "momentum": equity_curve(test, momentum_positions(test), timeframe, costs),
    }
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True, height_ratios=[2, 1])
    for k, c in curves.items():
        ax1.plot(c.index, c.to_numpy(), label=k)
    ax1.axhline(0.0, color="grey", lw=0.8, label="always flat")
    ax1.set_title("Test window: cumulative net log return (after spread, commission, slippage)")
    ax1.legend(fontsize=8)
    eq = curves["model (net)"]
    dd = eq - np.maximum.accumulate(np.concatenate([[0.0], eq.to_numpy()]))[1:]
    ax2.fill_between(eq.index, dd.to_numpy(), 0.0, color="tab:red", alpha=0.4)
    ax2.set_title("model drawdown")
    save(fig, "equity_curve.png")

    # calibration: predicted probability of long / short vs observed frequency
    fig, ax = plt.subplots(figsize=(5, 5))
    bins = np.linspace(0, 1, 11)
    for cls, name in ((2, "long"), (0, "short"), (1, "flat")):
        p = proba[:, cls]
        idx = np.clip(np.digitize(p, bins) - 1, 0, 9)
        xs, ys = [], []
        for b in range(10):
            m = idx == b
            if m.sum() >= 10:
                xs.append(p[m].mean())
                ys.append((y[m] == cls).mean())
        ax.plot(xs, ys, marker="o", label=name)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed frequency")
    ax.set_title("Calibration (test window)")
    ax.legend()
    save(fig, "calibration.png")

    # confusion matrix
    cm = np.zeros((3, 3), dtype=int)
    np.add.at(cm, (y, proba.argmax(axis=1)), 1)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(cm, cmap="Blues")
    for i in range(3):
        for j in range(3):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center")
    ax.set_xticks(range(3), CLASSES)
    ax.set_yticks(range(3), CLASSES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("label")
    ax.set_title("Confusion matrix (test window)")
    save(fig, "confusion_matrix.png")

    xgb = _xgb_member(model)
    if xgb is not None:
        imp = pd.Series(xgb.feature_importances_, index=feature_names).sort_values().tail(25)
        fig, ax = plt.subplots(figsize=(6, max(3, 0.25 * len(imp))))
        imp.plot.barh(ax=ax)
        ax.set_title("XGBoost feature importance (gain share)")
        save(fig, "feature_importance.png")

        from training.models import ModelData

        x = test[feature_names].to_numpy(np.float32)[:2000]
        contrib = xgb.contributions(ModelData(x))  # [N, classes, F+1]
        shap_long = contrib[:, 2, :-1] - contrib[:, 0, :-1]  # long-vs-short log-odds contributions
        order = np.argsort(np.abs(shap_long).mean(axis=0))[-15:]
        fig, ax = plt.subplots(figsize=(7, max(3, 0.3 * len(order))))
        for row, f in enumerate(order):
            v = x[:, f]
            span = np.nanmax(v) - np.nanmin(v)
            colour = (v - np.nanmin(v)) / span if span > 0 else np.zeros_like(v)
            jitter = np.random.default_rng(row).uniform(-0.3, 0.3, len(v))
            ax.scatter(shap_long[:, f], row + jitter, c=colour, cmap="coolwarm", s=4)
        ax.set_yticks(range(len(order)), [feature_names[i] for i in order])
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_xlabel("SHAP value (long − short log-odds; colour = feature value)")
        ax.set_title("SHAP summary (XGBoost pred_contribs)")
        save(fig, "shap_summary.png")
    return files
