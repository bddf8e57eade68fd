"""The HTTP layer of the service: token auth and the ``/v1`` endpoints, as one ASGI middleware.

``ApiMiddleware`` is added to ``TrendService`` with ``add_asgi_middleware``, so it sits
inside BentoML's own middlewares (traffic timeout, BentoML's metrics) and in front of
BentoML's routes (``/healthz``, ``/livez``, ``/readyz``, ``/metrics``, docs):

- every path but ``/healthz`` needs ``Authorization: Bearer <TX_SERVING_TOKEN>`` (401
  otherwise), unless the service was started with ``TX_SERVING_ALLOW_NO_AUTH=true``;
- ``POST /v1/predict`` (and its alias ``POST /predict``) is answered here, without
  BentoML's per-API machinery or pydantic: msgspec decoding, the checks of
  ``serving.request`` and a direct onnxruntime call, inline on the event loop for small
  single-input requests (tens of µs), on a worker thread otherwise;
- ``POST /v1/admin/reload`` resolves the registry aliases now and swaps what moved;
- ``GET /v1/models`` describes what is served; ``GET /v1/schema`` gives the JSON Schemas;
- everything else goes on to BentoML.

Bad input is always a 4xx naming the field; only a fault of the service itself is a 5xx.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from serving.preprocess import FeatureValidationError
from serving.request import parse_body, render_json, render_predictions, render_validation_error

if TYPE_CHECKING:
    from serving.metrics import ServingMetrics
    from serving.runtime import ServingRuntime

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Paths answered without a token.
PUBLIC_PATHS = frozenset({"/healthz"})
PREDICT_PATHS = frozenset({"/v1/predict", "/predict"})
RELOAD_PATH = "/v1/admin/reload"
MODELS_PATH = "/v1/models"
SCHEMA_PATH = "/v1/schema"
OWN_PATHS = PREDICT_PATHS | {RELOAD_PATH, MODELS_PATH, SCHEMA_PATH}
#: Requests with at most this many rows (and no sequence input) are scored on the event loop.
INLINE_ROWS = 64
MAX_BODY_BYTES = 64 * 1024 * 1024
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_JSON = b"application/json"


@dataclass
class RuntimeRef:
    """Filled by the service's ``__init__`` inside the worker; read on every request."""

    runtime: ServingRuntime | None = None
    metrics: ServingMetrics | None = None
    token: str | None = None  # None: auth explicitly disabled

    def set(
        self, runtime: ServingRuntime, metrics: ServingMetrics | None, token: str | None
    ) -> None:
        self.metrics = metrics
        self.token = token
        self.runtime = runtime  # last: requests see a runtime only once auth is configured


class _BodyTooLarge(Exception):
    """The request body passed the size limit while it was being read (answered 413)."""


class _Disconnected(Exception):
    """The client went away before its request body was complete."""


class ApiMiddleware:
    """See the module docstring."""

    def __init__(self, app: ASGIApp, ref: RuntimeRef, max_body_bytes: int = MAX_BODY_BYTES):
        self.app = app
        self.ref = ref
        self.max_body_bytes = max_body_bytes
        self._schema: bytes | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        path: str = scope["path"]
        ref = self.ref
        runtime = ref.runtime
        endpoint = path if path in OWN_PATHS else "other"
        if runtime is None:
            await _respond(send, 503, {"error": "the model is not loaded yet"})
            self._observe(endpoint, "none", "unavailable", t0)
            return
        version = runtime.state.champion.model_version
        if ref.token is not None and not _authorized(scope, ref.token):
            await _respond(
                send,
                401,
                {"error": "missing or invalid bearer token"},
                extra_headers=[(b"www-authenticate", b'Bearer realm="tx-serving"')],
            )
            self._observe(endpoint, version, "unauthorized", t0)
            return
        if path not in OWN_PATHS:
            await self.app(scope, receive, send)
            return
        try:
            await self._route(scope, receive, send, runtime, path, endpoint, version, t0)
        except Exception:
            # A bug of ours, never of the input: answer 500 (if nothing was sent yet) rather
            # than leave the client hanging.
            logger.exception("%s %s failed", scope["method"], path)
            self._observe(endpoint, version, "error", t0)
            with contextlib.suppress(Exception):
                await _respond(send, 500, {"error": "internal error, see the server log"})

    async def _route(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        runtime: ServingRuntime,
        path: str,
        endpoint: str,
        version: str,
        t0: float,
    ) -> None:
        method = scope["method"]
        if path in PREDICT_PATHS:
            if method != "POST":
                await _method_not_allowed(send, "POST")
                self._observe(endpoint, version, "bad_request", t0)
                return
            await self._predict(scope, receive, send, runtime, endpoint, t0)
        elif path == RELOAD_PATH:
            if method != "POST":
                await _method_not_allowed(send, "POST")
                return
            await self._reload(send, runtime, endpoint, t0)
        elif method != "GET":
            await _method_not_allowed(send, "GET")
        elif path == MODELS_PATH:
            await _respond(send, 200, runtime.state.describe())
        else:
            await _respond_raw(send, 200, self._schema_bytes())

    # --- /v1/predict ---------------------------------------------------------------------
    async def _predict(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        runtime: ServingRuntime,
        endpoint: str,
        t0: float,
    ) -> None:
        state = runtime.state  # one read: the whole request uses these models
        champ = state.champion
        request_id = _request_id(scope)
        id_header = (b"x-request-id", request_id.encode())
        if not _is_json(scope):
            await _respond(
                send,
                415,
                {"error": "Content-Type must be application/json"},
                extra_headers=[id_header],
            )
            self._observe(endpoint, champ.model_version, "bad_request", t0)
            return
        try:
            body = await _read_body(receive, self.max_body_bytes)
        except _BodyTooLarge:
            await _respond(send, 413, {"error": f"body over {self.max_body_bytes} bytes"})
            self._observe(endpoint, champ.model_version, "bad_request", t0)
            return
        except _Disconnected:
            return
        try:
            parsed = parse_body(body, champ.spec)
        except FeatureValidationError as exc:
            await _respond_raw(send, 400, render_validation_error(exc), extra_headers=[id_header])
            self._observe(endpoint, champ.model_version, "bad_request", t0)
            return
        try:
            if parsed.n_rows <= INLINE_ROWS and champ.spec.sequence is None:
                scored = runtime.score(state, parsed)
            else:
                import anyio.to_thread

                scored = await anyio.to_thread.run_sync(runtime.score, state, parsed)
            out = render_predictions(
                parsed,
                scored.probabilities,
                scored.decisions,
                champ.spec.classes,
                model_name=champ.model_name,
                model_version=champ.model_version,
                bundle_sha256=champ.bundle_sha256,
                request_id=request_id,
            )
        except Exception:
            logger.exception("predict failed (request %s)", request_id)
            await _respond(
                send,
                500,
                {"error": "internal error, see the server log", "request_id": request_id},
                extra_headers=[id_header],
            )
            self._observe(endpoint, champ.model_version, "error", t0)
            return
        await _respond_raw(send, 200, out, extra_headers=[id_header])
        self._observe(endpoint, champ.model_version, "ok", t0)
        if self.ref.metrics is not None:
            self.ref.metrics.rows.labels(champ.model_version).inc(parsed.n_rows)
        runtime.shadow_submit(scored, parsed, request_id)

    # --- /v1/admin/reload ----------------------------------------------------------------
    async def _reload(self, send: Send, runtime: ServingRuntime, endpoint: str, t0: float) -> None:
        import anyio.to_thread

        try:
            result = await anyio.to_thread.run_sync(runtime.reload, "admin")
        except Exception as exc:
            logger.warning("admin reload failed: %s", exc)
            await _respond(
                send,
                502,
                {
                    "error": f"reload failed, still serving the previous models: {exc}",
                    "serving": runtime.state.describe(),
                },
            )
            self._observe(endpoint, runtime.state.champion.model_version, "error", t0)
            return
        await _respond(send, 200, result.to_dict())
        self._observe(endpoint, result.state.champion.model_version, "ok", t0)

    def _schema_bytes(self) -> bytes:
        if self._schema is None:
            from serving.schemas import PredictRequest, PredictResponse

            self._schema = render_json(
                {
                    "request": PredictRequest.model_json_schema(),
                    "response": PredictResponse.model_json_schema(),
                }
            )
        return self._schema

    def _observe(self, endpoint: str, version: str, outcome: str, t0: float) -> None:
        metrics = self.ref.metrics
        if metrics is not None:
            metrics.observe(endpoint, version, outcome, time.perf_counter() - t0)


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def _authorized(scope: Scope, token: str) -> bool:
    value = _header(scope, b"authorization")
    if value is None:
        return False
    scheme, _, given = value.partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), token.encode())


def _is_json(scope: Scope) -> bool:
    ctype = _header(scope, b"content-type")
    if ctype is None:
        return True
    main = ctype.split(b";", 1)[0].strip().lower()
    return main == _JSON or main.endswith(b"+json")


def _request_id(scope: Scope) -> str:
    given = _header(scope, b"x-request-id")
    if given is not None:
        text = given.decode("latin-1")
        if _REQUEST_ID.match(text):
            return text
    return uuid.uuid4().hex


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _respond(
    send: Send,
    status: int,
    payload: Any,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    await _respond_raw(send, status, render_json(payload), extra_headers)


async def _respond_raw(
    send: Send,
    status: int,
    body: bytes,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [(b"content-type", _JSON), (b"content-length", str(len(body)).encode())]
    if extra_headers:
        headers.extend(extra_headers)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _method_not_allowed(send: Send, allow: str) -> None:
    await _respond(
        send,
        405,
        {"error": f"method not allowed, use {allow}"},
        extra_headers=[(b"allow", allow.encode())],
    )
