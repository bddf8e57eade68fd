"""`titanovax.progress` on a real pseudo-terminal (``script``): a log line written while the
bar shows goes on a line of its own above the bar, never glued to the bar's text; in a pipe
there is no bar at all."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SNIPPET = """
import logging, time
from titanovax.progress import progress
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
log = logging.getLogger("tx.test")
with progress("work", 3) as advance:
    for i in range(3):
        advance()
        time.sleep(0.15)  # the bar refreshes (10 per second) between the lines
        log.warning("step %d done", i)
log.warning("after the bar")
"""


def _lines(raw: str) -> list[str]:
    """The lines a terminal would show: escape sequences dropped, split on CR and LF."""
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw)
    return [line for line in re.split(r"[\r\n]+", text) if line.strip()]


def test_progress_when_logging_while_the_bar_shows_then_each_log_line_stands_alone(
    tmp_path: Path,
) -> None:
    script = shutil.which("script")
    if script is None:
        pytest.skip("util-linux `script` (a pseudo-terminal) is not installed")
    typescript = tmp_path / "tty.log"
    cmd = f"{sys.executable} -c '{SNIPPET}'"
    subprocess.run(
        [script, "-qec", cmd, str(typescript)],
        cwd=ROOT,
        check=True,
        timeout=60,
        stdout=subprocess.DEVNULL,
        env={"PATH": "/usr/bin:/bin", "TERM": "xterm", "COLUMNS": "120"},
    )
    lines = _lines(typescript.read_text(errors="replace"))
    logged = [line for line in lines if "WARNING tx.test" in line]
    assert [line.split(": ", 1)[1] for line in logged] == [
        "step 0 done",
        "step 1 done",
        "step 2 done",
        "after the bar",
    ], lines
    assert all(line.startswith("WARNING tx.test") for line in logged), logged  # not after a bar
    assert any(re.search(r"work.*\d/3", line) for line in lines), lines  # the bar showed


def test_progress_when_stderr_is_a_pipe_then_no_bar_and_the_logs_are_plain() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SNIPPET],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.stderr.splitlines() == [
        "WARNING tx.test: step 0 done",
        "WARNING tx.test: step 1 done",
        "WARNING tx.test: step 2 done",
        "WARNING tx.test: after the bar",
    ]
