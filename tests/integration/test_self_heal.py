"""Self-healing under the real supervisor: ``tx stack up --only engine,pusher`` starts the
paper engine and the feature pusher under circus (the stack's own supervisor, same watcher
settings as the full stack); the test SIGKILLs their real PIDs and asserts circus brings each
back (new PID, health check passes, its heartbeat gauge moves past the kill: the pusher's on
a real bar close), that a crash loop is slowed by the restart backoff (the fourth start
within a minute waits 10 s or more; circus never gives up), and prints the measured times
to recovery.

M1 bars keep "a real bar close after the restart" within a minute; Redis is a private
server, PostgreSQL databases are named ``tx_ops_heal<pid>_*`` and dropped afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from titanovax.redis_local import LocalRedis
from titanovax.settings import PROJECT_ROOT
from titanovax.stack import (
    PORTS,
    StackContext,
    StackSettings,
    _call,
    _port_free,
    load_secrets,
    watcher_status,
)

pytestmark = [pytest.mark.faults, pytest.mark.slow]

TX = str(Path(sys.executable).with_name("tx"))


def _tx(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TX, *args], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout
    )


def _port_base() -> int:
    for _ in range(100):
        base = random.randrange(30000, 60000, 100)
        if all(_port_free(base + off) for off in PORTS.values()):
            return base
    raise RuntimeError("no free port range")


def _drop_databases(prefix: str) -> None:
    import psycopg

    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as c:
        for (name,) in c.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s", (prefix + "\\_%",)
        ).fetchall():
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def wait_for(probe: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except (httpx.HTTPError, OSError, KeyError, ValueError) as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


class Heal:
    """The running subset: its env, ports and token."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        base = int(env["TX_STACK_PORT_BASE"])
        self.engine = f"http://127.0.0.1:{base + PORTS['engine']}"
        self.pusher = f"http://127.0.0.1:{base + PORTS['pusher_metrics']}"
        secrets = json.loads((Path(env["TX_HOME"]) / "stack" / "secrets.json").read_text())
        self.auth = {"Authorization": f"Bearer {secrets['engine_token']}"}

        home = Path(env["TX_HOME"])
        self.ctx = StackContext(
            home=home,
            stack=StackSettings(port_base=base, db_prefix=env["TX_STACK_DB_PREFIX"]),
            secrets=load_secrets(home / "stack"),
        )

    def status(self) -> dict[str, dict[str, Any]]:
        """``tx stack status --json`` (the operator's view; a process start per call)."""
        out = _tx(self.env, "stack", "status", "--json", timeout=60)
        assert out.returncode == 0, out.stderr
        return {r["service"]: r for r in json.loads(out.stdout)}

    def state(self, service: str) -> str:
        """The watcher's state, straight from circus's controller (fast enough to poll)."""
        return watcher_status(self.ctx).get(service, "unknown")

    def pids(self, service: str) -> list[int]:
        """Live processes of the watcher (circus may list a pid for a moment before it runs)."""
        try:
            pids = _call(self.ctx, "list", name=service).get("pids", [])
        except Exception:  # the controller is busy restarting a watcher
            return []
        return [int(p) for p in pids if psutil.pid_exists(int(p))]

    def pid(self, service: str) -> int:
        pids = self.pids(service)
        assert len(pids) == 1, pids
        return pids[0]

    def gauge(self, service: str, name: str) -> float | None:
        url, headers = (
            (f"{self.engine}/metrics", self.auth)
            if service == "engine"
            else (f"{self.pusher}/metrics", {})
        )
        text = httpx.get(url, headers=headers, timeout=3).text
        m = re.search(rf"^{name} (\S+)$", text, re.M)
        return float(m.group(1)) if m else None

    def healthy(self, service: str) -> bool:
        try:
            if service == "engine":
                return httpx.get(
                    f"{self.engine}/api/status", headers=self.auth, timeout=3
                ).is_success
            return self.gauge("pusher", HEARTBEAT["pusher"]) is not None
        except httpx.HTTPError:
            return False


HEARTBEAT = {
    "engine": "tx_engine_last_decision_timestamp_seconds",
    "pusher": "tx_pusher_heartbeat_timestamp_seconds",
}


@pytest.fixture(scope="module")
def heal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Heal]:
    tmp = tmp_path_factory.mktemp("heal")
    redis = LocalRedis().start()
    prefix = f"tx_ops_heal{os.getpid()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TX_", "AIRFLOW"))}
    env.update(
        TX_HOME=str(tmp / "home"),
        TX_SYMBOLS="EURUSD",
        TX_TIMEFRAME="M1",  # a real bar close within a minute of every restart
        TX_STACK_PORT_BASE=str(_port_base()),
        TX_STACK_REDIS_URL=f"redis://127.0.0.1:{redis.port}",
        TX_STACK_DB_PREFIX=prefix,
        TX_STACK_UP_TIMEOUT_S="180",
    )
    try:
        up = _tx(env, "stack", "up", "--only", "engine,pusher", timeout=400)
        assert up.returncode == 0, up.stdout + up.stderr
        assert "stack healthy" in up.stdout
        yield Heal(env)
    finally:
        down = _tx(env, "stack", "down", timeout=180)
        redis.stop()
        _drop_databases(prefix)
        assert down.returncode == 0, down.stderr


def _kill_and_recover(h: Heal, service: str) -> tuple[int, int, float]:
    """SIGKILL the service's process; wait for circus's new process to pass its health
    check. Returns (old pid, new pid, seconds from the kill to healthy)."""
    old = h.pid(service)
    proc = psutil.Process(old)
    t_kill = time.monotonic()
    os.kill(old, signal.SIGKILL)
    proc.wait(10)

    def back() -> int | None:
        pids = [p for p in h.pids(service) if p != old]
        return pids[0] if pids and h.healthy(service) else None

    new = wait_for(back, 120, f"{service} restarted by circus and healthy")
    return old, new, time.monotonic() - t_kill


def test_engine_and_pusher_when_sigkilled_then_circus_restarts_them_and_heartbeats_advance(
    heal: Heal,
) -> None:
    # Arrange: both run, each has a heartbeat
    st = heal.status()
    assert st["engine"]["state"] == st["pusher"]["state"] == "active"
    assert set(st) == {"engine", "pusher"}  # only the chosen subset runs
    before = {s: heal.gauge(s, HEARTBEAT[s]) for s in HEARTBEAT}
    assert all(v is not None for v in before.values()), before
    t0 = time.time()

    # Act: SIGKILL the real processes, one after the other
    times = {}
    for service in ("engine", "pusher"):
        old, new, took = _kill_and_recover(heal, service)
        assert new != old and not psutil.pid_exists(old)
        times[service] = took

    # Assert: the new engine's heartbeat starts from its restart (the engine sets it at start,
    # so "no decision for two bars" counts from there; its decisions come on the bars of an
    # open market, which the weekend simulator does not have); the new pusher beats again on
    # a real bar close (it beats on every close, market open or not)
    assert (heal.gauge("engine", HEARTBEAT["engine"]) or 0.0) > t0
    first = heal.gauge("pusher", HEARTBEAT["pusher"]) or 0.0
    wait_for(
        lambda: (heal.gauge("pusher", HEARTBEAT["pusher"]) or 0.0) > max(first, t0),
        130,
        "pusher heartbeat advancing on a bar close after the restart",
        1.0,
    )
    print(f"\ntime to recovery (SIGKILL -> healthy): {json.dumps(times)}")
    for t in times.values():
        assert t < 60


def test_engine_when_it_keeps_crashing_then_each_restart_waits_longer_and_it_comes_back(
    heal: Heal,
) -> None:
    from titanovax.restart_backoff import ATTEMPTS, BASE_S

    # Arrange: a healthy engine
    wait_for(lambda: heal.healthy("engine"), 120, "engine healthy")
    log = Path(heal.env["TX_HOME"]) / "stack" / "logs" / "engine.log"

    def started() -> int | None:
        """A new engine process past the backoff wrapper (exec'd into `tx engine run`)."""
        for p in heal.pids("engine"):
            with contextlib.suppress(psutil.Error):
                if p not in killed and "restart_backoff" not in " ".join(
                    psutil.Process(p).cmdline()
                ):
                    return p
        return None

    # Act: a crash loop: the running engine, then each new engine process SIGKILLed right
    # after it starts, ATTEMPTS times, so the next start is at least the (ATTEMPTS+1)-th
    # within the window (the running engine's own start may lie before the window: counting
    # on it made this test depend on how long the tests before it took)
    killed: list[int] = []
    for _ in range(ATTEMPTS + 1):
        pid = wait_for(started, 90, "a new engine process", 0.05)
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).wait(10)
    t_last = time.monotonic()

    # Assert: circus respawns at once (a new pid within seconds), but that start waits the
    # backoff before the engine runs; then it is healthy and circus's state is active
    respawned = wait_for(
        lambda: next((p for p in heal.pids("engine") if p not in killed), None),
        30,
        "circus respawning the engine",
        0.05,
    )
    t_respawn = time.monotonic() - t_last
    wait_for(lambda: heal.healthy("engine"), 180, "engine healthy after the backoff", 0.2)
    took = time.monotonic() - t_last
    print(
        f"\nengine crash loop: circus respawned in {t_respawn:.1f} s, healthy {took:.1f} s"
        f" after the last of {len(killed)} kills (backoff {BASE_S:.0f} s or more)"
    )
    assert t_respawn < 10
    assert took >= BASE_S
    assert heal.pids("engine") == [respawned]  # the waiting process became the engine
    assert "restart backoff: engine started" in log.read_text(errors="replace")
    assert heal.state("engine") == "active"
    assert heal.status()["engine"]["health"] == "healthy"
