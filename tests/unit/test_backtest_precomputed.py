"""Backtest mode may score every bar up front in one batched ONNX call
(:class:`engine.backtest.PrecomputedModel`): the engine's decisions, its journal (decisions,
intents, risk state) and every prediction are identical to scoring bar by bar."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.backtest import ArrayFeatureSource, PrecomputedModel, bar_closes, run_backtest
from engine.config import RiskLimits, SizingConfig
from engine.journal import Journal
from engine.loop import Engine
from engine.mt5 import protocol as P
from engine.mt5.sim import SimulatedTerminal, SyntheticFeed
from engine.mt5.synthetic import ORIGIN_UTC
from engine.serving_client import OnnxModel
from tests.unit.engine_bundles import linear_bundle, synthetic_features, xgboost_bundle

pytestmark = pytest.mark.unit

DAY = 86_400
START = ORIGIN_UTC + 22 * DAY + 6 * 3600  # Tuesday 2024-01-23 06:00 UTC
SYMBOLS = ["EURUSD", "GBPUSD", "USDJPY"]


def _backtest(model: Any, names: list[str], tables: dict[str, Any], end: int) -> Engine:
    now = [end]
    term = SimulatedTerminal(SyntheticFeed(seed=7, symbols=SYMBOLS), clock=lambda: now[0])
    assert term.initialize()
    closes = bar_closes(term, SYMBOLS, P.TIMEFRAME_M5, START, end, 2)
    engine = Engine(
        terminal=term,
        features=ArrayFeatureSource(names, tables, clock=lambda: float(now[0])),
        model=model,
        journal=Journal(":memory:"),
        limits=RiskLimits(max_consecutive_losses=3, daily_loss_limit=0.5, max_drawdown=0.9),
        sizing=SizingConfig(fixed_lots=0.1, stop_atr_mult=2.0),
        magic=21,
        clock=lambda: float(now[0]),
        sleep=lambda s: None,
    )
    run_backtest(engine, closes, SYMBOLS, lambda t: now.__setitem__(0, t))
    return engine


def _journal(engine: Engine) -> tuple[list[Any], list[Any], str | None]:
    """What the journal holds, less the measured latencies and the wall-clock intent stamps."""
    rows = [{k: v for k, v in r.items() if k != "latency_ms"} for r in engine.journal.rows()]
    intents = [
        {k: v for k, v in vars(it).items() if k not in ("created_at", "updated_at")}
        for it in engine.journal.intents()
    ]
    return rows, intents, engine.journal.load_state("risk")


@pytest.mark.parametrize("kind", ["xgboost", "linear"])
def test_precomputed_model_when_a_backtest_is_replayed_then_decisions_and_journal_equal_bar_by_bar_scoring(
    tmp_path: Path, kind: str
) -> None:
    # Arrange: two days of three symbols, a real ONNX bundle
    end = START + 2 * DAY
    names, tables = synthetic_features(SYMBOLS, START, end)
    d = tmp_path / "bundle"
    bundle = xgboost_bundle(d, names, tables) if kind == "xgboost" else linear_bundle(d, names)
    source = ArrayFeatureSource(names, tables, clock=lambda: 0.0)
    # Act
    per_bar = _backtest(OnnxModel.from_dir(bundle), names, tables, end)
    pre = PrecomputedModel.score(OnnxModel.from_dir(bundle), source, SYMBOLS)
    batched = _backtest(pre, names, tables, end)
    # Assert: every bar was answered from the table, and the journals are the same
    n = per_bar.stats.bars
    assert n == batched.stats.bars and pre.hits == n and pre.misses == 0
    assert _journal(batched) == _journal(per_bar)
    rows = _journal(per_bar)[0]
    assert {r["decision"] for r in rows} >= {"long", "short", "flat"}
    assert {r["verdict"] for r in rows} >= {"sent", "hold"}


def test_precomputed_model_when_every_row_is_asked_then_each_prediction_equals_the_models(
    tmp_path: Path,
) -> None:
    # Arrange: a bundle that also reads the bar sequence (batched along with the rows)
    end = START + DAY
    names, tables = synthetic_features(SYMBOLS, START, end)
    rng = np.random.default_rng(3)
    seqs = {
        s: (t, rng.normal(0, 1, (len(t), 64, 4)).astype(np.float32)) for s, (t, _) in tables.items()
    }
    model = OnnxModel.from_dir(linear_bundle(tmp_path / "b", names, seq_channels=4))
    now = [0]
    source = ArrayFeatureSource(names, tables, clock=lambda: float(now[0]), sequences=seqs)
    pre = PrecomputedModel.score(model, source, SYMBOLS)
    # Act / Assert: the same Prediction (version, position, label, probabilities bit for bit)
    asked = 0
    for sym, (times, x) in tables.items():
        for t in times[np.isfinite(x).all(axis=1)]:
            now[0] = int(t)
            row = source.read(sym)
            assert pre.predict(row) == model.predict(row)
            asked += 1
    assert pre.hits == asked and pre.misses == 0


def test_precomputed_model_when_the_row_was_not_scored_then_the_wrapped_model_answers(
    tmp_path: Path,
) -> None:
    # Arrange
    end = START + DAY
    names, tables = synthetic_features(SYMBOLS, START, end)
    model = OnnxModel.from_dir(linear_bundle(tmp_path / "b", names))
    t = int(tables["EURUSD"][0][-1])
    source = ArrayFeatureSource(names, tables, clock=lambda: float(t))
    pre = PrecomputedModel.score(model, source, ["EURUSD"])
    row = source.read("EURUSD")
    other = replace(row, values={**row.values, "ret_1": -row.values["ret_1"]})
    # Act
    got = pre.predict(other)
    # Assert: not the stored answer of that bar, the model's answer of this row
    assert got == model.predict(other) and pre.misses == 1 and pre.hits == 0
    assert pre.predict(row) == model.predict(row) and pre.hits == 1


def test_tx_engine_run_backtest_when_the_bundle_is_in_process_then_every_bar_is_answered_from_the_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Arrange: the CLI door, an in-process bundle over trend_v1
    import json

    from typer.testing import CliRunner

    from feature_repo.pipeline.transforms import TREND_V1_FEATURES
    from titanovax.cli import app

    monkeypatch.setenv("TX_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TX_SYMBOLS", "EURUSD,GBPUSD")
    monkeypatch.setenv(
        "TX_ENGINE_BUNDLE_DIR", str(linear_bundle(tmp_path / "b", list(TREND_V1_FEATURES)))
    )
    monkeypatch.delenv("TX_JOURNAL_URL", raising=False)
    # Act
    res = CliRunner().invoke(
        app,
        [
            "engine",
            "run",
            "--mode",
            "backtest",
            "--start",
            "2026-01-12T08:00",
            "--end",
            "2026-01-12T11:00",
        ],
    )
    # Assert: 3 h of M5 closes x 2 symbols, all answered from the up-front scores
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["decisions"] == 72
    assert out["predictions"] == {"precomputed": 72, "scored_per_bar": 0}
    assert len(Journal(out["journal"], scope=out["journal_scope"]).rows()) == 72
