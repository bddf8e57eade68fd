"""Turn the quiet skips of expected dependencies into failures (``TX_TEST_REQUIRE``).

Some tests skip when PostgreSQL, headless Chromium or the shared real MT5 exports are missing,
which is right on a laptop and wrong in CI, where they are expected: a missing one would
leave CI green with those tests silently not run. ``TX_TEST_REQUIRE=postgres,chromium,exports``
(CI sets it in ``.ci/run``) makes a skip whose reason names a required dependency a failure
that says which one is missing. Hooks imported by ``tests/conftest.py``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Generator
from typing import Any

import pytest

ENV = "TX_TEST_REQUIRE"
# what each dependency's skip reasons say (tests/conftest.py, test_journal_postgres.py,
# test_training_tune.py, test_console.py, the real-export tests)
REASONS: dict[str, str] = {
    "postgres": r"PostgreSQL|could not import 'psycopg'|could not import 'sqlalchemy'",
    "chromium": r"Chromium|chromedriver",
    "exports": r"MT5 exports|shared/data/raw|\.csv (?:is )?not in",
}


def required() -> list[str]:
    """The dependencies named in ``TX_TEST_REQUIRE`` (unknown names are an error)."""
    names = [n.strip() for n in os.environ.get(ENV, "").split(",") if n.strip()]
    unknown = sorted(set(names) - set(REASONS))
    if unknown:
        raise pytest.UsageError(f"{ENV}: unknown dependency {unknown}; known: {sorted(REASONS)}")
    return names


def pytest_configure(config: pytest.Config) -> None:
    required()  # fail at start on a misspelt name, not after the run


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[Any]
) -> Generator[None, Any, None]:
    outcome = yield
    rep = outcome.get_result()
    if not rep.skipped or hasattr(rep, "wasxfail"):
        return
    reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
    for dep in required():
        if re.search(REASONS[dep], reason):
            rep.outcome = "failed"
            rep.longrepr = f"{ENV} includes {dep!r}, but this test skipped: {reason}"
            return
