"""The BentoML service: the champion bundle (and a challenger in shadow) behind ``/v1/predict``.

Run it with ``serving.server.start_server`` (or ``bentoml serve serving.service:TrendService``)
with ``TX_SERVING_MODEL_TAG`` naming the BentoML model written by ``serving.importer``,
``BENTOML_HOME`` pointing at its store and ``TX_SERVING_TOKEN`` set (see ``serving.api``
for the endpoints and ``serving.runtime`` for shadow scoring and hot reload).

The API is declared to BentoML (``predict``, route ``/v1/predict``, typed with the
msgspec Structs of ``serving.schemas``), so BentoML's OpenAPI (``/docs.json``) and
``/schema.json`` list it and ``bentoml.SyncHTTPClient(url, token=...).predict({"rows":
[...]})`` calls it. BentoML's own per-request work is kept off the prediction path: tracing
is off for the ``/v1`` paths and the access log skips them (``tx_serving_*`` metrics and
the shadow log record them instead); ``serving.api.ApiMiddleware`` answers them directly.
"""

from __future__ import annotations

import logging
import os
import signal
import uuid
from pathlib import Path
from typing import Any

import bentoml
import msgspec
from bentoml.exceptions import InvalidArgument

from serving.api import EXPLAIN_PATH, PREDICT_PATHS, ApiMiddleware, RuntimeRef, render_explain
from serving.explain import DEFAULT_TOP_K, prediction_explanations
from serving.preprocess import FeatureValidationError
from serving.request import predict_response, render_validation_error
from serving.schemas import ExplainResponse, PredictRequest, PredictResponse
from serving.settings import AuthConfigError, ServingSettings

logger = logging.getLogger(__name__)

#: Filled by ``TrendService.__init__`` in the worker, read by ``ApiMiddleware``.
RUNTIME = RuntimeRef()
_HOT_PATHS = sorted(PREDICT_PATHS | {EXPLAIN_PATH})


@bentoml.service(
    name="tx_trend_service",
    workers=1,
    resources={"cpu": "1"},
    traffic={"timeout": 30},
    tracing={"excluded_urls": [*_HOT_PATHS, "/v1/models", "/healthz", "/readyz", "/metrics"]},
    logging={"access": {"skip_paths": [*_HOT_PATHS, "/healthz", "/readyz", "/metrics"]}},
)
class TrendService:
    """Trend classifier: feature rows in, class probabilities and a decision out."""

    # Declared on the class so `bentoml build` packs the model into the bento.
    bento_model = bentoml.models.BentoModel(ServingSettings().serving_model_tag)

    def __init__(self) -> None:
        from serving.importer import import_from_registry
        from serving.metrics import ServingMetrics
        from serving.runtime import (
            ServingRuntime,
            ServingState,
            ShadowScorer,
            load_model,
            load_stored,
        )

        settings = ServingSettings()
        try:
            token = settings.require_token()
        except AuthConfigError as exc:
            _refuse_to_start(exc)
            raise
        if token is None:
            logger.warning("serving WITHOUT authentication (TX_SERVING_ALLOW_NO_AUTH=true)")
        metrics = ServingMetrics()
        champion = load_stored(self.bento_model)  # the stored model, resolved by BentoML
        challenger = (
            load_model(settings.serving_challenger_tag) if settings.serving_challenger_tag else None
        )

        def resolve(alias: str) -> Any:
            from serving.importer import AliasNotSetError

            try:
                return import_from_registry(
                    settings.mlflow_tracking_uri, settings.model_name, alias
                )
            except AliasNotSetError:
                return None

        self.runtime = ServingRuntime(
            state=ServingState.of(champion, challenger),
            resolver=resolve,
            champion_alias=settings.model_alias,
            challenger_alias=settings.serving_challenger_alias,
            shadow=ShadowScorer(
                Path(settings.shadow_log_path),
                max_queue=settings.serving_shadow_queue,
                metrics=metrics,
            ),
            metrics=metrics,
        )
        self.runtime.start_polling(settings.serving_reload_interval_s)
        RUNTIME.set(self.runtime, metrics, token)
        logger.info(
            "serving %s v%s (%s, %d features%s), challenger %s; reload poll %s s; shadow log %s",
            champion.model_name,
            champion.model_version,
            champion.spec.feature_service,
            champion.spec.n_features,
            ", sequence" if champion.spec.sequence else "",
            f"v{challenger.model_version}" if challenger else "none",
            settings.serving_reload_interval_s or "off",
            settings.shadow_log_path,
        )

    def __is_ready__(self) -> bool:
        """``/readyz``: 200 only once the champion is loaded and warmed up (``load_model``
        warms every session before it can be published)."""
        return RUNTIME.runtime is self.runtime

    @bentoml.api(route="/v1/predict")
    def predict(self, request: PredictRequest, /) -> PredictResponse:
        """Score feature rows with the champion: class probabilities and a decision per row.

        The body is ``{"rows": [...]}`` (``PredictRequest``); every field error is listed in
        one 400. Over HTTP, ``serving.api.ApiMiddleware`` answers this route before
        BentoML's request handling, with the same Structs and checks; this method is the
        same scoring for in-process callers."""
        state = self.runtime.state
        champ = state.champion
        try:
            parsed = champ.codec.parse(msgspec.json.encode(request))
        except FeatureValidationError as exc:
            raise InvalidArgument(render_validation_error(exc).decode()) from None
        scored = self.runtime.score(state, parsed)
        return predict_response(
            parsed,
            scored.probabilities,
            scored.decisions,
            champ.spec.classes,
            model_name=champ.model_name,
            model_version=champ.model_version,
            bundle_sha256=champ.bundle_sha256,
            request_id=uuid.uuid4().hex,
            explanations=prediction_explanations(champ.spec, scored.probabilities, scored.outputs),
            decision_policy=champ.spec.policy_wire,
        )

    @bentoml.api(route="/v1/explain")
    def explain(self, request: PredictRequest, /) -> ExplainResponse:
        """TreeSHAP of the XGBoost member for the class the ensemble predicts, per row.

        Same body, auth and limits as ``/v1/predict``; query ``top_k`` (1..features,
        default 5) sizes each row's ``top``. ``sum(contributions) + base_value == margin``
        (the member's raw score). 404 when the bundle ships no native booster. Over HTTP,
        ``serving.api.ApiMiddleware`` answers this route (see docs/explanations.md)."""
        state = self.runtime.state
        champ = state.champion
        if champ.booster is None:
            raise InvalidArgument("this model ships no native booster: no TreeSHAP for it")
        try:
            parsed = champ.codec.parse(msgspec.json.encode(request))
        except FeatureValidationError as exc:
            raise InvalidArgument(render_validation_error(exc).decode()) from None
        scored = self.runtime.score(state, parsed)
        body = render_explain(champ, parsed, scored, uuid.uuid4().hex, DEFAULT_TOP_K)
        return msgspec.json.decode(body, type=ExplainResponse)

    @bentoml.on_shutdown
    def _shutdown(self) -> None:
        self.runtime.close()


def _refuse_to_start(exc: Exception) -> None:
    """Stop the whole ``bentoml serve`` rather than let its supervisor restart a worker that
    can never start: kill the parent when it is BentoML's supervisor, so that it exits with a
    failure status (-9) a process manager reports (a SIGTERM would make it exit 0). Other
    workers, if any, fail the same check and exit on their own."""
    logger.critical("refusing to start: %s", exc)
    parent = os.getppid()
    try:
        cmdline = Path(f"/proc/{parent}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return
    is_arbiter = b"circusd" in cmdline[0] or (
        any(b"bentoml" in part for part in cmdline) and b"serve" in cmdline
    )  # BentoML's supervisor renames itself "circusd"
    if is_arbiter:
        os.kill(parent, signal.SIGKILL)


TrendService.add_asgi_middleware(ApiMiddleware, ref=RUNTIME)  # type: ignore[attr-defined]
