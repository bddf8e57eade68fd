"""Explain every decision: a real engine backtest (simulated terminal, real XGBoost → ONNX
bundle scored in-process) journals per decision the probabilities, regime state, members and
feature vector; contributions are real TreeSHAP values of the same booster; ``tx explain``
prints the explanation and its similar decisions STRICTLY before the bar; ``tx explain
report`` attributes the trades' P&L (cross-checked against the terminal's deals)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from engine.backtest import ArrayFeatureSource, bar_closes, run_backtest
from engine.config import RiskLimits, SizingConfig
from engine.explain import explain_row, neighbours, trades
from engine.journal import DecisionRecord, Journal
from engine.loop import Engine
from engine.mt5 import protocol as P
from engine.mt5.sim import SimulatedTerminal, SyntheticFeed
from engine.mt5.synthetic import ORIGIN_UTC
from engine.serving_client import OnnxModel
from tests.unit.engine_bundles import _write, synthetic_features
from titanovax.cli import app

pytestmark = pytest.mark.unit

DAY = 86_400
START = ORIGIN_UTC + 22 * DAY + 6 * 3600  # Tuesday 06:00 UTC
SYMBOLS = ["EURUSD", "GBPUSD"]
runner = CliRunner()


def _bundle(d: Path, names: list[str], tables: dict[str, Any]) -> tuple[Path, Any]:
    """A small XGBoost (kept for TreeSHAP) exported to ONNX, with the regime thresholds."""
    import xgboost as xgb

    from training.export import xgb_to_onnx

    xs, ys = [], []
    for _, x in tables.values():
        x = x[np.isfinite(x).all(axis=1)]
        fwd = np.r_[x[1:, 0], 0.0]
        lo, hi = np.quantile(fwd, [1 / 3, 2 / 3])
        xs.append(x)
        ys.append(np.where(fwd > hi, 2, np.where(fwd < lo, 0, 1)))
    x_all = np.vstack(xs).astype(np.float32)
    model = xgb.XGBClassifier(n_estimators=30, max_depth=3, tree_method="hist", n_jobs=1)
    model.fit(x_all, np.concatenate(ys))

    class _Fitted:
        booster = model

    regime = {
        "vol_feature": "range_12",
        "vol_threshold": float(np.median(x_all[:, names.index("range_12")])),
        "trend_feature": "ret_12",
        "abs_trend_threshold": float(np.median(np.abs(x_all[:, names.index("ret_12")]))),
    }
    path = _write(
        d,
        xgb_to_onnx(_Fitted(), len(names)).SerializeToString(),
        names,
        min_confidence=0.4,
        family="xgboost",
        thresholds={"regime": regime},
    )
    return path, model


def _treeshap(model: Any, names: list[str], row: dict[str, Any]) -> dict[str, Any]:
    """Real TreeSHAP of the booster for the decided class (as serving's /v1/explain answers)."""
    import xgboost as xgb

    x = np.array([[row["features"][n] for n in names]], dtype=np.float32)
    contrib = model.get_booster().predict(xgb.DMatrix(x, feature_names=None), pred_contribs=True)
    cls = {"short": 0, "flat": 1, "long": 2}[row["decision"]]
    c = contrib[0, cls]
    return {
        "member": "xgb",
        "class": cls,
        "base_value": float(c[-1]),
        "margin": float(c.sum()),
        "contributions": {n: float(v) for n, v in zip(names, c[:-1], strict=True)},
    }


@pytest.fixture(scope="module")
def backtest(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("explain")
    end = START + DAY
    names, tables = synthetic_features(SYMBOLS, START, end)
    bundle, booster = _bundle(tmp / "bundle", names, tables)
    now = [end]
    term = SimulatedTerminal(SyntheticFeed(seed=7, symbols=SYMBOLS), clock=lambda: now[0])
    assert term.initialize()
    path = tmp / "journal.sqlite"
    engine = Engine(
        terminal=term,
        features=ArrayFeatureSource(names, tables, clock=lambda: float(now[0])),
        model=OnnxModel.from_dir(bundle),
        journal=Journal(path),
        limits=RiskLimits(max_consecutive_losses=0, daily_loss_limit=0.0, max_drawdown=0.0),
        sizing=SizingConfig(fixed_lots=0.1, stop_atr_mult=0.0),
        magic=31,
        clock=lambda: float(now[0]),
        sleep=lambda s: None,
        mode="backtest",
    )
    closes = bar_closes(term, SYMBOLS, P.TIMEFRAME_M5, START, end, 2)
    run_backtest(engine, closes, SYMBOLS, lambda t: now.__setitem__(0, t))
    # contributions for every decided bar, stored as the worker stores them
    for r in engine.journal.lacking_contributions(10_000):
        row = engine.journal.decision(r["symbol"], r["bar_close"])
        assert row is not None
        engine.journal.set_contributions(
            r["symbol"], r["bar_close"], _treeshap(booster, names, row)
        )
    return {"engine": engine, "path": path, "names": names, "terminal": term}


def test_journal_when_a_backtest_decides_then_every_decided_row_carries_probabilities_regime_members_features_and_contributions(
    backtest: dict[str, Any],
) -> None:
    rows = backtest["engine"].journal.rows()
    decided = [r for r in rows if r["model_version"]]
    assert len(decided) > 200 and {r["decision"] for r in decided} >= {"long", "short"}
    for r in decided:
        assert set(r["probabilities"]) == {"short", "flat", "long"}
        assert r["explanation"]["regime"]["state"] in (0, 1, 2, 3)
        (m,) = r["explanation"]["members"]
        assert m["name"] == "xgb" and m["weight"] == 1.0
        assert m["probabilities"] == pytest.approx(
            [r["probabilities"][c] for c in ("short", "flat", "long")]
        )
        assert list(r["features"]) == backtest["names"]
        c = r["contributions"]
        assert sum(c["contributions"].values()) + c["base_value"] == pytest.approx(
            c["margin"], abs=1e-4
        )
    # the regime follows the manifest's thresholds (both states seen)
    assert len({r["explanation"]["regime"]["state"] for r in decided}) >= 2


def test_journal_when_opened_on_an_older_layout_then_the_explanation_columns_are_added(
    tmp_path: Path,
) -> None:
    db = sqlite3.connect(tmp_path / "old.sqlite")
    db.execute(
        "CREATE TABLE decisions (scope TEXT NOT NULL, symbol TEXT NOT NULL, bar_close BIGINT NOT"
        " NULL, decided_at DOUBLE PRECISION NOT NULL, feature_time DOUBLE PRECISION,"
        " model_version TEXT, decision TEXT NOT NULL, target_lots DOUBLE PRECISION, verdict TEXT"
        " NOT NULL, reason TEXT, order_request TEXT, order_result TEXT, retcode INTEGER,"
        " latency_ms TEXT NOT NULL, reason_code TEXT, trading_state TEXT,"
        " PRIMARY KEY (scope, symbol, bar_close))"
    )
    db.execute(
        "INSERT INTO decisions (scope, symbol, bar_close, decided_at, decision, verdict,"
        " latency_ms) VALUES ('1:2:paper', 'EURUSD', 100, 100.0, 'long', 'hold', '{}')"
    )
    db.commit()
    db.close()
    j = Journal(tmp_path / "old.sqlite", "1:2:paper")
    (old,) = j.rows()
    assert old["explanation"] is None and old["contributions"] is None
    j.record(
        DecisionRecord(
            "EURUSD", 400, 400.0, 400.0, "7", "long", 0.1, "hold", None, None, None, None, {},
            probabilities={"long": 0.7}, explanation={"regime": {"state": 1}, "members": []},
            features={"ret_1": np.float32(0.5)},
        )
    )  # fmt: skip
    new = j.decision("EURUSD", 400)
    assert new is not None and new["features"] == {"ret_1": 0.5}
    assert new["explanation"]["regime"]["state"] == 1


def test_neighbours_when_a_later_identical_decision_exists_then_only_strictly_earlier_ones_are_returned(
    backtest: dict[str, Any], tmp_path: Path
) -> None:
    rows = backtest["engine"].journal.rows()
    eur = [r for r in rows if r["symbol"] == "EURUSD" and r["features"]]
    target = eur[len(eur) // 2]
    later = dict(target, bar_close=eur[-1]["bar_close"] + 300)  # identical, one bar after the end
    earlier_twin = dict(target, bar_close=eur[0]["bar_close"] - 300, decision="short")
    pool = [*rows, later, earlier_twin]
    got = neighbours(pool, target, k=5)
    assert len(got) == 5
    assert all(g["bar_close"] < target["bar_close"] for g in got)
    assert later["bar_close"] not in {g["bar_close"] for g in got}
    assert got[0]["bar_close"] == earlier_twin["bar_close"] and got[0]["distance"] == 0.0
    assert [g["distance"] for g in got] == sorted(g["distance"] for g in got)
    # outcomes are those known at the target's close: no trade closed later is shown
    closed_at = {(t["symbol"], t["open_bar"]): t["close_bar"] for t in trades(rows)}
    for n in neighbours(rows, target, k=50):
        if n["trade_bps"] is not None:
            assert closed_at[(n["symbol"], n["bar_close"])] <= target["bar_close"]
        elif closed_at.get((n["symbol"], n["bar_close"])) is not None:
            assert closed_at[(n["symbol"], n["bar_close"])] > target["bar_close"]
    # the very first decision has no earlier one: no neighbour, said so in the text
    first = min(eur, key=lambda r: r["bar_close"])
    assert neighbours(rows, first) == []
    assert "Similar past decisions: none before this bar." in explain_row(first, rows)["text"]


def _a_sent_bar(journal: Journal) -> dict[str, Any]:
    return next(
        r
        for r in journal.rows()
        if r["verdict"] == "sent" and r["symbol"] == "EURUSD" and r["bar_close"] > START + 3600
    )


def test_tx_explain_when_asked_for_a_decided_bar_then_prints_regime_members_features_verdict_fill_and_similar(
    backtest: dict[str, Any],
) -> None:
    j: Journal = backtest["engine"].journal
    row = _a_sent_bar(j)
    args = ["explain", "EURUSD", str(row["bar_close"]), "--journal", str(backtest["path"])]
    out = runner.invoke(app, args)
    assert out.exit_code == 0, out.output
    text = out.output
    assert f"the model said {row['decision'].upper()}" in text
    assert f"Regime: state {row['explanation']['regime']['state']} (" in text
    assert "Members: xgb voted " in text and "with weight 1.00" in text
    top = max(row["contributions"]["contributions"].items(), key=lambda kv: abs(kv[1]))
    assert f"Top features (TreeSHAP of xgb for {row['decision']}): {top[0]} = " in text
    assert "Risk layer: allowed" in text and "Fill: open:" in text
    assert "Similar past decisions (nearest 5 before this bar):" in text
    # the same bar by its ISO time, as JSON: the neighbours are strictly earlier
    from engine.explain import utc

    iso = utc(row["bar_close"]).replace(" UTC", "").replace(" ", "T")
    out = runner.invoke(app, [*args[:2], iso, *args[3:], "--json"])
    data = json.loads(out.output)
    assert data["bar_close"] == row["bar_close"] and len(data["similar"]) == 5
    assert all(s["bar_close"] < row["bar_close"] for s in data["similar"])


def test_tx_explain_when_the_bar_or_journal_is_wrong_then_one_line_saying_what_to_do(
    backtest: dict[str, Any], tmp_path: Path
) -> None:
    j = str(backtest["path"])
    out = runner.invoke(app, ["explain", "EURUSD", "1999-01-01T00:00", "--journal", j])
    assert out.exit_code != 0 and "no decision for EURUSD" in out.output
    out = runner.invoke(app, ["explain", "EURUSD", "yesterday", "--journal", j])
    assert out.exit_code != 0 and "epoch seconds or an ISO time" in out.output
    out = runner.invoke(app, ["explain", "EURUSD", "100", "--journal", str(tmp_path / "x.db")])
    assert out.exit_code != 0 and "no journal at" in out.output
    assert runner.invoke(app, ["explain", "--help"]).exit_code == 0


def test_tx_explain_report_when_run_on_a_backtest_journal_then_pnl_by_regime_family_venue_matches_the_deals(
    backtest: dict[str, Any], tmp_path: Path
) -> None:
    from engine.mt5 import protocol as mt5

    out = runner.invoke(
        app,
        ["explain", "report", "--journal", str(backtest["path"]), "--out-dir", str(tmp_path)],
    )
    assert out.exit_code == 0, out.output
    md = (tmp_path / "attribution.md").read_text()
    png = tmp_path / "attribution.png"
    assert png.stat().st_size > 5000 and png.read_bytes()[:4] == b"\x89PNG"
    assert "## By regime" in md and "## By family" in md and "| mt5 (single venue) |" in md
    # every closed trade is one closing deal of the engine's magic at the terminal
    rows = backtest["engine"].journal.rows()
    closed = [t for t in trades(rows) if t["bps"] is not None]
    deals = [
        d
        for d in backtest["terminal"].history_deals_get(0, 2**31) or ()
        if d.magic == 31 and d.entry == mt5.DEAL_ENTRY_OUT
    ]
    assert len(closed) == len(deals) > 5
    # each trade's exit is its position's closing deal, and its P&L has the broker's sign
    by_position = {int(d.position_id): d for d in deals}
    for t in closed:
        d = by_position[int(t["ticket"])]
        assert d.price == pytest.approx(t["exit_price"])
        assert np.sign(round(t["bps"], 6)) == np.sign(round(d.profit, 6))
    total = sum(t["bps"] for t in closed)
    assert f"total {total:+.1f} bps" in md
    # the regime rows add up to the total
    from titanovax.attribution import attribute

    att = attribute(rows)
    for dim in ("regime", "family", "venue"):
        assert sum(g["pnl_bps"] for g in att["groups"][dim]) == pytest.approx(total)
    assert {g["family"] for g in att["groups"]["family"]} <= {"returns", "range"}


def test_engine_explain_worker_setting_when_on_then_a_low_priority_worker_runs_and_an_outage_only_delays(
    backtest: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    from engine.app import start_explain_worker
    from engine.config import EngineSettings
    from titanovax.redis_local import free_port

    engine = backtest["engine"]
    monkeypatch.setenv("TX_SERVING_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens
    assert start_explain_worker(EngineSettings(), engine) is None  # off by default
    monkeypatch.setenv("TX_ENGINE_EXPLAIN_WORKER", "true")
    # a bar without contributions yet
    r = engine.journal.rows()[-1]
    engine.journal._exec(
        "UPDATE decisions SET contributions=NULL WHERE scope=? AND symbol=? AND bar_close=?",
        (engine.journal.scope, r["symbol"], r["bar_close"]),
    )
    worker = start_explain_worker(EngineSettings(), engine)
    try:
        deadline = time.monotonic() + 10
        while worker.errors == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert worker.errors >= 1 and worker.stored == 0  # serving down: it waits, retries
        assert worker._thread.is_alive()
    finally:
        worker.stop()
    assert not worker._thread.is_alive()
    assert len(engine.journal.lacking_contributions()) == 1
    # restore what the other tests read
    row = engine.journal.decision(r["symbol"], r["bar_close"])
    engine.journal.set_contributions(r["symbol"], r["bar_close"], r["contributions"])
    assert row is not None and row["contributions"] is None
