"""The deployment files are valid for the tools that read them, and every command they run
exists in this project: Debian's docker-compose validates infra/compose.yaml, promtool checks
the Prometheus configuration and rules and runs the rules' unit tests, amtool checks the
Alertmanager configuration; each compose service's command answers ``--help``."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from titanovax.observe import (
    RULES_DIR,
    ScrapeTarget,
    alertmanager_config,
    render_alertmanager_config,
    render_prometheus_config,
)

pytestmark = [pytest.mark.integration, pytest.mark.observe]

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
COMPOSE = INFRA / "compose.yaml"
BIN = Path(sys.executable).parent
OUR_IMAGES = ("titanovax/platform", "titanovax/serving", "titanovax/engine")


def _tool(name: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path is None:
        pytest.fail(f"{name} is missing: `make setup` installs it (apt-get install {name})")
    return path


def _run(args: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=False, **kw)


@pytest.fixture(scope="module")
def compose_config() -> dict[str, Any]:
    """The compose file as docker-compose resolves it (anchors merged, env file read)."""
    env = {**os.environ, "TX_ENV_FILE": "compose.env.example"}
    out = _run([_tool("docker-compose"), "-f", str(COMPOSE), "config"], env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return dict(yaml.safe_load(out.stdout))


def test_compose_when_validated_by_docker_compose_then_config_passes() -> None:
    env = {**os.environ, "TX_ENV_FILE": "compose.env.example"}
    out = _run([_tool("docker-compose"), "-f", str(COMPOSE), "config", "-q"], env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "version" not in yaml.safe_load(COMPOSE.read_text())  # the Compose spec, no version:


def test_compose_when_resolved_then_the_distributed_topology_is_all_there(
    compose_config: dict[str, Any],
) -> None:
    services = set(compose_config["services"])
    assert {
        "postgres",
        "redis",
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
        "airflow-worker",
        "mlflow",
        "serving",
        "pusher",
        "engine",
        "prometheus",
        "alertmanager",
        "notifier",
        "grafana",
    } <= services
    worker = compose_config["services"]["airflow-worker"]
    assert worker["environment"]["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert "container_name" not in worker and "ports" not in worker  # --scale works


def test_compose_when_resolved_then_every_service_is_health_checked_and_waits_for_healthy_deps(
    compose_config: dict[str, Any],
) -> None:
    for name, svc in compose_config["services"].items():
        assert svc.get("healthcheck", {}).get("test"), f"{name} has no health check"
        for dep, cond in (svc.get("depends_on") or {}).items():
            ok = {"service_healthy"} | (
                {"service_completed_successfully"} if dep == "airflow-init" else set()
            )
            assert cond["condition"] in ok, f"{name} → {dep}: {cond}"


def test_compose_when_read_then_airflow_services_share_one_anchor_and_secrets_stay_out_of_images(
    compose_config: dict[str, Any],
) -> None:
    raw = COMPOSE.read_text()
    assert raw.count("x-airflow-common: &airflow-common") == 1
    airflow = [n for n in compose_config["services"] if n.startswith("airflow-")]
    assert raw.count("<<: *airflow-common\n") == len(airflow)
    # credentials only in the env file (placeholders in the example), never in an image
    for dockerfile in (INFRA / "docker").glob("*.Dockerfile"):
        text = dockerfile.read_text().upper()
        for word in ("PASSWORD", "TOKEN", "SECRET", "FERNET"):
            assert f"{word}=" not in text, f"{dockerfile.name} sets {word}"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".env", "infra/.env", "infra/secrets", ".tx"} <= set(ignored)
    example = (INFRA / "compose.env.example").read_text()
    assert "CHANGE_ME" in example and "TX_ENGINE_TOKEN=CHANGE_ME" in example


def _commands(compose_config: dict[str, Any]) -> list[tuple[str, list[str]]]:
    out = []
    for name, svc in compose_config["services"].items():
        if not str(svc.get("image", "")).startswith(OUR_IMAGES):
            continue
        cmd = list(svc["command"])
        if cmd[:2] == ["sh", "-c"]:  # the exec'd command of a shell wrapper
            cmd = shlex.split(cmd[2].split("exec ", 1)[1])
        out.append((name, cmd))
    return out


def _help_args(cmd: list[str]) -> list[str]:
    """The command's subcommand path (up to the first option) plus --help."""
    words = []
    for w in cmd:
        if w.startswith("-"):
            break
        words.append(w)
    return [*words, "--help"]


AIRFLOW_PARSE = """
import contextlib, io, json, sys
from airflow.cli.cli_parser import get_parser
bad = []
for args in json.loads(sys.argv[1]):
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            get_parser().parse_args([*args, "--help"])
        bad.append(args)
    except SystemExit as exc:
        if exc.code not in (0, None):
            bad.append(args)
print(json.dumps(bad))
sys.exit(1 if bad else 0)
"""


@pytest.mark.slow
def test_compose_when_services_run_project_commands_then_each_command_exists(
    compose_config: dict[str, Any],
) -> None:
    """`tx ...` through the Typer app, Airflow's subcommands through Airflow's own CLI parser
    (one import for all, with the compose file's CeleryExecutor), the rest as subprocesses."""
    from titanovax.cli import app

    commands = _commands(compose_config)
    assert len(commands) >= 12
    airflow_cmds: list[list[str]] = [["jobs", "check"]]  # the health checks' command
    external: list[tuple[str, list[str]]] = []
    for name, cmd in commands:
        if cmd[0] == "tx":
            res = CliRunner().invoke(app, _help_args(cmd)[1:])
            assert res.exit_code == 0, f"{name}: `{' '.join(cmd)}` → {res.output}"
        elif cmd[0] == "airflow":
            airflow_cmds.append(_help_args(cmd)[1:-1])
        elif cmd[:2] == ["python", "-m"]:
            external.append((name, [sys.executable, "-m", cmd[2], "--help"]))
        else:
            external.append((name, [str(BIN / cmd[0]), *_help_args(cmd)[1:]]))
    assert (
        len(airflow_cmds) == 7
    )  # migrate, api-server, scheduler, dag-processor, triggerer, worker
    external.append(("airflow", [sys.executable, "-c", AIRFLOW_PARSE, json.dumps(airflow_cmds)]))
    # the worker health check's Celery app module imports with the locked celery
    external.append(
        (
            "healthcheck",
            [sys.executable, "-c", "import airflow.providers.celery.executors.celery_executor"],
        )
    )
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(ROOT / ".tx" / "airflow-help"),
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
    }
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda c: (c[0], c[1], _run(c[1], env=env)), external))
    for name, args, res in results:
        assert res.returncode == 0, (
            f"{name}: `{' '.join(args)[:200]}` → {res.stdout[-400:]} {res.stderr[-800:]}"
        )


def test_prometheus_rules_when_checked_and_unit_tested_by_promtool_then_pass() -> None:
    promtool = _tool("promtool")
    rules = sorted(str(p) for p in RULES_DIR.glob("*.yml"))
    check = _run([promtool, "check", "rules", *rules])
    assert check.returncode == 0, check.stdout + check.stderr
    tests = sorted(str(p) for p in (INFRA / "prometheus" / "tests").glob("*.yml"))
    assert len(tests) == len(rules)
    unit = _run([promtool, "test", "rules", *tests], cwd=INFRA / "prometheus")
    assert unit.returncode == 0, unit.stdout + unit.stderr
    assert unit.stdout.count("SUCCESS") == len(tests)


def test_every_alert_rule_when_read_then_has_for_severity_summary_description_and_runbook() -> None:
    runbook = (ROOT / "docs" / "runbook.md").read_text().lower()
    tested = "".join(p.read_text() for p in (INFRA / "prometheus" / "tests").glob("*.yml"))
    for f in RULES_DIR.glob("*.yml"):
        for group in yaml.safe_load(f.read_text())["groups"]:
            for rule in group["rules"]:
                if "record" in rule:  # thresholds (rules/heal.yml), not alerts
                    assert rule["record"].startswith("tx:alert_threshold:"), rule
                    continue
                name = rule["alert"]
                assert rule.get("for"), name
                assert rule["labels"]["severity"] in ("critical", "warning"), name
                ann = rule["annotations"]
                assert ann["summary"] and ann["description"], name
                anchor = ann["runbook_url"].split("#")[1]
                assert ann["runbook_url"] == f"docs/runbook.md#{name.lower()}"
                assert f"## {anchor}" in runbook, f"docs/runbook.md has no section for {name}"
                assert f"alertname: {name}\n" in tested, f"no promtool test fires {name}"


def test_prometheus_configs_when_checked_by_promtool_then_valid(tmp_path: Path) -> None:
    promtool = _tool("promtool")
    static = _run(
        [promtool, "check", "config", "--syntax-only", str(INFRA / "prometheus" / "prometheus.yml")]
    )
    assert static.returncode == 0, static.stdout + static.stderr
    token = tmp_path / "token"
    token.write_text("t")
    rendered = render_prometheus_config(
        [
            ScrapeTarget("engine", ["127.0.0.1:8765"], bearer_token_file=token),
            ScrapeTarget("pusher", ["127.0.0.1:9108"]),
        ],
        RULES_DIR,
        tmp_path / "prom",
        alertmanagers=["127.0.0.1:9093"],
        for_override="5s",
    )
    full = _run([promtool, "check", "config", str(rendered)])
    assert full.returncode == 0, full.stdout + full.stderr
    rules = yaml.safe_load((tmp_path / "prom" / "rules" / "engine.yml").read_text())
    assert {r["for"] for g in rules["groups"] for r in g["rules"]} == {"5s"}


def test_alertmanager_configs_when_checked_by_amtool_then_valid_and_compose_matches_the_renderer(
    tmp_path: Path,
) -> None:
    amtool = _tool("amtool")
    static = INFRA / "alertmanager" / "alertmanager.yml"
    rendered = render_alertmanager_config("http://127.0.0.1:9095/alertmanager", tmp_path)
    for f in (static, rendered):
        res = _run([amtool, "check-config", str(f)])
        assert res.returncode == 0, res.stdout + res.stderr
    assert yaml.safe_load(static.read_text()) == alertmanager_config(
        "http://notifier:9095/alertmanager"
    )
