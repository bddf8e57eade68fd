"""Explanations over real HTTP: an ensemble bundle trained and exported by the training code
(XGBoost + transformer + regime classifier, its native booster logged as an MLflow extra
file), registered in a temporary MLflow store, imported into BentoML and served by
``bentoml serve``.

- ``/v1/predict`` carries ``explanation`` per row (contract C5): regime state, each member's
  probabilities and weight, and the weighted member average is the answer;
- ``/v1/explain`` answers TreeSHAP of the XGBoost member whose contributions plus base value
  equal the member's margin (1e-4), for the class the ensemble predicts;
- malformed explain requests are 4xx naming the field, never 5xx;
- the engine's in-process ONNX fallback reads the same graph by output name.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.integration.test_serving import (
    FEATURES,
    import_alias,
    manifest,
    new_registry,
    serve,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # an ensemble export (~30 s)

L, C = 8, 2
SEQUENCE = {"input_name": "sequence", "seq_len": L, "channels": ["close_ret", "range"]}
MODEL_NAME = "tx_trend_it"


@dataclass
class Bundle:
    model: Any  # training.models.EnsembleModel
    onnx_bytes: bytes
    manifest: dict[str, Any]
    booster_path: Path


def _ensemble_bundle(root: Path) -> Bundle:
    from training.config import TransformerConfig
    from training.export import (
        NATIVE_BOOSTER_FILE,
        explanation_outputs,
        model_to_onnx,
        save_native_booster,
    )
    from training.models import (
        EnsembleModel,
        ModelData,
        RegimeClassifier,
        TransformerModel,
        XGBModel,
    )

    rng = np.random.default_rng(3)
    n = 500
    x = rng.normal(size=(n, len(FEATURES))).astype(np.float32)
    seq = rng.normal(size=(n, L, C)).astype(np.float32)
    score = x[:, 0] + 0.5 * seq[:, -1, 0]
    y = np.where(score > 0.4, 2, np.where(score < -0.4, 0, 1))
    d = ModelData(x, seq, y)
    ens = EnsembleModel(
        XGBModel({"n_estimators": 25, "max_depth": 3, "learning_rate": 0.3}),
        TransformerModel(
            TransformerConfig(d_model=16, n_heads=2, n_layers=1, epochs=1, batch_size=128)
        ),
        RegimeClassifier(FEATURES, "vol_20", "ret_5"),
    )
    ens.fit(d.take(np.arange(350)), d.take(np.arange(350, n)))
    onx = model_to_onnx(ens, len(FEATURES), (L, C))
    booster_path = root / NATIVE_BOOSTER_FILE
    assert save_native_booster(ens, booster_path)
    onnx_bytes = onx.SerializeToString()
    m = manifest(sequence=SEQUENCE, onnx_bytes=onnx_bytes)
    m["family"] = "ensemble"
    m["explanation_outputs"] = explanation_outputs(ens)
    m["native_booster"] = NATIVE_BOOSTER_FILE
    m["ensemble_weights"] = {
        "members": ["xgboost", "transformer"],
        "by_regime_state": ens.weights.tolist(),
    }  # type: ignore[union-attr]
    return Bundle(ens, onnx_bytes, m, booster_path)


def _register(tracking_uri: str, root: Path, bundle: Bundle) -> str:
    """Log the bundle the way ``training.train.register_step`` does (ONNX + manifest +
    the booster as an MLflow extra file) and point ``champion`` at it."""
    import mlflow
    import onnx
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        with _use_tracking_uri(tracking_uri):
            client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
            exp = client.create_experiment(
                "tx_explain_it", artifact_location=str(root / "mlartifacts")
            )
            with mlflow.start_run(experiment_id=exp):
                info = mlflow.onnx.log_model(
                    onnx.load_from_string(bundle.onnx_bytes),
                    name="model",
                    onnx_execution_providers=["CPUExecutionProvider"],
                    metadata={"tx_manifest": bundle.manifest},
                    extra_files=[str(bundle.booster_path)],
                    save_as_external_data=False,
                )
            mv = mlflow.register_model(info.model_uri, MODEL_NAME)
            client.set_registered_model_alias(MODEL_NAME, "champion", mv.version)
    return str(mv.version)


@dataclass
class Served:
    client: httpx.Client
    base_url: str
    bundle: Bundle
    bentoml_home: Path
    bentoml_tag: str


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("explain")
    tracking_uri = new_registry(root)
    bundle = _ensemble_bundle(root)
    _register(tracking_uri, root, bundle)
    champion = import_alias(root, tracking_uri, "champion")
    for server in serve(root, tracking_uri, champion_tag=champion.bentoml_tag):
        yield Served(server.client, server.base_url, bundle, root / "bentoml", champion.bentoml_tag)


def _rows(n: int, seed: int = 0) -> tuple[list[dict[str, Any]], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(FEATURES))).astype(np.float32)
    seq = rng.normal(size=(n, L, C)).astype(np.float32)
    rows = [
        {
            "symbol": "EURUSD",
            "feature_time": 1714557900 + 300 * i,
            "features": {f: float(v) for f, v in zip(FEATURES, x[i], strict=True)},
            "sequence": seq[i].tolist(),
        }
        for i in range(n)
    ]
    return rows, x, seq


def _locs(response: httpx.Response) -> list[list[Any]]:
    return [d["loc"] for d in response.json()["detail"]]


def test_predict_when_ensemble_served_then_explanation_is_the_members_weighted_average(
    served: Served,
) -> None:
    rows, x, seq = _rows(16)
    r = served.client.post("/v1/predict", json={"rows": rows})
    assert r.status_code == 200, r.text
    ens = served.bundle.model
    from training.models import ModelData

    states = ens.regime.predict(ModelData(x, seq))
    for pred, state in zip(r.json()["predictions"], states.tolist(), strict=True):
        ex = pred["explanation"]
        assert ex["regime"]["state"] == state
        assert ex["regime"]["probabilities"] == np.eye(4)[state].tolist()
        members = {m["name"]: m for m in ex["members"]}
        assert list(members) == ["xgb", "transformer"]
        weights = [members["xgb"]["weight"], members["transformer"]["weight"]]
        np.testing.assert_allclose(weights, ens.weights[state], atol=1e-7)
        mixed = sum(m["weight"] * np.array(m["probabilities"]) for m in ex["members"])
        final = [pred["probabilities"][c] for c in ("short", "flat", "long")]
        np.testing.assert_allclose(mixed, final, atol=1e-6)
    native_xgb = ens.xgb.predict_proba(ModelData(x, seq))
    got_xgb = [p["explanation"]["members"][0]["probabilities"] for p in r.json()["predictions"]]
    np.testing.assert_allclose(got_xgb, native_xgb, atol=1e-5)


def test_explain_when_rows_valid_then_treeshap_sums_to_the_members_margin(served: Served) -> None:
    import xgboost as xgb

    rows, x, _ = _rows(12, seed=1)
    r = served.client.post("/v1/explain", params={"top_k": 3}, json={"rows": rows})
    assert r.status_code == 200, r.text
    body = r.json()
    pred = served.client.post("/v1/predict", json={"rows": rows}).json()["predictions"]
    local = xgb.Booster(model_file=str(served.bundle.booster_path))
    margins = local.predict(xgb.DMatrix(x), output_margin=True)
    assert body["top_k"] == 3 and set(body["attribution"]) == {"xgb", "transformer"}
    assert len(body["explanations"]) == 12
    for i, (ex, p) in enumerate(zip(body["explanations"], pred, strict=True)):
        probs = [p["probabilities"][c] for c in ("short", "flat", "long")]
        assert ex["member"] == "xgb"
        assert ex["class"] == int(np.argmax(probs))
        assert ex["class_name"] == ("short", "flat", "long")[ex["class"]]
        assert list(ex["contributions"]) == FEATURES
        total = sum(ex["contributions"].values()) + ex["base_value"]
        assert abs(total - ex["margin"]) <= 1e-4  # TreeSHAP's own additivity
        assert abs(ex["margin"] - float(margins[i, ex["class"]])) <= 1e-4
        assert ex["member_weight"] == p["explanation"]["members"][0]["weight"]
        top = ex["top"]
        assert len(top) == 3
        assert [t["feature"] for t in top] == sorted(
            FEATURES, key=lambda f: -abs(ex["contributions"][f])
        )[:3]
        assert top[0]["value"] == pytest.approx(rows[i]["features"][top[0]["feature"]])


@pytest.mark.parametrize(
    ("params", "mutate", "loc"),
    [
        ({}, lambda b: b["rows"][0]["features"].pop("rsi_14"), ["rows", 0, "features", "rsi_14"]),
        (
            {},
            lambda b: b["rows"][1]["features"].update(rsi_14="x"),
            ["rows", 1, "features", "rsi_14"],
        ),
        ({}, lambda b: b["rows"][0].pop("sequence"), ["rows", 0, "sequence"]),
        ({}, lambda b: b.update(rows=[]), ["rows"]),
        ({}, lambda b: b.update(extra=1), ["extra"]),
        ({"top_k": "0"}, None, ["query", "top_k"]),
        ({"top_k": "abc"}, None, ["query", "top_k"]),
        ({"top_k": str(len(FEATURES) + 1)}, None, ["query", "top_k"]),
        ({"k": "2"}, None, ["query", "k"]),
    ],
    ids=[
        "missing",
        "not_number",
        "no_sequence",
        "empty",
        "unknown_field",
        "k0",
        "kabc",
        "kbig",
        "kname",
    ],
)
def test_explain_when_request_malformed_then_400_naming_the_field(
    served: Served, params: dict[str, str], mutate: Any, loc: list[Any]
) -> None:
    body: dict[str, Any] = {"rows": _rows(2)[0]}
    if mutate is not None:
        mutate(body)
    r = served.client.post("/v1/explain", params=params, json=body)
    assert r.status_code == 400, r.text
    assert loc in _locs(r)


def test_explain_when_no_token_or_get_or_not_json_then_4xx(served: Served) -> None:
    body = {"rows": _rows(1)[0]}
    assert httpx.post(served.base_url + "/v1/explain", json=body).status_code == 401
    bad = httpx.post(
        served.base_url + "/v1/explain", json=body, headers={"Authorization": "Bearer no"}
    )
    assert bad.status_code == 401
    assert served.client.get("/v1/explain").status_code == 405
    r = served.client.post("/v1/explain", content=b"rows", headers={"content-type": "text/plain"})
    assert r.status_code == 415


def test_explain_when_fuzzed_then_never_5xx(served: Served) -> None:
    rng = random.Random(5)
    good = {"rows": _rows(1)[0]}
    bodies: list[bytes] = [
        bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 200))) for _ in range(20)
    ]
    import json

    for _ in range(20):
        b = json.loads(json.dumps(good))
        row = b["rows"][0]
        key = rng.choice(["symbol", "feature_time", "features", "sequence"])
        row[key] = rng.choice([None, "", -1, 1e309, [], {}, "2024-13-01", [[1.0]], {"ret_1": True}])
        bodies.append(json.dumps(b).encode())
    for raw in bodies:
        r = served.client.post(
            "/v1/explain",
            params={"top_k": rng.choice(["1", "-3", "", "9" * 30])},
            content=raw,
            headers={"content-type": "application/json"},
        )
        # some mutations stay valid (any short string is a symbol): 200 or 4xx, never 5xx
        assert r.status_code == 200 or 400 <= r.status_code < 500, (raw[:80], r.text[:200])


def test_openapi_and_schema_when_fetched_then_list_explain_and_the_explanation_fields(
    served: Served,
) -> None:
    spec = served.client.get("/docs.json").json()
    assert "/v1/explain" in spec["paths"] and "post" in spec["paths"]["/v1/explain"]
    schemas = served.client.get("/v1/schema").json()
    row = schemas["explain_response"]["properties"]["explanations"]["items"]["properties"]
    assert {"class", "base_value", "margin", "contributions", "top"} <= set(row)
    pred = schemas["response"]["properties"]["predictions"]["items"]
    assert "explanation" in pred["required"]
    models = served.client.get("/v1/models").json()
    assert models["champion"]["explain"] is True


def test_import_when_manifest_names_a_booster_then_it_is_in_the_bentoml_model(
    served: Served,
) -> None:
    from serving.importer import get_stored

    stored = get_stored(served.bentoml_tag, bentoml_home=served.bentoml_home)
    shipped = Path(stored.path_of("xgb_booster.ubj")).read_bytes()
    assert shipped == served.bundle.booster_path.read_bytes()


def test_engine_fallback_when_bundle_has_explanation_outputs_then_reads_probabilities_by_name(
    served: Served, tmp_path: Path
) -> None:
    import json

    from engine.features import FeatureRow
    from engine.serving_client import OnnxModel

    (tmp_path / "model.onnx").write_bytes(served.bundle.onnx_bytes)
    (tmp_path / "manifest.json").write_text(
        json.dumps({**served.bundle.manifest, "model_version": "1"})
    )
    local = OnnxModel.from_dir(tmp_path)
    rows, x, seq = _rows(3, seed=4)
    served_preds = served.client.post("/v1/predict", json={"rows": rows}).json()["predictions"]
    for i, p in enumerate(served_preds):
        row = FeatureRow("EURUSD", 0.0, dict(zip(FEATURES, x[i].tolist(), strict=True)), seq[i])
        got = local.predict(row)
        assert got.decision == p["decision"]
        for c in ("short", "flat", "long"):
            assert got.probabilities[c] == pytest.approx(p["probabilities"][c], abs=1e-6)
