"""Start, wait for and stop a ``bentoml serve`` process of ``TrendService``.

The server runs in its own process group (BentoML's supervisor plus its worker), so
``stop_server`` ends all of it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from serving.settings import (
    ALLOW_NO_AUTH_ENV,
    CHALLENGER_TAG_ENV,
    MODEL_TAG_ENV,
    TOKEN_ENV,
    AuthConfigError,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVICE_IMPORT = "serving.service:TrendService"


class ServerStartError(RuntimeError):
    """The server exited or did not become ready in time; the message ends with its log."""


def start_server(
    *,
    host: str,
    port: int,
    model_tag: str,
    bentoml_home: str | Path,
    log_path: str | Path,
    token: str | None = None,
    allow_no_auth: bool = False,
    challenger_tag: str | None = None,
    tracking_uri: str | None = None,
    model_name: str | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``bentoml serve serving.service:TrendService`` in the background.

    The service gets ``token`` as ``TX_SERVING_TOKEN`` (else the one in the environment);
    with neither, it refuses to start unless ``allow_no_auth`` (or
    ``TX_SERVING_ALLOW_NO_AUTH=true`` in the environment). ``challenger_tag`` is scored in
    shadow; ``tracking_uri`` and ``model_name`` name the registry that reloads poll;
    ``env`` adds other ``TX_SERVING_*`` settings. stdout and stderr go to ``log_path``.
    Returns at once: call ``wait_ready`` next.

    Raises:
        AuthConfigError: no token and no explicit opt-out (checked before spawning).
    """
    env_out = os.environ.copy()
    env_out.update(env or {})
    if token:
        env_out[TOKEN_ENV] = token
    if allow_no_auth:
        env_out[ALLOW_NO_AUTH_ENV] = "true"
    if not env_out.get(TOKEN_ENV) and env_out.get(ALLOW_NO_AUTH_ENV, "").lower() not in (
        "1",
        "true",
        "yes",
        "on",
    ):
        raise AuthConfigError(
            f"{TOKEN_ENV} is not set: pass a token, or allow_no_auth=True "
            f"({ALLOW_NO_AUTH_ENV}=true) for local development"
        )
    env_out[CHALLENGER_TAG_ENV] = challenger_tag or ""
    if tracking_uri:
        env_out["TX_MLFLOW_TRACKING_URI"] = tracking_uri
    if model_name:
        env_out["TX_MODEL_NAME"] = model_name
    env_out[MODEL_TAG_ENV] = model_tag
    env_out["BENTOML_HOME"] = str(Path(bentoml_home).expanduser().resolve())
    env_out.setdefault("BENTOML_DO_NOT_TRACK", "True")  # no usage analytics calls home
    env_out["PYTHONUNBUFFERED"] = "1"
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "bentoml", "serve", SERVICE_IMPORT]
    cmd += ["--host", host, "--port", str(port)]
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO_ROOT,
            env=env_out,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    proc.log_path = log_path  # type: ignore[attr-defined]  # for wait_ready's error message
    return proc


def log_tail(log_path: str | Path | None, n_lines: int = 40) -> str:
    """Last ``n_lines`` of a server log, or an empty string."""
    if log_path is None:
        return ""
    try:
        lines = Path(log_path).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n_lines:])


def wait_ready(
    base_url: str,
    timeout_s: float = 60.0,
    *,
    proc: subprocess.Popen[bytes] | None = None,
    log_path: str | Path | None = None,
    token: str | None = None,
) -> float:
    """Poll ``{base_url}/readyz`` (with ``token``; default ``$TX_SERVING_TOKEN``) until it
    answers 200; return the seconds waited.

    Raises:
        ServerStartError: ``proc`` exited first, or ``timeout_s`` passed. The message ends
            with the tail of ``log_path`` (default: the log ``start_server`` gave ``proc``).
    """
    if log_path is None and proc is not None:
        log_path = getattr(proc, "log_path", None)
    url = base_url.rstrip("/") + "/readyz"
    start = time.monotonic()
    token = token or os.environ.get(TOKEN_ENV)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(timeout=2.0, headers=headers) as client:
        while True:
            waited = time.monotonic() - start
            if proc is not None and proc.poll() is not None:
                raise ServerStartError(
                    f"server exited with code {proc.returncode} after {waited:.1f} s\n"
                    + log_tail(log_path)
                )
            with contextlib.suppress(httpx.TransportError):
                if client.get(url).status_code == 200:
                    return time.monotonic() - start
            if waited > timeout_s:
                raise ServerStartError(
                    f"{url} not ready after {timeout_s:.0f} s\n" + log_tail(log_path)
                )
            time.sleep(0.1)


def stop_server(proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> int | None:
    """SIGTERM the server's process group, SIGKILL it after ``grace_s``; return the exit code.

    BentoML's workers run in sessions of their own: the ones still alive after the
    supervisor is gone are killed too."""
    workers = _children(proc.pid)
    if proc.poll() is None:
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait(timeout=grace_s)
    # Workers may outlive the supervisor: make sure nothing of the group is left.
    _signal_group(proc, signal.SIGKILL)
    for worker in workers:
        with contextlib.suppress(Exception):
            worker.kill()
    return proc.returncode


def _children(pid: int) -> list[Any]:
    import psutil

    try:
        return list(psutil.Process(pid).children(recursive=True))
    except psutil.Error:
        return []


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
