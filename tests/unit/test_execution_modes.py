"""One engine, three modes: the backtest door (``tx engine run --mode backtest``) decides every
bar of every symbol from settings alone; live refuses the simulator; the live/paper driver
decides each bar that closes on the clock exactly once."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from engine.config import RiskLimits
from engine.journal import Journal
from engine.loop import Engine
from engine.mt5 import protocol as mt5
from tests.unit.faults import MONDAY_0800, ClockFeatures, ScriptedModel, sim_terminal

pytestmark = pytest.mark.unit


def _bundle(d: Path, names: list[str], channels: list[str] | None = None) -> Path:
    """A real ONNX bundle: softmax(input @ W [+ flatten(sequence) @ V]); with ``channels`` it
    takes the sequence input [N, 64, C] as trend_v2 bundles do."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.zeros((len(names), 3), np.float32)
    w[0] = [-50.0, 0.0, 50.0]  # the sign of the first feature (ret_1) picks long or short
    nodes = [helper.make_node("MatMul", ["input", "W"], ["z"])]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, len(names)])]
    inits = [numpy_helper.from_array(w, "W")]
    if channels:
        v = np.full((64 * len(channels), 3), 1e-3, np.float32)
        nodes += [
            helper.make_node("Flatten", ["sequence"], ["s"], axis=1),
            helper.make_node("MatMul", ["s", "V"], ["zs"]),
            helper.make_node("Add", ["z", "zs"], ["z2"]),
        ]
        inputs.append(
            helper.make_tensor_value_info("sequence", TensorProto.FLOAT, [None, 64, len(channels)])
        )
        inits.append(numpy_helper.from_array(v, "V"))
    nodes.append(
        helper.make_node("Softmax", ["z2" if channels else "z"], ["probabilities"], axis=1)
    )
    graph = helper.make_graph(
        nodes,
        "g",
        inputs,
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 3])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    data = model.SerializeToString()
    d.mkdir(parents=True, exist_ok=True)
    (d / "model.onnx").write_bytes(data)
    manifest = {
        "features": names,
        "classes": ["short", "flat", "long"],
        "min_confidence": 0.0,
        "bundle_sha256": hashlib.sha256(data).hexdigest(),
        "model_version": "t1",
    }
    if channels:
        manifest["sequence"] = {
            "input_name": "sequence",
            "feature_view": "bar_sequence_fv",
            "field": "seq",
            "seq_len": 64,
            "channels": channels,
        }
    (d / "manifest.json").write_text(json.dumps(manifest))
    return d


def test_backtest_mode_when_run_from_settings_then_every_bar_of_every_symbol_is_decided_and_journaled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from feature_repo.pipeline.transforms import TREND_V1_FEATURES
    from titanovax.engine_world import run_engine

    monkeypatch.setenv("TX_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TX_SYMBOLS", "EURUSD,GBPUSD")
    monkeypatch.setenv(
        "TX_ENGINE_BUNDLE_DIR", str(_bundle(tmp_path / "bundle", list(TREND_V1_FEATURES)))
    )
    monkeypatch.setenv("TX_RISK_MAX_CONSECUTIVE_LOSSES", "0")
    monkeypatch.delenv("TX_JOURNAL_URL", raising=False)
    out = run_engine("backtest", start_utc=MONDAY_0800, end_utc=MONDAY_0800 + 6 * 3600)
    assert out["bars"] == 72 and out["decisions"] == 144  # 6 h of M5 closes x 2 symbols
    assert out["verdicts"].get("sent", 0) > 0 and sum(out["verdicts"].values()) == 144
    rows = Journal(out["journal"], out["journal_scope"]).rows()
    assert len(rows) == 144 and all(
        r["feature_time"] == r["bar_close"] for r in rows if r["verdict"] != "refused"
    )
    assert {r["model_version"] for r in rows} == {"t1"}


def test_backtest_mode_when_the_bundle_reads_the_sequence_then_rows_carry_the_bars_sequence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from feature_repo.pipeline.transforms import FEATURE_NAMES, SEQ_CHANNELS
    from titanovax.engine_world import run_engine

    monkeypatch.setenv("TX_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TX_SYMBOLS", "EURUSD,GBPUSD")
    monkeypatch.setenv(
        "TX_ENGINE_BUNDLE_DIR",
        str(_bundle(tmp_path / "bundle", list(FEATURE_NAMES), list(SEQ_CHANNELS))),
    )
    out = run_engine("backtest", start_utc=MONDAY_0800, end_utc=MONDAY_0800 + 3600)
    assert out["decisions"] == 24 and out["refusals"].get("no_features", 0) == 0
    assert out["verdicts"].get("sent", 0) > 0


def test_live_mode_when_the_terminal_is_the_simulator_then_it_refuses_to_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from titanovax.engine_world import run_engine

    monkeypatch.setenv("TX_MT5_MODE", "sim")
    with pytest.raises(ValueError, match="native or bridge"):
        run_engine("live")


def test_live_driver_when_bars_close_on_the_clock_then_each_is_decided_once(tmp_path: Path) -> None:
    now = [MONDAY_0800 + 10]
    engine = Engine(
        terminal=sim_terminal(now),
        features=ClockFeatures([MONDAY_0800]),
        model=ScriptedModel(1),
        journal=Journal(tmp_path / "j.sqlite"),
        limits=RiskLimits(),
        magic=5,
        clock=lambda: float(now[0]),
    )
    polls = [0]

    def tick() -> (
        bool
    ):  # the wall clock: 50 s per poll, 40 polls (rows stay younger than the 90 s limit)
        polls[0] += 1
        now[0] += 50
        engine.features.now[0] = (now[0] // 300) * 300  # type: ignore[attr-defined]  # the pipeline's row of the last close
        return polls[0] > 40

    engine.run_live(["EURUSD"], mt5.TIMEFRAME_M5, utc_offset_hours=2, poll_s=0.0, stop=tick)
    closes = [r["bar_close"] for r in engine.journal.rows()]
    last_poll = MONDAY_0800 + 10 + 40 * 50  # the clock at the last poll
    assert closes == list(
        range(MONDAY_0800, last_poll - last_poll % 300 + 1, 300)
    )  # every close, once, in order
    assert engine.journal.counts() == {"sent": 1, "hold": len(closes) - 1}
