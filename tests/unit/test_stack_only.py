"""``tx stack up --only``: choosing a subset of the service table (without starting it)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from titanovax.stack import StackContext, StackError, StackSettings, load_secrets, select, services

pytestmark = pytest.mark.unit


def _table(tmp_path: Path) -> list:  # type: ignore[type-arg]
    ctx = StackContext(home=tmp_path, stack=StackSettings(), secrets=load_secrets(tmp_path / "s"))
    return services(ctx)


def test_select_when_names_given_then_those_rows_in_table_order(tmp_path: Path) -> None:
    table = _table(tmp_path)
    chosen = select(table, ["engine", "pusher"])
    assert [s.name for s in chosen] == ["pusher", "engine"]
    assert select(table, None) == table


def test_select_when_a_name_is_unknown_then_the_error_names_it_and_the_choices(
    tmp_path: Path,
) -> None:
    with pytest.raises(
        StackError, match=r"unknown service 'engin' for --only; choose from: .*engine"
    ):
        select(_table(tmp_path), ["engin", "pusher"])


def test_up_cli_when_only_names_an_unknown_service_then_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from titanovax.cli import app

    monkeypatch.setenv("TX_HOME", str(tmp_path))
    out = CliRunner().invoke(app, ["stack", "up", "--only", "engine,nope"])
    assert out.exit_code == 1
    assert "unknown service 'nope' for --only" in out.output
    assert not (tmp_path / "stack" / "circusd.pid").exists()  # nothing started
