"""The attribution report of docs/explanations-operator.md, reproducible: train a small
XGBoost on the first part of a market (the synthetic demo market, or one real MT5 export),
backtest the engine on the unseen rest (the engine, its risk layer and the simulated terminal,
journaling every decision with its explanation), compute every decision's TreeSHAP
contributions through a real BentoML serving's ``POST /v1/explain`` (the explain worker), then
``tx explain report``'s attribution by regime, feature family and venue.

    .venv/bin/python bench/explain_attribution.py --name attribution-demo
    .venv/bin/python bench/explain_attribution.py --exports ../shared/data/raw \\
        --symbol EURUSD --timeframe M5 --name attribution-real-eurusd-m5

The model: XGBoost (``trend_v1`` features, label = the sign of the 6-bar forward return beyond
half its median size), the regime thresholds fitted on the training rows as training does
(:class:`training.models.RegimeClassifier`: medians of ``vol_24`` and ``|sma_ratio_12_48|``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

HORIZON = 6


def _span(settings: Any, symbol: str, timeframe: str) -> tuple[int, int]:
    """First and last bar close (UTC) the market offers."""
    if settings.mt5_exports:
        import pandas as pd

        from engine.mt5.exports import scan_exports

        f = scan_exports(settings.mt5_exports)[(symbol, timeframe)]
        t = pd.read_csv(f, usecols=["time"])["time"]
        lo, hi = pd.Timestamp(t.iloc[0]), pd.Timestamp(t.iloc[-1])
        off = int(settings.broker_utc_offset_hours) * 3600
        return int(lo.timestamp()) - off, int(hi.timestamp()) - off
    from engine.mt5.synthetic import ORIGIN_UTC

    return ORIGIN_UTC + 2 * 86_400, ORIGIN_UTC + 30 * 86_400


def train_bundle(world: Any, symbol: str, names: list[str], t0: int, t1: int, out: Path) -> Path:
    """XGBoost on the rows closing in [t0, t1] → model.onnx, xgb_booster.ubj, manifest."""
    import xgboost as xgb

    from training.export import xgb_to_onnx
    from training.models import ModelData, RegimeClassifier

    t, x = world.features.table(symbol)
    step = int(np.median(np.diff(t)))
    close_at = {int(a): float(b) for a, b in zip(t, x[:, names.index("ret_1")], strict=True)}
    # forward return over HORIZON bars from the 1-bar log returns of the following rows
    keep = (t >= t0) & (t <= t1)
    fwd = np.array(
        [
            sum(close_at.get(int(ti) + k * step, np.nan) for k in range(1, HORIZON + 1))
            for ti in t[keep]
        ]
    )
    xk = x[keep]
    ok = np.isfinite(fwd) & np.isfinite(xk).all(axis=1)
    xk, fwd = xk[ok].astype(np.float32), fwd[ok]
    dead = 0.5 * np.nanmedian(np.abs(fwd))
    y = np.where(fwd > dead, 2, np.where(fwd < -dead, 0, 1))
    model = xgb.XGBClassifier(n_estimators=80, max_depth=4, tree_method="hist", n_jobs=1)
    model.fit(xk, y)
    reg = RegimeClassifier(names, "vol_24", "sma_ratio_12_48").fit(ModelData(xk, None, y))
    data = xgb_to_onnx(SimpleNamespace(booster=model), len(names)).SerializeToString()
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.onnx").write_bytes(data)
    model.get_booster().save_model(str(out / "xgb_booster.ubj"))
    manifest = {
        "model_name": "tx_explain_report",
        "model_version": "attr-1",
        "family": "xgboost",
        "feature_service": "trend_v1",
        "feature_view": "trend_fv",
        "features": names,
        "input_name": "input",
        "prob_output": "probabilities",
        "classes": ["short", "flat", "long"],
        "positions": [-1, 0, 1],
        "min_confidence": 0.45,
        "timeframe": "M5",
        "symbols": [symbol],
        "label_horizon": HORIZON,
        "bundle_sha256": hashlib.sha256(data).hexdigest(),
        "train_range": [t0, t1],
        "metrics": {},
        "feature_views": ["trend_fv"],
        "native_booster": "xgb_booster.ubj",
        "explanation_outputs": {
            "regime_state": None,
            "regime_probabilities": None,
            "member_weights": None,
            "members": [{"name": "xgb", "probabilities": "probabilities"}],
        },
        "thresholds": {
            "regime": {
                "vol_feature": "vol_24",
                "vol_threshold": reg.vol_thr,
                "trend_feature": "sma_ratio_12_48",
                "abs_trend_threshold": reg.trend_thr,
            }
        },
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--exports", type=Path, default=None, help="folder of MT5 CSV exports")
    ap.add_argument("--symbol", default="EURUSD")
    ap.add_argument("--timeframe", default="M5")
    ap.add_argument("--train-frac", type=float, default=0.6)
    ap.add_argument("--max-test-days", type=int, default=20)
    ap.add_argument("--name", default="attribution-demo")
    ap.add_argument("--out-dir", type=Path, default=Path("reports"))
    ap.add_argument(
        "--keep-journal", type=Path, default=None, help="copy the journal here (for tx explain)"
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)

    from bench.engine_loop import _start_serving
    from engine.backtest import PrecomputedModel, run_backtest
    from engine.config import RiskLimits, SizingConfig
    from engine.explain_worker import ExplainClient, ExplainWorker
    from engine.journal import Journal
    from engine.loop import Engine
    from engine.serving_client import OnnxModel
    from feature_repo.pipeline.transforms import TREND_V1_FEATURES
    from serving.server import stop_server
    from titanovax.attribution import attribution_report
    from titanovax.engine_world import backtest_world
    from titanovax.settings import PlatformSettings

    names = list(TREND_V1_FEATURES)
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        upd: dict[str, Any] = {"symbols": [args.symbol], "home": tmp / "home"}
        if args.exports:
            upd.update(mt5_exports=args.exports, timeframe=args.timeframe)
        s = PlatformSettings(**upd)
        lo, hi = _span(s, args.symbol, args.timeframe)
        lo += 3 * 86_400  # indicator warm-up
        cut = int(lo + args.train_frac * (hi - lo))
        end = min(hi, cut + args.max_test_days * 86_400)
        world = backtest_world(s, lo, end, names)
        bundle = train_bundle(world, args.symbol, names, lo, cut - HORIZON * 300, tmp / "bundle")
        test = backtest_world(s, cut, end, names)
        onnx = OnnxModel.from_dir(bundle)
        model = PrecomputedModel.score(onnx, test.features, [args.symbol])
        journal = tmp / "journal.sqlite"
        engine = Engine(
            terminal=test.terminal,
            features=test.features,
            model=model,
            journal=Journal(journal, durable=False),
            limits=RiskLimits(max_consecutive_losses=0, daily_loss_limit=0.5, max_drawdown=0.9),
            sizing=SizingConfig(fixed_lots=0.1, stop_atr_mult=0.0),
            magic=5151,
            clock=lambda: float(test.now[0]),
            sleep=lambda _s: None,
            mode="backtest",
        )
        res = run_backtest(engine, test.closes, [args.symbol], test.set_time)
        manifest = json.loads((bundle / "manifest.json").read_text())
        url, token, proc = _start_serving(bundle, manifest, tmp)
        try:
            w = ExplainWorker(journal, engine.journal.scope, ExplainClient(url, token=token))
            w.drain(900)
        finally:
            stop_server(proc)
        rows = engine.journal.rows()
        if args.keep_journal:
            import shutil

            engine.journal.close()
            args.keep_journal.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(journal, args.keep_journal)
        src = f"real export {args.symbol} {args.timeframe}" if args.exports else "synthetic demo"
        from engine.explain import utc

        title = f"{src}, test {utc(cut)} → {utc(end)}"
        _att, md, png = attribution_report(rows, title, args.out_dir, args.name)
        print(md.read_text())
        print(
            f"decisions {res.decisions}, verdicts {res.counts}, contributions stored {w.stored}, "
            f"wrote {md} and {png}"
        )


if __name__ == "__main__":
    main()
