"""Restart backoff for the stack's supervised services (stdlib only: it runs before every
start of every service, so it must import in milliseconds).

circus respawns a dead process at once; its flapping plugin's hold-back is a cast that the
arbiter refuses while it is busy respawning (circus 0.18), so a crash-looping service would
restart about once a second. Every watcher of ``tx stack`` therefore starts as
``python -m titanovax.restart_backoff <state file> -- ARGV…``: this records the start time
in the state file and, when the service already started ``ATTEMPTS`` times within
``WINDOW_S`` seconds, sleeps ``BASE_S * 2**(extra starts)`` (capped at ``MAX_S``) before it
``exec``s ARGV, so the PID circus watches becomes the service's own.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

ATTEMPTS = 3  # starts inside the window before the backoff begins
WINDOW_S = 60.0
BASE_S = 10.0
MAX_S = 60.0


def delay(starts: list[float], now: float) -> float:
    """Seconds to wait before this start, given earlier start times."""
    recent = [t for t in starts if now - t <= WINDOW_S]
    if len(recent) < ATTEMPTS:
        return 0.0
    return min(BASE_S * 2 ** (len(recent) - ATTEMPTS), MAX_S)


def record(path: Path, now: float) -> float:
    """Read the start history, return the delay for a start at ``now`` and store it."""
    try:
        starts = [float(t) for t in json.loads(path.read_text())]
    except (OSError, ValueError, TypeError):
        starts = []
    wait = delay(starts, now)
    kept = [t for t in starts if now - t <= WINDOW_S] + [now + wait]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(kept))
    tmp.replace(path)
    return wait


def main(args: list[str]) -> None:
    split = args.index("--")
    state, argv = Path(args[0]), args[split + 1 :]
    wait = record(state, time.time())
    if wait:
        print(
            f"restart backoff: {state.stem} started {ATTEMPTS}+ times within {WINDOW_S:.0f} s;"
            f" waiting {wait:.0f} s",
            file=sys.stderr,
            flush=True,
        )
        time.sleep(wait)
    os.execv(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
