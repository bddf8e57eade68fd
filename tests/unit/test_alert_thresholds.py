"""The heartbeat/degradation alert thresholds (``TX_ALERT_*``) reach the rules Prometheus
evaluates: the renderer writes them into the ``tx:alert_threshold:*`` recording rules, the
rendered config passes ``promtool check config``, and a promtool unit test against the
rendered rules fires at the lowered threshold where the default stays quiet."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from titanovax.observe import RULES_DIR, AlertThresholds, ScrapeTarget, render_prometheus_config

pytestmark = pytest.mark.unit

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"

# 10% of predictions from the fallback: under the default 20%, over a configured 5%
FALLBACK_TEST = {
    "rule_files": ["rules/heal.yml"],
    "evaluation_interval": "1m",
    "tests": [
        {
            "interval": "1m",
            "input_series": [
                {
                    "series": 'tx_engine_decisions_total{job="engine",instance="e:1",verdict="sent"}',
                    "values": "0+10x40",
                },
                {
                    "series": 'tx_engine_model_fallbacks_total{job="engine",instance="e:1"}',
                    "values": "0+1x40",
                },
            ],
            "promql_expr_test": [
                {
                    "expr": 'count(ALERTS{alertname="TxEngineFallbackRate",alertstate="firing"})',
                    "eval_time": "30m",
                    "exp_samples": [],
                }
            ],
        }
    ],
}


def _render(tmp_path: Path, thresholds: AlertThresholds | None) -> Path:
    return render_prometheus_config(
        [ScrapeTarget("engine", ["127.0.0.1:8765"])],
        RULES_DIR,
        tmp_path / "prom",
        thresholds=thresholds,
    )


def _records(path: Path) -> dict[str, str]:
    data = yaml.safe_load(path.read_text())
    return {r["record"]: r["expr"] for g in data["groups"] for r in g["rules"] if "record" in r}


def test_thresholds_when_set_by_env_then_written_into_the_rendered_recording_rules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TX_ALERT_ENGINE_FALLBACK_RATIO", "0.05")
    monkeypatch.setenv("TX_ALERT_SERVING_SILENT_SECONDS", "120")
    config = _render(tmp_path, AlertThresholds())

    records = _records(tmp_path / "prom" / "rules" / "heal.yml")
    assert records["tx:alert_threshold:engine_fallback_ratio"] == "vector(0.05)"
    assert records["tx:alert_threshold:serving_silent_seconds"] == "vector(120.0)"
    assert records["tx:alert_threshold:engine_decision_p99_seconds"] == "vector(0.5)"
    # the source file keeps the documented defaults
    assert _records(RULES_DIR / "heal.yml")["tx:alert_threshold:engine_fallback_ratio"] == (
        "vector(0.2)"
    )
    check = subprocess.run(
        [PROMTOOL, "check", "config", str(config)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize(("ratio", "fires"), [(None, False), ("0.05", True)])
def test_fallback_alert_when_threshold_lowered_then_ten_percent_fires(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ratio: str | None, fires: bool
) -> None:
    if ratio:
        monkeypatch.setenv("TX_ALERT_ENGINE_FALLBACK_RATIO", ratio)
    _render(tmp_path, AlertThresholds())
    test = copy.deepcopy(FALLBACK_TEST)
    test["tests"][0]["promql_expr_test"][0]["exp_samples"] = (
        [{"labels": "{}", "value": 1}] if fires else []
    )
    (tmp_path / "prom" / "t.yml").write_text(yaml.safe_dump(test))

    out = subprocess.run(
        [PROMTOOL, "test", "rules", "t.yml"], cwd=tmp_path / "prom", capture_output=True, text=True
    )

    assert out.returncode == 0, out.stdout + out.stderr


def test_thresholds_when_out_of_range_then_the_error_names_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pydantic import ValidationError

    monkeypatch.setenv("TX_ALERT_ENGINE_REFUSAL_RATIO", "1.5")
    with pytest.raises(ValidationError, match="engine_refusal_ratio"):
        AlertThresholds()
