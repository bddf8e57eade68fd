"""Serving end to end: a real MLflow registry → BentoML store → `bentoml serve` → HTTP.

Two tiny XGBoost bundles are registered in a temporary sqlite MLflow store, v1 as
`champion` and v2 as `challenger`, imported into a temporary BENTOML_HOME and served once
for the whole module with a bearer token and a shadow log in a temporary platform home.
The helpers here (bundle building and registration, server start) are shared with
``test_serving_reload.py``.
"""

from __future__ import annotations

import hashlib
import json
import random
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

pytestmark = pytest.mark.integration

FEATURES = ["ret_1", "ret_5", "vol_20", "rsi_14", "spread"]
MODEL_NAME = "tx_trend_it"
MIN_CONFIDENCE = 0.45
TOKEN = "it-serving-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CLASSES = ("short", "flat", "long")


# --- shared helpers -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def manifest(
    features: list[str] = FEATURES,
    *,
    sequence: dict[str, Any] | None = None,
    onnx_bytes: bytes | None = None,
) -> dict[str, Any]:
    """A bundle manifest as training writes it (contract 2)."""
    m: dict[str, Any] = {
        "model_name": MODEL_NAME,
        "feature_service": "trend_v2" if sequence else "trend_v1",
        "feature_view": "trend_fv",
        "features": list(features),
        "input_name": "input",
        "prob_output": "probabilities",
        "classes": list(CLASSES),
        "positions": [-1, 0, 1],
        "min_confidence": MIN_CONFIDENCE,
        "timeframe": "M5",
        "symbols": ["EURUSD", "GBPUSD"],
        "train_range": ["2024-01-01", "2024-03-01"],
        "test_range": ["2024-03-01", "2024-04-01"],
        "label_horizon": 12,
        "metrics": {"accuracy": 0.4},
    }
    if sequence is not None:
        m["sequence"] = sequence
        m["feature_views"] = ["trend_fv", "bar_sequence_fv"]
    if onnx_bytes is not None:
        m["bundle_sha256"] = hashlib.sha256(onnx_bytes).hexdigest()
    return m


def xgb_bundle(seed: int) -> tuple[Any, Any]:
    """A tiny 3-class XGBoost and its ONNX export (input `input`, output `probabilities`)."""
    import onnxmltools
    import xgboost as xgb
    from onnxmltools.convert.common.data_types import FloatTensorType

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(400, len(FEATURES))).astype(np.float32)
    y = (x[:, 0] > 0.4).astype(int) * 2 + ((x[:, 0] > -0.4) & (x[:, 0] <= 0.4)).astype(int)
    clf = xgb.XGBClassifier(
        n_estimators=30, max_depth=3, objective="multi:softprob", n_jobs=1, random_state=seed
    )
    clf.fit(x, y)
    onx = onnxmltools.convert_xgboost(
        clf, initial_types=[("input", FloatTensorType([None, len(FEATURES)]))], target_opset=15
    )
    return clf, onx


def new_registry(root: Path) -> str:
    """A fresh sqlite MLflow tracking/registry URI under ``root``."""
    return f"sqlite:///{root / 'mlflow.db'}"


def register(
    tracking_uri: str,
    root: Path,
    onnx_model: Any,
    bundle_manifest: dict[str, Any],
    aliases: tuple[str, ...] = (),
) -> str:
    """Log ``onnx_model`` with metadata ``tx_manifest`` and register it, the way
    training/train.py does; point ``aliases`` at the new version and return it."""
    import mlflow
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    # The fluent API needs the process-global tracking URI: set it for this block only and
    # give back both the global and MLFLOW_TRACKING_URI (which set_tracking_uri also writes).
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        with _use_tracking_uri(tracking_uri):
            client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
            exp = client.get_experiment_by_name("tx_serving_it")
            experiment_id = (
                exp.experiment_id
                if exp is not None
                else client.create_experiment(
                    "tx_serving_it", artifact_location=str(root / "mlartifacts")
                )
            )
            with mlflow.start_run(experiment_id=experiment_id):
                info = mlflow.onnx.log_model(
                    onnx_model,
                    name="model",
                    onnx_execution_providers=["CPUExecutionProvider"],
                    metadata={"tx_manifest": bundle_manifest},
                )
            mv = mlflow.register_model(info.model_uri, MODEL_NAME)
            for alias in aliases:
                client.set_registered_model_alias(MODEL_NAME, alias, mv.version)
    return str(mv.version)


def set_alias(tracking_uri: str, alias: str, version: str) -> None:
    from mlflow import MlflowClient

    MlflowClient(tracking_uri, tracking_uri).set_registered_model_alias(MODEL_NAME, alias, version)


def direct_onnx(onnx_bytes: bytes, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(["probabilities"], feeds)[0])


@dataclass
class Server:
    base_url: str
    client: httpx.Client  # sends the token
    proc: Any
    root: Path
    log_path: Path


def serve(
    root: Path,
    tracking_uri: str,
    *,
    champion_tag: str,
    challenger_tag: str | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[Server]:
    """Start `bentoml serve` on a free port with TOKEN; yield it; stop it."""
    from serving.server import start_server, stop_server, wait_ready

    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    log_path = root / "server.log"
    proc = start_server(
        host="127.0.0.1",
        port=port,
        model_tag=champion_tag,
        challenger_tag=challenger_tag,
        bentoml_home=root / "bentoml",
        log_path=log_path,
        token=TOKEN,
        tracking_uri=tracking_uri,
        model_name=MODEL_NAME,
        env={"TX_HOME": str(root / "home"), "TX_SERVING_RELOAD_INTERVAL_S": "0", **(env or {})},
    )
    try:
        wait_ready(base_url, timeout_s=120, proc=proc, token=TOKEN)
        with httpx.Client(base_url=base_url, timeout=10, headers=AUTH) as client:
            yield Server(base_url, client, proc, root, log_path)
    finally:
        stop_server(proc)


def import_alias(root: Path, tracking_uri: str, alias: str) -> Any:
    from serving.importer import import_from_registry

    return import_from_registry(tracking_uri, MODEL_NAME, alias, bentoml_home=root / "bentoml")


# --- the module's server ---------------------------------------------------------------------


@dataclass
class Served:
    server: Server
    client: httpx.Client
    tracking_uri: str
    bentoml_home: Path
    bentoml_tag: str
    classifier: Any  # xgboost.XGBClassifier of the champion
    onnx_bytes: bytes
    challenger_onnx: bytes
    shadow_log: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("serving")
    tracking_uri = new_registry(root)
    clf, onx = xgb_bundle(seed=7)
    _, onx2 = xgb_bundle(seed=11)
    champ_bytes, chall_bytes = onx.SerializeToString(), onx2.SerializeToString()
    register(tracking_uri, root, onx, manifest(onnx_bytes=champ_bytes), ("champion",))
    register(tracking_uri, root, onx2, manifest(onnx_bytes=chall_bytes), ("challenger",))
    champion = import_alias(root, tracking_uri, "champion")
    challenger = import_alias(root, tracking_uri, "challenger")
    for server in serve(
        root,
        tracking_uri,
        champion_tag=champion.bentoml_tag,
        challenger_tag=challenger.bentoml_tag,
    ):
        yield Served(
            server=server,
            client=server.client,
            tracking_uri=tracking_uri,
            bentoml_home=root / "bentoml",
            bentoml_tag=champion.bentoml_tag,
            classifier=clf,
            onnx_bytes=champ_bytes,
            challenger_onnx=chall_bytes,
            shadow_log=root / "home" / "serving" / "shadow.jsonl",
        )


def _row(values: np.ndarray | list[float], symbol: str = "EURUSD", **overrides: Any) -> dict:
    row: dict[str, Any] = {
        "symbol": symbol,
        "feature_time": "2024-05-01T10:05:00Z",
        "features": {name: float(v) for name, v in zip(FEATURES, values, strict=True)},
    }
    row.update(overrides)
    return row


def _detail(response: httpx.Response) -> list[dict[str, Any]]:
    body = response.json()
    assert isinstance(body, dict) and "detail" in body, body
    return body["detail"]


def _locs(response: httpx.Response) -> list[list[Any]]:
    return [d["loc"] for d in _detail(response)]


def _probs(pred: dict[str, Any]) -> np.ndarray:
    return np.array([pred["probabilities"][c] for c in CLASSES])


# --- happy path -------------------------------------------------------------------------


def test_v1_predict_single_row_when_valid_then_matches_onnxruntime_and_xgboost(served: Served):
    x = np.array([[0.9, -0.2, 0.3, 55.0, 0.0001]], dtype=np.float32)

    response = served.client.post("/v1/predict", json={"rows": [_row(x[0])]})

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_name"] == MODEL_NAME
    assert body["model_version"] == "1"
    assert body["bundle_sha256"] == hashlib.sha256(served.onnx_bytes).hexdigest()
    assert response.headers["x-request-id"] == body["request_id"]
    (pred,) = body["predictions"]
    got = _probs(pred)
    np.testing.assert_allclose(got, direct_onnx(served.onnx_bytes, {"input": x})[0], atol=1e-6)
    np.testing.assert_allclose(got, served.classifier.predict_proba(x)[0], atol=1e-5)
    assert pred["confidence"] == pytest.approx(got.max())
    assert pred["symbol"] == "EURUSD"
    assert pred["feature_time"] == "2024-05-01T10:05:00Z"


def test_predict_alias_when_called_then_answers_like_v1(served: Served):
    body = {"rows": [_row([0.1, 0.2, 0.3, 40.0, 0.0002])]}

    old = served.client.post("/predict", json=body)
    new = served.client.post("/v1/predict", json=body)

    assert old.status_code == new.status_code == 200
    assert old.json()["predictions"] == new.json()["predictions"]


def test_v1_predict_batch_when_several_rows_then_one_prediction_per_row_in_order(served: Served):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(100, len(FEATURES))).astype(np.float32)  # > inline limit: thread path
    rows = [_row(x[i], symbol=f"SYM{i}") for i in range(len(x))]

    response = served.client.post("/v1/predict", json={"rows": rows})

    assert response.status_code == 200, response.text
    preds = response.json()["predictions"]
    assert [p["symbol"] for p in preds] == [f"SYM{i}" for i in range(len(x))]
    got = np.array([_probs(p) for p in preds])
    np.testing.assert_allclose(got, direct_onnx(served.onnx_bytes, {"input": x}), atol=1e-6)
    np.testing.assert_allclose(got, served.classifier.predict_proba(x), atol=1e-5)


def test_v1_predict_decision_when_confident_then_argmax_else_flat_with_matching_position(
    served: Served,
):
    rng = np.random.default_rng(2)
    x = rng.normal(scale=1.5, size=(40, len(FEATURES))).astype(np.float32)

    response = served.client.post("/v1/predict", json={"rows": [_row(v) for v in x]})

    assert response.status_code == 200, response.text
    positions = {"short": -1, "flat": 0, "long": 1}
    seen = set()
    for pred in response.json()["predictions"]:
        probs = pred["probabilities"]
        best = max(probs, key=probs.__getitem__)
        expected = best if probs[best] >= MIN_CONFIDENCE else "flat"
        assert pred["decision"] == expected
        assert pred["position"] == positions[expected]
        assert pred["confidence"] == probs[best]
        seen.add(expected)
    assert {"short", "long"} <= seen


def test_v1_predict_feature_time_when_epoch_or_offset_then_returned_in_utc(served: Served):
    x = [0.1, 0.2, 0.3, 40.0, 0.0002]
    rows = [
        _row(x, feature_time=1714557900),  # 2024-05-01T10:05:00Z
        _row(x, feature_time="2024-05-01T12:05:00+02:00"),
        _row(x, feature_time="2024-05-01T10:05:00.250Z"),
    ]

    response = served.client.post("/v1/predict", json={"rows": rows})

    assert response.status_code == 200, response.text
    times = [p["feature_time"] for p in response.json()["predictions"]]
    assert times == ["2024-05-01T10:05:00Z", "2024-05-01T10:05:00Z", "2024-05-01T10:05:00.250000Z"]


# --- bad input: always 4xx naming the field -----------------------------------------------


def test_v1_predict_when_feature_missing_then_400_naming_it(served: Served):
    row = _row([0.1, 0.2, 0.3, 40.0, 0.0002])
    del row["features"]["vol_20"]

    response = served.client.post("/v1/predict", json={"rows": [row]})

    assert response.status_code == 400
    assert _locs(response) == [["rows", 0, "features", "vol_20"]]
    assert _detail(response)[0]["type"] == "missing_feature"
    assert "vol_20" in _detail(response)[0]["msg"]


def test_v1_predict_when_unknown_feature_then_400_naming_it(served: Served):
    row = _row([0.1, 0.2, 0.3, 40.0, 0.0002])
    row["features"]["ret_60"] = 0.5

    response = served.client.post("/v1/predict", json={"rows": [_row([0] * 5), row]})

    assert response.status_code == 400
    assert _locs(response) == [["rows", 1, "features", "ret_60"]]
    assert _detail(response)[0]["type"] == "unexpected_feature"


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e39", "1e400"])
def test_v1_predict_when_value_not_finite_then_400_naming_it(served: Served, literal: str):
    row = _row([0.1, 0.2, 0.3, 40.0, 0.0002])
    row["features"]["rsi_14"] = "__VALUE__"
    body = json.dumps({"rows": [row]}).replace('"__VALUE__"', literal)

    response = served.client.post(
        "/v1/predict", content=body, headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 400, response.text
    assert _locs(response) == [["rows", 0, "features", "rsi_14"]]


@pytest.mark.parametrize("value", ["0.5", "abc", None, True, [1.0], {"v": 1.0}])
def test_v1_predict_when_value_not_a_number_then_400_naming_it(served: Served, value: Any):
    row = _row([0.1, 0.2, 0.3, 40.0, 0.0002])
    row["features"]["ret_5"] = value

    response = served.client.post("/v1/predict", json={"rows": [row]})

    assert response.status_code == 400, response.text
    assert _locs(response) == [["rows", 0, "features", "ret_5"]]
    assert _detail(response)[0]["type"] == "not_a_number"


def test_v1_predict_when_rows_empty_then_400_naming_rows(served: Served):
    response = served.client.post("/v1/predict", json={"rows": []})

    assert response.status_code == 400
    assert _locs(response) == [["rows"]]


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({}, ["rows"]),
        ([], []),
        ({"rows": {"symbol": "EURUSD"}}, ["rows"]),
        ({"rows": [{"symbol": "EURUSD", "features": {}}]}, ["rows", 0, "feature_time"]),
        (
            {"rows": [_row([0] * 5, feature_time="2024-05-01T10:05:00")]},
            ["rows", 0, "feature_time"],
        ),
        ({"rows": [_row([0] * 5, feature_time="yesterday")]}, ["rows", 0, "feature_time"]),
        ({"rows": [_row([0] * 5, symbol="")]}, ["rows", 0, "symbol"]),
        ({"rows": [_row([0] * 5, symbol=7)]}, ["rows", 0, "symbol"]),
        ({"rows": [_row([0] * 5, features=[1.0] * 5)]}, ["rows", 0, "features"]),
        ({"rows": [_row([0] * 5, sequence=[[0.0]])]}, ["rows", 0, "sequence"]),
        ({"rows": [_row([0] * 5), "EURUSD"]}, ["rows", 1]),
        ({"rows": [_row([0] * 5)], "extra": 1}, ["extra"]),
        ({"rows": [_row([0] * 5, extra=1)]}, ["rows", 0, "extra"]),
    ],
    ids=[
        "no_rows",
        "body_not_object",
        "rows_not_list",
        "no_feature_time",
        "naive_feature_time",
        "unparsable_feature_time",
        "empty_symbol",
        "symbol_not_string",
        "features_not_object",
        "sequence_on_tabular_bundle",
        "row_not_object",
        "unknown_top_level_field",
        "unknown_row_field",
    ],
)
def test_v1_predict_when_request_shape_wrong_then_400_naming_field(
    served: Served, body: Any, loc: list[Any]
):
    response = served.client.post("/v1/predict", json=body)

    assert response.status_code == 400, response.text
    assert loc in _locs(response)


@pytest.mark.parametrize(
    ("content", "ctype", "status"),
    [
        (b"{rows:", "application/json", 400),
        (b"", "application/json", 400),
        (b"\xff\xfe", "application/json", 400),
        (b'{"rows": []}', "text/plain", 415),
    ],
    ids=["truncated_json", "empty_body", "not_utf8", "wrong_content_type"],
)
def test_v1_predict_when_body_unreadable_then_4xx(
    served: Served, content: bytes, ctype: str, status: int
):
    response = served.client.post("/v1/predict", content=content, headers={"Content-Type": ctype})

    assert response.status_code == status, response.text


def test_v1_predict_when_get_then_405(served: Served):
    assert served.client.get("/v1/predict").status_code == 405


BAD_VALUES: dict[str, list[Any]] = {
    "symbol": [None, True, 1.5, "", [], {}, "X" * 65],
    "feature_time": [None, True, "", "2024-05-01", "not-a-time", "2024-05-01T10:05:00", [], {}],
    "features": [None, True, "", [], [1.0], "abc", 1.0],
    "feature": [None, True, False, "1.0", "", [], {}, [1.0], {"x": 1}, 10**400, -(10**400)],
}


def _mutations(rng: random.Random, n: int = 300) -> Iterator[tuple[str, Any, list[Any]]]:
    """(description, body, loc the error must name) for random single-field breakages of a
    valid two-row request."""
    for case in range(n):
        rows = [_row([rng.uniform(-2, 2) for _ in FEATURES]) for _ in range(2)]
        body: dict[str, Any] = {"rows": rows}
        i = rng.randrange(2)
        kind = rng.choice(["drop", "extra", "value", "feature_value", "feature_drop"])
        if kind == "drop":
            key = rng.choice(["symbol", "feature_time", "features"])
            del rows[i][key]
            yield f"{case}: drop rows.{i}.{key}", body, ["rows", i, key]
        elif kind == "extra":
            key = rng.choice(["x", "Symbol", "feature", "features_", "probabilities"])
            rows[i][key] = rng.choice(BAD_VALUES["feature"][:8])
            yield f"{case}: extra rows.{i}.{key}", body, ["rows", i, key]
        elif kind == "value":
            key = rng.choice(["symbol", "feature_time", "features"])
            value = rng.choice(BAD_VALUES[key])
            rows[i][key] = value
            yield f"{case}: rows.{i}.{key}={value!r:.20}", body, ["rows", i, key]
        elif kind == "feature_value":
            name = rng.choice(FEATURES)
            value = rng.choice(BAD_VALUES["feature"])
            rows[i]["features"][name] = value
            yield (
                f"{case}: rows.{i}.features.{name}={value!r:.20}",
                body,
                ["rows", i, "features", name],
            )
        else:
            name = rng.choice(FEATURES)
            del rows[i]["features"][name]
            yield f"{case}: drop rows.{i}.features.{name}", body, ["rows", i, "features", name]


def test_v1_predict_when_any_single_field_is_broken_then_4xx_naming_it_never_5xx(
    served: Served,
):
    """Property-style: 300 random single-field breakages of a valid request."""
    failures = []
    for what, body, loc in _mutations(random.Random(20261125)):
        response = served.client.post("/v1/predict", json=body)
        if response.status_code != 400 or loc not in _locs(response):
            failures.append((what, response.status_code, response.text[:200]))
    assert not failures, failures[:5]


def test_v1_predict_when_random_bytes_then_never_5xx(served: Served):
    rng = random.Random(5)
    valid = json.dumps({"rows": [_row([0.1, 0.2, 0.3, 40.0, 0.0002])]}).encode()
    statuses = set()
    for _ in range(100):
        cut = bytearray(valid)
        for _ in range(rng.randrange(1, 4)):
            cut[rng.randrange(len(cut))] = rng.randrange(256)
        response = served.client.post(
            "/v1/predict", content=bytes(cut), headers={"Content-Type": "application/json"}
        )
        statuses.add(response.status_code)
    assert statuses <= {200, 400}, statuses
    assert 400 in statuses


# --- auth, health, readiness, metrics ------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/predict"),
        ("POST", "/predict"),
        ("POST", "/v1/admin/reload"),
        ("GET", "/v1/models"),
        ("GET", "/readyz"),
        ("GET", "/livez"),
        ("GET", "/metrics"),
        ("GET", "/docs.json"),
        ("GET", "/"),
    ],
)
@pytest.mark.parametrize("auth", [None, "Bearer wrong-token", f"Basic {TOKEN}", TOKEN])
def test_endpoint_when_token_missing_or_wrong_then_401(
    served: Served, method: str, path: str, auth: str | None
):
    headers = {"Authorization": auth} if auth else {}
    body = {"rows": [_row([0.1, 0.2, 0.3, 40.0, 0.0002])]}

    with httpx.Client(base_url=served.server.base_url, timeout=10) as anonymous:
        response = anonymous.request(method, path, headers=headers, json=body)

    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_healthz_when_no_token_then_200(served: Served):
    assert httpx.get(served.server.base_url + "/healthz", timeout=10).status_code == 200


def test_readyz_when_token_and_model_warm_then_200(served: Served):
    assert served.client.get("/readyz").status_code == 200


def test_metrics_when_requests_served_then_latency_and_outcomes_by_model_version(served: Served):
    before = time.time()
    served.client.post("/v1/predict", json={"rows": [_row([0.1, 0.2, 0.3, 40.0, 0.0002])]})
    served.client.post("/v1/predict", json={"rows": []})
    httpx.post(served.server.base_url + "/v1/predict", json={}, timeout=10)  # no token

    text = served.client.get("/metrics").text

    def value(series: str) -> float:
        lines = [ln for ln in text.splitlines() if ln.startswith(series + " ")]
        assert lines, f"{series} not in /metrics"
        return float(lines[0].rsplit(" ", 1)[1])

    labels = 'endpoint="/v1/predict",model_version="1"'
    assert value(f'tx_serving_requests_total{{{labels},outcome="ok"}}') >= 1
    assert value(f'tx_serving_requests_total{{{labels},outcome="bad_request"}}') >= 1
    assert value(f'tx_serving_requests_total{{{labels},outcome="unauthorized"}}') >= 1
    assert value(f'tx_serving_request_duration_seconds_count{{{labels},outcome="ok"}}') >= 1
    # serving's heartbeat (TxServingSilent): the time of the last request, any outcome
    assert before <= value("tx_serving_last_request_timestamp_seconds") <= time.time()
    buckets = [
        ln
        for ln in text.splitlines()
        if ln.startswith("tx_serving_request_duration_seconds_bucket{")
        and 'endpoint="/v1/predict"' in ln
        and 'model_version="1"' in ln
        and 'outcome="ok"' in ln
    ]
    assert any('le="0.001"' in ln for ln in buckets), buckets
    sha = hashlib.sha256(served.onnx_bytes).hexdigest()
    assert (
        value(f'tx_serving_model_info{{bundle_sha256="{sha}",model_version="1",role="champion"}}')
        == 1
    )
    assert "bentoml_" in text  # BentoML's own series are still there


def test_models_when_asked_then_champion_and_challenger_versions_and_hashes(served: Served):
    body = served.client.get("/v1/models").json()

    assert body["champion"]["model_version"] == "1"
    assert body["challenger"]["model_version"] == "2"
    assert body["challenger"]["bundle_sha256"] == hashlib.sha256(served.challenger_onnx).hexdigest()


def test_schema_when_asked_then_json_schemas_of_request_and_response(served: Served):
    body = served.client.get("/v1/schema").json()

    assert "rows" in body["request"]["properties"]
    assert "bundle_sha256" in body["response"]["properties"]


# --- BentoML: OpenAPI, client, build ------------------------------------------------------


def test_openapi_when_fetched_then_bentoml_lists_v1_predict_with_the_schema(served: Served):
    spec = served.client.get("/docs.json").json()

    operation = spec["paths"]["/v1/predict"]["post"]
    body = json.dumps(operation["requestBody"])
    components = json.dumps(spec.get("components", {}))
    assert "rows" in body or "rows" in components
    assert "feature_time" in body or "feature_time" in components
    routes = {r["route"]: r for r in served.client.get("/schema.json").json()["routes"]}
    assert routes["/v1/predict"]["name"] == "predict"


def test_sync_http_client_when_predict_called_then_same_answer_as_the_engine_path(
    served: Served,
):
    import bentoml

    x = np.array([[0.5, -0.1, 0.2, 55.0, 0.0001]], dtype=np.float32)
    body = {"rows": [_row(x[0])]}

    with bentoml.SyncHTTPClient(served.server.base_url, token=TOKEN) as client:
        answer = client.predict(body)
        with pytest.raises(bentoml.exceptions.BentoMLException) as refused:
            client.predict({"rows": [_row(x[0], symbol=7, feature_time=True)]})

    assert answer["model_version"] == "1"
    assert answer["predictions"][0]["feature_time"] == "2024-05-01T10:05:00Z"
    np.testing.assert_allclose(
        _probs(answer["predictions"][0]), direct_onnx(served.onnx_bytes, {"input": x})[0], atol=1e-6
    )
    assert refused.value.error_code == 400
    assert "symbol" in str(refused.value) and "feature_time" in str(refused.value)


@pytest.mark.slow
def test_bentoml_build_when_bentofile_built_then_bento_lists_service_api_model_and_files(
    served: Served, tmp_path: Path
):
    """`bentoml build -f serving/bentofile.yaml .` into a fresh BENTOML_HOME."""
    import os
    import subprocess
    import sys

    from serving.importer import import_from_registry
    from serving.server import REPO_ROOT

    home = tmp_path / "bentoml"
    imported = import_from_registry(served.tracking_uri, MODEL_NAME, "champion", bentoml_home=home)
    env = os.environ | {
        "BENTOML_HOME": str(home),
        "BENTOML_DO_NOT_TRACK": "True",
        "TX_SERVING_MODEL_TAG": imported.bentoml_tag,
    }
    bentoml_cli = [sys.executable, "-m", "bentoml"]

    built = subprocess.run(
        [*bentoml_cli, "build", "-f", "serving/bentofile.yaml", ".", "--output", "tag"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert built.returncode == 0, built.stderr[-3000:]
    tag = built.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    assert tag.startswith("tx_trend_service:")
    listed = subprocess.run(
        [*bentoml_cli, "get", tag, "-o", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    info = json.loads(listed.stdout)
    assert info["service"] == "serving.service:TrendService"
    (service,) = info["services"]
    assert [m["tag"] for m in service["models"]] == [imported.bentoml_tag]
    assert sorted(r["route"] for r in info["schema"]["routes"]) == ["/v1/explain", "/v1/predict"]
    bento_dir = home / "bentos" / tag.replace(":", "/")
    src = {p.name for p in (bento_dir / "src" / "serving").glob("*.py")}
    assert {"service.py", "api.py", "request.py", "schemas.py", "runtime.py", "explain.py"} <= src
    openapi = (bento_dir / "apis" / "openapi.yaml").read_text()
    assert "/v1/predict:" in openapi and "/v1/explain:" in openapi


# --- shadow ---------------------------------------------------------------------------------


def test_shadow_when_challenger_set_then_both_results_logged_off_the_response_path(
    served: Served,
):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3, len(FEATURES))).astype(np.float32)
    request_id = f"shadow-{time.time_ns()}"

    response = served.client.post(
        "/v1/predict",
        json={"rows": [_row(v, symbol=f"S{i}") for i, v in enumerate(x)]},
        headers={"X-Request-ID": request_id},
    )

    assert response.status_code == 200
    assert response.json()["request_id"] == request_id
    assert response.json()["model_version"] == "1"  # the challenger never answers
    records = _wait_for_shadow(served.shadow_log, request_id, n=3)
    champ = direct_onnx(served.onnx_bytes, {"input": x})
    chall = direct_onnx(served.challenger_onnx, {"input": x})
    for i, rec in enumerate(sorted(records, key=lambda r: r["row"])):
        assert rec["symbol"] == f"S{i}"
        assert rec["champion"]["model_version"] == "1"
        assert rec["challenger"]["model_version"] == "2"
        assert (
            rec["challenger"]["bundle_sha256"] == hashlib.sha256(served.challenger_onnx).hexdigest()
        )
        np.testing.assert_allclose(_probs(rec["champion"]), champ[i], atol=1e-6)
        np.testing.assert_allclose(_probs(rec["challenger"]), chall[i], atol=1e-6)
        assert rec["agree"] == (rec["champion"]["decision"] == rec["challenger"]["decision"])


def _wait_for_shadow(path: Path, request_id: str, n: int, timeout_s: float = 10) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            records = [json.loads(ln) for ln in path.read_text().splitlines() if ln]
            mine = [r for r in records if r["request_id"] == request_id]
            if len(mine) >= n:
                return mine
        time.sleep(0.05)
    raise AssertionError(f"no {n} shadow records for {request_id} in {path}")


# --- import and start-up --------------------------------------------------------------------


def test_import_from_registry_when_version_already_imported_then_reuses_it(served: Served):
    import bentoml

    from serving.importer import import_from_registry

    again = import_from_registry(
        served.tracking_uri, MODEL_NAME, "champion", bentoml_home=served.bentoml_home
    )

    assert again.created is False
    assert again.bentoml_tag == served.bentoml_tag == f"{MODEL_NAME}:v1"
    assert again.mlflow_version == "1"
    assert again.manifest == manifest(onnx_bytes=served.onnx_bytes)
    store_dir = served.bentoml_home / "models" / MODEL_NAME
    assert sorted(p.name for p in store_dir.iterdir() if p.is_dir()) == ["v1", "v2"]
    model = bentoml.models.get(served.bentoml_tag, _model_store=_store(served.bentoml_home))
    assert model.info.labels == {"mlflow_version": "1", "alias": "champion"}


def test_import_from_registry_when_alias_unset_then_alias_not_set_error(served: Served):
    from serving.importer import AliasNotSetError, import_from_registry

    with pytest.raises(AliasNotSetError):
        import_from_registry(
            served.tracking_uri, MODEL_NAME, "no_such_alias", bentoml_home=served.bentoml_home
        )


def test_start_server_when_no_token_and_no_opt_out_then_refuses(
    served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from serving.server import start_server
    from serving.settings import AuthConfigError

    monkeypatch.delenv("TX_SERVING_TOKEN", raising=False)
    monkeypatch.delenv("TX_SERVING_ALLOW_NO_AUTH", raising=False)

    with pytest.raises(AuthConfigError, match="TX_SERVING_TOKEN"):
        start_server(
            host="127.0.0.1",
            port=free_port(),
            model_tag=served.bentoml_tag,
            bentoml_home=served.bentoml_home,
            log_path=tmp_path / "server.log",
        )


def test_bentoml_serve_when_no_token_then_exits_naming_the_setting(served: Served, tmp_path: Path):
    """Started around start_server's check, the service itself refuses to come up."""
    import os
    import subprocess
    import sys

    from serving.server import REPO_ROOT, stop_server

    env = {k: v for k, v in os.environ.items() if not k.startswith("TX_SERVING_")}
    env |= {
        "TX_SERVING_MODEL_TAG": served.bentoml_tag,
        "BENTOML_HOME": str(served.bentoml_home),
        "BENTOML_DO_NOT_TRACK": "True",
    }
    log = tmp_path / "noauth.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bentoml",
                "serve",
                "serving.service:TrendService",
                "--host",
                "127.0.0.1",
                "--port",
                str(free_port()),
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        code = proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        code = None
    finally:
        stop_server(proc)
    assert code not in (None, 0), log.read_text()[-2000:]
    assert "TX_SERVING_TOKEN" in log.read_text()


def _store(home: Path) -> Any:
    from bentoml._internal.models import ModelStore

    return ModelStore(home / "models")
