"""The engine fails safe, checked on the real engine with a real Redis, a real HTTP server and
the real simulated terminal (the process-level suite with SIGKILL/SIGSTOP is
``test_engine_faults.py``).

Each failure on the decision path becomes the bar's journaled refusal with a reason code and
a metric; bad feature bytes never trade; a 4xx from serving is never scored locally; the kill
answers while a decision is stuck; an intent stays reconcilable across repeated crashes; the
journal is scoped by account, magic and mode; the control API takes typed input only.
"""

from __future__ import annotations

import http.client
import json
import math
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.config import EngineSettings, RiskLimits
from engine.control import ControlServer
from engine.features import FeatureRow, InvalidFeatures, OnlineFeatureReader, redis_client
from engine.journal import Journal, JournalUnavailable, journal_scope, redact_dsn
from engine.loop import Engine, EngineBusy
from engine.online_format import encode_double, encode_timestamp, entity_key, field_hash
from engine.risk import TradingState
from engine.serving_client import (
    FallbackModel,
    ServingBadAnswer,
    ServingClient,
    ServingRejected,
)
from tests.unit.faults import (
    MONDAY_0800,
    ClockFeatures,
    Crash,
    FaultyTerminal,
    ScriptedModel,
    make_engine,
    sim_terminal,
)

pytestmark = pytest.mark.integration

VIEW, PROJECT = "trend_fv", "tx_failsafe_it"
TOKEN = "failsafe-it-token-0123456789"


def _reader(url: str, **kw: Any) -> OnlineFeatureReader:
    return OnlineFeatureReader(
        redis_client(url, 0.5), project=PROJECT, feature_view=VIEW, features=["f0", "f1"], **kw
    )


def _push(url: str, symbol: str, close: int, f0: bytes, f1: bytes | None = None) -> None:
    r = redis_client(url, 1.0)
    r.hset(
        entity_key("symbol", symbol, PROJECT),
        mapping={
            field_hash(VIEW, "f0"): f0,
            field_hash(VIEW, "f1"): f1 if f1 is not None else encode_double(0.5),
            f"_ts:{VIEW}".encode(): encode_timestamp(close),
        },
    )


# --- features validated at the reader -----------------------------------------------------
@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"\x08\x05", id="varint-field-1-is-not-a-double"),
        pytest.param(encode_double(1e300), id="out-of-range"),
        pytest.param(encode_double(math.nan), id="nan"),
        pytest.param(encode_double(math.inf), id="inf"),
        pytest.param(encode_double(1.0)[:5], id="truncated"),
        pytest.param(encode_double(1.0) + b"\x00", id="trailing-byte"),
        pytest.param(b"\x12\x03abc", id="string-value"),
        pytest.param(b"\x38\x01", id="bool-value"),
    ],
)
def test_reader_when_feature_bytes_are_not_a_sane_number_then_invalid_features(
    redis_url: str, raw: bytes
) -> None:
    _push(redis_url, "EURUSD", MONDAY_0800, raw)
    with pytest.raises(InvalidFeatures):
        _reader(redis_url).read("EURUSD")


def test_reader_when_values_are_fine_then_exact_doubles_float_and_int_are_read(
    redis_url: str,
) -> None:
    _push(redis_url, "GBPUSD", MONDAY_0800, encode_double(-0.25), b"\x20\x07")  # int64 7
    row = _reader(redis_url).read("GBPUSD")
    assert row.values == {"f0": -0.25, "f1": 7.0} and row.event_time == MONDAY_0800


def test_engine_when_features_are_invalid_then_no_order_and_invalid_features_row_and_metric(
    tmp_path: Path, redis_url: str
) -> None:
    now = [MONDAY_0800]
    term = FaultyTerminal(sim_terminal(now))
    e = make_engine(tmp_path, now, terminal=term, features=_reader(redis_url))
    for i, raw in enumerate([b"\x08\x05", encode_double(1e300), encode_double(math.nan)]):
        now[0] = MONDAY_0800 + 300 * i
        _push(redis_url, "EURUSD", now[0], raw)
        rec = e.on_bar("EURUSD", now[0])
        assert rec is not None and rec.reason_code == "invalid_features"
    assert term.sent == [] and e.positions() == ()
    assert e.journal.reason_counts() == {"invalid_features": 3}
    assert b'tx_engine_refusals_total{reason="invalid_features"} 3.0' in e.metrics.render()


def test_engine_when_redis_is_gone_then_features_unavailable_row_within_the_deadline(
    tmp_path: Path,
) -> None:
    now = [MONDAY_0800]
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    e = make_engine(tmp_path, now, features=_reader(f"redis://127.0.0.1:{port}/0"))
    rec = e.on_bar("EURUSD", now[0])
    assert rec is not None and rec.reason_code == "features_unavailable"
    assert "online store read failed" in (rec.reason or "")


# --- serving: outage versus refusal -------------------------------------------------------
class _Serving(BaseHTTPRequestHandler):
    status = 200
    body: Any = None

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        cls = type(self)
        payload = json.dumps(cls.body).encode() if not isinstance(cls.body, bytes) else cls.body
        self.send_response(cls.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture()
def serving() -> Iterator[str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Serving)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


class _Local:
    """A stand-in for the in-process bundle that records whether it was asked."""

    bundle_sha256 = "a" * 64

    def __init__(self) -> None:
        self.calls = 0

    def predict(self, row: FeatureRow) -> Any:
        self.calls += 1
        return ScriptedModel(1).predict(row)


ROW = FeatureRow("EURUSD", float(MONDAY_0800), {"f0": 0.1, "f1": 0.2})


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_fallback_when_serving_answers_4xx_then_serving_rejected_with_detail_and_no_local_score(
    serving: str, status: int
) -> None:
    _Serving.status, _Serving.body = status, {"detail": f"refused {status}"}
    local = _Local()
    model = FallbackModel(ServingClient(serving, 1.0), local, expected_sha256="a" * 64)  # type: ignore[arg-type]
    with pytest.raises(ServingRejected, match=f"refused {status}"):
        model.predict(ROW)
    assert local.calls == 0


@pytest.mark.parametrize("status", [500, 502, 503])
def test_fallback_when_serving_answers_5xx_then_the_expected_local_bundle_answers(
    serving: str, status: int
) -> None:
    _Serving.status, _Serving.body = status, {"detail": "down"}
    local = _Local()
    model = FallbackModel(ServingClient(serving, 1.0), local, expected_sha256="a" * 64)  # type: ignore[arg-type]
    assert model.predict(ROW).position == 1 and local.calls == 1


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        {"predictions": []},
        {
            "model_version": "1",
            "predictions": [{"position": 5, "decision": "x", "probabilities": {}}],
        },
        {
            "model_version": "1",
            "predictions": [
                {"position": 1, "decision": "long", "probabilities": {"long": float("nan")}}
            ],
        },
    ],
)
def test_engine_when_serving_answers_200_with_garbage_then_serving_bad_answer_row_no_order(
    tmp_path: Path, serving: str, body: Any
) -> None:
    _Serving.status, _Serving.body = 200, body
    now = [MONDAY_0800]
    term = FaultyTerminal(sim_terminal(now))
    e = make_engine(tmp_path, now, terminal=term, model=ServingClient(serving, 1.0))
    rec = e.on_bar("EURUSD", now[0])
    assert rec is not None and rec.reason_code == "serving_bad_answer" and term.sent == []
    with pytest.raises(ServingBadAnswer):
        ServingClient(serving, 1.0).predict(ROW)


# --- kill pre-empts -------------------------------------------------------------------------
class _StuckFeatures(ClockFeatures):
    """Feature reads that hang until released (a hung dependency inside the decision)."""

    def __init__(self, now: list[int]) -> None:
        super().__init__(now)
        self.entered = threading.Event()
        self.release = threading.Event()

    def read(self, symbol: str) -> FeatureRow:
        self.entered.set()
        self.release.wait(30)
        return super().read(symbol)


def test_kill_when_a_decision_is_stuck_then_it_answers_at_once_and_nothing_is_sent_after(
    tmp_path: Path,
) -> None:
    now = [MONDAY_0800]
    feats = _StuckFeatures(now)
    term = FaultyTerminal(sim_terminal(now))
    e = make_engine(tmp_path, now, terminal=term, features=feats)
    e.reconcile()
    worker = threading.Thread(target=e.on_bar, args=("EURUSD", now[0]))
    worker.start()
    assert feats.entered.wait(10)
    t0 = time.perf_counter()
    answer = e.kill(detail="test")
    latency = time.perf_counter() - t0
    status = e.status()
    with pytest.raises(EngineBusy):  # operator reads give up instead of piling up
        e.positions_view()
    feats.release.set()
    worker.join(30)
    assert answer["killed"] and answer["state"] == "HALTED" and latency < 1.0
    assert status["trading_state"] == "HALTED" and status["decision_in_flight"]
    assert term.sent == []  # the stuck bar wanted to buy: the kill came first
    row = e.journal.rows()[-1]
    assert row["reason_code"] == "kill_switch"
    assert e.risk.state.trading_state is TradingState.HALTED  # persisted after the bar
    assert e.journal.load_state("risk") and "kill_switch" in (e.journal.load_state("risk") or "")


# --- intents across repeated crashes ---------------------------------------------------------
class _CrashBeforeSend(FaultyTerminal):
    """Dies once right before the order reaches the broker."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.die_before = 1

    def order_send(self, request: dict[str, Any]) -> Any:
        if self.die_before:
            self.die_before -= 1
            raise Crash("engine died before order_send")
        return super().order_send(request)


def test_intent_when_the_engine_crashes_before_then_after_order_send_then_recovered_and_row_shows_it(
    tmp_path: Path,
) -> None:
    now = [MONDAY_0800]
    term = _CrashBeforeSend(sim_terminal(now), script=[None, "crash"])
    e1 = make_engine(tmp_path, now, terminal=term)
    with pytest.raises(Crash):
        e1.on_bar("EURUSD", now[0])  # crash 1: intent written, nothing sent
    e1.journal.close()
    e2 = make_engine(tmp_path, now, terminal=term)
    assert len(e2.reconcile()["not_sent"]) == 1
    term.script.popleft()  # the re-send passes the pass-through slot; the next one crashes
    term.script.appendleft("crash")
    with pytest.raises(Crash):
        e2.on_bar("EURUSD", now[0])  # crash 2: re-sent (intent pending again), then died
    e2.journal.close()
    e3 = make_engine(tmp_path, now, terminal=term)
    report = e3.reconcile()
    [it] = e3.journal.intents()
    assert report["recovered"] == [it.client_id] and it.status == "recovered"
    rec = e3.on_bar("EURUSD", now[0])
    assert rec is not None and rec.verdict == "sent" and len(e3.positions("EURUSD")) == 1
    assert len(term.sent) == 1  # one order reached the broker in all


# --- journal: fail closed, isolation, missing -------------------------------------------------
class _BrokenJournal(Journal):
    broken = False

    def _exec(self, sql: str, params: Any = ()) -> Any:
        if self.broken and not sql.lstrip().upper().startswith("SELECT"):
            raise JournalUnavailable("journal: OperationalError: database or disk is full")
        return super()._exec(sql, params)


def test_engine_when_the_journal_cannot_write_then_no_order_rows_kept_and_flushed_when_back(
    tmp_path: Path,
) -> None:
    now = [MONDAY_0800]
    term = FaultyTerminal(sim_terminal(now))
    j = _BrokenJournal(tmp_path / "j.sqlite")
    e = Engine(
        terminal=term,
        features=ClockFeatures(now),
        model=ScriptedModel(1),
        journal=j,
        limits=RiskLimits(),
        magic=5,
        clock=lambda: float(now[0]),
        sleep=lambda s: None,
    )
    j.broken = True
    for i in range(3):
        now[0] = MONDAY_0800 + 300 * i
        rec = e.on_bar("EURUSD", now[0])
        assert rec is not None and rec.reason_code == "journal_unavailable"
    assert term.sent == [] and not e.journal_up
    assert b"tx_engine_journal_up 0.0" in e.metrics.render()
    j.broken = False
    now[0] += 300
    rec = e.on_bar("EURUSD", now[0])
    assert rec is not None and rec.verdict == "sent" and e.journal_up
    assert len(e.journal.rows()) == 4  # the three refused bars were written when it came back


def test_journal_when_two_engines_and_a_backtest_share_one_database_then_each_sees_only_its_rows(
    tmp_path: Path,
) -> None:
    now = [MONDAY_0800]
    term = sim_terminal(now)
    a = make_engine(tmp_path, now, terminal=term, magic=1)
    b = make_engine(tmp_path, now, terminal=term, magic=2)
    a.on_bar("EURUSD", now[0])
    assert b.on_bar("EURUSD", now[0]) is not None  # not skipped: a's row is not b's
    bt = Journal(tmp_path / "j.sqlite", journal_scope(a.login, 1, "backtest"))
    assert bt.rows() == [] and bt.intents() == [] and not bt.decided("EURUSD", now[0])
    assert len(a.journal.rows()) == 1 and len(b.journal.rows()) == 1


def test_reconcile_when_the_journal_is_empty_but_positions_of_this_magic_exist_then_halted_until_resume(
    tmp_path: Path,
) -> None:
    now = [MONDAY_0800]
    term = sim_terminal(now)
    first = make_engine(tmp_path / "a", now, terminal=term, magic=9)
    first.on_bar("EURUSD", now[0])
    assert first.positions()
    # a new, empty journal; the model now wants to go short
    lost = make_engine(tmp_path / "b", now, terminal=term, magic=9, model=ScriptedModel(-1))
    report = lost.reconcile()
    assert report["journal_missing"] and lost.risk.state.state_reason == "journal_missing"
    now[0] += 300
    rec = lost.on_bar("EURUSD", now[0])
    assert rec is not None and rec.verdict == "refused" and rec.trading_state == "HALTED"
    assert [p.type for p in lost.positions()] == [0]  # still the long one: nothing was sent
    lost.resume()
    now[0] += 300
    rec = lost.on_bar("EURUSD", now[0])
    assert rec is not None and rec.verdict == "sent" and lost.status()["trading_state"] == "ACTIVE"


def test_settings_when_defaults_then_journal_under_tx_home_and_secrets_hidden(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TX_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TX_JOURNAL_PATH", raising=False)
    monkeypatch.delenv("TX_JOURNAL_URL", raising=False)
    monkeypatch.setenv("TX_MT5_PASSWORD", "hunter2-mt5")
    monkeypatch.setenv("TX_ENGINE_TOKEN", "hunter2-engine")
    monkeypatch.setenv("TX_SERVING_TOKEN", "hunter2-serving")
    s = EngineSettings()
    assert s.journal_target == str(tmp_path / "home" / "engine" / "journal.sqlite")
    assert "hunter2" not in repr(s) and "hunter2" not in str(s.model_dump())
    assert s.secret("mt5_password") == "hunter2-mt5"
    assert redact_dsn("postgresql://tx:s3cret@db:5432/j") == "postgresql://tx:***@db:5432/j"
    assert "s3cret" not in redact_dsn("host=db user=tx password=s3cret dbname=j")


# --- control API: typed input ---------------------------------------------------------------
@pytest.fixture()
def control(tmp_path: Path) -> Iterator[tuple[Engine, str]]:
    now = [MONDAY_0800]
    e = make_engine(tmp_path, now)
    e.on_bar("EURUSD", now[0])
    srv = ControlServer(e, token=TOKEN, port=0, timeout_s=1.0).start()
    try:
        yield e, srv.url
    finally:
        srv.stop()


AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.mark.parametrize(
    "body",
    [
        b'{"flatten": "no"}',
        b'{"flatten": 0}',
        b'{"flatten": null}',
        b"[true]",
        b'"x"',
        b"{not json",
        b'{"flatten": true, "also": 1}',
    ],
)
def test_kill_when_the_body_is_not_a_typed_object_then_400_and_nothing_changes(
    control: tuple[Engine, str], body: bytes
) -> None:
    e, url = control
    r = httpx.post(url + "/api/kill", content=body, headers=AUTH, timeout=5)
    assert r.status_code == 400 and "error" in r.json()
    assert not e.killed.is_set() and e.positions()  # no kill, no flatten


@pytest.mark.parametrize("length", ["-1", "abc", "99999999", "1e3"])
def test_post_when_content_length_is_bad_then_400_at_once(
    control: tuple[Engine, str], length: str
) -> None:
    _, url = control
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    conn.putrequest("POST", "/api/kill")
    conn.putheader("Authorization", AUTH["Authorization"])
    conn.putheader("Content-Length", length)
    conn.endheaders()
    assert conn.getresponse().status == 400


def test_post_when_the_client_sends_less_than_announced_then_the_connection_is_dropped(
    control: tuple[Engine, str],
) -> None:
    e, url = control
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(
            b"POST /api/kill HTTP/1.1\r\nHost: x\r\nAuthorization: "
            + AUTH["Authorization"].encode()
            + b"\r\nContent-Length: 100\r\n\r\n{"
        )
        t0 = time.monotonic()
        data = s.recv(65536)  # the server gives up after its 1 s socket timeout
        assert time.monotonic() - t0 < 8 and b" 200 " not in data
    assert not e.killed.is_set()


@pytest.mark.parametrize("limit", ["abc", "-1", "0", "501", "1.5"])
def test_decisions_when_limit_is_not_an_integer_in_range_then_400(
    control: tuple[Engine, str], limit: str
) -> None:
    _, url = control
    r = httpx.get(url + "/api/decisions", params={"limit": limit}, headers=AUTH, timeout=5)
    assert r.status_code == 400


def test_kill_when_flatten_is_a_json_boolean_then_it_is_obeyed(
    control: tuple[Engine, str],
) -> None:
    e, url = control
    r = httpx.post(url + "/api/kill", json={"flatten": True}, headers=AUTH, timeout=5)
    assert r.status_code == 200 and r.json()["killed"] and e.positions() == ()


def test_console_when_served_then_csp_frame_and_nosniff_headers(
    control: tuple[Engine, str],
) -> None:
    _, url = control
    r = httpx.get(url + "/", timeout=5)
    csp = r.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp and "sha256-" in csp
    assert r.headers["X-Frame-Options"] == "DENY"
    assert r.headers["X-Content-Type-Options"] == "nosniff"
