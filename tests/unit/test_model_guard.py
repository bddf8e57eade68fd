"""The model guard: an expired bundle (manifest ``trained_at``) and a feature row far outside
the training reference (``reference_stats``) are refused with their reason codes, through the
real engine, whether the answer came from serving (HTTP) or the in-process ONNX fallback; an
in-range row and an older bundle without the keys pass."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.config import EngineSettings
from engine.features import FeatureRow
from engine.model_guard import ModelExpired, ModelGuard, OutOfDistribution
from tests.unit.engine_bundles import linear_bundle
from tests.unit.faults import MONDAY_0800, make_engine

pytestmark = pytest.mark.unit

NAMES = ["ret_1", "ret_3", "ret_12", "range_12"]
STATS = {
    f: {"q01": -0.002, "q25": -0.0005, "q50": 0.0, "q75": 0.0005, "q99": 0.002} for f in NAMES[:3]
} | {"range_12": {"q01": 0.001, "q25": 0.002, "q50": 0.003, "q75": 0.004, "q99": 0.008}}
IN_RANGE = {"ret_1": 0.0004, "ret_3": -0.001, "ret_12": 0.0015, "range_12": 0.003}


def _iso(days_ago: float) -> str:
    return (datetime.now(UTC) - timedelta(days=days_ago)).isoformat()


def _bundle(tmp_path: Path, **extra: Any) -> Path:
    d = linear_bundle(tmp_path / "bundle", NAMES)
    m = json.loads((d / "manifest.json").read_text())
    m.update(extra)
    (d / "manifest.json").write_text(json.dumps(m))
    return d


def test_guard_when_the_bundle_is_older_than_the_max_age_then_model_expired() -> None:
    g = ModelGuard({"trained_at": _iso(31), "features": NAMES}, max_age_days=30)

    with pytest.raises(ModelExpired, match=r"trained 31\.0 days ago > max 30 days"):
        g.check(IN_RANGE, time.time())
    ModelGuard({"trained_at": _iso(29)}, max_age_days=30).check(IN_RANGE, time.time())
    ModelGuard({"trained_at": _iso(400)}, max_age_days=0).check(IN_RANGE, time.time())  # off


def test_guard_when_a_feature_is_beyond_the_widened_quantiles_then_out_of_distribution() -> None:
    g = ModelGuard({"features": NAMES, "reference_stats": STATS}, iqr_k=5)
    # ret_1: IQR 0.001 → bounds [-0.002 - 0.005, 0.002 + 0.005] = [-0.007, 0.007]
    g.check(IN_RANGE | {"ret_1": 0.0069}, 0.0)

    with pytest.raises(OutOfDistribution, match=r"1 feature\(s\).*ret_1=0\.0071 outside"):
        g.check(IN_RANGE | {"ret_1": 0.0071}, 0.0)
    with pytest.raises(OutOfDistribution, match=r"2 feature\(s\).*ret_3.*range_12"):
        g.check(IN_RANGE | {"ret_3": -1.0, "range_12": 0.5}, 0.0)


def test_guard_when_the_manifest_lacks_the_keys_then_every_check_is_off_and_rows_pass(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level("INFO", logger="engine.model_guard"):
        g = ModelGuard({"features": NAMES, "model_version": "old"})

    assert g.checks == {"model_expired": False, "out_of_distribution": False}
    g.check({"ret_1": 1e6, "ret_3": -1e6, "ret_12": 0.0, "range_12": 9.0}, time.time())
    msgs = [r.getMessage() for r in caplog.records]
    assert any("no trained_at" in m for m in msgs)
    assert any("no reference_stats" in m for m in msgs)


def test_guard_when_a_reference_feature_is_constant_or_malformed_then_it_is_not_checked() -> None:
    stats = dict(STATS) | {
        "ret_12": {"q01": 0.0, "q25": 0.0, "q50": 0.0, "q75": 0.0, "q99": 0.0},
        "range_12": {"q50": 1.0},
    }
    g = ModelGuard({"features": NAMES, "reference_stats": stats, "trained_at": "not a date"})

    assert g.names == ["ret_1", "ret_3"] and g.expires_at is None
    g.check(IN_RANGE | {"ret_12": 5.0, "range_12": 5.0}, 0.0)


def test_guard_check_when_timed_then_it_costs_microseconds() -> None:
    names = [f"f{i}" for i in range(64)]
    q = {"q01": -1.0, "q25": -0.5, "q50": 0.0, "q75": 0.5, "q99": 1.0}
    g = ModelGuard(
        {"features": names, "reference_stats": dict.fromkeys(names, q), "trained_at": _iso(1)}
    )
    row = {f: 0.1 for f in names}
    n = 2000
    t0 = time.perf_counter()
    for _ in range(n):
        g.check(row, time.time())
    us = (time.perf_counter() - t0) / n * 1e6
    print(f"model guard check, 64 features: {us:.1f} us per row")
    assert us < 200


# --- through the engine: ONNX fallback and serving ---------------------------------------
class _Serving(BaseHTTPRequestHandler):
    """Answers ``POST /v1/predict`` in serving's wire format (contract 3) for a given bundle."""

    sha = ""

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        out = {
            "model_name": "tx",
            "model_version": "9",
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
                for r in body["rows"]
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
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Serving)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


class _Rows:
    """Feature rows at the bar close being decided, with the values the test sets."""

    def __init__(self, now: list[int], values: dict[str, float]) -> None:
        self.now, self.values = now, values

    def read(self, symbol: str) -> FeatureRow:
        return FeatureRow(symbol, float(self.now[0]), dict(self.values))


def _handle(bundle: Path, serving_url: str, **kw: Any) -> Any:
    from engine.app import ModelHandle

    sha = hashlib.sha256((bundle / "model.onnx").read_bytes()).hexdigest()
    return ModelHandle(
        EngineSettings(
            TX_ENGINE_SERVING_FALLBACK="onnx",
            TX_ENGINE_BUNDLE_DIR=bundle,
            TX_ENGINE_BUNDLE_SHA256=sha,
            serving_url=serving_url,
            serving_timeout_s=0.3,
            **kw,
        )
    )


@pytest.mark.parametrize("path", ["onnx_fallback", "serving"])
def test_engine_when_the_bundle_expired_then_the_bar_is_refused_model_expired(
    tmp_path: Path, serving: str, path: str
) -> None:
    bundle = _bundle(tmp_path, trained_at=_iso(45), reference_stats=STATS)
    _Serving.sha = hashlib.sha256((bundle / "model.onnx").read_bytes()).hexdigest()
    url = serving if path == "serving" else "http://127.0.0.1:9"  # nothing listens on 9
    now = [MONDAY_0800]
    e = make_engine(tmp_path, now, features=_Rows(now, IN_RANGE), model=_handle(bundle, url))

    rec = e.on_bar("EURUSD", now[0])

    assert rec is not None and rec.verdict == "refused"
    assert rec.reason_code == "model_expired", rec.reason
    assert e.positions() == ()
    assert e.journal.reason_counts() == {"model_expired": 1}


@pytest.mark.parametrize("path", ["onnx_fallback", "serving"])
def test_engine_when_a_row_is_out_of_distribution_then_refused_and_an_in_range_row_trades(
    tmp_path: Path, serving: str, path: str
) -> None:
    bundle = _bundle(tmp_path, trained_at=_iso(2), reference_stats=STATS)
    _Serving.sha = hashlib.sha256((bundle / "model.onnx").read_bytes()).hexdigest()
    url = serving if path == "serving" else "http://127.0.0.1:9"
    now = [MONDAY_0800]
    rows = _Rows(now, IN_RANGE | {"ret_12": 0.9})
    e = make_engine(tmp_path, now, features=rows, model=_handle(bundle, url))

    rec = e.on_bar("EURUSD", now[0])
    assert rec is not None and rec.reason_code == "out_of_distribution"
    assert "ret_12=0.9 outside" in (rec.reason or "")

    rows.values = IN_RANGE | {"ret_1": 0.0015}  # in range, and the momentum model says long
    now[0] += 300
    rec = e.on_bar("EURUSD", now[0])
    assert rec is not None and rec.reason_code is None and rec.verdict == "sent", rec.reason


def test_engine_when_the_bundle_lacks_the_keys_then_nothing_is_refused(
    tmp_path: Path, serving: str
) -> None:
    bundle = _bundle(tmp_path)  # an older bundle: no trained_at, no reference_stats
    _Serving.sha = hashlib.sha256((bundle / "model.onnx").read_bytes()).hexdigest()
    now = [MONDAY_0800]
    e = make_engine(
        tmp_path,
        now,
        features=_Rows(now, IN_RANGE | {"ret_12": 0.9}),
        model=_handle(bundle, serving),
    )

    rec = e.on_bar("EURUSD", now[0])

    assert rec is not None and rec.verdict == "sent" and rec.reason_code is None


def test_engine_when_serving_runs_a_bundle_without_a_local_manifest_then_it_is_not_guarded(
    tmp_path: Path, serving: str
) -> None:
    bundle = _bundle(tmp_path, trained_at=_iso(400))
    _Serving.sha = "e" * 64  # another bundle than the local one: its manifest is unknown here
    now = [MONDAY_0800]
    e = make_engine(tmp_path, now, features=_Rows(now, IN_RANGE), model=_handle(bundle, serving))

    rec = e.on_bar("EURUSD", now[0])

    assert rec is not None and rec.reason_code is None and rec.verdict == "sent"
    assert np.isfinite(rec.latency_ms["predict_ms"])
