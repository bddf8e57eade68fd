"""Drift check: Evidently PSI/KS of the live window against a real bundle's reference sample,
the live rows scored through the bundle's ONNX graph with ONNX Runtime."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from training.monitor.drift import DriftLimits, check_drift

pytestmark = pytest.mark.integration

FEATURES = [f"f{i}" for i in range(6)]
CLASSES = ["short", "flat", "long"]
LIMITS = DriftLimits(psi_threshold=0.2, warn_share=0.3, breach_share=0.5)
NOW = datetime(2026, 1, 14, 12, tzinfo=UTC)
WINDOW = (NOW - timedelta(hours=24), NOW)


def _frame(rng: np.random.Generator, n: int, shift: float = 0.0) -> pd.DataFrame:
    x = rng.normal(size=(n, len(FEATURES))) + shift
    df = pd.DataFrame(x, columns=FEATURES)
    df.insert(0, "symbol", "EURUSD")
    df.insert(0, "event_timestamp", pd.date_range("2026-01-05", periods=n, freq="5min", tz="UTC"))
    return df


def make_bundle(root: Path, with_reference: bool = True) -> Path:
    """A real bundle: an XGBoost model exported to ONNX, its manifest and (C1) its reference
    sample — training rows and the graph's probabilities on them."""
    from training.export import onnx_predict, onnx_session, xgb_to_onnx
    from training.models import ModelData, XGBModel

    rng = np.random.default_rng(1)
    train = _frame(rng, 3000)
    x = train[FEATURES].to_numpy(np.float32)
    y = np.digitize(x[:, 0] + 0.5 * x[:, 1], [-0.5, 0.5])
    model = XGBModel({"n_estimators": 20, "max_depth": 3, "tree_method": "hist"})
    model.fit(ModelData(x, None, y))
    onnx_model = xgb_to_onnx(model, len(FEATURES))
    root.mkdir(parents=True, exist_ok=True)
    (root / "model.onnx").write_bytes(onnx_model.SerializeToString())
    manifest: dict[str, object] = {
        "model_name": "tx_trend",
        "model_version": "3",
        "features": FEATURES,
        "classes": CLASSES,
        "feature_view": "trend_fv",
        "timeframe": "M5",
        "symbols": ["EURUSD"],
    }
    if with_reference:
        proba = onnx_predict(onnx_session(onnx_model), x)
        ref = train.copy()
        for i, c in enumerate(CLASSES):
            ref[f"p_{c}"] = proba[:, i]
        ref.to_parquet(root / "reference_sample.parquet")
        manifest["reference_sample"] = "reference_sample.parquet"
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle"))


def _by_subject(rows: list) -> dict[str, object]:  # type: ignore[type-arg]
    return {r.subject: r for r in rows}


def test_drift_when_live_window_is_like_training_then_ok(bundle: Path, tmp_path: Path) -> None:
    live = _frame(np.random.default_rng(2), 600)
    rows = _by_subject(
        check_drift(
            now=NOW,
            bundle_dir=bundle,
            live=live,
            limits=LIMITS,
            report_path=tmp_path / "r.html",
            window=WINDOW,
        )
    )
    assert rows["features"].status == "ok", rows["features"].detail  # type: ignore[attr-defined]
    assert rows["outputs"].status == "ok", rows["outputs"].detail  # type: ignore[attr-defined]
    assert rows["features"].metrics["drift_share"] == 0  # type: ignore[attr-defined]
    assert all(rows[f"feature:{f}"].metrics["psi"] < 0.2 for f in FEATURES)  # type: ignore[attr-defined]
    assert all(rows[f"feature:{f}"].metrics["ks_p_value"] > 0.001 for f in FEATURES)  # type: ignore[attr-defined]


def test_drift_when_features_shift_then_breach_and_the_report_names_them(
    bundle: Path, tmp_path: Path
) -> None:
    live = _frame(np.random.default_rng(3), 600, shift=1.5)
    report = tmp_path / "drift.html"
    rows = _by_subject(
        check_drift(
            now=NOW, bundle_dir=bundle, live=live, limits=LIMITS, report_path=report, window=WINDOW
        )
    )
    feats = rows["features"]
    assert feats.status == "breach", feats.detail  # type: ignore[attr-defined]
    assert feats.metrics["drift_share"] == 1.0  # type: ignore[attr-defined]
    assert rows["feature:f0"].metrics["psi"] > 1.0  # type: ignore[attr-defined]
    assert rows["feature:f0"].metrics["ks_p_value"] < 1e-6  # type: ignore[attr-defined]
    # the model reads f0 and f1: shifting them moves the output distribution too
    assert rows["outputs"].status in ("warn", "breach"), rows["outputs"].detail  # type: ignore[attr-defined]
    assert rows["output:p_long"].metrics["psi"] >= 0.2  # type: ignore[attr-defined]
    html = report.read_text()
    assert "ValueDrift" in html or "f0" in html
    assert feats.evidence["report_html"] == str(report)  # type: ignore[attr-defined]


def test_drift_when_one_of_six_features_shifts_then_ok_below_the_share(
    bundle: Path, tmp_path: Path
) -> None:
    live = _frame(np.random.default_rng(4), 600)
    live["f5"] += 2.0  # a feature the model barely reads
    rows = _by_subject(
        check_drift(
            now=NOW,
            bundle_dir=bundle,
            live=live,
            limits=LIMITS,
            report_path=tmp_path / "r.html",
            window=WINDOW,
        )
    )
    assert rows["feature:f5"].status == "warn"  # type: ignore[attr-defined]
    assert rows["features"].status == "ok"  # type: ignore[attr-defined]
    assert rows["features"].metrics["drift_share"] == pytest.approx(1 / 6)  # type: ignore[attr-defined]


def test_drift_when_bundle_has_no_reference_then_skipped(tmp_path: Path) -> None:
    old = make_bundle(tmp_path / "old", with_reference=False)
    rows = check_drift(
        now=NOW,
        bundle_dir=old,
        live=_frame(np.random.default_rng(5), 600),
        limits=LIMITS,
        report_path=tmp_path / "r.html",
        window=WINDOW,
    )
    assert [(r.status, r.subject) for r in rows] == [("skipped", "tx_trend@v3")]
    assert "no reference sample" in rows[0].detail
    assert not (tmp_path / "r.html").exists()


def test_drift_when_no_champion_or_too_few_rows_then_skipped(bundle: Path, tmp_path: Path) -> None:
    none = check_drift(
        now=NOW,
        bundle_dir=None,
        live=None,
        limits=LIMITS,
        report_path=tmp_path / "r.html",
        window=WINDOW,
    )
    assert none[0].status == "skipped"
    few = check_drift(
        now=NOW,
        bundle_dir=bundle,
        live=_frame(np.random.default_rng(6), 10),
        limits=LIMITS,
        report_path=tmp_path / "r.html",
        window=WINDOW,
    )
    assert few[0].status == "skipped" and "10 live rows" in few[0].detail
