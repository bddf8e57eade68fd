"""Analyst access: `tx features get` (point in time, through Feast) and the feast CLI on the repo."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from feature_repo.pipeline.store import SEQ_VIEW, V2_VIEW, feast_env, frames_for_range
from feature_repo.pipeline.transforms import FEATURE_NAMES, SEQ_CHANNELS, SEQ_FIELD, SEQ_LEN
from tests.conftest import Platform
from titanovax.settings import FEATURE_REPO

pytestmark = pytest.mark.integration


def _env(p: Platform, monkeypatch: pytest.MonkeyPatch) -> None:
    s = p.settings
    monkeypatch.setenv("TX_HOME", str(s.home))
    monkeypatch.setenv("TX_REDIS_URL", str(s.redis_url))
    monkeypatch.setenv("TX_SYMBOLS", ",".join(s.symbols))
    monkeypatch.setenv("TX_TIMEFRAME", s.timeframe)


def test_features_get_when_asked_for_trend_v2_then_writes_point_in_time_rows_at_every_bar_close(
    platform: Platform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from titanovax.cli import app

    _env(platform, monkeypatch)
    out = tmp_path / "v2.parquet"
    res = CliRunner().invoke(
        app,
        [
            "features",
            "get",
            "--service",
            "trend_v2",
            "--symbols",
            "EURUSD,GBPUSD",
            "--start",
            "2026-01-13",
            "--end",
            "2026-01-14",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    df = pd.read_parquet(out)
    assert len(df) == 2 * 288 and set(df["symbol"]) == {"EURUSD", "GBPUSD"}
    assert not df[list(FEATURE_NAMES)].isna().any().any()
    assert df[SEQ_FIELD].map(len).eq(SEQ_LEN * len(SEQ_CHANNELS)).all()
    s = platform.settings
    for sym in ("EURUSD", "GBPUSD"):
        got = df[df["symbol"] == sym].set_index(
            pd.to_datetime(df.loc[df["symbol"] == sym, "event_timestamp"], utc=True)
        )
        frames = frames_for_range(
            s, sym, "M5", pd.Timestamp("2026-01-13", tz="UTC"), pd.Timestamp("2026-01-14", tz="UTC")
        )
        want = frames[V2_VIEW].set_index("event_timestamp")
        np.testing.assert_array_equal(
            got[list(FEATURE_NAMES)].to_numpy(float),
            want.loc[got.index, list(FEATURE_NAMES)].to_numpy(float),
        )
        seq = frames[SEQ_VIEW].set_index("event_timestamp")
        t = got.index[100]
        np.testing.assert_array_equal(
            np.asarray(got.loc[t, SEQ_FIELD], np.float32), seq.loc[t, SEQ_FIELD]
        )


def test_feast_cli_when_run_with_tx_features_env_then_lists_the_views_and_services(
    platform: Platform,
) -> None:
    feast_bin = str(Path(sys.executable).with_name("feast"))
    env = {**os.environ, **feast_env(platform.settings)}
    views = subprocess.run(
        [feast_bin, "feature-views", "list"],
        cwd=FEATURE_REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    for v in ("trend_fv", "trend_v2_fv", "bar_sequence_fv"):
        assert v in views.stdout
    services = subprocess.run(
        [feast_bin, "feature-services", "list"],
        cwd=FEATURE_REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "trend_v1" in services.stdout and "trend_v2" in services.stdout


def test_feast_ui_when_started_on_the_repo_then_serves_the_page_and_the_registry(
    platform: Platform,
) -> None:
    import httpx

    from titanovax.redis_local import free_port

    feast_bin = str(Path(sys.executable).with_name("feast"))
    env = {**os.environ, **feast_env(platform.settings)}
    port = free_port()
    proc = subprocess.Popen(
        [feast_bin, "ui", "--host", "127.0.0.1", "--port", str(port)],
        cwd=FEATURE_REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        base, page = f"http://127.0.0.1:{port}", None
        for _ in range(120):
            if proc.poll() is not None:
                pytest.fail(
                    f"feast ui exited {proc.returncode}: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}"
                )
            try:
                page = httpx.get(f"{base}/", timeout=2)
                break
            except httpx.TransportError:
                import time

                time.sleep(0.5)
        assert page is not None and page.status_code == 200 and "<html" in page.text.lower()
        project = platform.settings.feast_project
        views = httpx.get(f"{base}/api/v1/feature_views", params={"project": project}, timeout=30)
        assert views.status_code == 200, views.text[:500]
        for view in ("trend_fv", "trend_v2_fv", "bar_sequence_fv"):
            assert view in views.text
    finally:
        proc.terminate()
        proc.wait(timeout=20)
