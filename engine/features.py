"""The engine's online feature reader: one Redis round trip per bar, Feast's format, no feast.

All feature views of one entity share one Redis hash in Feast's layout, so a single ``HMGET``
reads every tabular feature of several views and the sequence array (``bar_sequence_fv.seq``)
of one symbol. A row is refused as stale by the engine when its event time (the bar close it
was computed at; with several views, the oldest of their event times) is not the close of the
bar the engine is deciding on.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.online_format import (
    decode_float32_array,
    decode_timestamp,
    decode_value,
    entity_key,
    field_hash,
)

_DOUBLE_TAG = 5 << 3 | 1  # feast Value.double_val, fixed64
_F64 = struct.Struct("<d")


@dataclass(frozen=True)
class FeatureRow:
    symbol: str
    event_time: float  # epoch seconds, UTC: the close of the bar the row belongs to
    values: dict[str, float]
    sequence: np.ndarray | None = None  # float32 [seq_len, channels] when the reader has a sequence
    event_times: Mapping[str, float] | None = None  # per view, when several views are read


class FeatureUnavailable(LookupError):
    """No row, or an incomplete row, for the entity."""


@dataclass(frozen=True)
class SequenceSpec:
    """Where the sequence feature lives and its shape (from a bundle manifest's ``sequence``)."""

    feature_view: str = "bar_sequence_fv"
    field: str = "seq"
    seq_len: int = 64
    channels: int = 9


class OnlineFeatureReader:
    """Reads tabular features (of ``feature_view``, or of several ``views``) and optionally
    the sequence array of one symbol in one ``HMGET``."""

    def __init__(
        self,
        redis: Any,
        *,
        project: str,
        feature_view: str | None = None,
        features: Sequence[str] = (),
        join_key: str = "symbol",
        views: Mapping[str, Sequence[str]] | None = None,
        sequence: SequenceSpec | None = None,
    ) -> None:
        self._redis = redis
        self._project = project
        self._join_key = join_key
        if views is None:
            if feature_view is None:
                raise ValueError("give feature_view and features, or views")
            views = {feature_view: list(features)}
        self._views = {v: list(fs) for v, fs in views.items()}
        self._features = [f for fs in self._views.values() for f in fs]
        if len(set(self._features)) != len(self._features):
            raise ValueError("feature names must be unique across views")
        self._sequence = sequence
        ts_views = list(
            dict.fromkeys([*self._views, *([sequence.feature_view] if sequence else [])])
        )
        self._ts_views = ts_views
        self._fields = [field_hash(v, f) for v, fs in self._views.items() for f in fs]
        if sequence:
            self._fields.append(field_hash(sequence.feature_view, sequence.field))
        self._fields += [f"_ts:{v}".encode() for v in ts_views]

    @classmethod
    def from_manifest(
        cls, redis: Any, manifest: Mapping[str, Any], *, project: str
    ) -> OnlineFeatureReader:
        """A reader for a model bundle's manifest: ``feature_view`` + ``features`` (tabular,
        or ``feature_views`` with ``features`` as ``view:feature`` refs) and ``sequence``."""
        seq = manifest.get("sequence")
        spec = (
            SequenceSpec(
                seq.get("feature_view", "bar_sequence_fv"),
                seq.get("field", "seq"),
                int(seq["seq_len"]),
                len(seq["channels"]),
            )
            if seq
            else None
        )
        feats = list(manifest["features"])
        if all(":" in f for f in feats):
            views: dict[str, list[str]] = {}
            for ref in feats:
                v, f = ref.split(":", 1)
                views.setdefault(v, []).append(f)
            return cls(redis, project=project, views=views, sequence=spec)
        return cls(
            redis,
            project=project,
            feature_view=manifest["feature_view"],
            features=feats,
            sequence=spec,
        )

    @property
    def features(self) -> list[str]:
        return list(self._features)

    @property
    def key_fields(self) -> list[bytes]:
        """The hash fields read, in order (features, the sequence, then ``_ts:<view>`` per view)."""
        return list(self._fields)

    def read(self, symbol: str) -> FeatureRow:
        raw = self._redis.hmget(entity_key(self._join_key, symbol, self._project), self._fields)
        nts = len(self._ts_views)
        ts_raw = raw[len(raw) - nts :]
        times: dict[str, float] = {}
        for view, ts in zip(self._ts_views, ts_raw, strict=True):
            if ts is None:
                raise FeatureUnavailable(f"no online row for {symbol} in {view}")
            times[view] = decode_timestamp(ts)
        values: dict[str, float] = {}
        for name, buf in zip(self._features, raw, strict=False):
            if (
                buf is not None and len(buf) == 9 and buf[0] == _DOUBLE_TAG
            ):  # double_val: the common case
                values[name] = _F64.unpack_from(buf, 1)[0]
                continue
            v = decode_value(buf) if buf is not None else None
            if v is None:
                raise FeatureUnavailable(f"{symbol}: feature {name} missing")
            values[name] = float(v)  # type: ignore[arg-type]
        seq = None
        if self._sequence is not None:
            buf = raw[len(self._features)]
            if buf is None:
                raise FeatureUnavailable(
                    f"{symbol}: sequence {self._sequence.feature_view}:{self._sequence.field} missing"
                )
            arr = decode_float32_array(buf)
            s = self._sequence
            if arr.size != s.seq_len * s.channels:
                raise FeatureUnavailable(
                    f"{symbol}: sequence has {arr.size} values, expected {s.seq_len}x{s.channels}"
                )
            seq = arr.reshape(s.seq_len, s.channels)
        return FeatureRow(symbol, min(times.values()), values, seq, times if nts > 1 else None)
