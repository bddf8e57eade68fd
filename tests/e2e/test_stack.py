"""`tx stack` for real: every service up and healthy from a fresh stack state, the DAGs
scheduled by Airflow's scheduler and run by the Celery worker, the feature asset linking
market_data to train_and_promote, serving asked to reload, and nothing left after `down`.

What the test arranges: a private redis-server, PostgreSQL databases named after this
process, a free port range, and ten days or more of synthetic M5 history in the lake (what a data
engineer's TX_HOME holds before starting the stack; no stack state: no Airflow or MLflow
database, no Feast registry). A small experiment config keeps each training run short. Two trainings run: the weekly
interval, which the scheduler starts at once, gives serving its first champion; then the
asset-triggered run registers another version and serving, now up, answers its reload.

Run it with `make test-stack` (about 8-12 minutes on the 2-core machine): `make test`
excludes the `stack` marker.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml

from titanovax.redis_local import LocalRedis
from titanovax.settings import PROJECT_ROOT
from titanovax.stack import PORTS, _port_free

pytestmark = [pytest.mark.stack, pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(2400)]

TX = str(Path(sys.executable).with_name("tx"))


def _port_base() -> int:
    for _ in range(100):
        base = random.randrange(30000, 60000, 100)
        if all(_port_free(base + off) for off in PORTS.values()):
            return base
    raise RuntimeError("no free port range")


def _tx(env: dict[str, str], *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TX, *args],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _drop_databases(prefix: str) -> None:
    import psycopg

    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as c:
        for (name,) in c.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s", (prefix + "\\_%",)
        ).fetchall():
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def stack_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    redis = LocalRedis().start()
    prefix = f"tx_stack_t{os.getpid()}"
    cfg = yaml.safe_load((PROJECT_ROOT / "training" / "configs" / "trend_v1.yaml").read_text())
    cfg["split"].update(train_days=7, test_days=2)
    cfg["model"].update(n_estimators=60)
    experiment = tmp_path / "trend_small.yaml"
    experiment.write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TX_", "AIRFLOW"))}
    env.update(
        TX_HOME=str(tmp_path / "home"),
        TX_SYMBOLS="EURUSD",
        TX_TIMEFRAME="M5",
        TX_STACK_PORT_BASE=str(_port_base()),
        TX_STACK_REDIS_URL=f"redis://127.0.0.1:{redis.port}",
        TX_STACK_DB_PREFIX=prefix,
        TX_TRAIN_EXPERIMENT=str(experiment),
        TX_TRAIN_MIN_INTERVAL_HOURS="0",
    )
    try:
        yield env
    finally:
        _tx(env, "stack", "down", timeout=180)
        redis.stop()
        _drop_databases(prefix)


def _api(env: dict[str, str]) -> str:
    return f"http://127.0.0.1:{int(env['TX_STACK_PORT_BASE']) + PORTS['api']}/api/v2"


def _wait_run(
    env: dict[str, str],
    dag_id: str,
    run_type: str,
    timeout_s: float,
    interval_start: str | None = None,
) -> dict[str, Any]:
    """Poll Airflow's REST API until ``dag_id`` has a finished run of ``run_type`` (of the
    data interval starting on the day ``interval_start``, when given)."""
    deadline = time.monotonic() + timeout_s
    last: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        r = httpx.get(f"{_api(env)}/dags/{dag_id}/dagRuns", params={"limit": 50}, timeout=10)
        last = [
            d
            for d in r.json()["dag_runs"]
            if d["run_type"] == run_type
            and (
                interval_start is None
                or (d["data_interval_start"] or "").startswith(interval_start)
            )
        ]
        done = [d for d in last if d["state"] in ("success", "failed")]
        if done:
            return done[0]
        time.sleep(5)
    raise AssertionError(f"{dag_id}: no finished {run_type} run in {timeout_s:.0f} s: {last}")


def _tasks(env: dict[str, str], dag_id: str, run_id: str) -> dict[str, str]:
    r = httpx.get(
        f"{_api(env)}/dags/{dag_id}/dagRuns/{run_id}/taskInstances",
        params={"limit": 100},
        timeout=10,
    )
    return {t["task_id"]: t["state"] for t in r.json()["task_instances"]}


def _xcom(env: dict[str, str], dag_id: str, run_id: str, task_id: str) -> Any:
    r = httpx.get(
        f"{_api(env)}/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value",
        timeout=10,
    )
    assert r.status_code == 200, r.text
    value = r.json()["value"]
    return json.loads(value) if isinstance(value, str) and value[:1] in "{[" else value


def test_stack_when_up_then_scheduler_runs_market_data_on_celery_and_its_asset_trains_and_reloads_serving(
    stack_env: dict[str, str],
) -> None:
    env = stack_env
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    yesterday = today - timedelta(days=1)
    # the last weekday up to yesterday: a weekend interval has no bars and its run is skipped,
    # so the scheduler catches up from that day (one run per day, in order) and the weekday's
    # run is the one that materialises and updates the asset
    market_day = yesterday - timedelta(days=max(0, yesterday.weekday() - 4))
    env["TX_DAG_START_DATE"] = market_day.strftime("%Y-%m-%d")
    env["TX_DAG_CATCHUP"] = "true"
    # the weekly interval the scheduler also runs at once ends on the last Saturday 00:00
    last_saturday = today - timedelta(days=(today.weekday() - 5) % 7)
    history = {**env, "TX_REDIS_URL": env["TX_STACK_REDIS_URL"] + "/10"}
    # Arrange: the history both training windows need (9 days each), up to the interval the
    # scheduler will run (yesterday)
    assert _tx(history, "features", "apply").returncode == 0
    res = _tx(
        history,
        "data",
        "backfill",
        "--start",
        (min(last_saturday, yesterday) - timedelta(days=10)).strftime("%Y-%m-%d"),
        "--end",
        yesterday.strftime("%Y-%m-%d"),
    )
    assert res.returncode == 0, res.stderr[-3000:]

    # Act 1: the stack from no stack state
    t0 = time.monotonic()
    up = _tx(env, "stack", "up", timeout=900)
    up_s = time.monotonic() - t0
    print(f"tx stack up: {up_s:.1f} s\n{up.stdout}")
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
    assert "stack healthy" in up.stdout
    again = _tx(env, "stack", "up", timeout=300)  # idempotent: checks, starts nothing twice
    assert again.returncode == 0 and "already running" in again.stdout, again.stdout
    rows = json.loads(_tx(env, "stack", "status", "--json").stdout)
    assert {r["state"] for r in rows} == {"active"}, rows

    # Assert 1: the scheduler ran the last market day's market_data interval on the Celery worker
    md = _wait_run(env, "market_data", "scheduled", 900, market_day.strftime("%Y-%m-%d"))
    assert md["state"] == "success", (md, _tasks(env, "market_data", md["dag_run_id"]))
    assert set(_tasks(env, "market_data", md["dag_run_id"]).values()) == {"success"}
    worker_log = (Path(env["TX_HOME"]) / "stack" / "logs" / "airflow-celery-worker.log").read_text()
    assert "Executing workload in Celery" in worker_log
    assert f"run_id={md['dag_run_id']}" in worker_log

    # Assert 2: its asset event triggered train_and_promote, which registered a version and
    # asked serving to reload
    events = httpx.get(
        f"{_api(env)}/assets/events", params={"source_dag_id": "market_data"}, timeout=10
    ).json()["asset_events"]
    assert any(e["source_run_id"] == md["dag_run_id"] for e in events), events
    tp = _wait_run(env, "train_and_promote", "asset_triggered", 1500)
    tasks = _tasks(env, "train_and_promote", tp["dag_run_id"])
    assert tp["state"] == "success", (tp, tasks)
    assert set(tasks.values()) == {"success"}, tasks
    registered = _xcom(env, "train_and_promote", tp["dag_run_id"], "register")
    reload_msg = _xcom(env, "train_and_promote", tp["dag_run_id"], "reload_serving")
    print(f"registered {registered}; {reload_msg}")
    mlflow = f"http://127.0.0.1:{int(env['TX_STACK_PORT_BASE']) + PORTS['mlflow']}"
    mv = httpx.get(
        f"{mlflow}/api/2.0/mlflow/model-versions/get",
        params={"name": "tx_trend", "version": str(registered["version"])},
        timeout=10,
    )
    assert mv.status_code == 200, mv.text
    # serving answered the reload (HTTP 200) when it already served a champion; when this
    # run promoted the first champion, serving was still waiting for one and starts with it
    assert str(reload_msg).startswith(("serving reload: HTTP 200", "serving at ")), reload_msg
    decision = _xcom(env, "train_and_promote", tp["dag_run_id"], "gate")
    print(f"gate: promoted={decision['promoted']} ({decision['reason']})")
    promoted = bool(decision["promoted"])
    if not promoted:
        # the gate refused it on this week's market: the version becomes the challenger; with
        # no champion yet serving keeps waiting for one and has nothing to serve
        aliases = (
            httpx.get(
                f"{mlflow}/api/2.0/mlflow/registered-models/get",
                params={"name": "tx_trend"},
                timeout=10,
            )
            .json()["registered_model"]
            .get("aliases", [])
        )
        held = {a["alias"]: a["version"] for a in aliases}
        assert held.get("challenger") == str(registered["version"]), held
        assert "champion" in held or str(reload_msg).startswith("serving at "), reload_msg
    serving = f"http://127.0.0.1:{int(env['TX_STACK_PORT_BASE']) + PORTS['serving']}"
    token = json.loads((Path(env["TX_HOME"]) / "stack" / "secrets.json").read_text())
    auth = {"Authorization": f"Bearer {token['serving_token']}"}  # champion or challenger
    served: set[str] = set()
    deadline = time.monotonic() + 600  # serving also polls the registry every 30 s
    while promoted and str(registered["version"]) not in served and time.monotonic() < deadline:
        try:
            r = httpx.get(f"{serving}/v1/models", headers=auth, timeout=5)
            if r.status_code == 200:
                served = {str(m["model_version"]) for m in r.json().values() if m}
        except httpx.HTTPError:
            pass
        time.sleep(3)
    print(f"serving versions: {served}")
    assert not promoted or str(registered["version"]) in served, (registered, served)

    # Act 2 / Assert 3: down leaves nothing of the stack running
    pid_file = Path(env["TX_HOME"]) / "stack" / "circusd.pid"
    supervisor = psutil.Process(int(pid_file.read_text().split()[0]))
    tree = [supervisor, *supervisor.children(recursive=True)]
    assert len(tree) >= 10
    down = _tx(env, "stack", "down", timeout=300)
    assert down.returncode == 0, down.stderr
    alive = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, [(p.pid, p.cmdline()) for p in alive]
    ports = [int(env["TX_STACK_PORT_BASE"]) + off for off in PORTS.values()]
    assert all(_port_free(p) for p in ports)
    assert _tx(env, "stack", "status", "--json").stdout.count('"down"') == len(rows)
