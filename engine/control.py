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
POST     ``/api/kill``       HALT; body ``{"flatten": true}`` also closes every position
POST     ``/api/resume``     back to ACTIVE
POST     ``/api/reload``     re-open the model (serving client / ONNX bundle)
GET      ``/metrics``        Prometheus text format
=======  ==================  ====================================================
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

log = logging.getLogger(__name__)

CONSOLE = Path(__file__).with_name("console.html")


def _handler(engine: Any, token: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "tx-engine-control"

        def log_message(self, fmt: str, *args: Any) -> None:
            log.debug("control %s - %s", self.address_string(), fmt % args)

        def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
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

        def do_GET(self) -> None:
            url = urlparse(self.path)
            if url.path in ("/", "/console"):
                self._send(200, CONSOLE.read_bytes(), "text/html; charset=utf-8")
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
                limit = int(parse_qs(url.query).get("limit", ["20"])[0])
                self._json(200, engine.journal.rows(limit=max(1, min(limit, 500)))[::-1])
            elif url.path == "/metrics":
                self._send(200, engine.metrics.render(), CONTENT_TYPE_LATEST)
            else:
                self._json(404, {"error": f"no such endpoint {url.path}"})

        def do_POST(self) -> None:
            if not self._authorized():
                return
            n = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(n) or b"{}") if n else {}
            except json.JSONDecodeError:
                self._json(400, {"error": "body is not JSON"})
                return
            path = urlparse(self.path).path
            if path == "/api/kill":
                log.warning("control: kill (flatten=%s)", bool(body.get("flatten")))
                self._json(
                    200,
                    engine.kill(
                        flatten=bool(body.get("flatten")), detail="operator kill (control API)"
                    ),
                )
            elif path == "/api/resume":
                log.warning("control: resume")
                self._json(200, engine.resume())
            elif path == "/api/reload":
                self._json(200, engine.reload())
            else:
                self._json(404, {"error": f"no such endpoint {path}"})

    return Handler


class ControlServer:
    """The control API in a daemon thread; :meth:`stop` shuts it down."""

    def __init__(
        self, engine: Any, *, token: str | None, host: str = "127.0.0.1", port: int = 8765
    ) -> None:
        if not token:
            raise ValueError("the control API needs a token: set TX_ENGINE_TOKEN")
        self.httpd = ThreadingHTTPServer((host, port), _handler(engine, token))
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
