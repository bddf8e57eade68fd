"""The engine's online feature reader: one Redis round trip per bar, Feast's format, no feast.

All feature views of one entity share one Redis hash in Feast's layout, so a single ``HMGET``
reads every tabular feature of several views and the sequence array (``bar_sequence_fv.seq``)
of one symbol. A row is refused as stale by the engine when its event time (the bar close it
was computed at; with several views, the oldest of their event times) is not the close of the
bar the engine is deciding on.

**Validated at the reader.** Every tabular value must be one numeric ``feast.types.Value``
written with its own wire type and length (:func:`~engine.online_format.decode_scalar`),
finite and within ``±max_abs``; the sequence must have its shape and be finite; the
timestamps must decode to a plausible epoch. Anything else raises :class:`InvalidFeatures`
(the engine refuses the bar with ``invalid_features``, never trades on it). A Redis that
does not answer within its socket timeout, refuses or drops the connection raises
:class:`FeatureUnavailable` (``features_unavailable``): :func:`redis_client` builds a client
with connect/read deadlines and no hidden retries, so a hung Redis costs one deadline per bar.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.online_format import (
    decode_float32_array,
    decode_scalar,
    decode_timestamp,
    entity_key,
    field_hash,
)

DEFAULT_MAX_ABS = 1e9
"""Largest feature magnitude the reader accepts (returns, z-scores, prices, volumes fit)."""
_MIN_EPOCH, _MAX_EPOCH = 0, 4_102_444_800  # up to 2100-01-01 UTC


def redis_client(url: str, timeout_s: float = 0.25) -> Any:
    """A redis-py client whose connect and read each take at most ``timeout_s`` and that does
    not retry behind the caller's back (redis-py 6+ retries three times by default)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        retry_on_timeout=False,
        health_check_interval=0,
    )


@dataclass(frozen=True)
class FeatureRow:
    symbol: str
    event_time: float  # epoch seconds, UTC: the close of the bar the row belongs to
    values: dict[str, float]
    sequence: np.ndarray | None = None  # float32 [seq_len, channels] when the reader has a sequence
    event_times: Mapping[str, float] | None = None  # per view, when several views are read


class FeatureUnavailable(LookupError):
    """No row, an incomplete row, or the online store did not answer in time."""


class InvalidFeatures(ValueError):
    """The row is there but its bytes are not sane features (wrong type, non-finite, out of
    range): never trade on it."""


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
        max_abs: float = DEFAULT_MAX_ABS,
    ) -> None:
        self._redis = redis
        self.max_abs = float(max_abs)
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
        """The symbol's row; :class:`FeatureUnavailable` when Redis fails or the row is
        missing, :class:`InvalidFeatures` when its bytes are not sane features."""
        try:
            raw = self._redis.hmget(entity_key(self._join_key, symbol, self._project), self._fields)
        except Exception as exc:  # any client error (timeout, refused, reset, protocol)
            raise FeatureUnavailable(
                f"{symbol}: online store read failed: {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(raw, list | tuple) or len(raw) != len(self._fields):
            raise InvalidFeatures(f"{symbol}: online store answered {type(raw).__name__}")
        nts = len(self._ts_views)
        ts_raw = raw[len(raw) - nts :]
        times: dict[str, float] = {}
        for view, ts in zip(self._ts_views, ts_raw, strict=True):
            if ts is None:
                raise FeatureUnavailable(f"no online row for {symbol} in {view}")
            try:
                t = decode_timestamp(ts)
            except (IndexError, ValueError) as exc:
                raise InvalidFeatures(f"{symbol}: unreadable timestamp of {view}") from exc
            if not _MIN_EPOCH <= t <= _MAX_EPOCH:
                raise InvalidFeatures(f"{symbol}: timestamp of {view} out of range ({t:.0f})")
            times[view] = t
        values: dict[str, float] = {}
        for name, buf in zip(self._features, raw, strict=False):
            if buf is None:
                raise FeatureUnavailable(f"{symbol}: feature {name} missing")
            try:
                v = decode_scalar(buf)
            except ValueError as exc:
                raise InvalidFeatures(f"{symbol}: feature {name}: {exc}") from exc
            if v is None:
                raise FeatureUnavailable(f"{symbol}: feature {name} missing")
            if not math.isfinite(v) or abs(v) > self.max_abs:
                raise InvalidFeatures(
                    f"{symbol}: feature {name} = {v!r} is not finite within ±{self.max_abs:g}"
                )
            values[name] = v
        seq = None
        if self._sequence is not None:
            buf = raw[len(self._features)]
            s = self._sequence
            if buf is None:
                raise FeatureUnavailable(f"{symbol}: sequence {s.feature_view}:{s.field} missing")
            try:
                arr = decode_float32_array(buf)
            except (IndexError, ValueError, struct.error) as exc:
                raise InvalidFeatures(f"{symbol}: unreadable sequence: {exc}") from exc
            if arr.size != s.seq_len * s.channels:
                raise InvalidFeatures(
                    f"{symbol}: sequence has {arr.size} values, expected {s.seq_len}x{s.channels}"
                )
            if not np.isfinite(arr).all() or float(np.abs(arr).max(initial=0.0)) > self.max_abs:
                raise InvalidFeatures(f"{symbol}: sequence has non-finite or out-of-range values")
            seq = arr.reshape(s.seq_len, s.channels)
        return FeatureRow(symbol, min(times.values()), values, seq, times if nts > 1 else None)
