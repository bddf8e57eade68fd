"""The control API (authenticated) and the operator console in a real headless Chromium, over a
real engine on the simulated terminal: the page shows state and positions, Kill halts."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.config import RiskLimits
from engine.control import ControlServer
from engine.journal import Journal
from engine.loop import Engine
from tests.unit.faults import MONDAY_0800, ClockFeatures, ScriptedModel, closes, sim_terminal

pytestmark = pytest.mark.e2e

TOKEN = "console-test-token"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture()
def running(tmp_path: Path) -> Iterator[tuple[Engine, str]]:
    now = [MONDAY_0800]
    engine = Engine(
        terminal=sim_terminal(now),
        features=ClockFeatures(now),
        model=ScriptedModel(1),
        journal=Journal(tmp_path / "j.sqlite"),
        limits=RiskLimits(),
        magic=77,
        clock=lambda: float(now[0]),
        sleep=lambda s: None,
        reload_hook=lambda: {"reloaded": True, "model_version": "7"},
    )
    engine.replay(closes(n=3), ["EURUSD", "GBPUSD"], lambda t: now.__setitem__(0, t))
    server = ControlServer(engine, token=TOKEN, port=0).start()
    try:
        yield engine, server.url
    finally:
        server.stop()


def test_control_server_when_no_token_is_configured_then_it_refuses_to_start(
    tmp_path: Path,
) -> None:
    with pytest.raises(ValueError, match="TX_ENGINE_TOKEN"):
        ControlServer(object(), token=None, port=0)


def test_control_api_when_called_without_or_with_a_wrong_token_then_401(
    running: tuple[Engine, str],
) -> None:
    _, url = running
    assert httpx.get(f"{url}/api/status").status_code == 401
    assert (
        httpx.post(f"{url}/api/kill", headers={"Authorization": "Bearer nope"}, json={}).status_code
        == 401
    )
    assert httpx.get(f"{url}/metrics").status_code == 401
    assert httpx.get(f"{url}/healthz").status_code == 200


def test_control_api_when_authenticated_then_status_positions_pnl_kill_flatten_resume_reload(
    running: tuple[Engine, str],
) -> None:
    engine, url = running
    h = {"Authorization": f"Bearer {TOKEN}"}
    st = httpx.get(f"{url}/api/status", headers=h).json()
    assert st["trading_state"] == "ACTIVE" and st["decisions"] == {"sent": 2, "hold": 4}
    pos = httpx.get(f"{url}/api/positions", headers=h).json()
    assert sorted(p["symbol"] for p in pos) == ["EURUSD", "GBPUSD"] and all(
        p["side"] == "buy" for p in pos
    )
    pnl = httpx.get(f"{url}/api/pnl", headers=h).json()
    assert pnl["equity"] == pytest.approx(pnl["balance"] + pnl["floating"], abs=0.02)
    assert len(httpx.get(f"{url}/api/decisions?limit=4", headers=h).json()) == 4

    out = httpx.post(f"{url}/api/kill", headers=h, json={"flatten": True}).json()
    assert out["state"] == "HALTED" and len(out["flattened"]) == 2 and engine.positions() == ()
    assert httpx.post(f"{url}/api/resume", headers=h).json() == {"state": "ACTIVE"}
    assert httpx.post(f"{url}/api/reload", headers=h).json() == {
        "reloaded": True,
        "model_version": "7",
    }


def test_metrics_when_scraped_then_stage_latency_decisions_refusals_orders_equity_and_feature_age_are_there(
    running: tuple[Engine, str],
) -> None:
    engine, url = running
    engine.kill()
    engine.clock = lambda: float(MONDAY_0800 + 3600)
    engine.features = ClockFeatures([MONDAY_0800 + 3600])
    engine.model = ScriptedModel(-1)
    assert engine.on_bar("EURUSD", MONDAY_0800 + 3600).reason_code == "kill_switch"  # type: ignore[union-attr]
    text = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    for needle in (
        'tx_engine_stage_latency_seconds_count{stage="predict"}',
        'tx_engine_stage_latency_seconds_count{stage="order"}',
        'tx_engine_decisions_total{verdict="sent"} 2.0',
        'tx_engine_refusals_total{reason="kill_switch"} 1.0',
        'tx_engine_orders_total{retcode="10009"} 2.0',
        "tx_engine_equity ",
        "tx_engine_drawdown_ratio ",
        'tx_engine_feature_age_seconds{symbol="EURUSD"}',
        'tx_engine_trading_state{state="HALTED"} 1.0',
    ):
        assert needle in text, needle


@contextmanager
def _connected_console(url: str) -> Iterator[tuple[Any, Any]]:
    """Headless Chromium on the console at ``url``, connected with the token: the driver and
    a 20 s wait; the browser quits afterwards."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        driver.get(url + "/")
        driver.find_element(By.ID, "token").send_keys(TOKEN)
        driver.find_element(By.ID, "connect").click()
        yield driver, WebDriverWait(driver, 20)
    finally:
        driver.quit()


@pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and shutil.which(CHROMEDRIVER)),
    reason="headless Chromium not installed (make setup)",
)
def test_console_when_opened_in_chromium_then_shows_state_and_positions_and_kill_halts(
    running: tuple[Engine, str],
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    engine, url = running
    with _connected_console(url) as (driver, wait):
        wait.until(ec.text_to_be_present_in_element((By.ID, "state"), "ACTIVE"))
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#positions tr")) == 2)
        rows = driver.find_elements(By.CSS_SELECTOR, "#positions tr")
        assert sorted(r.find_elements(By.TAG_NAME, "td")[1].text for r in rows) == [
            "EURUSD",
            "GBPUSD",
        ]
        assert "equity" in driver.find_element(By.ID, "pnl").text

        driver.find_element(By.ID, "flatten").click()
        driver.find_element(By.ID, "reason").send_keys("console test")
        driver.find_element(By.ID, "kill").click()
        wait.until(ec.alert_is_present())
        driver.switch_to.alert.accept()
        wait.until(ec.text_to_be_present_in_element((By.ID, "state"), "HALTED"))
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#positions tr")) == 0)
        assert "kill_switch" in driver.find_element(By.ID, "state-reason").text
        assert engine.status()["trading_state"] == "HALTED" and engine.positions() == ()
        # the history panel shows the audit row of that kill (GET /api/audit)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#history tr")) == 1)
        cells = [
            c.text
            for c in driver.find_elements(By.CSS_SELECTOR, "#history tr")[0].find_elements(
                By.TAG_NAME, "td"
            )
        ]
        assert cells[1:5] == ["flatten", "operator", "ACTIVE → HALTED", "console test"], cells
        assert cells[5] == "flattened 2 position(s)"


def test_control_api_explain_when_asked_then_explains_the_decision_or_names_the_bad_field(
    running: tuple[Engine, str],
) -> None:
    engine, url = running
    h = {"Authorization": f"Bearer {TOKEN}"}
    first = engine.journal.rows()[0]
    r = httpx.get(
        f"{url}/api/explain",
        params={"symbol": "EURUSD", "bar": first["bar_close"]},
        headers=h,
        timeout=60,  # scikit-learn's first import takes seconds on a busy machine
    )
    assert r.status_code == 200, r.text
    ex = r.json()
    assert ex["bar_close"] == first["bar_close"] and ex["decision"] == "long"
    assert "the model said LONG" in ex["text"] and "Fill: open:buy 0.1 lots" in ex["text"]
    assert ex["similar"] == []  # the first bar has nothing before it
    later = httpx.get(
        f"{url}/api/explain",
        params={"symbol": "EURUSD", "bar": first["bar_close"] + 600},
        headers=h,
        timeout=60,
    ).json()
    assert sorted(s["bar_close"] for s in later["similar"]) == [
        first["bar_close"],
        first["bar_close"] + 300,
    ]
    assert httpx.get(f"{url}/api/explain?bar=1", headers=h).json()["error"].startswith("symbol")
    bad = httpx.get(f"{url}/api/explain?symbol=EURUSD&bar=soon", headers=h)
    assert bad.status_code == 400 and "bar must be" in bad.json()["error"]
    assert httpx.get(f"{url}/api/explain?symbol=EURUSD&bar=5", headers=h).status_code == 404
    assert httpx.get(f"{url}/api/explain?symbol=EURUSD&bar=5").status_code == 401


def _click(wait: Any, selector: str) -> None:
    """Click ``selector``, again if the console re-rendered the table between the look-up
    and the click (its periodic refresh replaces the rows: a stale element)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    def attempt(d: Any) -> bool:
        try:
            d.find_element(By.CSS_SELECTOR, selector).click()
        except StaleElementReferenceException:
            return False
        return True

    wait.until(attempt)


@pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and shutil.which(CHROMEDRIVER)),
    reason="headless Chromium not installed (make setup)",
)
def test_console_when_a_decision_is_clicked_then_its_explanation_is_shown(
    running: tuple[Engine, str],
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    engine, url = running
    with _connected_console(url) as (driver, wait):
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#decisions tr")) == 6)
        # the oldest EURUSD decision (it opened the position): the last EURUSD row
        target = engine.journal.rows()[0]
        sel = f'#decisions tr[data-symbol="EURUSD"][data-bar="{target["bar_close"]}"] td'
        _click(wait, sel)
        wait.until(ec.text_to_be_present_in_element((By.ID, "explanation"), "the model said LONG"))
        text = driver.find_element(By.ID, "explanation").text
        assert text.startswith("EURUSD, bar closing ")
        assert "Risk layer: allowed; target 0.1 lots, orders sent." in text
        assert "Fill: open:buy 0.1 lots at " in text
        assert "EURUSD" in driver.find_element(By.ID, "explain-of").text
        # a hold of the same symbol two bars later: the neighbours are the two earlier bars
        later = target["bar_close"] + 600
        _click(wait, f'#decisions tr[data-symbol="EURUSD"][data-bar="{later}"] td')
        wait.until(ec.text_to_be_present_in_element((By.ID, "explanation"), "nothing to do"))
        assert (
            "Similar past decisions (nearest 2 before this bar):"
            in driver.find_element(By.ID, "explanation").text
        )
