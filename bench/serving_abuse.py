"""Serving under abuse: depth, key-count and size attacks plus schema fuzzing, over HTTP.

Against a real ``bentoml serve serving.service:TrendService`` (one worker, a 5-feature
XGBoost bundle registered in a temporary MLflow registry), it sends:

1. a catalogue of hostile bodies over raw sockets (``attacks``): nesting 100,000 deep at
   every level of the request, 1.5 M unknown keys, a 20 MiB feature name, 60 MiB of empty
   rows (with and without ``Content-Length``), rows past the cap, NaN / 1e400 / 5,000-digit
   numbers, broken UTF-8 and JSON, lying ``Content-Length`` headers; the large ones several
   at once;
2. Schemathesis cases generated from the service's own OpenAPI (``/docs.json``), valid and
   schema-violating, for every operation (``fuzz_openapi``);

and prints the number of requests, the 5xx count, the largest response and the worker's
RSS idle and after. ``tests/integration/test_serving_faults.py`` runs the same functions
and asserts on them (0 × 5xx, error answers ≤ ``MAX_RESPONSE_BYTES``, RSS after ≤ 2 × idle).

    .venv/bin/python bench/serving_abuse.py              # about 2-3 minutes
    .venv/bin/python bench/serving_abuse.py --fuzz 2000 --json out.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FEATURES = ["ret_1", "ret_5", "vol_20", "rsi_14", "spread"]
MODEL_NAME = "tx_bench_abuse"
TOKEN = "bench-abuse-token-0123456789"
#: No error answer of the service, whatever the request, may be larger than this.
MAX_RESPONSE_BYTES = 16 * 1024
MIB = 1024 * 1024


# --- the wire -----------------------------------------------------------------------------


@dataclass
class Outcome:
    """One request's answer: its status (0: the connection closed without one) and size."""

    name: str
    status: int
    response_bytes: int
    seconds: float


def send_raw(
    base_url: str,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes | Iterable[bytes] = b"",
    timeout_s: float = 60.0,
) -> tuple[int, int]:
    """Send one HTTP/1.1 request as given (headers untouched: no Content-Length is added)
    and read the answer; return (status, response bytes). The body is sent from a thread
    while the answer is read, so a server that refuses early is heard, not blocked on."""
    host, port = base_url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=timeout_s)
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"

    def sender() -> None:
        try:
            sock.sendall(head.encode("latin-1"))
            for chunk in [body] if isinstance(body, bytes) else body:
                if chunk:
                    sock.sendall(chunk)
        except OSError:
            pass  # the server answered and closed first: what we read is the outcome

    thread = threading.Thread(target=sender, daemon=True)
    thread.start()
    data = bytearray()
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    finally:
        sock.close()
        thread.join(timeout_s)
    if not data.startswith(b"HTTP/1."):
        return 0, len(data)
    return int(data[9:12]), len(data)


def chunked(parts: Iterable[bytes]) -> Iterator[bytes]:
    """``Transfer-Encoding: chunked`` framing of ``parts``."""
    for part in parts:
        if part:
            yield f"{len(part):x}\r\n".encode() + part + b"\r\n"
    yield b"0\r\n\r\n"


# --- the catalogue ------------------------------------------------------------------------


@dataclass
class Attack:
    """A hostile request; ``body`` is built on demand (some are tens of MiB)."""

    name: str
    body: Callable[[], bytes]
    headers: dict[str, str] = field(default_factory=dict)
    mode: str = "length"  # length: a true Content-Length | chunked | raw: headers as given
    repeat: int = 1
    parallel: int = 1


def _row(features: list[str], **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "symbol": "EURUSD",
        "feature_time": "2024-05-01T10:05:00Z",
        "features": {f: 0.1 for f in features},
    }
    row.update(extra)
    return row


def _j(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def _deep(opening: bytes, closing: bytes, depth: int, inner: bytes = b"1") -> bytes:
    return opening * depth + inner + closing * depth


def attacks(features: list[str]) -> list[Attack]:
    """The catalogue (see the module docstring)."""
    ok = _row(features)
    row_bytes = _j(ok)

    def with_features(raw: bytes) -> bytes:
        return (
            b'{"rows":[{"symbol":"EURUSD","feature_time":"2024-05-01T10:05:00Z","features":'
            + raw
            + b"}]}"
        )

    def keys(n: int) -> bytes:
        return with_features(b"{" + b",".join(b'"k%d":0' % i for i in range(n)) + b"}")

    def empty_rows(size: int) -> bytes:
        n = size // 3
        return b'{"rows":[' + b"{}," * (n - 1) + b"{}]}"

    return [
        Attack("deep_array_top_100k", lambda: _deep(b"[", b"]", 100_000)),
        Attack("deep_object_top_100k", lambda: _deep(b'{"a":', b"}", 100_000)),
        Attack("deep_in_rows_100k", lambda: b'{"rows":[' + _deep(b"[", b"]", 100_000) + b"]}"),
        Attack("deep_in_features_100k", lambda: with_features(_deep(b'{"a":', b"}", 100_000))),
        Attack(
            "deep_feature_value_100k",
            lambda: with_features(b'{"ret_1":' + _deep(b"[", b"]", 100_000) + b"}"),
        ),
        Attack("deep_unknown_field_900", lambda: b'{"x":' + _deep(b"[", b"]", 900) + b"}"),
        Attack("deep_unknown_field_100k", lambda: b'{"x":' + _deep(b"[", b"]", 100_000) + b"}"),
        Attack("unknown_keys_1_5M", lambda: keys(1_500_000)),
        Attack("unknown_keys_1_5M_chunked", lambda: keys(1_500_000), mode="chunked"),
        Attack("unknown_keys_300k", lambda: keys(300_000), repeat=3),
        Attack("unknown_keys_60k", lambda: keys(60_000), repeat=3),
        Attack("unknown_top_keys_60k", lambda: _j({f"k{i}": 0 for i in range(60_000)})),
        Attack("name_20MiB", lambda: with_features(b'{"' + b"n" * (20 * MIB) + b'":0}')),
        Attack(
            "name_20MiB_chunked",
            lambda: with_features(b'{"' + b"n" * (20 * MIB) + b'":0}'),
            mode="chunked",
        ),
        Attack("name_900KiB", lambda: with_features(b'{"' + b"n" * (900 * 1024) + b'":0}')),
        Attack("name_3MiB", lambda: with_features(b'{"' + b"n" * (3 * MIB) + b'":0}'), repeat=2),
        Attack("empty_rows_60MiB", lambda: empty_rows(60 * MIB)),
        Attack("empty_rows_60MiB_chunked", lambda: empty_rows(60 * MIB), mode="chunked"),
        Attack("empty_rows_6MiB", lambda: empty_rows(6 * MIB), repeat=3),
        Attack(
            "valid_rows_past_cap",
            lambda: b'{"rows":[' + b",".join([row_bytes] * 12_000) + b"]}",
            repeat=2,
        ),
        Attack(
            "large_bodies_8_at_once",
            lambda: empty_rows(6 * MIB),
            repeat=2,
            parallel=8,
        ),
        Attack("nan_infinity_literals", lambda: row_bytes.replace(b"0.1", b"NaN", 1)),
        Attack("infinity_literal", lambda: row_bytes.replace(b"0.1", b"-Infinity", 1)),
        Attack("number_1e400", lambda: row_bytes.replace(b"0.1", b"1e400", 1)),
        Attack("number_5000_digits", lambda: row_bytes.replace(b"0.1", b"9" * 5000, 1)),
        Attack("string_1MiB_symbol", lambda: _j({"rows": [_row(features, symbol="s" * MIB)]})),
        Attack("invalid_utf8", lambda: b'{"rows":[{"symbol":"\xff\xfe\xfd"}]}'),
        Attack("utf16_bom", lambda: "\ufeff{}".encode("utf-16")),
        Attack("nul_bytes", lambda: b"\x00" * 4096),
        Attack("truncated", lambda: row_bytes[: len(row_bytes) // 2]),
        Attack(
            "type_errors_and_missing",
            lambda: _j({"rows": [{"symbol": 7, "features": {"ret_1": "x"}}] * 50, "y": []}),
        ),
        Attack(
            "content_length_negative",
            lambda: b"{}",
            headers={"Content-Length": "-1"},
            mode="raw",
        ),
        Attack(
            "content_length_garbage",
            lambda: b"{}",
            headers={"Content-Length": "abc"},
            mode="raw",
        ),
        Attack(
            "content_length_huge",
            lambda: b"",
            headers={"Content-Length": str(10**15)},
            mode="raw",
        ),
        Attack(
            "content_length_twice",
            lambda: b"{}",
            headers={"Content-Length": "2", "content-length": "3"},
            mode="raw",
        ),
        Attack(
            "wrong_content_type",
            lambda: row_bytes,
            headers={"Content-Type": "text/plain"},
        ),
    ]


def run_attack(base_url: str, token: str, attack: Attack) -> list[Outcome]:
    """Send ``attack`` (``repeat`` times, ``parallel`` at once); one outcome per request."""
    body = attack.body()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    headers |= attack.headers
    if attack.mode == "length":
        headers["Content-Length"] = str(len(body))
    elif attack.mode == "chunked":
        headers["Transfer-Encoding"] = "chunked"

    out: list[Outcome] = []
    lock = threading.Lock()

    def one() -> None:
        payload: bytes | Iterable[bytes] = (
            chunked(body[i : i + MIB] for i in range(0, len(body), MIB))
            if attack.mode == "chunked"
            else body
        )
        t0 = time.perf_counter()
        status, size = send_raw(base_url, "POST", "/v1/predict", headers, payload)
        with lock:
            out.append(Outcome(attack.name, status, size, time.perf_counter() - t0))

    for _ in range(attack.repeat):
        threads = [threading.Thread(target=one) for _ in range(attack.parallel)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return out


def fuzz_openapi(base_url: str, token: str, n_examples: int) -> list[Outcome]:
    """Schemathesis cases from the service's OpenAPI (``/docs.json``), valid and
    schema-violating, for every operation it lists; ``n_examples`` per mode. Seeded
    (``derandomize``): the same cases every run."""
    import requests
    import schemathesis
    from schemathesis import GenerationMode

    auth = {"Authorization": f"Bearer {token}"}
    schema = schemathesis.openapi.from_url(f"{base_url}/docs.json", headers=auth, timeout=30)
    outcomes: list[Outcome] = []
    with requests.Session() as session:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz_mode(schema, mode, base_url, auth, session, n_examples, outcomes)
    return outcomes


def _fuzz_mode(
    schema: Any,
    mode: Any,
    base_url: str,
    auth: dict[str, str],
    session: Any,
    n_examples: int,
    outcomes: list[Outcome],
) -> None:
    from hypothesis import HealthCheck, given, settings

    @settings(
        max_examples=n_examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=schema.as_strategy(mode))
    def send(case: Any) -> None:
        t0 = time.perf_counter()
        response = case.call(base_url=base_url, session=session, headers=auth)
        size = len(response.content) + sum(len(k) + len(v) + 4 for k, v in response.headers.items())
        outcomes.append(
            Outcome(
                f"schemathesis_{mode.value}:{case.method} {case.path}",
                response.status_code,
                size,
                time.perf_counter() - t0,
            )
        )

    send()


# --- the worker's memory ------------------------------------------------------------------


def worker_pid(server_pid: int) -> int:
    """The BentoML worker process (the one that holds the model) of a ``bentoml serve``."""
    import psutil

    children = psutil.Process(server_pid).children(recursive=True)
    workers = [p for p in children if any("worker" in part for part in p.cmdline())]
    if not workers:
        raise RuntimeError(f"no BentoML worker under pid {server_pid}: {children}")
    return max(workers, key=lambda p: p.memory_info().rss).pid


def rss_mib(pid: int) -> float:
    import psutil

    return float(psutil.Process(pid).memory_info().rss) / MIB


@dataclass
class Summary:
    requests: int
    server_errors: int
    dropped: int  # no HTTP answer at all
    max_response_bytes: int
    max_error_response_bytes: int  # of the 4xx answers: what an attacker can make us send
    rss_idle_mib: float
    rss_peak_mib: float
    rss_after_mib: float
    statuses: dict[str, list[int]]
    slowest_s: float
    probe_ms: dict[str, float]  # one-row requests sent while large bodies were refused

    def table(self) -> str:
        lines = [
            f"requests sent                  {self.requests}",
            f"5xx answers                    {self.server_errors}",
            f"connections without an answer  {self.dropped}",
            f"largest 4xx answer             {self.max_error_response_bytes} bytes",
            f"largest answer (docs included) {self.max_response_bytes} bytes",
            f"slowest answer                 {self.slowest_s:.2f} s",
            f"one-row requests during 8 large bodies: {self.probe_ms['n']:.0f} sent, p50 "
            f"{self.probe_ms['p50']:.1f} ms, p99 {self.probe_ms['p99']:.1f} ms, max "
            f"{self.probe_ms['max']:.1f} ms",
            f"worker RSS idle / peak / after {self.rss_idle_mib:.0f} / {self.rss_peak_mib:.0f} / "
            f"{self.rss_after_mib:.0f} MiB (after / idle = "
            f"{self.rss_after_mib / self.rss_idle_mib:.2f})",
            "",
            "status codes by attack:",
        ]
        for name, codes in self.statuses.items():
            lines.append(f"  {name:<40} {sorted(set(codes))}")
        return "\n".join(lines)


def run_abuse(
    base_url: str, token: str, server_pid: int, features: list[str], n_fuzz: int
) -> Summary:
    """Every attack, then the OpenAPI fuzzing; the worker's RSS sampled all along."""
    pid = worker_pid(server_pid)
    gc.collect()
    idle = rss_mib(pid)
    peak = [idle]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            try:
                peak[0] = max(peak[0], rss_mib(pid))
            except Exception:
                return

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    outcomes: list[Outcome] = []
    probe: dict[str, float] = {}
    try:
        for attack in attacks(features):
            if attack.parallel > 1:
                out, probe = probe_during(base_url, token, features, attack)
                outcomes += out
            else:
                outcomes += run_attack(base_url, token, attack)
        if n_fuzz:
            outcomes += fuzz_openapi(base_url, token, n_fuzz)
    finally:
        stop.set()
        sampler.join()
    time.sleep(1.0)  # the last large request's memory is given back as it ends
    after = rss_mib(pid)
    statuses: dict[str, list[int]] = {}
    for o in outcomes:
        statuses.setdefault(o.name.split(":")[0], []).append(o.status)
    return Summary(
        requests=len(outcomes),
        server_errors=sum(o.status >= 500 for o in outcomes),
        dropped=sum(o.status == 0 for o in outcomes),
        max_response_bytes=max(o.response_bytes for o in outcomes),
        max_error_response_bytes=max(
            (o.response_bytes for o in outcomes if o.status >= 400), default=0
        ),
        rss_idle_mib=idle,
        rss_peak_mib=peak[0],
        rss_after_mib=after,
        statuses=statuses,
        slowest_s=max(o.seconds for o in outcomes),
        probe_ms=probe,
    )


def probe_during(
    base_url: str, token: str, features: list[str], attack: Attack
) -> tuple[list[Outcome], dict[str, float]]:
    """Run ``attack`` while one client sends valid one-row requests back to back: large
    parses run off the event loop, so these keep answering. Returns the attack's outcomes
    (the probes included) and the probes' latency figures in ms."""
    import httpx
    import numpy as np

    out: list[Outcome] = []
    done = threading.Event()

    def attack_then_stop() -> None:
        try:
            out.extend(run_attack(base_url, token, attack))
        finally:
            done.set()

    worker = threading.Thread(target=attack_then_stop, daemon=True)
    latencies: list[float] = []
    with httpx.Client(
        base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=60
    ) as client:
        body = {"rows": [_row(features)]}
        client.post("/v1/predict", json=body)
        worker.start()
        while not done.is_set():
            t0 = time.perf_counter()
            response = client.post("/v1/predict", json=body)
            latencies.append(time.perf_counter() - t0)
            out.append(
                Outcome("probe_one_row", response.status_code, len(response.content), latencies[-1])
            )
    worker.join()
    ms = np.array(latencies) * 1e3
    return out, {
        "n": float(len(ms)),
        "p50": float(np.percentile(ms, 50)),
        "p99": float(np.percentile(ms, 99)),
        "max": float(ms.max()),
    }


# --- a served bundle ----------------------------------------------------------------------


def build_and_import(root: Path) -> tuple[str, str]:
    """A 5-feature XGBoost bundle registered as champion and imported into BentoML, with its
    native booster (so ``/v1/explain`` runs TreeSHAP under the fuzzing too).
    Returns (tracking URI, BentoML tag)."""
    import hashlib

    import mlflow
    import numpy as np
    import onnxmltools
    import xgboost as xgb
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri
    from onnxmltools.convert.common.data_types import FloatTensorType

    from serving.importer import import_from_registry

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, len(FEATURES))).astype(np.float32)
    y = np.digitize(x[:, 0], [-0.4, 0.4])
    clf = xgb.XGBClassifier(n_estimators=30, max_depth=3, objective="multi:softprob", n_jobs=1)
    clf.fit(x, y)
    onx = onnxmltools.convert_xgboost(
        clf, initial_types=[("input", FloatTensorType([None, len(FEATURES)]))], target_opset=15
    )
    manifest = {
        "model_name": MODEL_NAME,
        "feature_service": "trend_v1",
        "features": FEATURES,
        "input_name": "input",
        "prob_output": "probabilities",
        "classes": ["short", "flat", "long"],
        "positions": [-1, 0, 1],
        "min_confidence": 0.4,
        "bundle_sha256": hashlib.sha256(onx.SerializeToString()).hexdigest(),
        "family": "xgboost",
        "native_booster": "xgb_booster.ubj",
    }
    clf.get_booster().save_model(str(root / "xgb_booster.ubj"))
    uri = f"sqlite:///{root / 'mlflow.db'}"
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    with _use_tracking_uri(uri):
        client = mlflow.MlflowClient(uri, uri)
        exp = client.create_experiment("abuse", artifact_location=str(root / "mlartifacts"))
        with mlflow.start_run(experiment_id=exp):
            info = mlflow.onnx.log_model(
                onx,
                name="model",
                onnx_execution_providers=["CPUExecutionProvider"],
                metadata={"tx_manifest": manifest},
                extra_files=[str(root / "xgb_booster.ubj")],
            )
        mv = mlflow.register_model(info.model_uri, MODEL_NAME)
        client.set_registered_model_alias(MODEL_NAME, "champion", mv.version)
    imported = import_from_registry(uri, MODEL_NAME, "champion", bentoml_home=root / "bentoml")
    return uri, imported.bentoml_tag


@contextmanager
def served(root: Path) -> Iterator[tuple[str, int]]:
    """``bentoml serve`` of the bundle; yields (base URL, server pid)."""
    from serving.server import start_server, stop_server, wait_ready

    uri, tag = build_and_import(root)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    proc = start_server(
        host="127.0.0.1",
        port=port,
        model_tag=tag,
        bentoml_home=root / "bentoml",
        log_path=root / "server.log",
        token=TOKEN,
        tracking_uri=uri,
        model_name=MODEL_NAME,
        env={
            "TX_HOME": str(root / "home"),
            "TX_SERVING_RELOAD_INTERVAL_S": "0",
            "TX_SERVING_CHALLENGER_ALIAS": "",
        },
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}", 180, proc=proc, token=TOKEN)
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        stop_server(proc)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--fuzz", type=int, default=500, help="Schemathesis cases per mode")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="tx_bench_abuse_") as tmp,
        served(Path(tmp)) as (
            url,
            pid,
        ),
    ):
        summary = run_abuse(url, TOKEN, pid, FEATURES, args.fuzz)
        import httpx

        check = httpx.post(
            url + "/v1/predict",
            json={"rows": [_row(FEATURES)]},
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=10,
        )
    print(summary.table())
    print(f"\nafter the attacks a valid request answers {check.status_code}")
    if args.json:
        args.json.write_text(json.dumps(asdict(summary), indent=2))


if __name__ == "__main__":
    main()
