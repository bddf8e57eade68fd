"""Shared fixtures. Every test writes only into its own temp dirs, its own private Redis
server (a real redis-server on a free port, stopped at the end) and its own MLflow store."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

RAW = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "raw"


def raw_exports_dir() -> Path:
    env = os.environ.get("TX_TEST_RAW_EXPORTS")
    return Path(env) if env else RAW


@pytest.fixture(scope="session")
def raw_dir() -> Path:
    d = raw_exports_dir()
    if not d.is_dir() or not any(d.glob("*.csv")):
        pytest.skip(f"real MT5 exports not found at {d} (../shared/data/raw); the synthetic market covers the core suite")
    return d


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    from infra.redis_local import LocalRedis

    with LocalRedis() as srv:
        yield srv.url
