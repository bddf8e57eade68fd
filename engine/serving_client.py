"""HTTP client of the serving API (``POST /predict``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from engine.features import FeatureRow


@dataclass(frozen=True)
class Prediction:
    model_version: str
    position: int
    decision: str
    probabilities: dict[str, float]


class ServingUnavailable(RuntimeError):
    """Serving did not answer in time, or answered with an error."""


class ServingClient:
    def __init__(self, base_url: str, timeout_s: float = 0.5, token: str | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=base_url, timeout=timeout_s, headers=headers)

    def predict(self, row: FeatureRow) -> Prediction:
        body: dict[str, Any] = {
            "rows": [
                {
                    "symbol": row.symbol,
                    "feature_time": datetime.fromtimestamp(row.event_time, UTC).isoformat(),
                    "features": row.values,
                }
            ]
        }
        try:
            r = self._http.post("/predict", json=body)
        except httpx.HTTPError as exc:
            raise ServingUnavailable(f"serving call failed: {exc!r}") from exc
        if r.status_code != 200:
            raise ServingUnavailable(f"serving answered {r.status_code}: {r.text[:300]}")
        data = r.json()
        p = data["predictions"][0]
        return Prediction(str(data["model_version"]), int(p["position"]), p["decision"], p["probabilities"])

    def close(self) -> None:
        self._http.close()
