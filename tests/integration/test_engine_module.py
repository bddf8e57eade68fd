"""``python -m engine``, the engine image's command, as a real process: its control API
answers the operator's token (it once passed the SecretStr itself, so every authorised
request failed) and refuses any other."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
END = int(datetime(2025, 3, 6, 12, tzinfo=UTC).timestamp())  # a Thursday


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, token: str) -> tuple[int, dict]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_engine_module_when_started_live_on_a_bridge_then_its_control_api_takes_the_token(
    tmp_path: Path, redis_url: str
) -> None:
    bridge_port, control_port = _free_port(), _free_port()
    bridge = subprocess.Popen(
        [
            *(sys.executable, "-m", "engine.mt5.simserver", "--port", str(bridge_port)),
            *("--seed", "3", "--symbols", "EURUSD", "--end-utc", str(END)),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    engine = None
    try:
        assert bridge.stdout is not None
        assert bridge.stdout.readline().startswith("READY")
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("TX_")},
            "TX_HOME": str(tmp_path),
            "TX_MT5_MODE": "bridge",
            "TX_MT5_PORT": str(bridge_port),
            "TX_REDIS_URL": redis_url,
            "TX_SERVING_URL": f"http://127.0.0.1:{_free_port()}",  # nothing listens
            "TX_SYMBOLS": "EURUSD",
            "TX_ENGINE_TOKEN": "operator-secret",
            "TX_ENGINE_CONTROL_PORT": str(control_port),
        }
        engine = subprocess.Popen(
            [sys.executable, "-m", "engine", "--features", "ret_1,ret_5"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        base = f"http://127.0.0.1:{control_port}"
        deadline = time.monotonic() + 60
        while True:
            assert engine.poll() is None, f"engine exited: {engine.stderr.read()[-2000:]}"  # type: ignore[union-attr]
            try:
                urllib.request.urlopen(f"{base}/healthz", timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "control API never answered"
                time.sleep(0.2)

        ok, status = _get(f"{base}/api/status", "operator-secret")
        wrong, _ = _get(f"{base}/api/status", "**********")

        assert ok == 200 and "trading_state" in json.dumps(status)
        assert wrong == 401
    finally:
        for p in (engine, bridge):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(timeout=10)
