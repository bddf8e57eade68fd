"""Serving latency and throughput: TitanovaX serving vs a minimal BentoML service vs onnxruntime.

One run, on this machine, interleaved so that CPU speed changes hit every case alike:

1. in process: ``session.run`` of the bundle on one row (the floor), and the service's own
   request path without HTTP (``parse_body`` → onnxruntime → ``render_predictions``);
2. over HTTP on loopback, one row per request, keep-alive:
   - ``tx``: ``bentoml serve serving.service:TrendService`` (``POST /v1/predict``, bearer
     token, metrics, shadow off), started by ``serving.server.start_server``;
   - ``bentoml-min``: the minimal BentoML 1.4 service most projects start from (one
     ``@bentoml.api`` with a pydantic input, default config, 1 worker) on the same ONNX file;
   single-client p50/p99 with a light raw-socket client and with ``httpx.Client``, the same
   paced at one call every 2 ms (a bar-driven engine's cadence), and throughput at
   concurrency 1, 8 and 32 (threads, one keep-alive connection each);
   - ``tx /v1/explain``: the same one-row body to the TreeSHAP endpoint of the same server,
     interleaved with ``/v1/predict`` (single-client latency only), so explain vs predict
     p50/p99 come from the same run.

The bundle is a 13-feature, 200-tree 3-class XGBoost exported to ONNX and registered in a
temporary MLflow registry, like training's trend_v1 bundles, with its native booster
(``xgb_booster.ubj``) as training ships it. The client runs on the same two
cores as the server, so throughput figures include the client's own CPU.

    .venv/bin/python bench/serving.py            # about 1.5 minutes
    .venv/bin/python bench/serving.py --seconds 2 --calls 1000 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

N_FEATURES = 13
FEATURES = [f"f{i:02d}" for i in range(N_FEATURES)]
MODEL_NAME = "tx_bench_serving"
TOKEN = "bench-serving-token"

BASELINE_SERVICE = """
import os

import bentoml
import numpy as np
import onnxruntime as ort
import pydantic


class Row(pydantic.BaseModel):
    symbol: str
    feature_time: str
    features: dict[str, float]


@bentoml.service(workers=1, resources={"cpu": "1"})
class Baseline:
    def __init__(self) -> None:
        self.names = os.environ["BENCH_FEATURES"].split(",")
        self.session = ort.InferenceSession(os.environ["BENCH_ONNX"], providers=["CPUExecutionProvider"])

    @bentoml.api(route="/predict")
    def predict(self, rows: list[Row]) -> dict:
        x = np.array([[r.features[n] for n in self.names] for r in rows], dtype=np.float32)
        (p,) = self.session.run(["probabilities"], {"input": x})
        return {"model_version": "1", "predictions": [
            {"symbol": r.symbol, "probabilities": dict(zip(("short", "flat", "long"), q))}
            for r, q in zip(rows, p.tolist())
        ]}
"""


# --- setup ---------------------------------------------------------------------------------


def build_bundle(root: Path) -> tuple[str, Path, str]:
    """Train, export and register the bundle as champion; import it into BentoML.
    Returns (tracking URI, ONNX path, BentoML tag)."""
    import mlflow
    import onnxmltools
    import xgboost as xgb
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri
    from onnxmltools.convert.common.data_types import FloatTensorType

    from serving.importer import import_from_registry

    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, N_FEATURES)).astype(np.float32)
    y = np.digitize(x[:, 0] + 0.5 * x[:, 1] + rng.normal(scale=0.5, size=len(x)), [-0.5, 0.5])
    clf = xgb.XGBClassifier(n_estimators=200, max_depth=4, objective="multi:softprob", n_jobs=1)
    clf.fit(x, y)
    onx = onnxmltools.convert_xgboost(
        clf, initial_types=[("input", FloatTensorType([None, N_FEATURES]))], target_opset=15
    )
    onnx_path = root / "model.onnx"
    onnx_path.write_bytes(onx.SerializeToString())
    booster_path = root / "xgb_booster.ubj"
    clf.get_booster().save_model(str(booster_path))
    manifest = {
        "model_name": MODEL_NAME,
        "feature_service": "trend_v1",
        "feature_view": "trend_fv",
        "features": FEATURES,
        "input_name": "input",
        "prob_output": "probabilities",
        "classes": ["short", "flat", "long"],
        "positions": [-1, 0, 1],
        "min_confidence": 0.4,
        "timeframe": "M5",
        "symbols": ["EURUSD"],
        "train_range": ["2024-01-01", "2024-02-01"],
        "test_range": ["2024-02-01", "2024-03-01"],
        "label_horizon": 12,
        "metrics": {},
        "family": "xgboost",
        "native_booster": "xgb_booster.ubj",
    }
    uri = f"sqlite:///{root / 'mlflow.db'}"
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    with _use_tracking_uri(uri):
        client = mlflow.MlflowClient(uri, uri)
        exp = client.create_experiment("bench", artifact_location=str(root / "mlartifacts"))
        with mlflow.start_run(experiment_id=exp):
            info = mlflow.onnx.log_model(
                onx,
                name="model",
                onnx_execution_providers=["CPUExecutionProvider"],
                metadata={"tx_manifest": manifest},
                extra_files=[str(booster_path)],
            )
        mv = mlflow.register_model(info.model_uri, MODEL_NAME)
        client.set_registered_model_alias(MODEL_NAME, "champion", mv.version)
    imported = import_from_registry(uri, MODEL_NAME, "champion", bentoml_home=root / "bentoml")
    return uri, onnx_path, imported.bentoml_tag


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def tx_server(root: Path, uri: str, tag: str) -> Iterator[str]:
    from serving.server import start_server, stop_server, wait_ready

    port = free_port()
    proc = start_server(
        host="127.0.0.1",
        port=port,
        model_tag=tag,
        bentoml_home=root / "bentoml",
        log_path=root / "tx.log",
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
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_server(proc)


@contextmanager
def baseline_server(root: Path, onnx_path: Path) -> Iterator[str]:
    from serving.server import stop_server, wait_ready

    svc_dir = root / "baseline"
    svc_dir.mkdir(exist_ok=True)
    (svc_dir / "baseline_svc.py").write_text(textwrap.dedent(BASELINE_SERVICE))
    port = free_port()
    env = os.environ | {
        "BENCH_ONNX": str(onnx_path),
        "BENCH_FEATURES": ",".join(FEATURES),
        # its own home: BentoML keeps its Prometheus multiprocess files there, and a second
        # server on the same home would wipe the first one's at start-up
        "BENTOML_HOME": str(root / "bentoml_baseline"),
        "BENTOML_DO_NOT_TRACK": "True",
    }
    with (root / "baseline.log").open("ab") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bentoml",
                "serve",
                "baseline_svc:Baseline",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            cwd=svc_dir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_ready(f"http://127.0.0.1:{port}", 180, proc=proc, log_path=root / "baseline.log")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_server(proc)


# --- clients -------------------------------------------------------------------------------


def request_body(rng: np.random.Generator) -> bytes:
    row = {
        "symbol": "EURUSD",
        "feature_time": "2024-05-01T10:05:00Z",
        "features": {
            n: float(v) for n, v in zip(FEATURES, rng.normal(size=N_FEATURES), strict=True)
        },
    }
    return json.dumps({"rows": [row]}).encode()


class RawClient:
    """HTTP/1.1 keep-alive over a bare socket: a client that costs next to nothing."""

    def __init__(self, base_url: str, path: str, body: bytes, token: str | None) -> None:
        host, port = base_url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        self.request = (
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"{auth}Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body

    def call(self) -> None:
        self.sock.sendall(self.request)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            buf += chunk
        head, rest = buf.split(b"\r\n\r\n", 1)
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head.split(b"\r\n", 1)[0].decode())
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(rest) < length:
            rest += self.sock.recv(65536)

    def close(self) -> None:
        self.sock.close()


class HttpxClient:
    def __init__(self, base_url: str, path: str, body: bytes, token: str | None) -> None:
        import httpx

        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=10)
        self.path, self.body = path, body

    def call(self) -> None:
        self.http.post(self.path, content=self.body).raise_for_status()

    def close(self) -> None:
        self.http.close()


@dataclass
class Target:
    name: str
    base_url: str
    path: str
    token: str | None


def latency(fn: Callable[[], Any], n: int, pause_s: float = 0.0, warm: int = 200) -> np.ndarray:
    for _ in range(warm):
        fn()
    out = np.empty(n)
    for i in range(n):
        if pause_s:
            time.sleep(pause_s)
        t0 = time.perf_counter()
        fn()
        out[i] = time.perf_counter() - t0
    return out * 1e3  # ms


def throughput(target: Target, body: bytes, concurrency: int, seconds: float) -> float:
    clients = [
        RawClient(target.base_url, target.path, body, target.token) for _ in range(concurrency)
    ]
    for c in clients:
        c.call()
    counts = [0] * concurrency
    errors: list[str] = []
    start = threading.Barrier(concurrency + 1)
    stop_at = [0.0]

    def run(i: int) -> None:
        c = clients[i]
        start.wait()
        n = 0
        try:
            while time.perf_counter() < stop_at[0]:
                c.call()
                n += 1
        except Exception as exc:  # reported, never hidden
            errors.append(repr(exc))
        counts[i] = n

    threads = [threading.Thread(target=run, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    stop_at[0] = time.perf_counter() + seconds
    t0 = time.perf_counter()
    start.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    for c in clients:
        c.close()
    if errors:
        raise RuntimeError(f"{target.name} c={concurrency}: {errors[:3]}")
    return sum(counts) / elapsed


def server_side_ms(base_url: str) -> dict[str, float]:
    """Time inside the tx middleware for successful /v1/predict calls, from its histogram:
    the mean, and the upper bound of the bucket that holds the median."""
    import httpx

    text = httpx.get(base_url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    total = {"sum": 0.0, "count": 0.0}
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        if 'endpoint="/v1/predict"' not in line or 'outcome="ok"' not in line:
            continue
        name, value = line.split("{", 1)[0], float(line.rsplit(" ", 1)[1])
        if name == "tx_serving_request_duration_seconds_bucket":
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[float(le)] = buckets.get(float(le), 0.0) + value
        elif name.removeprefix("tx_serving_request_duration_seconds_") in total:
            total[name.removeprefix("tx_serving_request_duration_seconds_")] += value
    if not total["count"]:
        raise RuntimeError(f"no tx_serving_request_duration_seconds in /metrics: {text[:300]}")
    median_bound = next(le for le in sorted(buckets) if buckets[le] >= total["count"] / 2)
    return {"mean_ms": 1e3 * total["sum"] / total["count"], "p50_le_ms": 1e3 * median_bound}


def stats(ms: np.ndarray) -> dict[str, float]:
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


# --- main ----------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--calls", type=int, default=2000, help="calls per latency case")
    ap.add_argument("--seconds", type=float, default=3.0, help="seconds per throughput case")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()

    import onnxruntime as ort

    from serving.inference import open_session
    from serving.preprocess import bundle_spec, decide
    from serving.request import parse_body, render_predictions

    results: dict[str, Any] = {"cpus": os.cpu_count()}
    rng = np.random.default_rng(1)
    body = request_body(rng)
    with tempfile.TemporaryDirectory(prefix="tx_bench_serving_") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        uri, onnx_path, tag = build_bundle(root)
        print(
            f"bundle: 13 features, 200-tree XGBoost → ONNX, registered and imported in {time.perf_counter() - t0:.1f} s"
        )

        # 1. in process
        session = open_session(onnx_path)
        default_session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        x = rng.normal(size=(1, N_FEATURES)).astype(np.float32)
        spec = bundle_spec(
            {
                "features": FEATURES,
                "classes": ["short", "flat", "long"],
                "positions": [-1, 0, 1],
                "min_confidence": 0.4,
            }
        )

        def full_path() -> bytes:
            parsed = parse_body(body, spec)
            (p,) = session.run(["probabilities"], {"input": parsed.matrix})
            return render_predictions(
                parsed,
                p,
                decide(p, spec),
                spec.classes,
                model_name="m",
                model_version="1",
                bundle_sha256="x",
                request_id="r",
            )

        inproc = {
            "onnxruntime_tuned": stats(
                latency(lambda: session.run(None, {"input": x}), args.calls * 5)
            ),
            "onnxruntime_default": stats(
                latency(lambda: default_session.run(None, {"input": x}), args.calls * 5)
            ),
            "tx_request_path_no_http": stats(latency(full_path, args.calls * 5)),
        }
        results["in_process"] = inproc

        # 2. HTTP
        with tx_server(root, uri, tag) as tx_url, baseline_server(root, onnx_path) as base_url:
            targets = [
                Target("tx /v1/predict", tx_url, "/v1/predict", TOKEN),
                Target("bentoml-min /predict", base_url, "/predict", None),
            ]
            explain = Target("tx /v1/explain", tx_url, "/v1/explain", TOKEN)
            http: dict[str, dict[str, Any]] = {t.name: {} for t in [*targets, explain]}
            for _round in range(2):  # interleave the targets, twice
                client = RawClient(explain.base_url, explain.path, body, explain.token)
                http[explain.name].setdefault("raw_client", []).append(
                    latency(client.call, args.calls, 0.0)
                )
                client.close()
                for t in targets:
                    # a fresh connection per case: an idle one may pass the keep-alive timeout
                    cases: dict[str, tuple[Any, int, float]] = {
                        "raw_client": (RawClient, args.calls, 0.0),
                        "httpx_client": (HttpxClient, args.calls // 2, 0.0),
                        "raw_client_paced_2ms": (RawClient, args.calls // 4, 0.002),
                    }
                    for k, (cls, n, pause) in cases.items():
                        client = cls(t.base_url, t.path, body, t.token)
                        http[t.name].setdefault(k, []).append(latency(client.call, n, pause))
                        client.close()
            for t in [*targets, explain]:
                for k in list(http[t.name]):
                    http[t.name][k] = stats(np.concatenate(http[t.name][k]))
            for c in (1, 8, 32):
                for t in targets:
                    http[t.name][f"req_per_s_c{c}"] = throughput(t, body, c, args.seconds)
            results["http"] = http
            results["tx_server_side"] = server_side_ms(tx_url)

    # --- report -------------------------------------------------------------------------
    print("\nin process (one row)                      p50 ms   p99 ms")
    for k, v in inproc.items():
        print(f"  {k:<38} {v['p50_ms']:7.3f}  {v['p99_ms']:7.3f}")
    tx, base = http["tx /v1/predict"], http["bentoml-min /predict"]
    print("\nHTTP, one row per request              tx /v1/predict    bentoml-min    ratio")
    for k in ("raw_client", "httpx_client", "raw_client_paced_2ms"):
        for q in ("p50_ms", "p99_ms"):
            print(
                f"  {k + ' ' + q:<36} {tx[k][q]:10.3f} ms {base[k][q]:10.3f} ms  {base[k][q] / tx[k][q]:5.1f}x"
            )
    for c in (1, 8, 32):
        k = f"req_per_s_c{c}"
        print(
            f"  {'throughput c=' + str(c):<36} {tx[k]:9.0f}/s  {base[k]:9.0f}/s  {tx[k] / base[k]:5.1f}x"
        )
    ex = http["tx /v1/explain"]["raw_client"]
    print("\nsame server, one row, raw client        /v1/explain      /v1/predict    ratio")
    for q in ("p50_ms", "p99_ms"):
        print(
            f"  {q:<36} {ex[q]:10.3f} ms {tx['raw_client'][q]:10.3f} ms  {ex[q] / tx['raw_client'][q]:5.1f}x"
        )
    inside = results["tx_server_side"]
    print(
        f"  {'tx time inside its middleware':<36} p50 ≤ {inside['p50_le_ms']:.3f} ms, "
        f"mean {inside['mean_ms']:.3f} ms (all phases, c=32 included)"
    )
    floor = inproc["onnxruntime_tuned"]["p50_ms"]
    print(
        f"\ntx HTTP p50 is {tx['raw_client']['p50_ms'] / floor:.0f}x the in-process onnxruntime call "
        f"({floor * 1e3:.0f} µs); goal p50 ≤ 1.5 ms: {'met' if tx['raw_client']['p50_ms'] <= 1.5 else 'MISSED'}, "
        f"≥ 1000 req/s at c=8: {'met' if tx['req_per_s_c8'] >= 1000 else 'MISSED'}"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
