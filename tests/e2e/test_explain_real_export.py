"""Explanations and attribution on one real MT5 export (../shared/data/raw): an XGBoost trained
on the export's first weeks, the engine backtested on the following unseen days (real bars,
the simulated terminal replaying them), every decision journaled with its regime and
features; ``tx explain`` explains a trade and ``tx explain report`` attributes its P&L, each
closed trade being one closing deal at the terminal. Skipped when the exports are absent."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from titanovax.settings import PROJECT_ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

RAW = PROJECT_ROOT.parent / "shared" / "data" / "raw"
EXPORT = RAW / "EURUSD_M5__gordKeys_trading_system.csv"


@pytest.mark.skipif(
    not EXPORT.is_file(),
    reason=f"real MT5 export {EXPORT.name} not found under {RAW} (the shared data folder is absent)",
)
def test_explain_report_when_run_on_a_real_export_backtest_then_attributes_every_closed_trade(
    tmp_path: Path,
) -> None:
    from bench.explain_attribution import _span, train_bundle
    from engine.backtest import PrecomputedModel, run_backtest
    from engine.config import RiskLimits, SizingConfig
    from engine.journal import Journal
    from engine.loop import Engine
    from engine.mt5 import protocol as mt5
    from engine.serving_client import OnnxModel
    from feature_repo.pipeline.transforms import TREND_V1_FEATURES
    from titanovax.cli import app
    from titanovax.engine_world import backtest_world
    from titanovax.settings import PlatformSettings

    names = list(TREND_V1_FEATURES)
    s = PlatformSettings(
        symbols=["EURUSD"], home=tmp_path / "home", mt5_exports=RAW, timeframe="M5"
    )
    lo, _hi = _span(s, "EURUSD", "M5")
    lo += 3 * 86_400
    cut = lo + 21 * 86_400
    bundle = train_bundle(
        backtest_world(s, lo, cut, names), "EURUSD", names, lo, cut - 1800, tmp_path / "b"
    )
    test = backtest_world(s, cut, cut + 4 * 86_400, names)
    path = tmp_path / "journal.sqlite"
    engine = Engine(
        terminal=test.terminal,
        features=test.features,
        model=PrecomputedModel.score(OnnxModel.from_dir(bundle), test.features, ["EURUSD"]),
        journal=Journal(path, durable=False),
        limits=RiskLimits(max_consecutive_losses=0, daily_loss_limit=0.5, max_drawdown=0.9),
        sizing=SizingConfig(fixed_lots=0.1, stop_atr_mult=0.0),
        magic=5252,
        clock=lambda: float(test.now[0]),
        sleep=lambda _s: None,
        mode="backtest",
    )
    run_backtest(engine, test.closes, ["EURUSD"], test.set_time)
    rows = engine.journal.rows()
    decided = [r for r in rows if r["model_version"]]
    assert len(decided) > 500
    assert all(r["explanation"]["regime"]["state"] in (0, 1, 2, 3) for r in decided)
    assert len({r["explanation"]["regime"]["state"] for r in decided}) >= 3

    runner = CliRunner()
    sent = next(r for r in rows if r["verdict"] == "sent")
    out = runner.invoke(app, ["explain", "EURUSD", str(sent["bar_close"]), "--journal", str(path)])
    assert out.exit_code == 0, out.output
    assert "Fill: open:" in out.output or "Fill: close:" in out.output
    out = runner.invoke(
        app,
        ["explain", "report", "--journal", str(path), "--out-dir", str(tmp_path), "--name", "r"],
    )
    assert out.exit_code == 0, out.output
    closing = [
        d
        for d in test.terminal.history_deals_get(0, 2**31) or ()
        if d.magic == 5252 and d.entry == mt5.DEAL_ENTRY_OUT
    ]
    md = (tmp_path / "r.md").read_text()
    assert f"{len(closing)} closed trades" in md and len(closing) > 5
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
