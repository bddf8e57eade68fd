"""The model path of the engine: the serving client speaks contract 3 (``POST /v1/predict``,
Bearer token) with a timeout; on timeout/outage the engine fails closed, or answers from an
in-process ONNX session of the same bundle (sha256-checked), by configuration.

The HTTP peer here is a contract-shaped stdlib server (the real BentoML service is exercised
in tests/e2e/test_engine_e2e.py); the ONNX bundle is a real graph built with ``onnx.helper``.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from engine.config import RiskLimits
from engine.features import FeatureRow
from engine.journal import Journal
from engine.loop import Engine
from engine.serving_client import (
    BundleHashMismatch,
    FallbackModel,
    ModelMismatch,
    OnnxModel,
    ServingClient,
    ServingRejected,
    ServingUnavailable,
)
from tests.unit.faults import MONDAY_0800, ClockFeatures, sim_terminal

pytestmark = pytest.mark.unit

FEATURES = ["f0", "f1"]
TOKEN = "s3cret"


def _onnx_bytes(w: np.ndarray) -> bytes:
    """softmax(x @ w): a real 2-feature → 3-class graph with the bundle's input/output names."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "W"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 3])],
        [numpy_helper.from_array(w.astype(np.float32), "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


LONG_W = np.array([[0.0, 0.0, 0.0], [-2.0, 0.0, 2.0]])  # f1 = 1 → long


def _manifest(data: bytes, **extra: Any) -> dict[str, Any]:
    return {
        "features": FEATURES,
        "classes": ["short", "flat", "long"],
        "min_confidence": 0.4,
        "input_name": "input",
        "prob_output": "probabilities",
        "bundle_sha256": hashlib.sha256(data).hexdigest(),
        "model_version": "5",
        **extra,
    }


class _Serving(BaseHTTPRequestHandler):
    hold: threading.Event | None = None  # set: the reply waits for it (at most 10 s)
    sha = ""
    seen: ClassVar[list[tuple[str, str | None, dict[str, Any]]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append((self.path, self.headers.get("Authorization"), body))
        hold = type(self).hold
        if hold is not None:
            hold.wait(10)
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self.send_response(401)
            self.end_headers()
            return
        rows = body["rows"]
        out = {
            "model_name": "tx",
            "model_version": "5",
            "bundle_sha256": type(self).sha,
            "predictions": [
                {
                    "symbol": r["symbol"],
                    "feature_time": r["feature_time"],
                    "probabilities": {"short": 0.1, "flat": 0.2, "long": 0.7},
                    "decision": "long",
                    "position": 1,
                    "confidence": 0.7,
                }
                for r in rows
            ],
        }
        data = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def serving() -> Iterator[str]:
    _Serving.hold, _Serving.sha, _Serving.seen = None, "", []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Serving)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        if _Serving.hold is not None:
            _Serving.hold.set()
        srv.shutdown()
        srv.server_close()


ROW = FeatureRow("EURUSD", float(MONDAY_0800), {"f0": 0.0, "f1": 1.0})


def test_serving_client_when_calling_v1_then_it_posts_contract_rows_with_the_bearer_token(
    serving: str,
) -> None:
    client = ServingClient(serving, timeout_s=2.0, token=TOKEN)
    _Serving.sha = "ab" * 32
    pred = client.predict(ROW)
    path, auth, body = _Serving.seen[-1]
    assert path == "/v1/predict" and auth == f"Bearer {TOKEN}"
    assert body == {
        "rows": [
            {
                "symbol": "EURUSD",
                "feature_time": "2026-01-12T08:00:00Z",
                "features": {"f0": 0.0, "f1": 1.0},
            }
        ]
    }
    assert (pred.position, pred.model_version, pred.bundle_sha256, pred.source) == (
        1,
        "5",
        "ab" * 32,
        "serving",
    )


def test_serving_client_when_configured_legacy_then_it_uses_the_old_path(serving: str) -> None:
    ServingClient(serving, timeout_s=2.0, token=TOKEN, api="legacy").predict(ROW)
    assert _Serving.seen[-1][0] == "/predict"


def test_serving_client_when_the_token_is_wrong_then_serving_rejected_not_an_outage(
    serving: str,
) -> None:
    with pytest.raises(ServingRejected, match="401") as info:
        ServingClient(serving, timeout_s=2.0, token="wrong").predict(ROW)
    assert info.value.status == 401 and not isinstance(info.value, ServingUnavailable)


def test_serving_client_when_serving_is_slower_than_the_timeout_then_serving_unavailable(
    serving: str,
) -> None:
    """The reply is held until the client has given up: a client that waited for it would get
    a 200 (no error) once the hold ends, so raising proves it gave up at its timeout."""
    _Serving.hold = threading.Event()
    try:
        with pytest.raises(ServingUnavailable):
            ServingClient(serving, timeout_s=0.1, token=TOKEN).predict(ROW)
    finally:
        _Serving.hold.set()


def test_onnx_model_when_the_file_hash_differs_from_the_manifest_then_it_refuses_to_load() -> None:
    data = _onnx_bytes(LONG_W)
    with pytest.raises(BundleHashMismatch):
        OnnxModel(data, _manifest(data, bundle_sha256="0" * 64))


def test_onnx_model_when_loaded_from_a_bundle_dir_then_it_decides_like_serving(
    tmp_path: Path,
) -> None:
    data = _onnx_bytes(LONG_W)
    (tmp_path / "model.onnx").write_bytes(data)
    (tmp_path / "manifest.json").write_text(json.dumps(_manifest(data)))
    m = OnnxModel.from_dir(tmp_path)
    p = m.predict(ROW)
    expected = np.exp([-2.0, 0.0, 2.0]) / np.exp([-2.0, 0.0, 2.0]).sum()
    assert (
        p.decision == "long" and p.position == 1 and p.source == "onnx" and p.model_version == "5"
    )
    assert np.allclose([p.probabilities[c] for c in ("short", "flat", "long")], expected, atol=1e-6)
    weak = m.predict(
        FeatureRow("EURUSD", 0.0, {"f0": 0.0, "f1": 0.05})
    )  # max prob < min_confidence 0.4 → flat
    assert weak.decision == "flat" and weak.position == 0


def _engine(tmp_path: Path, now: list[int], model: Any) -> Engine:
    return Engine(
        terminal=sim_terminal(now),
        features=ClockFeatures(now),
        model=model,
        journal=Journal(tmp_path / "j.sqlite"),
        limits=RiskLimits(),
        magic=3,
        clock=lambda: float(now[0]),
        sleep=lambda s: None,
    )


def test_engine_when_serving_times_out_and_fallback_is_off_then_fails_closed(
    serving: str, tmp_path: Path
) -> None:
    _Serving.hold = threading.Event()  # serving slower than the client's timeout
    now = [MONDAY_0800]
    e = _engine(
        tmp_path, now, FallbackModel(ServingClient(serving, timeout_s=0.1, token=TOKEN), None)
    )
    rec = e.on_bar("EURUSD", now[0])
    assert (
        rec is not None
        and rec.verdict == "refused"
        and rec.reason_code == "serving_unavailable"
        and e.positions() == ()
    )


def test_engine_when_serving_times_out_and_fallback_is_onnx_of_the_same_bundle_then_it_trades_on_it(
    serving: str, tmp_path: Path
) -> None:
    data = _onnx_bytes(LONG_W)
    local = OnnxModel(data, _manifest(data))
    client = ServingClient(serving, timeout_s=0.1, token=TOKEN)
    _Serving.sha = local.bundle_sha256
    now = [MONDAY_0800]
    e = _engine(tmp_path, now, FallbackModel(client, local))
    assert e.on_bar("EURUSD", now[0]).latency_ms.get("fallback") is None  # type: ignore[union-attr]  # served
    e.model.primary.predict = lambda row: (_ for _ in ()).throw(ServingUnavailable("down"))  # type: ignore[attr-defined]
    e.model = FallbackModel(client, local)
    _Serving.hold = threading.Event()  # serving slower than the client's timeout
    now[0] += 300
    rec = e.on_bar("EURUSD", now[0])
    assert (
        rec is not None and rec.verdict == "hold" and rec.latency_ms.get("fallback") == 1.0
    )  # still long: hold
    assert rec.model_version == "5" and e.metrics.fallbacks._value.get() == 1.0


def test_fallback_when_serving_last_ran_another_bundle_then_model_mismatch_and_no_trade(
    serving: str, tmp_path: Path
) -> None:
    data = _onnx_bytes(LONG_W)
    local = OnnxModel(data, _manifest(data))
    client = ServingClient(serving, timeout_s=0.1, token=TOKEN)
    _Serving.sha = "f" * 64  # serving runs a newer bundle than the local copy
    client.predict(ROW)
    _Serving.hold = threading.Event()  # serving slower than the client's timeout
    with pytest.raises(ModelMismatch):
        FallbackModel(client, local).predict(ROW)
    now = [MONDAY_0800]
    e = _engine(tmp_path, now, FallbackModel(client, local))
    rec = e.on_bar("EURUSD", now[0])
    assert rec is not None and rec.verdict == "refused" and rec.reason_code == "model_mismatch"


def test_model_handle_when_reloaded_after_a_new_bundle_lands_then_the_fallback_runs_the_new_hash(
    tmp_path: Path,
) -> None:
    from engine.app import ModelHandle
    from engine.config import EngineSettings

    d = tmp_path / "bundle"
    d.mkdir()
    first = _onnx_bytes(LONG_W)
    (d / "model.onnx").write_bytes(first)
    (d / "manifest.json").write_text(json.dumps(_manifest(first)))
    s = EngineSettings(
        TX_ENGINE_SERVING_FALLBACK="onnx",
        TX_ENGINE_BUNDLE_DIR=d,
        TX_ENGINE_BUNDLE_SHA256=hashlib.sha256(first).hexdigest(),
        serving_url="http://127.0.0.1:9",
        serving_timeout_s=0.2,
    )
    handle = ModelHandle(s)
    assert handle.predict(ROW).position == 1  # serving down: the expected local bundle answers
    second = _onnx_bytes(-LONG_W)  # the promoted model calls the same row short
    (d / "model.onnx").write_bytes(second)
    (d / "manifest.json").write_text(json.dumps(_manifest(second)))
    assert handle.reload() == {
        "reloaded": True,
        "fallback_bundle_sha256": hashlib.sha256(second).hexdigest(),
    }
    with pytest.raises(ModelMismatch):  # nobody said the engine expects the new bundle
        handle.predict(ROW)
    s2 = s.model_copy(update={"bundle_sha256": hashlib.sha256(second).hexdigest()})
    assert ModelHandle(s2).predict(ROW).position == -1


def test_fallback_when_serving_never_answered_and_no_expected_hash_then_model_mismatch(
    tmp_path: Path,
) -> None:
    data = _onnx_bytes(LONG_W)
    local = OnnxModel(data, _manifest(data))
    model = FallbackModel(ServingClient("http://127.0.0.1:9", timeout_s=0.2), local)
    with pytest.raises(ModelMismatch, match="never answered"):
        model.predict(ROW)
