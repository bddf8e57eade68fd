"""Gateway settings (engine.mt5.settings) and opening the configured terminal."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from engine.mt5.gateway import open_configured_terminal
from engine.mt5.settings import MT5Settings
from engine.mt5.sim import SimulatedTerminal

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def _env_names() -> set[str]:
    names = set()
    for name, f in MT5Settings.model_fields.items():
        aliases = getattr(f.validation_alias, "choices", None)
        names |= set(aliases) if aliases else {f"TX_MT5_{name.upper()}"}
    return names


def test_env_example_when_read_then_documents_every_gateway_setting() -> None:
    documented = set(
        re.findall(r"^#?\s*(TX_[A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M)
    )
    assert _env_names() - documented == set()


def test_settings_when_read_from_env_then_password_is_secret_and_old_names_still_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TX_MT5_MODE", "bridge")
    monkeypatch.setenv("TX_MT5_LOGIN", "5012345")
    monkeypatch.setenv("TX_MT5_PASSWORD", "hunter2")
    monkeypatch.setenv("TX_MT5_SERVER", "Broker-Demo")
    monkeypatch.setenv("TX_MT5_HOST", "10.1.2.3")  # the older name of the bridge host
    monkeypatch.setenv("TX_MT5_BRIDGE_PORT", "8001")
    monkeypatch.setenv("TX_BROKER_TZ", "ny-close")
    s = MT5Settings()
    assert (s.mode, s.login, s.server, s.bridge_host, s.bridge_port) == (
        "bridge",
        5012345,
        "Broker-Demo",
        "10.1.2.3",
        8001,
    )
    assert s.password_value() == "hunter2"
    assert "hunter2" not in repr(s) and "hunter2" not in str(s.model_dump())
    assert s.broker_tz == "ny-close"
    monkeypatch.setenv("TX_MT5_BRIDGE_HOST", "10.9.9.9")
    assert MT5Settings().bridge_host == "10.9.9.9"  # the new name wins


def test_settings_when_unset_then_no_credentials_and_sim_mode(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for var in ("TX_MT5_MODE", "TX_MT5_LOGIN", "TX_MT5_PASSWORD", "TX_MT5_SERVER", "TX_MT5_PATH"):
        monkeypatch.delenv(var, raising=False)
    s = MT5Settings()
    assert (s.mode, s.login, s.password, s.server, s.path) == ("sim", None, None, None, None)
    term = open_configured_terminal(s)
    assert isinstance(term, SimulatedTerminal) and term.account_info() is not None


def test_settings_when_bridge_is_down_then_configured_attempts_and_backoff_are_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import socket

    from engine.mt5.protocol import TerminalConnectionError

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once closed
    s = MT5Settings(
        mode="bridge",
        bridge_port=port,
        reconnect_attempts=3,
        reconnect_base_s=0.25,
        reconnect_max_s=0.4,
    )
    slept: list[float] = []
    with pytest.raises(TerminalConnectionError) as err:
        open_configured_terminal(s, sleep=slept.append)
    assert len(slept) == 2 and 0.2 <= slept[0] <= 0.3 and slept[1] <= 0.4 * 1.2
    assert f"127.0.0.1:{port}" in err.value.last_error[1]
