"""Serving under abuse, over HTTP against a real `bentoml serve`: never a 5xx, small error
answers, bounded memory.

One bundle is registered in a temporary MLflow registry, imported and served for the whole
module. The attacks and the OpenAPI fuzzing are those of ``bench/serving_abuse.py`` (which
prints the same figures for the docs); here they are asserted on.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from bench.serving_abuse import (
    FEATURES,
    MAX_RESPONSE_BYTES,
    TOKEN,
    attacks,
    fuzz_openapi,
    probe_during,
    run_abuse,
    run_attack,
    served,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.slow]

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Api:
    base_url: str
    server_pid: int


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    root: Path = tmp_path_factory.mktemp("serving_abuse")
    with served(root) as (base_url, pid):
        yield Api(base_url, pid)


def _valid_row() -> dict:
    return {
        "symbol": "EURUSD",
        "feature_time": "2024-05-01T10:05:00Z",
        "features": {f: 0.1 for f in FEATURES},
    }


def _predict(api: Api, body: object) -> httpx.Response:
    return httpx.post(api.base_url + "/v1/predict", json=body, headers=AUTH, timeout=30)


def test_abuse_when_every_attack_and_openapi_fuzzing_then_no_5xx_small_answers_bounded_rss(
    api: Api,
):
    summary = run_abuse(api.base_url, TOKEN, api.server_pid, FEATURES, n_fuzz=150)
    print("\n" + summary.table())

    assert summary.server_errors == 0, summary.statuses
    assert summary.dropped == 0, summary.statuses
    assert summary.max_error_response_bytes <= MAX_RESPONSE_BYTES
    assert summary.rss_after_mib <= 2 * summary.rss_idle_mib
    assert _predict(api, {"rows": [_valid_row()]}).status_code == 200


@pytest.mark.parametrize(
    ("name", "statuses"),
    [
        ("deep_array_top_100k", {400}),
        ("deep_in_features_100k", {400}),
        ("deep_feature_value_100k", {400}),
        ("unknown_keys_1_5M", {413}),
        ("unknown_keys_300k", {400}),
        ("name_20MiB", {413}),
        ("name_20MiB_chunked", {413}),
        ("name_3MiB", {400}),
        ("empty_rows_60MiB", {413}),
        ("empty_rows_60MiB_chunked", {413}),
        ("valid_rows_past_cap", {400}),
        ("content_length_negative", {400}),
        ("content_length_garbage", {400}),
        ("content_length_twice", {400}),
        ("content_length_huge", {413}),
        ("wrong_content_type", {415}),
    ],
)
def test_attack_when_sent_then_refused_with_its_4xx(api: Api, name: str, statuses: set[int]):
    (attack,) = [a for a in attacks(FEATURES) if a.name == name]

    outcomes = run_attack(api.base_url, TOKEN, attack)

    assert {o.status for o in outcomes} <= statuses, outcomes
    assert all(o.response_bytes <= MAX_RESPONSE_BYTES for o in outcomes)


def test_predict_when_content_length_over_the_limit_then_413_before_any_body_is_sent(api: Api):
    host, port = api.base_url.removeprefix("http://").split(":")
    head = (
        f"POST /v1/predict HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {60 * 1024 * 1024}\r\n\r\n"
    )

    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.encode())
        answer = sock.recv(65536)  # not one byte of the 60 MiB body was sent

    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_predict_when_type_error_and_missing_fields_then_one_400_names_every_field(api: Api):
    body = {"rows": [{"symbol": 7, "features": {"ret_1": "x", "ret_5": 0.1}}]}

    response = _predict(api, body)

    assert response.status_code == 400
    locs = {tuple(d["loc"]): d["type"] for d in response.json()["detail"]}
    assert locs == {
        ("rows", 0, "symbol"): "wrong_type",
        ("rows", 0, "feature_time"): "missing",
        ("rows", 0, "features", "ret_1"): "not_a_number",
        ("rows", 0, "features", "vol_20"): "missing_feature",
        ("rows", 0, "features", "rsi_14"): "missing_feature",
        ("rows", 0, "features", "spread"): "missing_feature",
    }


def test_predict_when_huge_unknown_name_then_echo_is_clipped(api: Api):
    name = "n" * 500_000
    row = _valid_row()
    row["features"][name] = 0.0

    response = _predict(api, {"rows": [row]})

    assert response.status_code == 400
    assert len(response.content) < 4_000
    (detail,) = response.json()["detail"]
    assert detail["type"] == "unexpected_feature" and len(detail["loc"][-1]) <= 64


def test_predict_when_large_bad_bodies_then_one_row_requests_keep_answering(api: Api):
    """Large parses run off the event loop: valid one-row requests sent back to back keep
    getting their 200 while 8 large bodies are being refused."""
    (attack,) = [a for a in attacks(FEATURES) if a.name == "large_bodies_8_at_once"]

    outcomes, probe = probe_during(api.base_url, TOKEN, FEATURES, attack)

    probes = [o for o in outcomes if o.name == "probe_one_row"]
    assert probe["n"] == len(probes) >= 1
    assert {o.status for o in probes} == {200}
    assert {o.status for o in outcomes if o.name == attack.name} <= {400, 429}


def test_fuzz_when_schemathesis_cases_from_the_openapi_then_no_5xx(api: Api):
    outcomes = fuzz_openapi(api.base_url, TOKEN, n_examples=100)

    assert outcomes
    assert {o.name.split(":", 1)[1] for o in outcomes} >= {"POST /v1/predict"}
    bad = [
        o
        for o in outcomes
        if o.status >= 500 or (o.status >= 400 and o.response_bytes > MAX_RESPONSE_BYTES)
    ]
    assert not bad, bad[:5]
