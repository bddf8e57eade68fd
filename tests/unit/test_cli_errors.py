"""The mistakes a new user makes, through the real ``tx`` app: each answers with one line,
``error: what happened (what to do)``, on stderr (at most 3 lines in all) and a non-zero exit.

Every case runs against real components: a closed port for "Redis down", a private
redis-server (tests/conftest.py) where Redis must be up, a real MLflow registry in a temp dir.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from typer.testing import CliRunner

from titanovax.redis_local import free_port

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
TX = Path(sys.executable).with_name("tx")


@dataclass
class Mistake:
    args: list[str]
    env: dict[str, str]
    error: str  # in the one error line
    hint: str  # in the (what to do) part
    code: int
    needs: tuple[str, ...] = field(default_factory=tuple)  # "redis", "registry"


CLOSED = f"redis://127.0.0.1:{free_port()}/0"
DAY = ["--start", "2026-01-05", "--end", "2026-01-06"]

MISTAKES: dict[str, Mistake] = {
    "redis_down": Mistake(
        ["features", "materialize", *DAY],
        {"TX_REDIS_URL": CLOSED},
        "is not reachable",
        "redis-server",
        1,
    ),
    "redis_url_unset_for_online_work": Mistake(
        ["data", "backfill", *DAY], {}, "TX_REDIS_URL is not set", "redis-server --port", 2
    ),
    "backfill_before_features_apply": Mistake(
        ["data", "backfill", *DAY],
        {},
        "Feast repo is not applied",
        "tx features apply",
        1,
        ("redis",),
    ),
    "materialize_before_features_apply": Mistake(
        ["features", "materialize", *DAY],
        {},
        "Feast repo is not applied",
        "tx features apply",
        1,
        ("redis",),
    ),
    "promote_a_version_that_does_not_exist": Mistake(
        ["models", "promote", "99"],
        {},
        "has no version 99",
        "registered versions: 1",
        1,
        ("registry",),
    ),
    "promote_with_nothing_registered": Mistake(
        ["models", "promote", "99"], {}, "no version of model", "tx models train", 1
    ),
    "unknown_timeframe": Mistake(
        ["data", "ingest", *DAY],
        {"TX_TIMEFRAME": "M7"},
        "TX_TIMEFRAME='M7': 'M7' is not an MT5 timeframe",
        "M1, M5, M15, M30, H1, H4, D1",
        2,
    ),
    "unknown_broker_rule": Mistake(
        ["data", "ingest", *DAY],
        {"TX_BROKER_TZ": "foo"},
        "TX_BROKER_TZ='foo': unknown broker time rule",
        "eet",
        2,
    ),
    "empty_symbols": Mistake(
        ["data", "ingest", *DAY], {"TX_SYMBOLS": ""}, "TX_SYMBOLS=''", "TX_SYMBOLS=EURUSD", 2
    ),
    "boolean_that_is_not_one": Mistake(
        ["models", "aliases"],
        {"TX_DAG_CATCHUP": "maybe"},
        "TX_DAG_CATCHUP='maybe'",
        "true or false",
        2,
    ),
    "unknown_feature_service": Mistake(
        ["features", "get", *DAY, "--out", "x.parquet", "--service", "trend_v3"],
        {},
        "Invalid value for '--service': 'trend_v3'",
        "'trend_v1', 'trend_v2'",
        2,
    ),
    "unknown_engine_mode": Mistake(
        ["engine", "run", "--mode", "bactest"],
        {},
        "Invalid value for '--mode'",
        "'live', 'paper', 'backtest'",
        2,
    ),
    "unknown_stream_writer": Mistake(
        ["features", "stream", "--writer", "redis"],
        {},
        "Invalid value for '--writer'",
        "'direct', 'feast'",
        2,
    ),
    "unknown_experiment_config": Mistake(
        ["models", "train", "--config", "trend_v9"],
        {},
        "no experiment config 'trend_v9'",
        "trend_v1",
        2,
    ),
    "train_before_features_apply": Mistake(
        ["models", "train", "--as-of", "2026-01-20"],
        {},
        "Feast repo is not applied",
        "tx features apply",
        1,
    ),
    "engine_backtest_without_its_span": Mistake(
        ["engine", "run", "--mode", "backtest"],
        {},
        "a backtest needs its span",
        "--start and --end",
        2,
    ),
    "features_build_on_an_empty_lake": Mistake(
        ["features", "build", *DAY], {}, "no feature row built", "tx data backfill", 3
    ),
    "engine_backtest_without_bundle_or_serving": Mistake(
        ["engine", "run", "--mode", "backtest", "--start", "2026-01-06", "--end", "2026-01-07"],
        {"TX_SERVING_URL": CLOSED.replace("redis", "http")},
        "no model to backtest",
        "tx models pull champion",
        1,
    ),
}


@pytest.fixture
def tx_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A clean environment: no TX_* of the caller's, a private TX_HOME."""
    for name in list(os.environ):
        if name.startswith("TX_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("TX_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _register_one_version(home: Path) -> None:
    """A real registry with version 1 of tx_trend (no training needed to test the lookup)."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{home / 'mlflow.db'}"
    home.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(uri, uri)
    client.create_registered_model("tx_trend")
    art = home / "artifact"
    art.mkdir()
    client.create_model_version("tx_trend", art.as_uri())


def _stderr_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize("case", list(MISTAKES), ids=list(MISTAKES))
def test_mistake_when_made_then_one_error_line_with_its_hint_and_exit_code(
    case: str, tx_env: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    from titanovax.cli import app

    m = MISTAKES[case]
    if "redis" in m.needs:
        monkeypatch.setenv("TX_REDIS_URL", request.getfixturevalue("redis_url"))
    if "registry" in m.needs:
        _register_one_version(tx_env / "home")
    for k, v in m.env.items():
        monkeypatch.setenv(k, v)

    res = CliRunner().invoke(app, m.args)

    lines = _stderr_lines(res.stderr)
    errors = [line for line in lines if line.startswith("error: ")]
    assert res.exit_code == m.code, (res.exit_code, res.stderr, res.exception)
    assert len(lines) <= 3 and len(errors) == 1, res.stderr
    assert m.error in errors[0], errors[0]
    assert m.hint in errors[0].rsplit("(", 1)[-1] or m.hint in errors[0], errors[0]
    assert "Traceback" not in res.output


def test_misspelt_variable_when_set_then_a_warning_names_the_likely_setting(
    tx_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from titanovax.cli import app

    monkeypatch.setenv("TX_SYMBOL", "GBPUSD")

    res = CliRunner().invoke(app, ["features", "catalog"])

    assert res.exit_code == 0
    warnings = [line for line in _stderr_lines(res.stderr) if line.startswith("warning: ")]
    assert warnings == [
        "warning: TX_SYMBOL is not a TitanovaX setting and is ignored (did you mean TX_SYMBOLS?)"
    ]


def test_debug_flag_when_an_error_happens_then_the_trace_is_shown(
    tx_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from titanovax.cli import app
    from titanovax.errors import TxError

    res = CliRunner().invoke(app, ["--debug", "models", "promote", "99"])

    assert res.exit_code != 0
    assert isinstance(res.exception, TxError)  # the exception escapes: Typer prints its trace


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (["promote", "99"], "models promote"),
        (["ingest", *DAY], "data ingest"),
        (["train", "--experiment", "trend_v9"], "models train"),
    ],
)
def test_old_spelling_when_used_then_it_still_runs_and_names_the_new_command(
    old: list[str], new: str, tx_env: Path
) -> None:
    from titanovax.cli import app

    res = CliRunner().invoke(app, old)

    notice = _stderr_lines(res.stderr)[0]
    assert notice == f"warning: `tx {old[0]}` is deprecated; use `tx {new}`"
    assert "Traceback" not in res.output


@pytest.mark.slow  # a fresh `tx` process per case (about 20 s of imports each)
@pytest.mark.parametrize(
    "case", ["unknown_timeframe", "promote_with_nothing_registered", "unknown_feature_service"]
)
def test_mistake_when_made_through_the_installed_tx_then_stderr_is_one_line(
    case: str, tmp_path: Path
) -> None:
    m = MISTAKES[case]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TX_")}
    env.update({"TX_HOME": str(tmp_path / "home"), **m.env})

    proc = subprocess.run(
        [str(TX), *m.args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )

    assert proc.returncode == m.code, proc.stderr
    lines = _stderr_lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: ") and m.error in lines[0], proc.stderr
    assert m.hint in lines[0]
    assert proc.stdout == ""
    assert "\x1b[" not in proc.stderr  # no ANSI colours when stderr is not a terminal
