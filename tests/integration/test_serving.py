"""Serving end to end: a real MLflow registry → BentoML store → `bentoml serve` → HTTP.

One tiny XGBoost bundle is registered as `champion` in a temporary sqlite MLflow store,
imported into a temporary BENTOML_HOME and served once for the whole module.
"""

from __future__ import annotations

import json
import socket
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
ALIAS = "champion"
MIN_CONFIDENCE = 0.45


@dataclass
class Served:
    base_url: str
    client: httpx.Client
    tracking_uri: str
    bentoml_home: Path
    bentoml_tag: str
    mlflow_version: str
    classifier: Any  # xgboost.XGBClassifier
    onnx_bytes: bytes
    startup_s: float


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _manifest() -> dict[str, Any]:
    return {
        "model_name": MODEL_NAME,
        "feature_service": "trend_v1",
        "feature_view": "trend_fv",
        "features": FEATURES,
        "input_name": "input",
        "prob_output": "probabilities",
        "classes": ["short", "flat", "long"],
        "positions": [-1, 0, 1],
        "min_confidence": MIN_CONFIDENCE,
        "timeframe": "M5",
        "symbols": ["EURUSD", "GBPUSD"],
        "train_range": ["2024-01-01", "2024-03-01"],
        "test_range": ["2024-03-01", "2024-04-01"],
        "label_horizon": 12,
        "metrics": {"accuracy": 0.4},
    }


def _register_bundle(root: Path) -> tuple[str, Any, bytes]:
    """Train a tiny 3-class XGBoost, export it to ONNX and register it as `champion`."""
    import mlflow
    import onnxmltools
    import xgboost as xgb
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri
    from onnxmltools.convert.common.data_types import FloatTensorType

    rng = np.random.default_rng(7)
    x = rng.normal(size=(400, len(FEATURES))).astype(np.float32)
    y = (x[:, 0] > 0.4).astype(int) * 2 + ((x[:, 0] > -0.4) & (x[:, 0] <= 0.4)).astype(int)
    clf = xgb.XGBClassifier(
        n_estimators=30, max_depth=3, objective="multi:softprob", n_jobs=1, random_state=0
    )
    clf.fit(x, y)
    onx = onnxmltools.convert_xgboost(
        clf, initial_types=[("input", FloatTensorType([None, len(FEATURES)]))], target_opset=15
    )

    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    # The fluent API needs the process-global tracking URI: set it for this block only and
    # give back both the global and MLFLOW_TRACKING_URI (which set_tracking_uri also writes).
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        with _use_tracking_uri(tracking_uri):
            client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
            experiment_id = client.create_experiment(
                "tx_trend_it", artifact_location=str(root / "mlartifacts")
            )
            with mlflow.start_run(experiment_id=experiment_id):
                info = mlflow.onnx.log_model(
                    onx,
                    name="model",
                    onnx_execution_providers=["CPUExecutionProvider"],
                    metadata={"tx_manifest": _manifest()},
                )
            mv = mlflow.register_model(info.model_uri, MODEL_NAME)
            client.set_registered_model_alias(MODEL_NAME, ALIAS, mv.version)
    return tracking_uri, clf, onx.SerializeToString()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    from serving.importer import import_from_registry
    from serving.server import start_server, stop_server, wait_ready

    root = tmp_path_factory.mktemp("serving")
    bentoml_home = root / "bentoml"
    tracking_uri, clf, onnx_bytes = _register_bundle(root)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENTOML_HOME", str(bentoml_home))
        imported = import_from_registry(tracking_uri, MODEL_NAME, ALIAS)

    port = _free_port()
    base_url = f"http://127.0.0.1:{port}"
    proc = start_server(
        host="127.0.0.1",
        port=port,
        model_tag=imported.bentoml_tag,
        bentoml_home=bentoml_home,
        log_path=root / "server.log",
    )
    try:
        startup_s = wait_ready(base_url, timeout_s=120, proc=proc)
        with httpx.Client(base_url=base_url, timeout=10) as client:
            yield Served(
                base_url=base_url,
                client=client,
                tracking_uri=tracking_uri,
                bentoml_home=bentoml_home,
                bentoml_tag=imported.bentoml_tag,
                mlflow_version=imported.mlflow_version,
                classifier=clf,
                onnx_bytes=onnx_bytes,
                startup_s=startup_s,
            )
    finally:
        stop_server(proc)


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


def _direct_onnx(onnx_bytes: bytes, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(["probabilities"], {"input": x})[0])


# --- happy path -------------------------------------------------------------------------


def test_predict_single_row_when_valid_then_matches_onnxruntime_and_xgboost(served: Served):
    x = np.array([[0.9, -0.2, 0.3, 55.0, 0.0001]], dtype=np.float32)

    response = served.client.post("/predict", json={"rows": [_row(x[0])]})

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_name"] == MODEL_NAME
    assert body["model_version"] == served.mlflow_version == "1"
    (pred,) = body["predictions"]
    got = np.array([pred["probabilities"][c] for c in ("short", "flat", "long")])
    np.testing.assert_allclose(got, _direct_onnx(served.onnx_bytes, x)[0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(got, served.classifier.predict_proba(x)[0], rtol=0, atol=1e-5)
    assert pred["symbol"] == "EURUSD"
    assert pred["feature_time"] == "2024-05-01T10:05:00Z"


def test_predict_batch_when_several_rows_then_one_prediction_per_row_in_order(served: Served):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, len(FEATURES))).astype(np.float32)
    rows = [_row(x[i], symbol=f"SYM{i}") for i in range(len(x))]

    response = served.client.post("/predict", json={"rows": rows})

    assert response.status_code == 200, response.text
    preds = response.json()["predictions"]
    assert [p["symbol"] for p in preds] == [f"SYM{i}" for i in range(len(x))]
    got = np.array([[p["probabilities"][c] for c in ("short", "flat", "long")] for p in preds])
    np.testing.assert_allclose(got, _direct_onnx(served.onnx_bytes, x), rtol=0, atol=1e-6)
    np.testing.assert_allclose(got, served.classifier.predict_proba(x), rtol=0, atol=1e-5)


def test_predict_decision_when_confident_then_argmax_else_flat_with_matching_position(
    served: Served,
):
    rng = np.random.default_rng(2)
    x = rng.normal(scale=1.5, size=(40, len(FEATURES))).astype(np.float32)

    response = served.client.post("/predict", json={"rows": [_row(v) for v in x]})

    assert response.status_code == 200, response.text
    positions = {"short": -1, "flat": 0, "long": 1}
    seen = set()
    for pred in response.json()["predictions"]:
        probs = pred["probabilities"]
        best = max(probs, key=probs.__getitem__)
        expected = best if probs[best] >= MIN_CONFIDENCE else "flat"
        assert pred["decision"] == expected
        assert pred["position"] == positions[expected]
        seen.add(expected)
    assert {"short", "long"} <= seen


def test_predict_feature_time_when_epoch_or_offset_then_returned_in_utc(served: Served):
    x = [0.1, 0.2, 0.3, 40.0, 0.0002]
    rows = [
        _row(x, feature_time=1714557900),  # 2024-05-01T10:05:00Z
        _row(x, feature_time="2024-05-01T12:05:00+02:00"),
    ]

    response = served.client.post("/predict", json={"rows": rows})

    assert response.status_code == 200, response.text
    times = [p["feature_time"] for p in response.json()["predictions"]]
    assert times == ["2024-05-01T10:05:00Z", "2024-05-01T10:05:00Z"]


# --- bad input: always 4xx naming the field -----------------------------------------------


def test_predict_when_feature_missing_then_400_naming_it(served: Served):
    row = _row([0.1, 0.2, 0.3, 40.0, 0.0002])
    del row["features"]["vol_20"]

    response = served.client.post("/predict", json={"rows": [row]})

    assert response.status_code == 400
    assert _locs(response) == [["rows", 0, "features", "vol_20"]]
    assert _detail(response)[0]["type"] == "missing_feature"
    assert "vol_20" in _detail(response)[0]["msg"]


def test_predict_when_unknown_feature_then_400_naming_it(served: Served):
    row = _row([0.1, 0.2, 0.3, 40.0, 0.0002])
    row["features"]["ret_60"] = 0.5

    response = served.client.post("/predict", json={"rows": [_row([0] * 5), row]})

    assert response.status_code == 400
    assert _locs(response) == [["rows", 1, "features", "ret_60"]]
    assert _detail(response)[0]["type"] == "unexpected_feature"


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e39"])
def test_predict_when_value_not_finite_then_400_naming_it(served: Served, literal: str):
    row = _row([0.1, 0.2, 0.3, 40.0, 0.0002])
    row["features"]["rsi_14"] = "__VALUE__"
    body = json.dumps({"rows": [row]}).replace('"__VALUE__"', literal)

    response = served.client.post(
        "/predict", content=body, headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 400, response.text
    assert _locs(response) == [["rows", 0, "features", "rsi_14"]]


@pytest.mark.parametrize("value", ["0.5", "abc", None, True, [1.0]])
def test_predict_when_value_not_a_number_then_400_naming_it(served: Served, value: Any):
    row = _row([0.1, 0.2, 0.3, 40.0, 0.0002])
    row["features"]["ret_5"] = value

    response = served.client.post("/predict", json={"rows": [row]})

    assert response.status_code == 400, response.text
    assert ["rows", 0, "features", "ret_5"] in _locs(response)


def test_predict_when_rows_empty_then_400_naming_rows(served: Served):
    response = served.client.post("/predict", json={"rows": []})

    assert response.status_code == 400
    assert _locs(response) == [["rows"]]


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({}, ["rows"]),
        ({"rows": [{"symbol": "EURUSD", "features": {}}]}, ["rows", 0, "feature_time"]),
        (
            {"rows": [_row([0] * 5, feature_time="2024-05-01T10:05:00")]},
            ["rows", 0, "feature_time"],
        ),
        ({"rows": [_row([0] * 5)], "extra": 1}, ["extra"]),
    ],
    ids=["no_rows", "no_feature_time", "naive_feature_time", "unknown_top_level_field"],
)
def test_predict_when_request_shape_wrong_then_400_naming_field(
    served: Served, body: dict, loc: list[Any]
):
    response = served.client.post("/predict", json=body)

    assert response.status_code == 400, response.text
    assert loc in _locs(response)


def test_predict_when_body_not_json_then_400(served: Served):
    response = served.client.post(
        "/predict", content=b"{rows:", headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 400


# --- import ---------------------------------------------------------------------------------


def test_import_from_registry_when_version_already_imported_then_reuses_it(served: Served):
    import bentoml

    from serving.importer import import_from_registry

    again = import_from_registry(
        served.tracking_uri, MODEL_NAME, ALIAS, bentoml_home=served.bentoml_home
    )

    assert again.created is False
    assert again.bentoml_tag == served.bentoml_tag == f"{MODEL_NAME}:v1"
    assert again.mlflow_version == served.mlflow_version
    assert again.manifest == _manifest()
    store_dir = served.bentoml_home / "models" / MODEL_NAME
    assert sorted(p.name for p in store_dir.iterdir() if p.is_dir()) == ["v1"]
    model = bentoml.models.get(served.bentoml_tag, _model_store=_store(served.bentoml_home))
    assert model.info.labels == {"mlflow_version": "1", "alias": ALIAS}


def _store(home: Path) -> Any:
    from bentoml._internal.models import ModelStore

    return ModelStore(home / "models")
