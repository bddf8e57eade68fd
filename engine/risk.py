"""The risk layer (minimal): every refusal carries a reason code."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from engine.config import RiskLimits


class Reason(StrEnum):
    KILL_SWITCH = "kill_switch"
    MAX_POSITION = "max_position"
    STALE_FEATURES = "stale_features"
    NO_FEATURES = "no_features"
    SERVING_UNAVAILABLE = "serving_unavailable"
    MARKET_CLOSED = "market_closed"


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: Reason | None = None
    detail: str = ""


def check_order(limits: RiskLimits, *, current_lots: float, target_lots: float) -> Verdict:
    """Whether moving the net position from ``current_lots`` to ``target_lots`` is allowed."""
    if limits.kill_switch:
        return Verdict(False, Reason.KILL_SWITCH, "kill switch engaged")
    if abs(target_lots) > limits.max_position_lots + 1e-12:
        return Verdict(
            False, Reason.MAX_POSITION, f"|target| {abs(target_lots):g} lots > max {limits.max_position_lots:g}"
        )
    return Verdict(True)
