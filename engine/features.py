"""The engine's online feature reader: one Redis round trip per bar, Feast's format, no feast.

A row is refused as stale when its event time (the bar close it was computed at) is not the
close of the bar the engine is deciding on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.online_format import decode_timestamp, decode_value, entity_key, field_hash


@dataclass(frozen=True)
class FeatureRow:
    symbol: str
    event_time: float  # epoch seconds, UTC: the close of the bar the row belongs to
    values: dict[str, float]


class FeatureUnavailable(LookupError):
    """No row, or an incomplete row, for the entity."""


class OnlineFeatureReader:
    def __init__(
        self, redis: Any, *, project: str, feature_view: str, features: list[str], join_key: str = "symbol"
    ) -> None:
        self._redis = redis
        self._project = project
        self._view = feature_view
        self._features = list(features)
        self._join_key = join_key
        self._fields = [field_hash(feature_view, f) for f in self._features] + [f"_ts:{feature_view}".encode()]

    @property
    def features(self) -> list[str]:
        return list(self._features)

    def read(self, symbol: str) -> FeatureRow:
        raw = self._redis.hmget(entity_key(self._join_key, symbol, self._project), self._fields)
        ts = raw[-1]
        if ts is None:
            raise FeatureUnavailable(f"no online row for {symbol} in {self._view}")
        values: dict[str, float] = {}
        for name, buf in zip(self._features, raw[:-1], strict=True):
            v = decode_value(buf) if buf is not None else None
            if v is None:
                raise FeatureUnavailable(f"{symbol}: feature {name} missing in {self._view}")
            values[name] = float(v)  # type: ignore[arg-type]
        return FeatureRow(symbol, decode_timestamp(ts), values)
