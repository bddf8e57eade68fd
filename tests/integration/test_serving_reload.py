"""Sequence bundles and hot reload over a real `bentoml serve` and a real MLflow registry.

The bundle is a small ONNX graph built here with inputs `input` [N, F] and `sequence`
[N, SEQ_LEN, C] and output `probabilities` [N, 3], registered through MLflow the way
training does it (metadata `tx_manifest` with a `sequence` entry). v1 is served as
`champion`; the tests register v2 and v3 and move the alias while a client hammers the
server, once with `POST /v1/admin/reload` and once waiting for the registry poll.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.integration.test_serving import (
    AUTH,
    CLASSES,
    FEATURES,
    Server,
    direct_onnx,
    import_alias,
    manifest,
    new_registry,
    register,
    serve,
    set_alias,
)

pytestmark = pytest.mark.integration

SEQ_LEN = 8
CHANNELS = ["ret", "range", "volume"]
SEQUENCE = {
    "input_name": "sequence",
    "feature_view": "bar_sequence_fv",
    "field": "seq",
    "seq_len": SEQ_LEN,
    "channels": CHANNELS,
}
POLL_S = 1.0


def sequence_graph(seed: int) -> Any:
    """softmax(input @ W + mean_t(sequence) @ V + b): a stand-in for the composed bundle."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = rng.normal(size=(len(FEATURES), 3)).astype(np.float32)
    v = rng.normal(scale=2.0, size=(len(CHANNELS), 3)).astype(np.float32)
    b = rng.normal(size=(3,)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["input", "W"], ["xw"]),
        helper.make_node("ReduceMean", ["sequence"], ["seq_mean"], axes=[1], keepdims=0),
        helper.make_node("MatMul", ["seq_mean", "V"], ["sv"]),
        helper.make_node("Add", ["xw", "sv"], ["z0"]),
        helper.make_node("Add", ["z0", "B"], ["z"]),
        helper.make_node("Softmax", ["z"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tx_sequence_test",
        [
            helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, len(FEATURES)]),
            helper.make_tensor_value_info(
                "sequence", TensorProto.FLOAT, [None, SEQ_LEN, len(CHANNELS)]
            ),
        ],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 3])],
        [
            numpy_helper.from_array(w, "W"),
            numpy_helper.from_array(v, "V"),
            numpy_helper.from_array(b, "B"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@dataclass
class Live:
    server: Server
    client: httpx.Client
    tracking_uri: str
    root: Path
    bundles: dict[str, bytes]  # mlflow version -> onnx bytes


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("serving_reload")
    tracking_uri = new_registry(root)
    onx = sequence_graph(seed=1)
    data = onx.SerializeToString()
    version = register(
        tracking_uri, root, onx, manifest(sequence=SEQUENCE, onnx_bytes=data), ("champion",)
    )
    champion = import_alias(root, tracking_uri, "champion")
    for server in serve(
        root,
        tracking_uri,
        champion_tag=champion.bentoml_tag,
        env={"TX_SERVING_RELOAD_INTERVAL_S": str(POLL_S)},
    ):
        yield Live(server, server.client, tracking_uri, root, {version: data})


def _rows(n: int, seed: int) -> tuple[list[dict[str, Any]], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(FEATURES))).astype(np.float32)
    seq = rng.normal(size=(n, SEQ_LEN, len(CHANNELS))).astype(np.float32)
    rows = [
        {
            "symbol": "EURUSD",
            "feature_time": "2024-05-01T10:05:00Z",
            "features": {name: float(v) for name, v in zip(FEATURES, x[i], strict=True)},
            "sequence": seq[i].astype(float).tolist(),
        }
        for i in range(n)
    ]
    return rows, x, seq


def _probs(body: dict[str, Any]) -> np.ndarray:
    return np.array([[p["probabilities"][c] for c in CLASSES] for p in body["predictions"]])


def _register_next(live: Live, seed: int) -> str:
    onx = sequence_graph(seed=seed)
    data = onx.SerializeToString()
    version = register(
        live.tracking_uri, live.root, onx, manifest(sequence=SEQUENCE, onnx_bytes=data)
    )
    live.bundles[version] = data
    return version


# --- sequence bundles -------------------------------------------------------------------------


def test_v1_predict_when_bundle_has_sequence_then_scores_features_and_sequence(live: Live):
    rows, x, seq = _rows(4, seed=5)

    response = live.client.post("/v1/predict", json={"rows": rows})

    assert response.status_code == 200, response.text
    body = response.json()
    served_version = body["model_version"]
    assert body["bundle_sha256"] == hashlib.sha256(live.bundles[served_version]).hexdigest()
    expected = direct_onnx(live.bundles[served_version], {"input": x, "sequence": seq})
    np.testing.assert_allclose(_probs(body), expected, atol=1e-6)


def test_v1_predict_when_sequence_missing_then_400_naming_it(live: Live):
    rows, _, _ = _rows(2, seed=6)
    del rows[1]["sequence"]

    response = live.client.post("/v1/predict", json={"rows": rows})

    assert response.status_code == 400
    assert [d["loc"] for d in response.json()["detail"]] == [["rows", 1, "sequence"]]


@pytest.mark.parametrize(
    ("mutate", "loc"),
    [
        (lambda s: s[:-1], ["rows", 0, "sequence"]),
        (lambda s: [*s[:3], s[3][:-1], *s[4:]], ["rows", 0, "sequence", 3]),
        (lambda s: [*s[:2], [s[2][0], "x", s[2][2]], *s[3:]], ["rows", 0, "sequence", 2, 1]),
        (lambda s: [*s[:2], [s[2][0], None, s[2][2]], *s[3:]], ["rows", 0, "sequence", 2, 1]),
        (lambda s: [*s[:5], [1e39, 0.0, 0.0], *s[6:]], ["rows", 0, "sequence", 5, 0]),
        (lambda s: "abc", ["rows", 0, "sequence"]),
        (lambda s: None, ["rows", 0, "sequence"]),
    ],
    ids=["too_few_steps", "step_too_short", "string", "null", "overflow", "not_a_list", "null_seq"],
)
def test_v1_predict_when_sequence_malformed_then_400_naming_the_step(
    live: Live, mutate: Any, loc: list[Any]
):
    rows, _, _ = _rows(1, seed=7)
    rows[0]["sequence"] = mutate(rows[0]["sequence"])

    response = live.client.post("/v1/predict", json={"rows": rows})

    assert response.status_code == 400, response.text
    assert loc in [d["loc"] for d in response.json()["detail"]]


# --- hot reload -------------------------------------------------------------------------------


class Hammer:
    """Threads posting /v1/predict back to back, recording every status and model version."""

    def __init__(self, base_url: str, threads: int = 3) -> None:
        self.base_url = base_url
        self.stop = threading.Event()
        self.results: list[list[tuple[int, str | None]]] = [[] for _ in range(threads)]
        self.errors: list[str] = []
        self._seen = threading.Condition()
        self._threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)
        ]

    def __enter__(self) -> Hammer:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(30)

    def _run(self, i: int) -> None:
        rows, _, _ = _rows(1, seed=100 + i)
        with httpx.Client(base_url=self.base_url, headers=AUTH, timeout=10) as client:
            while not self.stop.is_set():
                try:
                    r = client.post("/v1/predict", json={"rows": rows})
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))
                    continue
                version = r.json().get("model_version") if r.status_code == 200 else None
                with self._seen:
                    self.results[i].append((r.status_code, version))
                    self._seen.notify_all()

    def versions_seen(self) -> set[str | None]:
        return {v for res in self.results for _, v in res}

    def wait_for(self, version: str, n: int = 3, timeout_s: float = 60.0) -> None:
        """Until every thread has had ``n`` answers from ``version`` (an event, not a sleep)."""

        def enough() -> bool:
            return all(sum(v == version for _, v in res) >= n for res in self.results)

        with self._seen:
            if not self._seen.wait_for(enough, timeout_s):
                raise AssertionError(f"not every hammer thread saw {n} answers of {version}")


def _assert_no_failed_request_and_monotonic(hammer: Hammer, old: str, new: str) -> None:
    assert not hammer.errors, hammer.errors[:3]
    for res in hammer.results:
        assert res, "a hammer thread made no request"
        assert {s for s, _ in res} == {200}, [r for r in res if r[0] != 200][:3]
        versions = [v for _, v in res]
        # each client sees the old version, then the new one, never back
        switch = versions.index(new) if new in versions else len(versions)
        assert set(versions[:switch]) <= {old} and set(versions[switch:]) <= {new}, versions


def test_admin_reload_when_alias_moved_then_swaps_with_no_failed_request(live: Live):
    before = live.client.get("/v1/models").json()["champion"]["model_version"]
    new = _register_next(live, seed=2)

    with Hammer(live.server.base_url) as hammer:
        hammer.wait_for(before)  # traffic on the old version before the swap
        set_alias(live.tracking_uri, "champion", new)
        response = live.client.post("/v1/admin/reload", timeout=60)
        hammer.wait_for(new)  # and on the new one after it

    assert response.status_code == 200, response.text
    assert response.json()["serving"]["champion"]["model_version"] == new
    _assert_no_failed_request_and_monotonic(hammer, before, new)
    assert {before, new} <= hammer.versions_seen()
    rows, x, seq = _rows(2, seed=8)
    body = live.client.post("/v1/predict", json={"rows": rows}).json()
    assert body["model_version"] == new
    assert body["bundle_sha256"] == hashlib.sha256(live.bundles[new]).hexdigest()
    expected = direct_onnx(live.bundles[new], {"input": x, "sequence": seq})
    np.testing.assert_allclose(_probs(body), expected, atol=1e-6)


def test_admin_reload_when_nothing_moved_then_unchanged(live: Live):
    response = live.client.post("/v1/admin/reload", timeout=60)

    assert response.status_code == 200, response.text
    assert response.json()["changed"] is False


def test_admin_reload_when_no_token_then_401_and_nothing_reloaded(live: Live):
    response = httpx.post(live.server.base_url + "/v1/admin/reload", timeout=10)

    assert response.status_code == 401


def test_poll_when_alias_moved_then_serves_new_version_with_no_failed_request(live: Live):
    before = live.client.get("/v1/models").json()["champion"]["model_version"]
    new = _register_next(live, seed=3)

    with Hammer(live.server.base_url) as hammer:
        hammer.wait_for(before)
        set_alias(live.tracking_uri, "champion", new)
        hammer.wait_for(new, timeout_s=30 * POLL_S)

    _assert_no_failed_request_and_monotonic(hammer, before, new)
    assert {before, new} <= hammer.versions_seen()
    assert live.client.get("/v1/models").json()["champion"]["model_version"] == new
    metrics = live.client.get("/metrics").text
    assert 'tx_serving_reloads_total{outcome="swapped",trigger="poll"}' in metrics


def test_poll_when_challenger_alias_set_then_shadow_starts(live: Live):
    new = _register_next(live, seed=4)

    set_alias(live.tracking_uri, "challenger", new)
    deadline = time.monotonic() + 30 * POLL_S
    challenger = None
    while time.monotonic() < deadline and challenger is None:
        challenger = live.client.get("/v1/models").json()["challenger"]
        time.sleep(0.1)

    assert challenger is not None and challenger["model_version"] == new
    rows, _, _ = _rows(1, seed=9)
    request_id = f"poll-shadow-{time.time_ns()}"
    live.client.post("/v1/predict", json={"rows": rows}, headers={"X-Request-ID": request_id})
    log = live.root / "home" / "serving" / "shadow.jsonl"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if log.exists() and request_id in log.read_text():
            break
        time.sleep(0.05)
    assert request_id in log.read_text()
