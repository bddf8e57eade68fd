"""Drift: does the live market still look like what the champion was trained on?

The baseline is the champion bundle's reference sample (contract C1: training-split feature
rows and the model's class probabilities on them). The live window is the offline store's
feature rows of the last ``window`` hours, scored through the same ONNX graph with ONNX
Runtime, so features (inputs) and ``p_<class>`` (outputs) are compared like for like.

Statistics and the HTML report come from Evidently (``ValueDrift`` per column, twice: the
population stability index and the Kolmogorov-Smirnov p-value). A column has drifted when its
PSI reaches ``psi_threshold``; KS is reported alongside (with thousands of rows its p-value
flags shifts far too small to matter, so it does not decide). The verdict is the *share* of
drifted columns: ``warn`` from ``warn_share``, ``breach`` from ``breach_share``, separately for
inputs and outputs. A bundle without a reference sample is ``skipped`` (older bundles).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from training.monitor.result import CheckResult, Status

log = logging.getLogger(__name__)

CHECK = "drift"
MIN_ROWS = 50


@dataclass(frozen=True)
class DriftLimits:
    psi_threshold: float
    warn_share: float
    breach_share: float


def load_bundle(bundle_dir: Path) -> tuple[dict[str, Any], pd.DataFrame | None]:
    """The bundle's manifest and its reference sample (``None`` when the bundle has none)."""
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    name = manifest.get("reference_sample")
    if not name or not (bundle_dir / name).is_file():
        return manifest, None
    return manifest, pd.read_parquet(bundle_dir / name)


def score(bundle_dir: Path, manifest: dict[str, Any], live: pd.DataFrame) -> pd.DataFrame:
    """``p_<class>`` of the live rows through the bundle's ONNX graph (ONNX Runtime)."""
    from training.export import onnx_predict, onnx_session

    x = live[manifest["features"]].to_numpy(np.float32)
    seq = None
    spec = manifest.get("sequence")
    if spec:
        seq = np.stack([np.asarray(v, dtype=np.float32) for v in live[spec["field"]]]).reshape(
            len(live), int(spec["seq_len"]), len(spec["channels"])
        )
    sess = onnx_session((bundle_dir / "model.onnx").read_bytes())
    proba = onnx_predict(sess, x, seq)
    return pd.DataFrame(
        {f"p_{c}": proba[:, i].astype(np.float64) for i, c in enumerate(manifest["classes"])}
    )


def _evidently_report(
    reference: pd.DataFrame, current: pd.DataFrame, columns: list[str], psi_threshold: float
) -> tuple[dict[str, dict[str, float]], Any]:
    """Per column PSI and KS p-value from one Evidently report, and the report's snapshot."""
    os.environ.setdefault("DO_NOT_TRACK", "1")  # Evidently's usage telemetry
    from evidently import Report
    from evidently.metrics import ValueDrift

    metrics = []
    for c in columns:
        metrics.append(ValueDrift(column=c, method="psi", threshold=psi_threshold))
        metrics.append(ValueDrift(column=c, method="ks"))
    snap = Report(metrics).run(current[columns], reference[columns])
    out: dict[str, dict[str, float]] = {c: {} for c in columns}
    for m in snap.dict()["metrics"]:
        cfg = m["config"]
        out[cfg["column"]]["psi" if cfg["method"] == "psi" else "ks_p_value"] = float(m["value"])
    return out, snap


def _verdict(share: float, limits: DriftLimits) -> Status:
    if share >= limits.breach_share:
        return "breach"
    if share >= limits.warn_share:
        return "warn"
    return "ok"


def check_drift(
    *,
    now: datetime,
    bundle_dir: Path | None,
    live: pd.DataFrame | None,
    limits: DriftLimits,
    report_path: Path,
    window: tuple[datetime, datetime],
) -> list[CheckResult]:
    """Input and output drift of the live window against the bundle's reference sample.

    Rows: one per column (``feature:<name>``, ``output:p_<class>``; ``warn`` when drifted) and
    one per side (``features``, ``outputs``) whose status is the share verdict. Writes the
    Evidently HTML report to ``report_path`` (``evidence["report_html"]``)."""
    if bundle_dir is None:
        return [CheckResult(CHECK, "champion", "skipped", "no champion bundle deployed", now)]
    manifest, reference = load_bundle(bundle_dir)
    version = str(manifest.get("model_version", "?"))
    subject = f"{manifest.get('model_name', 'model')}@v{version}"
    if reference is None:
        msg = f"{subject} has no reference sample (bundle trained before monitoring): drift not judged"
        log.info(msg)
        return [CheckResult(CHECK, subject, "skipped", msg, now)]
    n_live = 0 if live is None else len(live)
    if live is None or n_live < MIN_ROWS:
        return [
            CheckResult(
                CHECK,
                subject,
                "skipped",
                f"{n_live} live rows in {window[0]:%Y-%m-%d %H:%M} → {window[1]:%Y-%m-%d %H:%M} "
                f"UTC (need {MIN_ROWS}; market closed or store empty)",
                now,
            )
        ]
    features = list(manifest["features"])
    outputs = [f"p_{c}" for c in manifest["classes"]]
    current = pd.concat(
        [live[features].reset_index(drop=True), score(bundle_dir, manifest, live)], axis=1
    )
    stats, snap = _evidently_report(reference, current, features + outputs, limits.psi_threshold)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    snap.save_html(str(report_path))
    evidence = {
        "model_version": version,
        "reference_rows": len(reference),
        "live_rows": n_live,
        "window": [window[0].isoformat(), window[1].isoformat()],
        "report_html": str(report_path),
    }
    rows: list[CheckResult] = []
    for side, cols, prefix in (("features", features, "feature"), ("outputs", outputs, "output")):
        drifted = [c for c in cols if stats[c]["psi"] >= limits.psi_threshold]
        for c in cols:
            s = stats[c]
            hit = c in drifted
            rows.append(
                CheckResult(
                    CHECK,
                    f"{prefix}:{c}",
                    "warn" if hit else "ok",
                    f"PSI {s['psi']:.3f} ({'≥' if hit else '<'} {limits.psi_threshold:g}), "
                    f"KS p {s['ks_p_value']:.2g}",
                    now,
                    metrics={**s, "drifted": float(hit)},
                    evidence={"model_version": version},
                )
            )
        share = len(drifted) / len(cols)
        status = _verdict(share, limits)
        rows.append(
            CheckResult(
                CHECK,
                side,
                status,
                f"{len(drifted)}/{len(cols)} {side} drifted (share {share:.2f}; warn ≥ "
                f"{limits.warn_share:g}, breach ≥ {limits.breach_share:g}) on {n_live} live vs "
                f"{len(reference)} reference rows of {subject}"
                + (f": {', '.join(drifted[:6])}" if drifted else ""),
                now,
                metrics={
                    "drift_share": share,
                    "drifted": float(len(drifted)),
                    "columns": float(len(cols)),
                },
                evidence={**evidence, "drifted": drifted},
            )
        )
    return rows
