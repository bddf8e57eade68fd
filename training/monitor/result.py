"""The one shape every monitoring check returns, so the runner, the store, the metrics and
the actions never need to know which check produced a row."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal

Status = Literal["ok", "warn", "breach", "skipped"]
"""``ok`` nothing to do; ``warn`` worth a look; ``breach`` an action may follow;
``skipped`` the check could not judge (too little data, market closed, nothing deployed) and
``detail`` says why. A skipped check is never read as healthy by an action."""

STATUS_LEVEL: dict[str, int] = {"ok": 0, "skipped": 0, "warn": 1, "breach": 2}


@dataclass(frozen=True)
class CheckResult:
    """One verdict of one check on one subject.

    ``check`` names the check (``freshness``, ``drift``, ``live_vs_expected``, ``shadow_ab``);
    ``subject`` what it judged (``EURUSD/M5/online``, ``feature:ret_1``, ``tx_trend@v3``);
    ``metrics`` the numbers behind the verdict (exported as gauges, logged to MLflow);
    ``detail`` one line for a person; ``evidence`` anything an action or audit row needs
    (p-values, window bounds, versions); ``at`` when the check judged (UTC).
    """

    check: str
    subject: str
    status: Status
    detail: str
    at: datetime
    metrics: dict[str, float] = field(default_factory=dict)
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def level(self) -> int:
        return STATUS_LEVEL[self.status]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["at"] = self.at.isoformat()
        return d
