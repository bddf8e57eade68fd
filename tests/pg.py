"""A scratch PostgreSQL database for a test: created on the machine's server, dropped after.

Named per test module and process (``tx_test_<module>_<pid>``), so two test runs on one
server never drop each other's databases and a test never touches one it did not create.
Skips with the reason when no server answers (``TX_TEST_REQUIRE=postgres`` turns that skip
into a failure, see ``tests/require_deps.py``)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

ADMIN = os.environ.get("TX_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def database_name(label: str) -> str:
    """``tx_test_<label>_<pid>``, a valid unquoted PostgreSQL identifier (<= 63 chars)."""
    safe = re.sub(r"[^a-z0-9_]", "_", label.lower())
    suffix = f"_{os.getpid()}"
    return ("tx_test_" + safe)[: 63 - len(suffix)] + suffix


@contextmanager
def scratch_database(name: str) -> Iterator[str]:
    """Create database ``name`` (dropping a leftover of the same name first), yield its
    ``postgresql://`` URL, drop it afterwards (``WITH (FORCE)``: open sessions too)."""
    psycopg = pytest.importorskip("psycopg")
    try:
        admin = psycopg.connect(ADMIN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL at {ADMIN}: {exc}")
    admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.execute(f"CREATE DATABASE {name}")
    try:
        yield ADMIN.rsplit("/", 1)[0] + f"/{name}"
    finally:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()
