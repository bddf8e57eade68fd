"""Progress for long ``tx`` commands: a Rich bar on a terminal, nothing in pipes and logs.

The bar goes to stderr (stdout stays for results and ``--json``) and only when stderr is a
TTY; otherwise :func:`progress` yields a callback that does nothing, so redirected output and
CI logs carry no control characters. Each long command ends with a summary line of counts.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager


def interactive() -> bool:
    """stderr is a terminal (and ``NO_COLOR``/``TERM=dumb`` do not ask for plain output)."""
    import os

    return sys.stderr.isatty() and os.environ.get("TERM") != "dumb"


@contextmanager
def progress(description: str, total: float | None) -> Iterator[Callable[..., None]]:
    """``advance(n=1, description=None)``: moves a Rich bar of ``total`` steps on a TTY."""
    if not interactive():
        yield lambda n=1, description=None: None
        return
    import logging

    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    real_stderr = sys.stderr
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=total)
        # log lines go above the bar: the handlers that write to the real stderr write, while
        # the bar shows, to the stream Rich put in its place (sys.stderr, redirected)
        moved = [
            h
            for h in logging.getLogger().handlers
            if isinstance(h, logging.StreamHandler) and h.stream is real_stderr
        ]
        for h in moved:
            h.setStream(sys.stderr)

        def advance(n: float = 1, description: str | None = None) -> None:
            if description:
                bar.update(task, advance=n, description=description)
            else:
                bar.update(task, advance=n)

        try:
            yield advance
        finally:
            for h in moved:
                h.setStream(real_stderr)
