"""Every Grafana panel's PromQL returns series from a real Prometheus scraping real exporters.

Grafana is not packaged here, so the panels' queries run against the Prometheus API directly
(Grafana's ``$__rate_interval`` becomes ``5s`` at the test's 1 s scrape interval). What feeds
each job:

- ``engine``: the real engine loop (:class:`engine.loop.Engine`) on the simulated terminal with
  a scripted model, deciding bars in a background thread, halted half-way (refusals), its
  control API's ``/metrics`` behind the bearer token;
- ``serving``: a real ``bentoml serve`` of a tiny XGBoost champion + challenger from a temp
  MLflow registry, fed valid and invalid requests in a background thread (token on /metrics);
- ``pusher``: a real ``tx features stream --metrics-port`` process on the simulated terminal;
- ``airflow``: ``tx observe airflow-exporter``'s collector on a migrated Airflow SQLite DB in
  which ``airflow dags test`` ran one succeeding and one failing DAG.

The two Airflow panels fed by StatsD (``statsd:compose-only`` in their description) need
statsd-exporter, which Debian does not package: they are listed, not queried.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.config import RiskLimits
from engine.control import ControlServer
from engine.journal import Journal
from engine.loop import Engine
from tests.e2e.observe_procs import TX, process, prometheus, require_binaries, wait_for
from tests.unit.faults import MONDAY_0800, ClockFeatures, ScriptedModel, sim_terminal
from titanovax.observe import (
    RULES_DIR,
    ScrapeTarget,
    render_prometheus_config,
    serve_airflow_exporter,
)
from titanovax.redis_local import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.observe, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "infra" / "grafana" / "dashboards"
ENGINE_TOKEN = "dash-engine-token"
COMPOSE_ONLY = "statsd:compose-only"

PROBE_DAGS = """
from datetime import datetime, timezone
from airflow.sdk import dag, task

START = datetime(2026, 1, 1, tzinfo=timezone.utc)

@dag(dag_id="tx_probe_ok", schedule=None, start_date=START, catchup=False)
def probe_ok():
    @task
    def fine() -> int:
        return 1
    fine()

@dag(dag_id="tx_probe_fail", schedule=None, start_date=START, catchup=False)
def probe_fail():
    @task(retries=0)
    def broken() -> None:
        raise RuntimeError("induced failure")
    broken()

probe_ok()
probe_fail()
"""


def panels() -> list[tuple[str, str, str, str]]:
    """(dashboard, panel title, description, expr) of every panel target."""
    out = []
    for f in sorted(DASHBOARDS.glob("*.json")):
        d = json.loads(f.read_text())
        for p in d["panels"]:
            for t in p["targets"]:
                out.append((f.stem, p["title"], p.get("description", ""), t["expr"]))
    return out


def airflow_db(tmp: Path) -> str:
    """A migrated Airflow SQLite DB where one DAG run succeeded and one failed."""
    (tmp / "dags").mkdir()
    (tmp / "dags" / "probe.py").write_text(PROBE_DAGS)
    url = f"sqlite:///{tmp / 'airflow.db'}"
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": url,
        "AIRFLOW__CORE__DAGS_FOLDER": str(tmp / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }
    airflow = str(Path(sys.executable).with_name("airflow"))
    for args in (
        ["db", "migrate"],
        ["dags", "test", "tx_probe_ok"],
        ["dags", "test", "tx_probe_fail"],
    ):
        subprocess.run([airflow, *args], env=env, capture_output=True, check=False, timeout=600)
    return url


def served(tmp: Path) -> Iterator[tuple[str, str]]:
    """A real BentoML server of a tiny champion + challenger; yields (url, token)."""
    from tests.integration.test_serving import (
        TOKEN,
        import_alias,
        manifest,
        new_registry,
        register,
        serve,
        xgb_bundle,
    )

    uri = new_registry(tmp)
    _, onx = xgb_bundle(seed=7)
    _, onx2 = xgb_bundle(seed=11)
    register(uri, tmp, onx, manifest(onnx_bytes=onx.SerializeToString()), ("champion",))
    register(uri, tmp, onx2, manifest(onnx_bytes=onx2.SerializeToString()), ("challenger",))
    champ, chall = import_alias(tmp, uri, "champion"), import_alias(tmp, uri, "challenger")
    for server in serve(
        tmp,
        uri,
        champion_tag=champ.bentoml_tag,
        challenger_tag=chall.bentoml_tag,
        env={"TX_SERVING_RELOAD_INTERVAL_S": "1"},
    ):
        yield server.base_url, TOKEN


def _drive_serving(url: str, token: str, stop: threading.Event) -> None:
    from tests.integration.test_serving import _row

    h = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, headers=h, timeout=10) as c:
        while not stop.is_set():
            c.post("/v1/predict", json={"rows": [_row([0.1, 0.2, 0.3, 40.0, 0.0002])]})
            c.post("/v1/predict", json={"rows": []})  # bad_request
            stop.wait(0.1)


def _drive_engine(
    engine: Engine, now: list[int], features: ClockFeatures, stop: threading.Event
) -> None:
    """A bar every 0.2 s; after 20 bars the feature rows lag three bars (stale_features
    refusals) and the operator halts the engine."""
    n = 0
    while not stop.is_set():
        t = now[0] + 300
        now[0] = t
        engine.on_bar("EURUSD", t)
        n += 1
        if n == 20:
            features.lag_s = 900
            engine.kill(detail="dashboard test: halted")
        stop.wait(0.2)


@pytest.fixture(scope="module")
def prom(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[str]:
    require_binaries()
    tmp = tmp_path_factory.mktemp("dash")
    stop = threading.Event()
    (tmp / "airflow").mkdir()
    (tmp / "serving").mkdir()
    with ThreadPoolExecutor(1) as pool:  # Airflow's DB and runs while serving starts
        af_future = pool.submit(airflow_db, tmp / "airflow")
        serving_gen = served(tmp / "serving")
        serving_url, serving_token = next(serving_gen)
        af_url = af_future.result()
    af_port, pusher_port, prom_port = free_port(), free_port(), free_port()
    exporter = serve_airflow_exporter(af_url, "127.0.0.1", af_port)

    now = [MONDAY_0800]
    features = ClockFeatures(now)
    engine = Engine(
        terminal=sim_terminal(now),
        features=features,
        model=ScriptedModel(1),
        journal=Journal(tmp / "journal.sqlite"),
        limits=RiskLimits(),
        magic=92,
        clock=lambda: float(now[0]),
        sleep=lambda s: None,
    )
    control = ControlServer(engine, token=ENGINE_TOKEN, port=0).start()
    (tmp / "engine_token").write_text(ENGINE_TOKEN)
    (tmp / "serving_token").write_text(serving_token)
    targets = [
        ScrapeTarget(
            "engine", [control.url.removeprefix("http://")], bearer_token_file=tmp / "engine_token"
        ),
        ScrapeTarget(
            "serving",
            [serving_url.removeprefix("http://")],
            bearer_token_file=tmp / "serving_token",
        ),
        ScrapeTarget("pusher", [f"127.0.0.1:{pusher_port}"]),
        ScrapeTarget("airflow", [f"127.0.0.1:{af_port}"]),
    ]
    cfg = render_prometheus_config(
        targets, RULES_DIR, tmp / "prom", scrape_interval="1s", evaluation_interval="1s"
    )
    pusher_env = {
        "TX_HOME": str(tmp / "home"),
        "TX_REDIS_URL": f"{redis_url.rsplit('/', 1)[0]}/13",
        "TX_SYMBOLS": "EURUSD",
        "TX_PUSHER_METRICS_PORT": str(pusher_port),
    }
    threads = [
        threading.Thread(target=_drive_engine, args=(engine, now, features, stop), daemon=True),
        threading.Thread(
            target=_drive_serving, args=(serving_url, serving_token, stop), daemon=True
        ),
    ]
    try:
        with process([TX, "features", "stream"], tmp / "pusher.log", pusher_env):
            for t in threads:
                t.start()
            with prometheus(cfg, prom_port, tmp) as url:
                yield url
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        control.stop()
        exporter.shutdown()
        serving_gen.close()


def _query(prom: str, expr: str) -> list[dict[str, Any]]:
    q = expr.replace("$__rate_interval", "5s")
    body = httpx.get(f"{prom}/api/v1/query", params={"query": q}, timeout=5).json()
    assert body["status"] == "success", (expr, body)
    return list(body["data"]["result"])


def test_every_dashboard_panel_when_queried_on_the_real_prometheus_then_returns_series(
    prom: str,
) -> None:
    queried = [p for p in panels() if COMPOSE_ONLY not in p[2]]
    skipped = [p for p in panels() if COMPOSE_ONLY in p[2]]
    assert {p[0] for p in queried} == {"engine", "serving", "data-freshness", "airflow"}
    assert [p[1] for p in skipped] == [
        "Scheduler heartbeats (StatsD, compose only)",
        "DAG run duration p90 (StatsD, compose only)",
    ]

    def missing() -> list[str]:
        return [f"{d}: {title}: {expr}" for d, title, _, expr in queried if not _query(prom, expr)]

    last: list[str] = []

    def all_back() -> bool:
        nonlocal last
        last = missing()
        return not last

    try:
        wait_for(all_back, 180, "series for every panel", interval=1.0)
    except AssertionError:
        pytest.fail("panels with no series:\n" + "\n".join(last))

    # the data behind the panels is the induced one, not just any series
    states = {
        r["metric"]["state"] for r in _query(prom, "max by (state) (tx_engine_trading_state) == 1")
    }
    assert states == {"HALTED"}
    refusals = {r["metric"]["reason"] for r in _query(prom, "tx_engine_refusals_total")}
    assert refusals == {"stale_features"}
    last_runs = {
        (r["metric"]["dag_id"], r["metric"]["state"])
        for r in _query(prom, "tx_airflow_dag_last_run_state == 1")
    }
    assert last_runs == {("tx_probe_ok", "success"), ("tx_probe_fail", "failed")}
    outcomes = {r["metric"]["outcome"] for r in _query(prom, "tx_serving_requests_total")}
    assert {"ok", "bad_request"} <= outcomes
    roles = {r["metric"]["role"] for r in _query(prom, "tx_serving_model_info == 1")}
    assert roles == {"champion", "challenger"}
