"""The engine is deployed alone: it imports nothing from the other rooms, nor heavy stacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

FORBIDDEN = {"feast", "mlflow", "torch", "airflow", "bentoml", "pandas", "great_expectations", "xgboost",
             "feature_repo", "training", "serving", "infra", "dags"}


def test_engine_modules_when_imported_then_no_platform_or_heavy_package_is_loaded() -> None:
    root = Path(__file__).resolve().parents[2]
    mods = sorted(
        ".".join(p.relative_to(root).with_suffix("").parts)
        for p in (root / "engine").rglob("*.py")
        if p.name != "__init__.py"
    )
    code = (
        "import importlib, sys\n"
        f"for m in {mods!r}: importlib.import_module(m)\n"
        f"bad = sorted({{n.split('.')[0] for n in sys.modules}} & {FORBIDDEN!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"engine pulled in: {out.stdout.strip()}"


def test_engine_requirements_name_no_platform_package() -> None:
    req = (Path(__file__).resolve().parents[2] / "engine" / "requirements.txt").read_text().lower()
    for pkg in ("feast", "mlflow", "torch", "airflow", "bentoml", "pandas"):
        assert f"\n{pkg}" not in req
