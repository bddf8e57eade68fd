"""Model expiry and out-of-distribution refusal, on the decision path.

A model is trusted only for the market it was trained on. Two checks, both from the bundle's
manifest (contract C1, written at training time):

* **expiry** — ``trained_at`` (ISO-8601 UTC) older than ``TX_ENGINE_MODEL_MAX_AGE_DAYS``
  (default 30): the bar is refused with reason ``model_expired``;
* **out of distribution** — ``reference_stats`` gives per feature the training split's
  quantiles q01/q25/q50/q75/q99. A row with any feature outside
  ``[q01 - k*IQR, q99 + k*IQR]`` (``k`` = ``TX_ENGINE_OOD_IQR_K``, default 5; IQR = q75 - q25,
  or q99 - q01 when the IQR is 0; a feature constant over 98 % of training is not checked)
  is refused ``out_of_distribution``, naming the features and how far out they are.

A manifest without a key (an older bundle) turns that check off for the bundle, with one log
line; a guard never refuses because it lacks data. The bounds are precomputed as numpy arrays
in the manifest's feature order, so a check is one vector compare (a few µs).

Which manifest applies: :class:`GuardedModel` checks each prediction against the guard of the
bundle that produced it (by ``bundle_sha256``): the in-process ONNX fallback's own manifest,
and the manifest in ``TX_ENGINE_BUNDLE_DIR`` for serving's answers when serving reports that
bundle's hash. Serving does not publish its manifest, so a served bundle the engine has no
manifest for is scored unguarded (logged once per bundle).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import operator
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


class ModelExpired(RuntimeError):
    """The bundle was trained longer ago than the configured maximum age."""


class OutOfDistribution(RuntimeError):
    """A feature row lies far outside the bundle's training reference."""


def _parse_utc(text: str) -> float:
    dt = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


class ModelGuard:
    """The two checks of one bundle (see the module docstring)."""

    def __init__(
        self,
        manifest: dict[str, Any],
        *,
        max_age_days: float = 30.0,
        iqr_k: float = 5.0,
        label: str = "",
    ) -> None:
        self.label = label or str(manifest.get("model_version") or "bundle")
        self.max_age_days = float(max_age_days)
        self.expires_at: float | None = None
        self.trained_at: float | None = None
        if max_age_days > 0:
            raw = manifest.get("trained_at")
            if raw is None:
                log.info(
                    "model guard %s: no trained_at in the manifest: expiry check off", self.label
                )
            else:
                try:
                    self.trained_at = _parse_utc(str(raw))
                    self.expires_at = self.trained_at + max_age_days * 86_400
                except ValueError:
                    log.warning(
                        "model guard %s: trained_at %r is not ISO-8601: expiry check off",
                        self.label,
                        raw,
                    )
        self.names: list[str] = []
        self._pick: Any = None
        self.lo = np.empty(0)
        self.hi = np.empty(0)
        stats = manifest.get("reference_stats")
        if iqr_k > 0 and isinstance(stats, dict):
            order = [f for f in manifest.get("features", list(stats)) if f in stats]
            names, lo, hi, skipped = [], [], [], []
            for f in order:
                q = stats[f]
                try:
                    q01, q25, q75, q99 = (float(q[k]) for k in ("q01", "q25", "q75", "q99"))
                except (KeyError, TypeError, ValueError):
                    skipped.append(f)
                    continue
                spread = (q75 - q25) or (q99 - q01)
                if not all(map(math.isfinite, (q01, q99, spread))) or spread <= 0:
                    skipped.append(f)
                    continue
                names.append(f)
                lo.append(q01 - iqr_k * spread)
                hi.append(q99 + iqr_k * spread)
            self.names, self.lo, self.hi = names, np.array(lo), np.array(hi)
            self._pick = operator.itemgetter(*names) if names else None
            if skipped:
                log.info(
                    "model guard %s: %d feature(s) not checked (no or constant reference): %s",
                    self.label,
                    len(skipped),
                    skipped[:10],
                )
        elif iqr_k > 0:
            log.info(
                "model guard %s: no reference_stats in the manifest: distribution check off",
                self.label,
            )

    @property
    def checks(self) -> dict[str, bool]:
        """Which checks are on."""
        return {
            "model_expired": self.expires_at is not None,
            "out_of_distribution": bool(self.names),
        }

    def check(self, values: dict[str, float], now: float) -> None:
        """Raise :class:`ModelExpired` or :class:`OutOfDistribution`, else return."""
        if self.expires_at is not None and now > self.expires_at:
            assert self.trained_at is not None
            age = (now - self.trained_at) / 86_400
            raise ModelExpired(
                f"{self.label} trained {age:.1f} days ago > max {self.max_age_days:g} days"
            )
        if self.names:
            try:
                x = np.array(self._pick(values), dtype=float, ndmin=1)
            except KeyError:  # a feature missing from the row: not checked (NaN compares False)
                x = np.array([values.get(f, math.nan) for f in self.names], dtype=float)
            out = (x < self.lo) | (x > self.hi)
            if out.any():
                idx = np.flatnonzero(out)
                parts = [
                    f"{self.names[i]}={x[i]:.6g} outside [{self.lo[i]:.6g}, {self.hi[i]:.6g}]"
                    for i in idx[:5]
                ]
                raise OutOfDistribution(
                    f"{len(idx)} feature(s) outside the training reference: " + "; ".join(parts)
                )


def bundle_guard(bundle_dir: Path | str, **kw: Any) -> tuple[str, ModelGuard] | None:
    """``(sha256 of model.onnx, guard)`` of a bundle folder, ``None`` without a manifest."""
    d = Path(bundle_dir)
    mf = d / "manifest.json"
    if not mf.is_file():
        return None
    manifest = json.loads(mf.read_text())
    onnx = d / "model.onnx"
    sha = (
        hashlib.sha256(onnx.read_bytes()).hexdigest()
        if onnx.is_file()
        else str(manifest.get("bundle_sha256") or "")
    )
    return sha, ModelGuard(manifest, label=str(manifest.get("model_version") or d.name), **kw)


class GuardedModel:
    """A model client whose predictions pass the guard of the bundle that made them."""

    def __init__(
        self,
        model: Any,
        guards: dict[str, ModelGuard],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.model = model
        self.guards = guards
        self.clock = clock
        self._unguarded: set[str] = set()

    def predict(self, row: Any) -> Any:
        """Score ``row``; raise a guard refusal when the bundle's guard refuses it."""
        pred = self.model.predict(row)
        sha = getattr(pred, "bundle_sha256", "") or ""
        guard = self.guards.get(sha)
        if guard is None:
            if sha not in self._unguarded:
                self._unguarded.add(sha)
                log.info(
                    "model guard: no manifest for bundle %s (%s): its answers are not guarded",
                    sha[:12] or "<no hash>",
                    getattr(pred, "source", "?"),
                )
            return pred
        guard.check(row.values, self.clock())
        return pred
