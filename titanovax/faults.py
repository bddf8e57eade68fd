"""Process-level fault harness of the engine: real processes killed, stopped and starved.

Used by the fault suite (``tests/integration/test_engine_faults.py``, marker ``faults``) and by
``bench/faults.py``, which prints the figures of ``docs/failure-behaviour.md``.

The world of every scenario is made of real processes:

* the broker: ``tx mt5 serve-sim`` (the simulated terminal behind an mt5linux bridge) in its own
  process, its clock read from a file the engine moves bar by bar, so the broker's positions
  and deals survive any number of engine deaths;
* the online store: a private ``redis-server`` (:class:`~titanovax.redis_local.LocalRedis`);
* the engine: ``python -m titanovax.faults engine ...`` (:func:`engine_main`), the real
  :class:`~engine.loop.Engine` built by :func:`engine.app.build_engine` over a
  :class:`~engine.mt5.bridge.BridgeTerminal`, the real Redis feature reader (the process
  pushes each bar's feature row first, as paper mode's pusher does), the real journal (SQLite
  or PostgreSQL) and, when asked, the control API. The process walks a replay of weekday M5
  closes and moves the broker's clock to each; it prints one ``BAR`` line per decided bar and
  one ``SEND`` line before every ``order_send``;
* serving, for the serving faults: the real BentoML service (``serving.server``) over a tiny
  ONNX bundle registered in a private MLflow store.

Why a harness process rather than ``tx engine run``: ``run`` paces bars on the wall clock (one
M5 bar per five minutes); the trials need hundreds of bars per minute and a broker whose clock
follows the engine. The engine code, its terminal adapter, reader, journal and control API are
the production ones.

**SIGKILL trials** (:func:`sigkill_trials`): per trial a fresh magic (so the trials share one
broker without sharing positions), an engine run that dies by SIGKILL — at an injected point
(right after the intent is written, right before or after ``order_send``, after the intent's
end, after the decision row, at the n-th occurrence) or at a random moment from outside — and
a clean restart over the same bars. Then :func:`check_trial` compares the broker with the
journal: duplicate orders, lost rows, inconsistent intents, positions versus journal.

**Outages** (:func:`outage_scenario`): Redis stopped (SIGSTOP) or killed, serving stopped or
killed, the bridge stopped, the journal's file system full (a 2 MiB tmpfs). Each measures the
rows and metric of the outage, the recovery time after the dependency returns, and the kill
latency under the fault, and checks that no ``order_send`` started after the kill was
acknowledged.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
MONDAY = 1_768_204_800  # 2026-01-12 08:00 UTC, a Monday
STEP = 300  # M5
SYMBOL = "EURUSD"
FEATURES = ["f0", "f1"]
VIEW = "fault_fv"
PROJECT = "tx_faults"
TOKEN = "fault-suite-engine-token-0123456789"
SERVING_TOKEN = "fault-suite-serving-token-0123456789"
MODEL_NAME = "tx_fault_model"
POINTS = ("intent_begin", "before_send", "order_send", "intent_end", "record")
"""Injection points: right after the write-ahead intent, right before ``order_send``, right
after ``order_send`` returned, after the intent's end, after the decision row."""


def trading_closes(start: int, n: int) -> list[int]:
    """``n`` M5 closes from ``start`` on, Monday-Friday 01:00-21:00 UTC only (market open)."""
    out: list[int] = []
    t = start
    while len(out) < n:
        tm = time.gmtime(t)
        if tm.tm_wday < 5 and 1 <= tm.tm_hour < 21:
            out.append(t)
        t += STEP
    return out


def free_port() -> int:
    """A free TCP port on loopback."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the model -------------------------------------------------------------------------------
def tiny_onnx(w: np.ndarray | None = None, name: str = "tx_fault_model") -> Any:
    """A real ONNX classifier: ``softmax(x @ W)`` over ``[f0, f1]`` (classes short, flat,
    long); by default ``f0 > 0`` → long, ``f0 < 0`` → short (the harness alternates f0's
    sign, so every bar moves the position). ``w`` of shape ``[n, 3]`` takes ``n`` features."""
    import onnx
    from onnx import TensorProto, helper

    if w is None:
        w = np.array([[-4.0, 0.0, 4.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "W"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, w.shape[0]])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor("W", TensorProto.FLOAT, list(w.shape), w.flatten().tolist())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def bundle_manifest(onnx_bytes: bytes) -> dict[str, Any]:
    """The bundle manifest (contract 2) of :func:`tiny_onnx`."""
    import hashlib

    return {
        "model_name": MODEL_NAME,
        "model_version": "fault-1",
        "feature_service": "fault_v1",
        "feature_view": VIEW,
        "features": list(FEATURES),
        "input_name": "input",
        "prob_output": "probabilities",
        "classes": ["short", "flat", "long"],
        "positions": [-1, 0, 1],
        "min_confidence": 0.0,
        "timeframe": "M5",
        "symbols": [SYMBOL],
        "train_range": ["2025-01-01", "2025-06-01"],
        "test_range": ["2025-06-01", "2025-07-01"],
        "label_horizon": 12,
        "metrics": {"accuracy": 0.5},
        "bundle_sha256": hashlib.sha256(onnx_bytes).hexdigest(),
    }


def write_bundle(d: Path) -> Path:
    """``model.onnx`` + ``manifest.json`` of :func:`tiny_onnx` in ``d``."""
    d.mkdir(parents=True, exist_ok=True)
    data = tiny_onnx().SerializeToString()
    (d / "model.onnx").write_bytes(data)
    (d / "manifest.json").write_text(json.dumps(bundle_manifest(data)))
    return d


# --- the engine process ----------------------------------------------------------------------
class _Fault:
    """SIGKILL this process at the n-th hit of one point; random jitter everywhere."""

    def __init__(self, spec: str | None, jitter_ms: float, seed: int) -> None:
        self.point, self.nth = (spec.split(":")[0], int(spec.split(":")[1])) if spec else ("", 0)
        self.count = 0
        self.jitter_ms = jitter_ms
        self.rng = random.Random(seed)

    def hit(self, point: str) -> None:
        if point == self.point:
            self.count += 1
            if self.count == self.nth:
                sys.stdout.flush()
                os.kill(os.getpid(), signal.SIGKILL)

    def jitter(self) -> None:
        if self.jitter_ms > 0:
            time.sleep(self.rng.uniform(0.0, self.jitter_ms) / 1e3)


def _faulty_journal(target: str, fault: _Fault) -> Any:
    from engine.journal import Journal

    class FaultJournal(Journal):
        def intent_begin(self, it: Any) -> bool:
            fault.jitter()
            out = super().intent_begin(it)
            fault.hit("intent_begin")
            return out

        def intent_end(self, *args: Any, **kwargs: Any) -> None:
            fault.jitter()
            super().intent_end(*args, **kwargs)
            fault.hit("intent_end")

        def record(self, rec: Any) -> None:
            fault.jitter()
            super().record(rec)
            fault.hit("record")

    return FaultJournal(target)


class _SendWatch:
    """The terminal, with a ``SEND`` line printed before every ``order_send`` and the
    injection points around it."""

    def __init__(self, inner: Any, fault: _Fault) -> None:
        self.inner = inner
        self.fault = fault

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def order_send(self, request: Any) -> Any:
        self.fault.jitter()
        self.fault.hit("before_send")
        print(f"SEND {time.time():.6f} {request.get('comment', '')}", flush=True)
        res = self.inner.order_send(request)
        self.fault.hit("order_send")
        return res


def _closes_forever(start: int) -> Iterator[int]:
    t = start
    while True:
        batch = trading_closes(t, 500)
        yield from batch
        t = batch[-1] + STEP


def engine_main(argv: list[str] | None = None) -> None:
    """``python -m titanovax.faults engine``: the engine process of the fault suite."""
    ap = argparse.ArgumentParser(prog="python -m titanovax.faults engine")
    ap.add_argument("--bridge-port", type=int, required=True)
    ap.add_argument("--clock-file", required=True)
    ap.add_argument("--journal", required=True)
    ap.add_argument("--magic", type=int, required=True)
    ap.add_argument("--redis-url", required=True)
    ap.add_argument("--bundle-dir", required=True)
    ap.add_argument("--start", type=int, default=MONDAY)
    ap.add_argument("--bars", type=int, default=0, help="0: run until SIGTERM")
    ap.add_argument("--pace", type=float, default=0.0, help="seconds between bars")
    ap.add_argument("--serving-url", default="")
    ap.add_argument("--serving-timeout", type=float, default=0.5)
    ap.add_argument("--redis-timeout", type=float, default=0.25)
    ap.add_argument("--terminal-timeout", type=float, default=2.0)
    ap.add_argument("--control-port", type=int, default=0)
    ap.add_argument("--inject", default=None, help="point:n (SIGKILL at the n-th hit)")
    ap.add_argument("--jitter-ms", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ns = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    from engine.app import build_engine
    from engine.config import EngineSettings
    from engine.control import ControlServer
    from engine.features import OnlineFeatureReader, redis_client
    from engine.mt5.gateway import open_terminal
    from engine.mt5.resilient import Backoff
    from engine.online_format import encode_double, encode_timestamp, entity_key, field_hash
    from engine.serving_client import FallbackModel, OnnxModel, ServingClient

    fault = _Fault(ns.inject, ns.jitter_ms, ns.seed)
    clock_path = Path(ns.clock_file)

    def clock() -> float:
        return float(clock_path.read_text())

    def set_time(t: int) -> None:
        tmp = clock_path.with_suffix(f".{os.getpid()}")
        tmp.write_text(str(int(t)))
        os.replace(tmp, clock_path)

    terminal = _SendWatch(
        open_terminal(
            "bridge",
            port=ns.bridge_port,
            bridge_timeout_s=ns.terminal_timeout,
            reconnect_attempts=2,
            backoff=Backoff(0.05, 0.5),
        ),
        fault,
    )
    journal = _faulty_journal(ns.journal, fault)
    reader = OnlineFeatureReader(
        redis_client(ns.redis_url, ns.redis_timeout),
        project=PROJECT,
        feature_view=VIEW,
        features=FEATURES,
    )
    pusher = redis_client(ns.redis_url, 0.2)
    key = entity_key("symbol", SYMBOL, PROJECT)
    if ns.serving_url:
        model: Any = FallbackModel(
            ServingClient(ns.serving_url, ns.serving_timeout, token=SERVING_TOKEN), None
        )
    else:
        model = OnnxModel.from_dir(ns.bundle_dir)
    settings = EngineSettings(
        TX_ENGINE_MAGIC=ns.magic,
        TX_ENGINE_LOTS=0.1,
        TX_RISK_DAILY_LOSS_LIMIT=0.5,
        TX_RISK_MAX_DRAWDOWN=0.9,
        TX_RISK_MAX_CONSECUTIVE_LOSSES=0,
        TX_RISK_MAX_ORDERS_PER_MINUTE=0,
        TX_RISK_MAX_FEATURE_AGE_S=600,
        TX_ENGINE_STOP_ATR_MULT=0.0,
        broker_utc_offset_hours=2,
    )
    engine = build_engine(
        settings,
        terminal=terminal,
        features=reader,
        model=model,
        clock=clock,
        journal=journal,
        mode="paper",
    )
    server = None
    if ns.control_port:
        server = ControlServer(engine, token=TOKEN, port=ns.control_port, timeout_s=5.0).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"READY {json.dumps({'scope': journal.scope})}", flush=True)
    closes = trading_closes(ns.start, ns.bars) if ns.bars else _closes_forever(ns.start)
    for close in closes:
        if stop.is_set():
            break
        try:
            if journal.decided(SYMBOL, close):
                continue
        except Exception:  # the journal is down: the engine refuses the bar itself
            log.debug("decided() failed", exc_info=True)
        set_time(close)
        sign = 1.0 if (close // STEP) % 2 == 0 else -1.0
        try:
            pusher.hset(
                key,
                mapping={
                    field_hash(VIEW, "f0"): encode_double(sign),
                    field_hash(VIEW, "f1"): encode_double(0.5),
                    f"_ts:{VIEW}".encode(): encode_timestamp(int(close)),
                },
            )
        except Exception as exc:  # the store is down: the engine will say so in its row
            log.debug("push failed: %s", exc)
        rec = engine.on_bar(SYMBOL, close)
        if rec is not None:
            print(
                f"BAR {close} {time.time():.6f} {rec.verdict} {rec.reason_code or '-'}",
                flush=True,
            )
        if ns.pace:
            stop.wait(ns.pace)
    engine.flush_journal()
    if server is not None:
        server.stop()
    print("DONE", flush=True)


# --- processes of the world ------------------------------------------------------------------
def _python() -> str:
    return sys.executable


@dataclass
class SimBridge:
    """``tx mt5 serve-sim`` on a free port, its clock in ``clock_file``."""

    workdir: Path
    port: int = 0
    proc: subprocess.Popen[str] | None = None
    args: list[str] = field(default_factory=list)  # more serve-sim options (--login, ...)

    @property
    def clock_file(self) -> Path:
        return self.workdir / "clock"

    def start(self, start_utc: int = MONDAY) -> SimBridge:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.clock_file.write_text(str(start_utc))
        self.port = free_port()
        cmd = [_python(), "-m", "titanovax.cli", "mt5", "serve-sim", "--port", str(self.port)]
        cmd += ["--clock-file", str(self.clock_file), *self.args]
        self.proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=open(self.workdir / "sim.log", "a"),  # noqa: SIM115  # the process owns it
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("READY"):
            raise RuntimeError(f"serve-sim did not start: {line!r}")
        return self

    def connect(self) -> Any:
        """A second bridge connection (the checker's): the same broker."""
        from engine.mt5.bridge import BridgeTerminal

        return BridgeTerminal.connect("127.0.0.1", self.port, timeout_s=10.0)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.terminate()
            self.proc.wait(10)

    def __enter__(self) -> SimBridge:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


_PRELOAD = [
    "titanovax.faults",
    "engine.app",
    "engine.control",
    "engine.features",
    "engine.mt5.gateway",
    "engine.mt5.bridge",
    "engine.serving_client",
    "onnxruntime",
    "psycopg",
    "mt5linux",
    "redis",
]
_FORK_CTX: Any = None


def _forkserver() -> Any:
    """A multiprocessing forkserver that has imported the engine once: each engine process
    of the SIGKILL trials is a fresh OS process forked from it in milliseconds, instead of a
    new interpreter importing numpy/onnxruntime/pydantic for seconds."""
    global _FORK_CTX
    if _FORK_CTX is None:
        import multiprocessing

        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(_PRELOAD)
        _FORK_CTX = ctx
    return _FORK_CTX


def _child(args: list[str], out: str, err: str) -> None:
    """The forked engine process: stdout/stderr to files, then :func:`engine_main`."""
    fo = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    fe = os.open(err, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fo, 1)
    os.dup2(fe, 2)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    engine_main(args)


class _Forked:
    """A forked engine process with the ``subprocess.Popen`` calls :class:`EngineProc` uses."""

    def __init__(self, proc: Any) -> None:
        self.p = proc
        self.pid = proc.pid

    def poll(self) -> int | None:
        return self.p.exitcode  # type: ignore[no-any-return]

    def wait(self, timeout: float | None = None) -> int:
        self.p.join(timeout)
        if self.p.exitcode is None:
            raise subprocess.TimeoutExpired("engine", timeout or 0)
        return int(self.p.exitcode)

    def kill(self) -> None:
        self.p.kill()

    def terminate(self) -> None:
        self.p.terminate()


@dataclass
class EngineProc:
    """One engine process (:func:`engine_main`) and what it printed; ``fork`` starts it
    from the preloaded forkserver (SIGKILL trials), else as ``python -m titanovax.faults``."""

    args: list[str]
    workdir: Path
    fork: bool = False
    proc: Any = None
    bars: list[tuple[int, float, str, str]] = field(
        default_factory=list
    )  # close, wall, verdict, reason
    sends: list[tuple[float, str]] = field(default_factory=list)
    scope: str = ""
    done: bool = False  # the process printed DONE: every bar decided, journal flushed
    _ready: threading.Event = field(default_factory=threading.Event)
    _out: Path | None = None

    def start(self) -> EngineProc:
        err = self.workdir / "engine.log"
        if self.fork:
            self._out = self.workdir / f"engine-{time.time_ns()}.out"
            p = _forkserver().Process(
                target=_child, args=(self.args, str(self._out), str(err)), daemon=False
            )
            p.start()
            self.proc = _Forked(p)
            threading.Thread(target=self._tail, daemon=True).start()
            return self
        cmd = [_python(), "-m", "titanovax.faults", "engine", *self.args]
        self.proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=open(err, "a"),  # noqa: SIM115  # the process owns it
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _tail(self) -> None:
        assert self._out is not None
        while not self._out.exists():
            time.sleep(0.005)
        with self._out.open() as f:
            buf = ""
            while True:
                chunk = f.readline()
                if chunk:
                    buf += chunk
                    if buf.endswith("\n"):
                        self._line(buf)
                        buf = ""
                    continue
                if self.proc.poll() is not None:
                    rest = f.read()
                    for line in (buf + rest).splitlines():
                        self._line(line)
                    return
                time.sleep(0.005)

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self._line(line)

    def _line(self, line: str) -> None:
        parts = line.split()
        if not parts:
            return
        if parts[0] == "READY":
            self.scope = json.loads(line.split(" ", 1)[1])["scope"]
            self._ready.set()
        elif parts[0] == "BAR" and len(parts) >= 5:
            self.bars.append((int(parts[1]), float(parts[2]), parts[3], parts[4]))
        elif parts[0] == "DONE":
            self.done = True
        elif parts[0] == "SEND":
            self.sends.append((float(parts[1]), parts[2] if len(parts) > 2 else ""))

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        if not self._ready.wait(timeout_s):
            raise RuntimeError(f"engine not ready in {timeout_s}s: {self.log_tail()}")

    def wait(self, timeout_s: float = 120.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout_s)

    def sigkill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def log_tail(self) -> str:
        """The last traceback of the engine log if there is one, else its tail."""
        p = self.workdir / "engine.log"
        if not p.exists():
            return ""
        text = p.read_text()
        i = text.rfind("Traceback")
        return text[i : i + 3000] if i >= 0 else text[-2000:]

    def wait_for(self, pred: Any, timeout_s: float) -> Any:
        """The first bar line (after now) for which ``pred`` holds, or ``None``."""
        deadline = time.monotonic() + timeout_s
        seen = 0
        while time.monotonic() < deadline:
            bars = list(self.bars)
            for b in bars[seen:]:
                if pred(b):
                    return b
            seen = len(bars)
            time.sleep(0.01)
        return None


def engine_args(
    sim: SimBridge,
    journal: str,
    magic: int,
    redis_url: str,
    bundle: Path,
    **opts: Any,
) -> list[str]:
    """The command line of one engine process."""
    args = [
        "--bridge-port",
        str(sim.port),
        "--clock-file",
        str(sim.clock_file),
        "--journal",
        journal,
        "--magic",
        str(magic),
        "--redis-url",
        redis_url,
        "--bundle-dir",
        str(bundle),
    ]
    for k, v in opts.items():
        if v is not None and v != "":
            args += [f"--{k.replace('_', '-')}", str(v)]
    return args


# --- the checker -----------------------------------------------------------------------------
@dataclass
class TrialCheck:
    """What the broker and the journal say after one trial."""

    duplicates: int = 0  # client ids with more than one order at the broker
    lost_rows: int = 0  # bars without a decision row
    inconsistent_intents: int = 0  # intent status that contradicts the broker
    position_mismatch: int = 0  # broker net position != the last row's target
    restart_failed: int = 0  # the clean restart did not finish (its traceback in detail)
    orders: int = 0
    rows: int = 0
    detail: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (
            self.duplicates
            or self.lost_rows
            or self.inconsistent_intents
            or self.position_mismatch
            or self.restart_failed
        )


def check_trial(broker: Any, journal: Any, magic: int, closes: list[int]) -> TrialCheck:
    """Compare the broker (``broker``: a terminal connection) with the journal (scoped)."""
    from engine.mt5 import protocol as mt5

    out = TrialCheck()
    deals = [d for d in (broker.history_deals_get(0, 4_102_444_800) or ()) if d.magic == magic]
    positions = [p for p in (broker.positions_get() or ()) if p.magic == magic]
    orders_by_cid: dict[str, set[int]] = {}
    for d in deals:
        orders_by_cid.setdefault(str(d.comment), set()).add(int(d.order))
    out.orders = sum(len(v) for v in orders_by_cid.values())
    for cid, orders in orders_by_cid.items():
        if len(orders) > 1:
            out.duplicates += len(orders) - 1
            out.detail.append(f"duplicate {cid}: orders {sorted(orders)}")
    at_broker = set(orders_by_cid) | {str(p.comment) for p in positions}
    rows = {int(r["bar_close"]): r for r in journal.rows()}
    out.rows = len(rows)
    for c in closes:
        if c not in rows:
            out.lost_rows += 1
            out.detail.append(f"no row for bar {c}")
    executed_bars: set[int] = set()
    for it in journal.intents():
        there = it.client_id in at_broker
        if it.status in ("done", "recovered"):
            executed_bars.add(int(it.bar_close))
        if (it.status in ("done", "recovered")) != there:
            out.inconsistent_intents += 1
            out.detail.append(f"intent {it.client_id} {it.intent} {it.status}, at broker: {there}")
    for c in executed_bars:
        r = rows.get(c)
        if r is not None and r["verdict"] not in ("sent", "error"):
            out.inconsistent_intents += 1
            out.detail.append(f"bar {c} executed at the broker but its row says {r['verdict']}")
    net = round(
        sum(p.volume if p.type == mt5.POSITION_TYPE_BUY else -p.volume for p in positions), 8
    )
    last = rows[max(rows)] if rows else None
    if (
        last is not None
        and last["verdict"] in ("sent", "hold", "abstain")
        and last["target_lots"] is not None
        and abs(float(last["target_lots"]) - net) > 1e-9
    ):
        out.position_mismatch += 1
        out.detail.append(f"broker net {net} != last row target {last['target_lots']}")
    return out


def flatten(broker: Any, magic: int) -> None:
    """Close every position of ``magic`` at the broker (after a trial has been checked)."""
    from engine.mt5 import protocol as mt5

    for p in broker.positions_get() or ():
        if p.magic != magic:
            continue
        for filling in (mt5.ORDER_FILLING_FOK, mt5.ORDER_FILLING_IOC, mt5.ORDER_FILLING_RETURN):
            res = broker.order_send(
                {
                    "action": mt5.TRADE_ACTION_DEAL,
                    "symbol": p.symbol,
                    "volume": float(p.volume),
                    "type": mt5.ORDER_TYPE_SELL
                    if p.type == mt5.POSITION_TYPE_BUY
                    else mt5.ORDER_TYPE_BUY,
                    "position": int(p.ticket),
                    "magic": magic,
                    "comment": "trial-cleanup",
                    "type_filling": filling,
                }
            )
            if res is not None and res.retcode == mt5.TRADE_RETCODE_DONE:
                break


# --- SIGKILL trials --------------------------------------------------------------------------
@contextlib.contextmanager
def postgres_database(admin_url: str, name: str) -> Iterator[str]:
    """A fresh PostgreSQL database (dropped at the end); yields its URL."""
    import psycopg

    admin = psycopg.connect(admin_url, autocommit=True, connect_timeout=5)
    admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.execute(f"CREATE DATABASE {name}")
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


@dataclass
class TrialResult:
    backend: str
    trial: int
    how: str  # "point:n" or "random:<delay>"
    killed: bool  # the first run died by SIGKILL (not finished before the kill)
    check: TrialCheck


def sigkill_trials(
    n: int,
    *,
    backend: str,
    workdir: Path,
    seed: int = 0,
    bars: int = 6,
    pg_admin_url: str = "postgresql://postgres@127.0.0.1:5432/postgres",
    magic_base: int = 700_000,
    on_trial: Any = None,
) -> list[TrialResult]:
    """``n`` SIGKILL trials on ``backend`` (``sqlite`` | ``postgres``) — see the module
    docstring. Returns one result per trial."""
    from engine.journal import Journal
    from titanovax.redis_local import LocalRedis

    rng = random.Random(seed)
    workdir.mkdir(parents=True, exist_ok=True)
    bundle = write_bundle(workdir / "bundle")
    results: list[TrialResult] = []
    all_closes = trading_closes(MONDAY, n * bars)
    with contextlib.ExitStack() as stack:
        sim = stack.enter_context(SimBridge(workdir / "sim"))
        redis = stack.enter_context(LocalRedis())
        pg_url = ""
        if backend == "postgres":
            pg_url = stack.enter_context(
                postgres_database(pg_admin_url, f"tx_faults_{os.getpid()}_{seed}")
            )
        broker = sim.connect()
        stack.callback(broker.close)
        for t in range(n):
            magic = magic_base + t
            closes = all_closes[t * bars : (t + 1) * bars]
            target = pg_url or str(workdir / f"journal-{t}.sqlite")
            if rng.random() < 0.7:
                how = f"{rng.choice(POINTS)}:{rng.randint(1, 5)}"
                inject, delay = how, None
            else:
                delay = rng.uniform(0.05, 1.5)
                how, inject = f"random:{delay:.2f}s", None
            common = dict(start=closes[0], bars=len(closes))
            first = EngineProc(
                engine_args(
                    sim,
                    target,
                    magic,
                    redis.url,
                    bundle,
                    inject=inject,
                    jitter_ms=rng.choice([0, 2, 10]),
                    seed=rng.randint(0, 10**6),
                    **common,
                ),
                workdir,
                fork=True,
            ).start()
            if delay is not None:
                time.sleep(delay)
                first.sigkill()
            rc = first.wait(180)
            killed = rc == -signal.SIGKILL
            second = EngineProc(
                engine_args(sim, target, magic, redis.url, bundle, **common), workdir, fork=True
            ).start()
            rc2 = second.wait(180)
            from engine.journal import journal_scope

            j = Journal(target, journal_scope(int(broker.account_info().login), magic, "paper"))
            try:
                check = check_trial(broker, j, magic, closes)
            finally:
                j.close()
            for _ in range(100):  # let the reader take the last lines
                if second.done:
                    break
                time.sleep(0.05)
            # the restart must have run to its end (DONE); the forkserver reports an exit
            # status of 255 when it loses a child's status, so the status alone is not it
            if not second.done or rc2 not in (0, 255):
                check.restart_failed = 1
                check.detail.append(f"restart exited {rc2}: {second.log_tail()}")
            flatten(broker, magic)  # the next trial starts with the account's full margin
            res = TrialResult(backend, t, how, killed, check)
            results.append(res)
            if on_trial is not None:
                on_trial(res)
    return results


# --- outages ---------------------------------------------------------------------------------
@dataclass
class OutageResult:
    """One fault's figures (see :func:`outage_scenario`)."""

    fault: str
    reason: str  # the reason code the outage's bars were refused with
    outage_rows: int  # bars refused with ``reason`` during the outage
    metric: float  # tx_engine_refusals_total{reason=...} (journal_errors_total for the disk)
    recovery_s: float | None  # dependency back → first bar decided normally
    kill_latency_s: float  # POST /api/kill round trip under the fault
    kill_answer: dict[str, Any]
    sends_after_kill: int  # order_send calls started after the kill was acknowledged
    orders_on_broker_after_kill: int  # orders that reached the broker after the ack
    rows_missing: int  # bars the engine printed that have no journal row
    bars: int = 0
    detail: dict[str, Any] = field(default_factory=dict)


def _metric(url: str, name: str, labels: str = "") -> float:
    import httpx

    text = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5).text
    pat = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + r" ([0-9.e+-]+)"
    m = re.search(pat, text)
    return float(m.group(1)) if m else 0.0


def _broker_orders(broker: Any, magic: int) -> int:
    return len(
        {
            int(d.order)
            for d in (broker.history_deals_get(0, 4_102_444_800) or ())
            if d.magic == magic
        }
    )


class _Serving:
    """The real BentoML serving over the tiny bundle, in a private MLflow store."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: Any = None
        self.tag = ""

    def prepare(self) -> None:
        import mlflow
        from mlflow.tracking._tracking_service.utils import _use_tracking_uri

        from serving.importer import import_from_registry

        tracking = f"sqlite:///{self.root / 'mlflow.db'}"
        self.tracking = tracking
        model = tiny_onnx()
        man = bundle_manifest(model.SerializeToString())
        old = os.environ.pop("MLFLOW_TRACKING_URI", None)
        try:
            with _use_tracking_uri(tracking):
                client = mlflow.MlflowClient(tracking_uri=tracking, registry_uri=tracking)
                exp = client.create_experiment(
                    "tx_faults", artifact_location=str(self.root / "mlartifacts")
                )
                with mlflow.start_run(experiment_id=exp):
                    info = mlflow.onnx.log_model(
                        model,
                        name="model",
                        onnx_execution_providers=["CPUExecutionProvider"],
                        metadata={"tx_manifest": man},
                    )
                mv = mlflow.register_model(info.model_uri, MODEL_NAME)
                client.set_registered_model_alias(MODEL_NAME, "champion", mv.version)
        finally:
            if old is not None:
                os.environ["MLFLOW_TRACKING_URI"] = old
        imported = import_from_registry(
            tracking, MODEL_NAME, "champion", bentoml_home=self.root / "bentoml"
        )
        self.tag = imported.bentoml_tag

    def start(self) -> float:
        from serving.server import start_server, wait_ready

        self.proc = start_server(
            host="127.0.0.1",
            port=self.port,
            model_tag=self.tag,
            bentoml_home=self.root / "bentoml",
            log_path=self.root / "serving.log",
            token=SERVING_TOKEN,
            tracking_uri=self.tracking,
            model_name=MODEL_NAME,
            env={"TX_HOME": str(self.root / "home"), "TX_SERVING_RELOAD_INTERVAL_S": "0"},
        )
        return wait_ready(self.url, 180, proc=self.proc, token=SERVING_TOKEN)

    def signal(self, sig: int) -> None:
        """``sig`` to the server and every process under it (circus runs the workers in
        sessions of their own, so the process group is not enough)."""
        import psutil

        root = psutil.Process(self.proc.pid)
        for p in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.send_signal(sig)

    def stop(self) -> None:
        from serving.server import stop_server

        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.signal(signal.SIGCONT)
            stop_server(self.proc)
            self.proc = None


FAULTS = (
    "redis_stopped",
    "redis_killed",
    "serving_stopped",
    "serving_killed",
    "bridge_stopped",
    "disk_full",
)


def outage_scenario(
    fault: str, workdir: Path, *, deadline_s: float = 2.0, outage_bars: int = 3
) -> OutageResult:
    """Run the engine (control API on, one bar per ~0.1 s), then: the fault → bars refused
    with its reason code (``outage_bars`` of them) and the metric; the dependency back →
    recovery time; the fault again → ``POST /api/kill`` (its latency) while a bar is stuck on
    the dependency; the dependency back → no ``order_send`` after the acknowledgement; every
    bar printed has its journal row."""
    import httpx

    from engine.journal import Journal
    from titanovax.redis_local import LocalRedis

    if fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r}; one of {FAULTS}")
    workdir.mkdir(parents=True, exist_ok=True)
    bundle = write_bundle(workdir / "bundle")
    magic = 800_000 + FAULTS.index(fault)
    with contextlib.ExitStack() as stack:
        sim = stack.enter_context(SimBridge(workdir / "sim"))
        redis = stack.enter_context(LocalRedis())
        serving = None
        if fault.startswith("serving"):
            serving = _Serving(workdir / "serving")
            serving.prepare()
            serving.start()
            stack.callback(serving.stop)
        journal_dir = workdir / "journal"
        journal_dir.mkdir(exist_ok=True)
        filler = journal_dir / "filler"
        if fault == "disk_full":
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(journal_dir)], check=True
            )
            stack.callback(lambda: subprocess.run(["umount", "-l", str(journal_dir)], check=False))
        target = str(journal_dir / "journal.sqlite")
        port = free_port()
        opts: dict[str, Any] = dict(
            control_port=port,
            pace=0.1,
            redis_timeout=deadline_s,
            serving_timeout=deadline_s,
            terminal_timeout=deadline_s,
            serving_url=serving.url if serving else "",
        )
        eng = EngineProc(
            engine_args(sim, target, magic, redis.url, bundle, **opts), workdir
        ).start()
        stack.callback(eng.stop)
        eng.wait_ready(120)
        url = f"http://127.0.0.1:{port}"
        broker = sim.connect()
        stack.callback(broker.close)
        normal = ("sent", "hold")
        if eng.wait_for(lambda b: b[2] == "sent", 60) is None:
            raise RuntimeError(f"the engine never traded: {eng.bars[-5:]} {eng.log_tail()}")

        reason = {
            "redis_stopped": "features_unavailable",
            "redis_killed": "features_unavailable",
            "serving_stopped": "serving_unavailable",
            "serving_killed": "serving_unavailable",
            "bridge_stopped": "terminal_unavailable",
            "disk_full": "journal_unavailable",
        }[fault]

        def begin() -> None:
            if fault == "redis_stopped":
                assert redis.proc is not None
                os.kill(redis.proc.pid, signal.SIGSTOP)
            elif fault == "redis_killed":
                assert redis.proc is not None
                redis.proc.kill()
                redis.proc.wait(10)
            elif fault == "serving_stopped":
                assert serving is not None
                serving.signal(signal.SIGSTOP)
            elif fault == "serving_killed":
                assert serving is not None
                serving.stop()
            elif fault == "bridge_stopped":
                assert sim.proc is not None
                os.kill(sim.proc.pid, signal.SIGSTOP)
            else:
                subprocess.run(
                    ["dd", "if=/dev/zero", f"of={filler}", "bs=4k"],
                    check=False,
                    capture_output=True,
                )

        def end() -> None:
            if fault == "redis_stopped":
                assert redis.proc is not None
                os.kill(redis.proc.pid, signal.SIGCONT)
            elif fault == "redis_killed":
                redis.start()
            elif fault == "serving_stopped":
                assert serving is not None
                serving.signal(signal.SIGCONT)
            elif fault == "serving_killed":
                assert serving is not None
                serving.start()
            elif fault == "bridge_stopped":
                assert sim.proc is not None
                os.kill(sim.proc.pid, signal.SIGCONT)
            else:
                filler.unlink()

        # phase 1: outage, rows, metric, recovery
        t_out = time.time()
        begin()
        got = 0
        deadline = time.monotonic() + 60 + outage_bars * deadline_s * 3
        while got < outage_bars and time.monotonic() < deadline:
            got = sum(1 for b in eng.bars if b[1] > t_out and b[3] == reason)
            time.sleep(0.05)
        if fault == "disk_full":
            metric = _metric(url, "tx_engine_journal_errors_total")
        else:
            metric = _metric(url, "tx_engine_refusals_total", f'reason="{reason}"')
        other = sorted(
            {(b[2], b[3]) for b in eng.bars if b[1] > t_out and b[2] not in normal}
            - {("refused", reason)}
        )
        refused_at = [b[1] for b in eng.bars if b[1] > t_out and b[3] == reason]
        t_first = min(refused_at) if refused_at else t_out
        end()
        t_back = time.time()
        # fail closed: no order_send between the first refused bar and the dependency's return
        sends_in_outage = [s for s in eng.sends if t_first < s[0] < t_back]
        first_ok = eng.wait_for(lambda b: b[1] > t_back and b[2] in normal, 120)
        recovery = (first_ok[1] - t_back) if first_ok else None

        # phase 2: the fault again, a kill while a bar waits on it
        if eng.wait_for(lambda b: b[1] > t_back and b[2] == "sent", 60) is None:
            raise RuntimeError(f"no trade after recovery: {eng.bars[-5:]}")
        begin()
        time.sleep(min(deadline_s * 0.5, 1.0))
        t0 = time.perf_counter()
        answer = httpx.post(
            url + "/api/kill",
            json={"flatten": False},
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=10,
        ).json()
        kill_latency = time.perf_counter() - t0
        acked = time.time()
        end()
        # with no order_send in flight at the ack, the broker's count must not move any more
        before = _broker_orders(broker, magic)
        time.sleep(deadline_s * 2 + 1.0)
        after = _broker_orders(broker, magic)
        sends_after = [s for s in eng.sends if s[0] > acked]
        # the peer: the same kill on the healthy engine, measured in the same run
        auth = {"Authorization": f"Bearer {TOKEN}"}
        httpx.post(url + "/api/resume", headers=auth, timeout=10)
        t_res = time.time()
        eng.wait_for(lambda b: b[1] > t_res and b[2] in normal, 60)
        t0 = time.perf_counter()
        httpx.post(url + "/api/kill", json={"flatten": False}, headers=auth, timeout=10)
        healthy_kill = time.perf_counter() - t0
        eng.stop()
        printed = {b[0] for b in eng.bars}
        j = Journal(target, eng.scope)
        try:
            rows = {int(r["bar_close"]) for r in j.rows()}
        finally:
            j.close()
        return OutageResult(
            fault=fault,
            reason=reason,
            outage_rows=got,
            metric=metric,
            recovery_s=recovery,
            kill_latency_s=kill_latency,
            kill_answer=answer,
            sends_after_kill=len(sends_after),
            orders_on_broker_after_kill=after - before,
            rows_missing=len(printed - rows),
            bars=len(printed),
            detail={
                "other_refusals_in_outage": other,
                "sends_in_outage": len(sends_in_outage),
                "healthy_kill_latency_s": healthy_kill,
            },
        )


def main(argv: list[str] | None = None) -> None:
    """``python -m titanovax.faults engine ...`` (see :func:`engine_main`)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] != "engine":
        raise SystemExit("usage: python -m titanovax.faults engine --help")
    engine_main(args[1:])


if __name__ == "__main__":
    main()


__all__ = [
    "FAULTS",
    "POINTS",
    "EngineProc",
    "OutageResult",
    "SimBridge",
    "TrialCheck",
    "TrialResult",
    "check_trial",
    "engine_main",
    "outage_scenario",
    "sigkill_trials",
]
