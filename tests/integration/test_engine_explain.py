"""Explain every decision, end to end over real HTTP: a real engine loop (simulated terminal)
asks a real BentoML serving of an ensemble bundle (XGBoost + transformer + regime, trained by
the training code, its native booster imported from MLflow) for each bar; every decided bar's
journal row carries the regime state, each member's probabilities and weight and the feature
vector; the explain worker, in its own low-priority thread and journal connection, then fills
every row's contributions from ``POST /v1/explain`` (TreeSHAP: contributions + base value ==
margin); ``tx explain`` prints the lot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from engine.backtest import ArrayFeatureSource
from engine.config import RiskLimits
from engine.explain_worker import ExplainClient, ExplainWorker
from engine.journal import Journal
from engine.loop import Engine
from engine.serving_client import ServingClient
from tests.integration.test_serving import FEATURES, TOKEN
from tests.integration.test_serving_explain import C, L, Served, served  # noqa: F401
from tests.unit.faults import MONDAY_0800, closes, sim_terminal
from titanovax.cli import app

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_engine_when_serving_explains_then_every_decided_row_has_regime_members_and_contributions(
    served: Served,  # noqa: F811
    tmp_path: Path,
) -> None:
    # Arrange: 30 bars of features + sequences, a real engine on the simulated terminal
    bars = closes(n=30)
    rng = np.random.default_rng(11)
    x = rng.normal(size=(len(bars), len(FEATURES)))
    seq = rng.normal(size=(len(bars), L, C)).astype(np.float32)
    t = np.array(bars, dtype=np.int64)
    now = [MONDAY_0800]
    token = TOKEN
    path = tmp_path / "journal.sqlite"
    engine = Engine(
        terminal=sim_terminal(now),
        features=ArrayFeatureSource(
            list(FEATURES), {"EURUSD": (t, x)}, lambda: float(now[0]), {"EURUSD": (t, seq)}
        ),
        model=ServingClient(served.base_url, timeout_s=10.0, token=token),
        journal=Journal(path),
        limits=RiskLimits(max_consecutive_losses=0, daily_loss_limit=0.0, max_drawdown=0.0),
        magic=41,
        clock=lambda: float(now[0]),
        sleep=lambda s: None,
    )
    # Act: decide every bar while the worker runs next to the engine
    worker = ExplainWorker(
        path, engine.journal.scope, ExplainClient(served.base_url, token=token), poll_s=0.05
    ).start()
    try:
        engine.replay(bars, ["EURUSD"], lambda v: now.__setitem__(0, v))
        assert worker.drain(120)
    finally:
        worker.stop()
    # Assert: every decided bar carries what serving said, and its contributions
    rows = Journal(path, engine.journal.scope).rows()
    assert len(rows) == 30 and all(r["model_version"] for r in rows), [r["reason"] for r in rows]
    for r in rows:
        reg = r["explanation"]["regime"]
        assert reg["state"] in (0, 1, 2, 3) and len(reg["probabilities"]) == 4
        members = {m["name"]: m for m in r["explanation"]["members"]}
        assert set(members) == {"xgb", "transformer"}
        blend = sum(m["weight"] * np.array(m["probabilities"]) for m in r["explanation"]["members"])
        probs = [r["probabilities"][c] for c in ("short", "flat", "long")]
        assert blend == pytest.approx(probs, abs=1e-5)
        assert list(r["features"]) == list(FEATURES)
        c = r["contributions"]
        assert "error" not in c, c
        assert set(c["contributions"]) == set(FEATURES)
        assert sum(c["contributions"].values()) + c["base_value"] == pytest.approx(
            c["margin"], abs=1e-4
        )
    assert worker.stored == 30
    # the operator's door: tx explain on the last bar reads all of it
    out = CliRunner().invoke(app, ["explain", "EURUSD", str(bars[-1]), "--journal", str(path)])
    assert out.exit_code == 0, out.output
    assert "Regime: state " in out.output and "Members: xgb voted " in out.output
    assert "transformer voted " in out.output and "Top features (TreeSHAP of xgb for " in out.output
    assert "Similar past decisions (nearest 5 before this bar):" in out.output


def test_onnx_fallback_when_the_bundle_has_explanation_outputs_then_its_explanation_equals_servings(
    served: Served,  # noqa: F811
    tmp_path: Path,
) -> None:
    import json

    from engine.features import FeatureRow
    from engine.serving_client import OnnxModel

    (tmp_path / "model.onnx").write_bytes(served.bundle.onnx_bytes)
    (tmp_path / "manifest.json").write_text(
        json.dumps({**served.bundle.manifest, "model_version": "1"})
    )
    local = OnnxModel.from_dir(tmp_path)
    client = ServingClient(served.base_url, timeout_s=10.0, token=TOKEN)
    rng = np.random.default_rng(5)
    for i in range(5):
        x = rng.normal(size=len(FEATURES))
        seq = rng.normal(size=(L, C)).astype(np.float32)
        row = FeatureRow(
            "EURUSD", float(MONDAY_0800 + 300 * i), dict(zip(FEATURES, x, strict=True)), seq
        )
        remote, mine = client.predict(row).explanation, local.predict(row).explanation
        assert remote is not None and mine is not None
        assert mine["regime"]["state"] == remote["regime"]["state"]
        assert mine["regime"]["probabilities"] == pytest.approx(remote["regime"]["probabilities"])
        assert [m["name"] for m in mine["members"]] == [m["name"] for m in remote["members"]]
        for a, b in zip(mine["members"], remote["members"], strict=True):
            assert a["weight"] == pytest.approx(b["weight"], abs=1e-6)
            assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-5)
    client.close()


def test_tx_explain_worker_when_run_once_then_fills_contributions_and_when_serving_is_down_says_so(
    served: Served,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from titanovax.redis_local import free_port

    now = [MONDAY_0800]
    bars = closes(n=4)
    rng = np.random.default_rng(2)
    t = np.array(bars, dtype=np.int64)
    path = tmp_path / "j.sqlite"
    engine = Engine(
        terminal=sim_terminal(now),
        features=ArrayFeatureSource(
            list(FEATURES),
            {"EURUSD": (t, rng.normal(size=(4, len(FEATURES))))},
            lambda: float(now[0]),
            {"EURUSD": (t, rng.normal(size=(4, L, C)).astype(np.float32))},
        ),
        model=ServingClient(served.base_url, timeout_s=10.0, token=TOKEN),
        journal=Journal(path),
        limits=RiskLimits(),
        magic=43,
        clock=lambda: float(now[0]),
        sleep=lambda s: None,
    )
    engine.replay(bars, ["EURUSD"], lambda v: now.__setitem__(0, v))
    engine.journal.close()
    monkeypatch.setenv("TX_SERVING_TOKEN", TOKEN)
    runner = CliRunner()
    # serving down: one line saying what to do, nothing stored
    down = f"http://127.0.0.1:{free_port()}"
    out = runner.invoke(
        app, ["explain", "worker", "--once", "--journal", str(path), "--serving-url", down]
    )
    assert out.exit_code != 0 and "/v1/explain failed" in out.output and "tx serve" in out.output
    assert len(Journal(path, engine.journal.scope).lacking_contributions()) == 4
    out = runner.invoke(
        app,
        ["explain", "worker", "--once", "--journal", str(path), "--serving-url", served.base_url],
    )
    assert out.exit_code == 0, out.output
    assert "contributions stored for 4 decision(s)" in out.output
    rows = Journal(path, engine.journal.scope).rows()
    assert all(set(r["contributions"]["contributions"]) == set(FEATURES) for r in rows)
