"""The HTTP layer of the service: token auth and the ``/v1`` endpoints, as one ASGI middleware.

``ApiMiddleware`` is added to ``TrendService`` with ``add_asgi_middleware``, so it sits
inside BentoML's own middlewares (traffic timeout, BentoML's metrics) and in front of
BentoML's routes (``/healthz``, ``/livez``, ``/readyz``, ``/metrics``, docs):

- every path but ``/healthz`` needs ``Authorization: Bearer <TX_SERVING_TOKEN>`` (401
  otherwise), unless the service was started with ``TX_SERVING_ALLOW_NO_AUTH=true``;
- ``POST /v1/predict`` (and its alias ``POST /predict``) is answered here, in front of the
  BentoML API of the same route that documents it (``TrendService.predict``), without
  BentoML's per-API machinery or pydantic: the body is decoded straight into the API's
  msgspec Structs (``serving.request``) and scored by onnxruntime, inline on the event loop
  for small tabular bodies (tens of µs), on a worker thread otherwise;
- ``POST /v1/explain`` takes the same body under the same limits and answers TreeSHAP
  contributions of the XGBoost member (``serving.explain``), always on a worker thread;
  query ``top_k`` (1..number of features, default 5) sizes each row's ``top`` list;
- ``POST /v1/admin/reload`` resolves the registry aliases now and swaps what moved;
- ``GET /v1/models`` describes what is served; ``GET /v1/schema`` gives the JSON Schemas;
- everything else goes on to BentoML.

Bad input is always a 4xx naming the field, and bounded: a body over the bundle's size
limit is refused from its ``Content-Length`` (413) or as soon as the bytes read pass it;
at most ``LARGE_SLOTS`` bodies over ``INLINE_BYTES`` are held and parsed at once (429 when
none frees up in ``LARGE_WAIT_S``); error bodies list at most 20 issues with names cut
short. Only a fault of the service itself is a 5xx.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from serving.explain import ATTRIBUTION, DEFAULT_TOP_K, prediction_explanations, treeshap
from serving.preprocess import FeatureIssue, FeatureValidationError
from serving.request import (
    HARD_MAX_BODY_BYTES,
    ParsedRequest,
    _clip_name,
    render_json,
    render_predictions,
    render_validation_error,
)
from serving.schemas import ErrorResponse, ExplainResponse

if TYPE_CHECKING:
    from serving.metrics import ServingMetrics
    from serving.runtime import LoadedModel, Scored, ServingRuntime, ServingState

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Paths answered without a token.
PUBLIC_PATHS = frozenset({"/healthz"})
PREDICT_PATHS = frozenset({"/v1/predict", "/predict"})
EXPLAIN_PATH = "/v1/explain"
RELOAD_PATH = "/v1/admin/reload"
MODELS_PATH = "/v1/models"
SCHEMA_PATH = "/v1/schema"
OWN_PATHS = PREDICT_PATHS | {EXPLAIN_PATH, RELOAD_PATH, MODELS_PATH, SCHEMA_PATH}
#: Bodies up to this size (of tabular bundles) are parsed and scored on the event loop (tens
#: of µs); larger ones on a worker thread, at most ``LARGE_SLOTS`` at once.
INLINE_BYTES = 64 * 1024
LARGE_SLOTS = 2
#: A large body waits at most this long for a slot, then gets a 429.
LARGE_WAIT_S = 10.0
#: Bodies are also capped per bundle (``serving.request.max_body_bytes``).
MAX_BODY_BYTES = HARD_MAX_BODY_BYTES
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


class _Busy(Exception):
    """No slot for a large body freed up in time (answered 429)."""


class ApiMiddleware:
    """See the module docstring."""

    def __init__(self, app: ASGIApp, ref: RuntimeRef, max_body_bytes: int = MAX_BODY_BYTES):
        self.app = app
        self.ref = ref
        self.max_body_bytes = max_body_bytes
        self._schema: bytes | None = None
        self._large: asyncio.Semaphore | None = None  # made on the server's event loop

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
        if path in PREDICT_PATHS or path == EXPLAIN_PATH:
            if method != "POST":
                await _method_not_allowed(send, "POST")
                self._observe(endpoint, version, "bad_request", t0)
                return
            await self._predict(
                scope, receive, send, runtime, endpoint, t0, explain=path == EXPLAIN_PATH
            )
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
        *,
        explain: bool = False,
    ) -> None:
        """``/v1/predict``, or with ``explain`` ``/v1/explain`` (same body, same checks)."""
        state = runtime.state  # one read: the whole request uses these models
        champ = state.champion
        codec = champ.codec
        request_id = _request_id(scope)
        id_header = (b"x-request-id", request_id.encode())

        async def refuse(status: int, message: str) -> None:
            await _respond_raw(
                send, status, render_json(ErrorResponse(error=message)), extra_headers=[id_header]
            )
            self._observe(endpoint, champ.model_version, "bad_request", t0)

        top_k = DEFAULT_TOP_K
        if explain:
            if champ.booster is None:
                await refuse(
                    404,
                    f"model v{champ.model_version} ships no native booster "
                    "(manifest 'native_booster'): no TreeSHAP for it; retrain to get one",
                )
                return
            try:
                top_k = _top_k(scope, champ.spec.n_features)
            except FeatureValidationError as exc:
                await _respond_raw(
                    send, 400, render_validation_error(exc), extra_headers=[id_header]
                )
                self._observe(endpoint, champ.model_version, "bad_request", t0)
                return
        if not _is_json(scope):
            await refuse(415, "Content-Type must be application/json")
            return
        limit = min(self.max_body_bytes, codec.max_body_bytes)
        declared = _content_length(scope)
        if declared == -1:
            await refuse(400, "Content-Length must be one non-negative integer")
            return
        if declared is not None and declared > limit:
            await refuse(413, f"body of {declared} bytes is over this model's {limit} bytes")
            return
        async with contextlib.AsyncExitStack() as stack:
            try:
                body = await self._read_body(receive, limit, declared, stack)
            except _BodyTooLarge:
                await refuse(413, f"body over this model's {limit} bytes")
                return
            except _Busy:
                await refuse(429, "too many large requests at once, retry shortly")
                return
            except _Disconnected:
                return
            large = len(body) > INLINE_BYTES
            try:
                if not explain and not large and champ.spec.sequence is None:
                    parsed, scored = self._parse_and_score(runtime, state, body)
                else:
                    import anyio.to_thread

                    parsed, scored = await anyio.to_thread.run_sync(
                        self._parse_and_score, runtime, state, body, large
                    )
            except FeatureValidationError as exc:
                await _respond_raw(
                    send, 400, render_validation_error(exc), extra_headers=[id_header]
                )
                self._observe(endpoint, champ.model_version, "bad_request", t0)
                return
            del body
        try:
            if explain:
                import anyio.to_thread

                out = await anyio.to_thread.run_sync(
                    render_explain, champ, parsed, scored, request_id, top_k
                )
            else:
                out = render_predictions(
                    parsed,
                    scored.probabilities,
                    scored.decisions,
                    champ.spec.classes,
                    model_name=champ.model_name,
                    model_version=champ.model_version,
                    bundle_sha256=champ.bundle_sha256,
                    request_id=request_id,
                    explanations=prediction_explanations(
                        champ.spec, scored.probabilities, scored.outputs
                    ),
                    decision_policy=champ.spec.policy_wire,
                )
        except Exception:
            logger.exception("predict failed (request %s)", request_id)
            await _respond(
                send,
                500,
                ErrorResponse(error=f"internal error, see the server log (request {request_id})"),
                extra_headers=[id_header],
            )
            self._observe(endpoint, champ.model_version, "error", t0)
            return
        await _respond_raw(send, 200, out, extra_headers=[id_header])
        self._observe(endpoint, champ.model_version, "ok", t0)
        if explain:
            return  # an explanation is not a prediction: no row count, no shadow
        if self.ref.metrics is not None:
            self.ref.metrics.rows.labels(champ.model_version).inc(parsed.n_rows)
        runtime.shadow_submit(scored, parsed, request_id)

    @staticmethod
    def _parse_and_score(
        runtime: ServingRuntime, state: ServingState, body: bytes | bytearray, trim: bool = False
    ) -> tuple[ParsedRequest, Scored]:
        """Decode, check and score ``body``; inline for small bodies, on a worker thread
        for large ones, which then give their freed heap back to the OS."""
        try:
            parsed = state.champion.codec.parse(body)
            return parsed, runtime.score(state, parsed)
        finally:
            if trim:
                _trim_heap()

    async def _read_body(
        self,
        receive: Receive,
        limit: int,
        declared: int | None,
        stack: contextlib.AsyncExitStack,
    ) -> bytes | bytearray:
        """The request body, read up to ``limit`` bytes (``_BodyTooLarge`` past it). A body
        over ``INLINE_BYTES`` (declared or read so far) first takes one of the
        ``LARGE_SLOTS`` (``_Busy`` after ``LARGE_WAIT_S``), so at most that many large
        bodies are held and parsed at once: the worker's memory stays bounded."""
        large = False

        async def take_slot() -> None:
            if self._large is None:
                self._large = asyncio.Semaphore(LARGE_SLOTS)
            try:
                await asyncio.wait_for(self._large.acquire(), LARGE_WAIT_S)
            except TimeoutError:
                raise _Busy from None
            stack.callback(self._large.release)

        if declared is not None and declared > INLINE_BYTES:
            await take_slot()
            large = True
        buf = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            if len(buf) + len(chunk) > limit:
                raise _BodyTooLarge
            if not large and len(buf) + len(chunk) > INLINE_BYTES:
                await take_slot()
                large = True
            if not message.get("more_body", False):
                if not buf:
                    return chunk  # type: ignore[no-any-return]
                buf += chunk
                return buf  # decoded as it is: no copy of a large body
            buf += chunk

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
            from serving.schemas import json_schemas

            self._schema = render_json(json_schemas())
        return self._schema

    def _observe(self, endpoint: str, version: str, outcome: str, t0: float) -> None:
        metrics = self.ref.metrics
        if metrics is not None:
            metrics.observe(endpoint, version, outcome, time.perf_counter() - t0)


def render_explain(
    champ: LoadedModel, parsed: ParsedRequest, scored: Scored, request_id: str, top_k: int
) -> bytes:
    """The ``/v1/explain`` body: TreeSHAP of the XGBoost member per row (worker thread)."""
    rows = treeshap(
        champ.booster,
        champ.spec,
        parsed.matrix,
        scored.probabilities,
        scored.outputs,
        parsed.symbols,
        parsed.feature_times,
        top_k,
    )
    members = (
        {name for name, _ in champ.spec.explanation.members} if champ.spec.explanation else {"xgb"}
    )
    return render_json(
        ExplainResponse(
            model_name=champ.model_name,
            model_version=champ.model_version,
            bundle_sha256=champ.bundle_sha256,
            request_id=request_id,
            top_k=min(top_k, champ.spec.n_features),
            attribution={k: v for k, v in ATTRIBUTION.items() if k in members},
            explanations=rows,
        )
    )


def _top_k(scope: Scope, n_features: int) -> int:
    """The ``top_k`` query parameter (1..``n_features``, default ``DEFAULT_TOP_K``)."""
    from urllib.parse import parse_qs

    try:
        query = parse_qs(
            bytes(scope.get("query_string", b"")).decode("latin-1"), keep_blank_values=True
        )
    except ValueError:
        query = {}
    unknown = sorted(set(query) - {"top_k"})
    issues = [
        FeatureIssue(("query", _clip_name(k)), "unexpected_parameter", "unknown query parameter")
        for k in unknown[:3]
    ]
    values = query.get("top_k")
    top_k = min(DEFAULT_TOP_K, n_features)
    if values is not None:
        raw = values[-1]
        if len(values) != 1 or not raw.isdigit() or len(raw) > 6 or not 1 <= int(raw) <= n_features:
            issues.append(
                FeatureIssue(
                    ("query", "top_k"),
                    "invalid_parameter",
                    f"top_k must be one integer from 1 to {n_features} (the model's features)",
                )
            )
        else:
            top_k = int(raw)
    if issues:
        raise FeatureValidationError(issues)
    return top_k


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


def _content_length(scope: Scope) -> int | None:
    """The declared body size: None when absent, -1 when not one non-negative integer."""
    values = [v for k, v in scope["headers"] if k == b"content-length"]
    if not values:
        return None
    if len(set(values)) != 1 or not values[0].isdigit() or len(values[0]) > 18:
        return -1
    return int(values[0])


def _trim_heap() -> None:
    """Give the heap freed by a large request back to the OS (glibc ``malloc_trim``): the
    decoder's objects live in per-thread malloc arenas that would otherwise keep it."""
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        try:
            import ctypes

            _MALLOC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM: Any = None


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
