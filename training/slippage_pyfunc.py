"""The MLflow pyfunc of the slippage model, logged as "models from code" (no pickled object):
``predict(frame with the manifest's feature columns)`` → a frame of ``mean`` and ``q<level>``
columns, points. The engine does not use it (it loads the boosters directly,
:class:`engine.slippage_model.LearnedSlippage`); it makes the registered version usable by
``mlflow.pyfunc.load_model`` like any other model."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel

from engine.slippage_model import LearnedSlippage


class SlippagePyfunc(PythonModel):  # type: ignore[misc]
    def load_context(self, context):  # type: ignore[no-untyped-def]
        self.model = LearnedSlippage.from_dir(context.artifacts["slippage"])

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        m = self.model
        p = m.predict(model_input[m.features].to_numpy(np.float32))
        out = pd.DataFrame({"mean": p["mean"]})
        for i, q in enumerate(m.quantile_levels):
            out[f"q{q:g}"] = p["q"][:, i]
        return out


set_model(SlippagePyfunc())
