"""The engine's control API and operator console (stdlib ``http.server`` in a thread).

Every endpoint but ``/`` (the static console page, which holds no data) and ``/healthz``
needs ``Authorization: Bearer <TX_ENGINE_TOKEN>``; the server refuses to start without a token.

=======  ==================  ====================================================
GET      ``/``               operator console (HTML + JS over the endpoints below)
GET      ``/healthz``        liveness, no auth
GET      ``/api/status``     trading state, risk figures, decision and refusal counts
GET      ``/api/positions``  open positions of this engine (its magic)
GET      ``/api/pnl``        balance, equity, floating and realised P&L, drawdown
GET      ``/api/decisions``  the newest journaled decisions (``?limit=N``, default 20)
GET      ``/api/audit``      the newest audit rows, newest first (``?limit=N``, default 20)
POST     ``/api/kill``       HALT; body ``{"flatten": true}`` also closes every position
POST     ``/api/resume``     back to ACTIVE (acknowledges open reconciliation mismatches)
POST     ``/api/reload``     re-open the model (serving client / ONNX bundle)
POST     ``/api/reduce``     REDUCING with reason ``monitor_reduce`` (monitoring actions)
GET      ``/metrics``        Prometheus text format
=======  ==================  ====================================================

**Input is typed.** A POST body is empty or a JSON object of at most 4 KiB with only the
endpoint's keys: ``/api/kill`` takes ``{"flatten": true|false}`` (a JSON boolean; ``"no"``,
``0`` or ``null`` are a 400, never truthiness); kill, resume, reload and reduce take an
optional ``"reason"`` (a JSON string of at most 500 characters); ``?limit`` is an integer
1-500. **Audit**: every POST is journaled (table ``audit``) with the actor from the
``X-TX-Actor`` header (default ``operator``; 1-64 printable characters, else a 400). A missing,
negative, non-numeric or oversized ``Content-Length``, a body that is not JSON or not an
object, or an unknown key is a 400 with a one-line reason. Each connection has a socket
timeout (``TX_ENGINE_CONTROL_TIMEOUT_S``), so a client that announces more bytes than it sends
cannot hold a thread. ``/api/kill`` never waits on the decision lock (see
:meth:`engine.loop.Engine.kill`). The console page is sent with a strict
Content-Security-Policy, ``X-Frame-Options: DENY`` and ``X-Content-Type-Options: nosniff``.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from prometheus_client import CONTENT_TYPE_LATEST

from engine.loop import EngineBusy

log = logging.getLogger(__name__)

CONSOLE = Path(__file__).with_name("console.html")
MAX_BODY = 4096
SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def console_csp(html: str) -> str:
    """A Content-Security-Policy that allows exactly the console's own inline script and
    style (by sha256) and fetches to this origin; nothing else."""
    import base64
    import hashlib
    import re

    def hashes(tag: str) -> str:
        return " ".join(
            "'sha256-" + base64.b64encode(hashlib.sha256(m.encode()).digest()).decode() + "'"
            for m in re.findall(rf"<{tag}>(.*?)</{tag}>", html, re.S)
        )

    return (
        f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
        "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )


POST_KEYS: dict[str, dict[str, type]] = {
    "/api/kill": {"flatten": bool, "reason": str},
    "/api/resume": {"reason": str},
    "/api/reload": {"reason": str},
    "/api/reduce": {"reason": str},
}
MAX_REASON = 500
MAX_ACTOR = 64


class BadRequest(ValueError):
    """A request the control API refuses with 400 (the message says why)."""


def parse_body(headers: Any, rfile: Any, allowed: dict[str, type]) -> dict[str, Any]:
    """The POST body as a validated object (see the module docstring); :class:`BadRequest`."""
    raw_len = headers.get("Content-Length")
    if headers.get("Transfer-Encoding"):
        raise BadRequest("Transfer-Encoding is not accepted; send a Content-Length")
    if raw_len is None or raw_len.strip() == "":
        return {}
    if not raw_len.strip().isdigit():
        raise BadRequest(f"Content-Length must be a non-negative integer, got {raw_len[:40]!r}")
    n = int(raw_len)
    if n > MAX_BODY:
        raise BadRequest(f"body of {n} bytes exceeds {MAX_BODY}")
    if n == 0:
        return {}
    data = rfile.read(n)
    if len(data) != n:
        raise BadRequest(f"body ended after {len(data)} of {n} bytes")
    try:
        body = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequest(f"body must be a JSON object, got {type(body).__name__}")
    for k, v in body.items():
        if k not in allowed:
            raise BadRequest(f"unknown field {k[:60]!r}; allowed: {sorted(allowed)}")
        if type(v) is not allowed[k]:
            raise BadRequest(f"{k} must be a JSON {allowed[k].__name__}, got {v!r:.60}")
        if isinstance(v, str) and len(v) > MAX_REASON:
            raise BadRequest(f"{k} must be at most {MAX_REASON} characters, got {len(v)}")
    return body


def parse_actor(headers: Any) -> str:
    """The ``X-TX-Actor`` header (default ``operator``); :class:`BadRequest` when empty,
    longer than 64 characters or not printable."""
    raw = headers.get("X-TX-Actor")
    if raw is None:
        return "operator"
    v = raw.strip()
    if not v or len(v) > MAX_ACTOR or not v.isprintable():
        raise BadRequest(f"X-TX-Actor must be 1-{MAX_ACTOR} printable characters, got {raw[:70]!r}")
    return v


def parse_limit(query: str) -> int:
    """``?limit=N`` → 1..500 (default 20); :class:`BadRequest` when not an integer."""
    vals = parse_qs(query).get("limit", ["20"])
    v = vals[-1].strip()
    if not (v.isdigit() and 1 <= int(v) <= 500):
        raise BadRequest(f"limit must be an integer 1-500, got {v[:40]!r}")
    return int(v)


def _handler(engine: Any, token: str, timeout_s: float) -> type[BaseHTTPRequestHandler]:
    page = CONSOLE.read_bytes()
    csp = console_csp(page.decode())

    class Handler(BaseHTTPRequestHandler):
        server_version = "tx-engine-control"
        timeout = timeout_s  # socket timeout per connection (StreamRequestHandler)

        def log_message(self, fmt: str, *args: Any) -> None:
            log.debug("control %s - %s", self.address_string(), fmt % args)

        def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            for k, v in SECURITY_HEADERS.items():
                self.send_header(k, v)
            self.send_header("Content-Security-Policy", csp)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, code: int, obj: Any) -> None:
            self._send(code, json.dumps(obj, default=str).encode())

        def _authorized(self) -> bool:
            got = self.headers.get("Authorization", "")
            if got.startswith("Bearer ") and hmac.compare_digest(got[7:].encode(), token.encode()):
                return True
            self._json(401, {"error": "missing or wrong bearer token"})
            return False

        def handle_one_request(self) -> None:
            try:
                super().handle_one_request()
            except TimeoutError:  # the client stopped sending: drop it
                self.close_connection = True

        def _busy(self, exc: Exception) -> None:
            self._json(503, {"error": str(exc)})

        def do_GET(self) -> None:
            try:
                self._get()
            except EngineBusy as exc:
                self._busy(exc)

        def do_POST(self) -> None:
            try:
                self._post()
            except EngineBusy as exc:
                self._busy(exc)

        def _get(self) -> None:
            url = urlparse(self.path)
            if url.path in ("/", "/console"):
                self._send(200, page, "text/html; charset=utf-8")
                return
            if url.path == "/healthz":
                self._json(200, {"ok": True})
                return
            if not self._authorized():
                return
            if url.path == "/api/status":
                self._json(200, engine.status())
            elif url.path == "/api/positions":
                self._json(200, engine.positions_view())
            elif url.path == "/api/pnl":
                self._json(200, engine.pnl())
            elif url.path == "/api/decisions":
                try:
                    limit = parse_limit(url.query)
                except BadRequest as exc:
                    self._json(400, {"error": str(exc)})
                    return
                self._json(200, engine.journal.rows(limit=limit)[::-1])
            elif url.path == "/api/audit":
                try:
                    limit = parse_limit(url.query)
                except BadRequest as exc:
                    self._json(400, {"error": str(exc)})
                    return
                self._json(200, engine.audit_rows(limit))
            elif url.path == "/metrics":
                self._send(200, engine.metrics.render(), CONTENT_TYPE_LATEST)
            else:
                self._json(404, {"error": f"no such endpoint {url.path}"})

        def _post(self) -> None:
            if not self._authorized():
                return
            path = urlparse(self.path).path
            if path not in POST_KEYS:
                self._json(404, {"error": f"no such endpoint {path}"})
                return
            try:
                body = parse_body(self.headers, self.rfile, POST_KEYS[path])
                actor = parse_actor(self.headers)
            except BadRequest as exc:
                self.close_connection = True
                self._json(400, {"error": str(exc)})
                return
            who = {"actor": actor, "reason": body.get("reason")}
            if path == "/api/kill":
                flatten = bool(body.get("flatten", False))
                log.warning("control: kill (flatten=%s) by %s", flatten, actor)
                detail = f"operator kill (control API, {actor})"
                if who["reason"]:
                    detail += f": {who['reason']}"
                self._json(200, engine.kill(flatten=flatten, detail=detail, **who))
            elif path == "/api/resume":
                log.warning("control: resume by %s", actor)
                self._json(200, engine.resume(**who))
            elif path == "/api/reduce":
                log.warning("control: reduce by %s", actor)
                self._json(200, engine.reduce(**who))
            else:
                self._json(200, engine.reload(**who))

    return Handler


class ControlServer:
    """The control API in a daemon thread; :meth:`stop` shuts it down."""

    def __init__(
        self,
        engine: Any,
        *,
        token: str | None,
        host: str = "127.0.0.1",
        port: int = 8765,
        timeout_s: float = 5.0,
    ) -> None:
        if not token:
            raise ValueError("the control API needs a token: set TX_ENGINE_TOKEN")
        if not isinstance(token, str):  # a SecretStr here would fail every request
            raise TypeError(f"token must be the clear str, not {type(token).__name__}")
        self.httpd = ThreadingHTTPServer((host, port), _handler(engine, token, timeout_s))
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, name="tx-engine-control", daemon=True
        )

    @property
    def url(self) -> str:
        """Base URL of the running server."""
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> ControlServer:
        """Serve in the background."""
        self.thread.start()
        log.info("engine control API on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.httpd.shutdown()
        self.httpd.server_close()
