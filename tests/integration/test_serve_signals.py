"""`tx serve` stops its BentoML server when it is sent SIGTERM (a supervisor, systemd,
`docker stop`), not only on Ctrl-C: the port closes and no child process is left."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.integration.test_serving import (
    MODEL_NAME,
    free_port,
    manifest,
    new_registry,
    register,
    xgb_bundle,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TX = Path(sys.executable).with_name("tx")


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_tx_serve_when_sent_sigterm_then_the_server_stops_and_no_child_remains(
    tmp_path: Path,
) -> None:
    # Arrange: a registered champion in a private registry, `tx serve` on a free port
    tracking_uri = new_registry(tmp_path)
    _, onx = xgb_bundle(seed=1)
    register(
        tracking_uri,
        tmp_path,
        onx,
        manifest(onnx_bytes=onx.SerializeToString()),
        aliases=("champion",),
    )
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TX_")}
    env.update(
        {
            "TX_HOME": str(tmp_path / "home"),
            "TX_MLFLOW_TRACKING_URI": tracking_uri,
            "TX_MODEL_NAME": MODEL_NAME,
            "TX_SERVING_TOKEN": "sigterm-test-token-0123456789",
            "TX_SERVING_CHALLENGER_ALIAS": "",
            "TX_SERVING_RELOAD_INTERVAL_S": "0",
        }
    )
    proc = subprocess.Popen(
        [str(TX), "serve", "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # printed once the server answers
        assert line.startswith("serving "), (line, proc.stderr.read() if proc.poll() else "")
        assert _port_open(port)
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children, "the BentoML server runs as a child of tx serve"
        # the server runs in a session of its own: find its workers too
        for c in list(children):
            children += c.children(recursive=True)

        # Act
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)

        # Assert
        assert code == 0, proc.stderr.read() if proc.stderr else ""
        deadline = time.monotonic() + 10
        while _port_open(port) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _port_open(port)
        alive = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
        assert not alive, [c.cmdline() for c in alive]
    finally:
        if proc.poll() is None:
            proc.kill()
