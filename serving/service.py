"""The BentoML service: one ONNX bundle, loaded once, behind ``POST /predict``.

Run it with ``serving.server.start_server`` (or ``bentoml serve serving.service:TrendService``)
with ``TX_SERVING_MODEL_TAG`` naming the BentoML model written by ``serving.importer`` and
``BENTOML_HOME`` pointing at its store.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import bentoml
import numpy as np

from serving.importer import MANIFEST_FILE, ONNX_FILE
from serving.inference import check_session, open_session, predict_proba
from serving.preprocess import FeatureValidationError, bundle_spec, decide, rows_to_matrix
from serving.schemas import (
    ClassProbabilities,
    Prediction,
    PredictRequest,
    PredictResponse,
    feature_validation_error,
)
from serving.settings import ServingSettings

logger = logging.getLogger(__name__)


@bentoml.service(
    name="tx_trend_service",
    workers=1,
    resources={"cpu": "1"},
    traffic={"timeout": 30},
)
class TrendService:
    """Trend classifier: feature rows in, class probabilities and a decision out."""

    # Declared on the class so `bentoml build` packs the model into the bento.
    bento_model = bentoml.models.BentoModel(ServingSettings().serving_model_tag)

    def __init__(self) -> None:
        stored = self.bento_model
        manifest = json.loads(Path(stored.path_of(MANIFEST_FILE)).read_text())
        self.spec = bundle_spec(manifest)
        self.model_name = str(stored.info.metadata.get("mlflow_model_name", stored.tag.name))
        self.model_version = str(stored.info.labels["mlflow_version"])
        self.session = open_session(stored.path_of(ONNX_FILE))
        check_session(self.session, self.spec)
        # Warm-up: the first run allocates and would otherwise land on a live request.
        warm = np.zeros((1, self.spec.n_features), dtype=np.float32)
        for _ in range(3):
            predict_proba(self.session, self.spec, warm)
        logger.info(
            "serving %s v%s (%s, %d features) from BentoML model %s",
            self.model_name,
            self.model_version,
            self.spec.feature_service,
            self.spec.n_features,
            stored.tag,
        )

    @bentoml.api(route="/predict")
    def predict(self, request: PredictRequest, /) -> PredictResponse:
        """Score each row; every input error is a 400 whose ``detail[].loc`` names the field."""
        try:
            matrix = rows_to_matrix([row.features for row in request.rows], self.spec.features)
        except FeatureValidationError as exc:
            raise feature_validation_error(exc) from None
        probs = predict_proba(self.session, self.spec, matrix)
        decisions = decide(probs, self.spec)
        classes = self.spec.classes
        predictions = [
            Prediction(
                symbol=row.symbol,
                feature_time=row.feature_time,
                probabilities=ClassProbabilities(**dict(zip(classes, p, strict=True))),
                decision=d.label,  # type: ignore[arg-type]  # bundle_spec checked the classes
                position=d.position,  # type: ignore[arg-type]
            )
            for row, p, d in zip(request.rows, probs.tolist(), decisions, strict=True)
        ]
        return PredictResponse(
            model_name=self.model_name, model_version=self.model_version, predictions=predictions
        )
