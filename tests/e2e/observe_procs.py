"""Test-side process helpers for the observability tests: the real Debian ``prometheus`` and
``prometheus-alertmanager`` binaries on free ports with temp dirs, a ``tx`` subprocess, a
webhook receiver standing in for Telegram, and waits on events (never fixed sleeps)."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from typing import Any, TypeVar

import httpx
import pytest

PROMETHEUS = "/usr/bin/prometheus"
ALERTMANAGER = "/usr/bin/prometheus-alertmanager"
TX = str(Path(sys.executable).with_name("tx"))
T = TypeVar("T")


def require_binaries() -> None:
    """Skip with the fix when the Debian packages are missing (``make setup`` installs them)."""
    for b in (PROMETHEUS, ALERTMANAGER):
        if not shutil.which(b):
            pytest.skip(f"{b} missing: apt-get install prometheus prometheus-alertmanager")


def wait_for(probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.2) -> T:
    """Poll ``probe`` until it returns a truthy value; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except (httpx.HTTPError, OSError) as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


@contextmanager
def process(
    args: list[str], log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``args`` (own process group, output to ``log``); SIGTERM then SIGKILL on exit."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(5)


def healthy(url: str) -> Callable[[], bool]:
    return lambda: httpx.get(url, timeout=2).status_code == 200


@contextmanager
def prometheus(config: Path, port: int, tmp: Path) -> Iterator[str]:
    """A real Prometheus on ``port`` with ``config``; yields its base URL once ready."""
    args = [
        PROMETHEUS,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp / 'prom-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-lifecycle",
    ]
    with process(args, tmp / "prometheus.log") as proc:
        url = f"http://127.0.0.1:{port}"
        wait_for(
            lambda: proc.poll() is None and healthy(f"{url}/-/ready")(),
            60,
            f"prometheus ready (log {tmp / 'prometheus.log'})",
        )
        yield url


@contextmanager
def alertmanager(config: Path, port: int, tmp: Path) -> Iterator[str]:
    """A real Alertmanager on ``port`` (no cluster); yields its base URL once ready."""
    args = [
        ALERTMANAGER,
        f"--config.file={config}",
        f"--storage.path={tmp / 'am-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
    ]
    with process(args, tmp / "alertmanager.log") as proc:
        url = f"http://127.0.0.1:{port}"
        wait_for(
            lambda: proc.poll() is None and healthy(f"{url}/-/ready")(),
            60,
            f"alertmanager ready (log {tmp / 'alertmanager.log'})",
        )
        yield url


class Receiver:
    """A tiny HTTP server standing in for Telegram: every POST body lands in :attr:`got`."""

    def __init__(self) -> None:
        self.got: queue.Queue[dict[str, Any]] = queue.Queue()
        got = self.got

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, fmt: str, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n)
                try:
                    got.put({"path": self.path, **json.loads(raw)})
                except ValueError:
                    got.put({"path": self.path, "raw": raw.decode(errors="replace")})
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.httpd.server_address[1])
        Thread(target=self.httpd.serve_forever, daemon=True).start()

    def wait_message(self, needle: str, timeout: float) -> dict[str, Any]:
        """The first message whose title or body contains ``needle``."""
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            try:
                msg = self.got.get(timeout=max(0.05, deadline - time.monotonic()))
            except queue.Empty:
                break
            seen.append(msg)
            if needle in f"{msg.get('title', '')}\n{msg.get('message', '')}":
                return msg
        raise AssertionError(f"no message with {needle!r} within {timeout:.0f} s; got {seen!r}")

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def firing(prom: str, alertname: str) -> Callable[[], list[dict[str, Any]]]:
    """Probe: the firing alerts named ``alertname`` in Prometheus."""

    def probe() -> list[dict[str, Any]]:
        alerts = httpx.get(f"{prom}/api/v1/alerts", timeout=2).json()["data"]["alerts"]
        return [
            a
            for a in alerts
            if a["labels"].get("alertname") == alertname and a["state"] == "firing"
        ]

    return probe


def target_health(prom: str, job: str) -> Callable[[], str | None]:
    """Probe: the health of ``job``'s scrape target once scraped ("up"/"down")."""

    def probe() -> str | None:
        ts = httpx.get(f"{prom}/api/v1/targets", timeout=2).json()["data"]["activeTargets"]
        for t in ts:
            if t["labels"].get("job") == job and t["health"] != "unknown":
                return str(t["health"])
        return None

    return probe
