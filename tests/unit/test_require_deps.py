"""``TX_TEST_REQUIRE`` turns the skip of an expected dependency into a failure (run in a child
pytest on a throwaway test file that skips the way the real ones do)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SKIPS = """
import pytest

def test_postgres():
    pytest.skip("no PostgreSQL at postgresql://postgres@127.0.0.1:5432/postgres: refused")

def test_exports():
    pytest.skip("EURUSD_H1__magiclovexxx_mt5_bot.csv not in ../shared/data/raw")

def test_other():
    pytest.skip("not on this platform")
"""


def _run(tmp_path: Path, require: str | None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_skips.py").write_text(SKIPS)
    env = {k: v for k, v in os.environ.items() if k != "TX_TEST_REQUIRE"}
    if require is not None:
        env["TX_TEST_REQUIRE"] = require
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.require_deps", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), str(tmp_path / "test_skips.py")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )  # fmt: skip


def test_require_when_unset_then_missing_dependencies_skip(tmp_path: Path) -> None:
    r = _run(tmp_path, None)
    assert r.returncode == 0 and "3 skipped" in r.stdout, r.stdout


def test_require_when_a_required_dependency_is_missing_then_its_test_fails(tmp_path: Path) -> None:
    r = _run(tmp_path, "postgres,exports")
    assert r.returncode == 1, r.stdout
    assert "2 failed, 1 skipped" in r.stdout
    assert "TX_TEST_REQUIRE includes 'postgres'" in r.stdout


def test_require_when_a_name_is_unknown_then_the_run_refuses_to_start(tmp_path: Path) -> None:
    r = _run(tmp_path, "postgress")
    assert r.returncode != 0 and "unknown dependency ['postgress']" in r.stdout + r.stderr
