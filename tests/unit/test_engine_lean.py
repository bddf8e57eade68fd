"""The engine is deployed alone: it imports nothing from the other rooms, nor heavy stacks, and
``pip install -r engine/requirements.txt`` is enough to import every module of it."""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {
    "feast",
    "mlflow",
    "torch",
    "airflow",
    "bentoml",
    "pandas",
    "great_expectations",
    "xgboost",
    "feature_repo",
    "training",
    "serving",
    "infra",
    "titanovax",
    "dags",
}


def _engine_modules() -> list[str]:
    return sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts)
        for p in (ROOT / "engine").rglob("*.py")
        if p.name != "__init__.py"
    )


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_closure() -> set[str]:
    """Normalised names of the distributions engine/requirements.txt installs here (with
    their dependencies, markers evaluated for this platform)."""
    todo: list[tuple[Requirement, set[str]]] = []
    for line in (ROOT / "engine" / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            todo.append((Requirement(line), set()))
    seen: set[str] = set()
    while todo:
        req, _ = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = _norm(req.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            continue
        for sub in dist.requires or ():
            r = Requirement(sub)
            env_ok = r.marker is None or any(
                r.marker.evaluate({"extra": e}) for e in (req.extras or {""})
            )
            if env_ok:
                todo.append((r, set()))
    return seen


def _listed_names() -> set[str]:
    """Names listed in engine/requirements.txt whatever their platform markers (MetaTrader5
    installs on Windows only; its import name is its distribution name)."""
    lines = (ROOT / "engine" / "requirements.txt").read_text().splitlines()
    return {
        Requirement(x.split("#", 1)[0].strip()).name for x in lines if x.split("#", 1)[0].strip()
    }


def _allowed_top_level() -> set[str]:
    closure = _requirement_closure()
    return {
        mod
        for mod, dists in md.packages_distributions().items()
        if any(_norm(d) in closure for d in dists)
    }


def test_engine_modules_when_imported_then_no_platform_or_heavy_package_is_loaded() -> None:
    code = (
        "import importlib, sys\n"
        f"for m in {_engine_modules()!r}: importlib.import_module(m)\n"
        f"bad = sorted({{n.split('.')[0] for n in sys.modules}} & {FORBIDDEN!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "", f"engine pulled in: {out.stdout.strip()}"


def test_engine_source_when_scanned_then_every_import_is_stdlib_engine_or_a_listed_requirement() -> (
    None
):
    allowed = (
        _allowed_top_level()
        | _listed_names()
        | set(sys.stdlib_module_names)
        | {"engine", "__future__"}
    )
    offenders: list[str] = []
    for path in (ROOT / "engine").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):  # lazy imports inside functions too
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [
                f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] not in allowed
            ]
    assert not offenders, f"imports not covered by engine/requirements.txt: {offenders}"


def test_engine_when_only_its_requirements_are_importable_then_every_module_and_lazy_dependency_imports() -> (
    None
):
    """A meta-path blocker refuses every top-level package that is neither stdlib nor installed
    by engine/requirements.txt; all engine modules and the optional back ends must import."""
    allowed = sorted(_allowed_top_level() | {"engine"})
    code = (
        "import importlib, sys\n"
        f"ALLOWED = set({allowed!r}) | set(sys.stdlib_module_names)\n"
        "class Blocker:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        top = name.split('.')[0]\n"
        "        if top not in ALLOWED and not top.startswith('_'):\n"
        "            raise ModuleNotFoundError(f'blocked: {name} is not in engine/requirements.txt', name=name)\n"
        "        return None\n"
        "sys.meta_path.insert(0, Blocker())\n"
        f"for m in {_engine_modules()!r}: importlib.import_module(m)\n"
        "for m in ('onnxruntime', 'psycopg', 'prometheus_client', 'httpx', 'redis'): importlib.import_module(m)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_engine_requirements_name_no_platform_package() -> None:
    req = (ROOT / "engine" / "requirements.txt").read_text().lower()
    for pkg in ("feast", "mlflow", "torch", "airflow", "bentoml", "pandas"):
        assert f"\n{pkg}" not in req
