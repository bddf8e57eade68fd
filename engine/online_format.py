"""Feast's Redis online-store format, read without importing feast.

Layout (Feast ``RedisOnlineStore``, entity key serialisation v3):

- key: ``serialize_entity_key(EntityKey)`` + project name, where the entity key is
  ``<u32 n keys>`` then per key ``<u32 type=STRING><u32 len><utf8 name>``, then per value
  ``<u32 type><u32 len><bytes>`` (little-endian);
- hash fields: 4 bytes, the little-endian unsigned murmur3-32 of ``"<view>:<feature>"``;
  values: a serialised ``feast.types.Value`` protobuf;
- ``_ts:<view>``: a serialised ``google.protobuf.Timestamp`` of the row's event time.

Only the protobuf wire types those messages use are decoded here; a test checks these
functions against the Feast SDK on the same Redis keys. The encoders (``encode_*``) write the
same bytes Feast writes, for the streaming pusher's direct path.
"""

from __future__ import annotations

import struct

import mmh3
import numpy as np

_STRING, _INT64 = 2, 4
_U32 = struct.Struct("<I")
_F64 = struct.Struct("<d")
_F32 = struct.Struct("<f")


def entity_key(join_key: str, value: str | int, project: str) -> bytes:
    """Redis key of one single-join-key entity row (string or int64 value)."""
    k = join_key.encode()
    if isinstance(value, str):
        v, vtype = value.encode(), _STRING
    else:
        v, vtype = struct.pack("<q", value), _INT64
    return b"".join(
        [
            _U32.pack(1),
            _U32.pack(_STRING),
            _U32.pack(len(k)),
            k,
            _U32.pack(vtype),
            _U32.pack(len(v)),
            v,
            project.encode(),
        ]
    )


def field_hash(feature_view: str, feature: str) -> bytes:
    return _U32.pack(mmh3.hash(f"{feature_view}:{feature}", signed=False))


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, i
        shift += 7


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _packed(payload: bytes, kind: str) -> list[float] | list[int]:
    if kind == "d":
        return list(struct.unpack(f"<{len(payload) // 8}d", payload))
    if kind == "f":
        return list(struct.unpack(f"<{len(payload) // 4}f", payload))
    out, i = [], 0
    while i < len(payload):
        v, i = _varint(payload, i)
        out.append(_signed64(v))
    return out


# Value field number → how to read it
_SCALARS = {3: "i32", 4: "i64", 5: "d", 6: "f", 7: "bool", 8: "i64", 2: "str", 1: "bytes"}
_LISTS = {13: "i", 14: "i", 15: "d", 16: "f", 18: "i"}


# the wire type each scalar field of ``feast.types.Value`` is written with
_WIRE = {1: 2, 2: 2, 3: 0, 4: 0, 5: 1, 6: 5, 7: 0, 8: 0, 19: 2}


def decode_scalar(buf: bytes) -> float | None:
    """A numeric ``feast.types.Value`` (double, float, int32, int64) → ``float``, strictly.

    ``None`` for an empty (unset) message. Raises ``ValueError`` when the bytes are not
    exactly one numeric scalar field written with its own wire type and length: a bytes,
    string, bool or list value, a wrong wire type (``b"\x08\x05"`` is field 1 as a varint,
    not a number), a truncated payload or trailing bytes."""
    if not buf:
        return None
    try:
        key, i = _varint(buf, 0)
        field, wire = key >> 3, key & 7
        if field == 5 and wire == 1 and len(buf) == i + 8:
            return float(_F64.unpack_from(buf, i)[0])
        if field == 6 and wire == 5 and len(buf) == i + 4:
            return float(_F32.unpack_from(buf, i)[0])
        if field in (3, 4) and wire == 0:
            v, j = _varint(buf, i)
            if j == len(buf):
                if field == 3:
                    v &= 0xFFFFFFFF
                    return float(v - (1 << 32) if v >= 1 << 31 else v)
                return float(_signed64(v))
    except IndexError as exc:
        raise ValueError(f"truncated feast Value ({len(buf)} bytes)") from exc
    raise ValueError(
        f"not a numeric feast Value: field {field}, wire type {wire}, {len(buf)} bytes"
    )


def decode_value(buf: bytes) -> object:
    """Decode a serialised ``feast.types.Value``; an empty message (unset) → ``None``.

    A field written with a wire type other than its own raises ``ValueError``."""
    if not buf:
        return None
    key, i = _varint(buf, 0)
    field, wire = key >> 3, key & 7
    if field in _WIRE and _WIRE[field] != wire:
        raise ValueError(f"feast Value field {field} with wire type {wire}")
    if wire == 1 and field == 5:
        return _F64.unpack_from(buf, i)[0]
    if wire == 5 and field == 6:
        return _F32.unpack_from(buf, i)[0]
    if wire == 0:
        v, _ = _varint(buf, i)
        if field == 7:
            return bool(v)
        if field == 3:
            v &= 0xFFFFFFFF
            return v - (1 << 32) if v >= 1 << 31 else v
        return _signed64(v)
    if wire == 2:
        n, i = _varint(buf, i)
        payload = buf[i : i + n]
        if field == 2:
            return payload.decode()
        if field == 1:
            return payload
        if field in _LISTS:
            # a XxxList message: field 1, packed (wire 2) or repeated
            out: list[float] | list[int] = []
            j = 0
            while j < len(payload):
                k2, j = _varint(payload, j)
                w2 = k2 & 7
                if w2 == 2:
                    m, j = _varint(payload, j)
                    out += _packed(payload[j : j + m], _LISTS[field])  # type: ignore[operator]
                    j += m
                elif w2 == 1:
                    out.append(_F64.unpack_from(payload, j)[0])  # type: ignore[arg-type]
                    j += 8
                elif w2 == 5:
                    out.append(_F32.unpack_from(payload, j)[0])  # type: ignore[arg-type]
                    j += 4
                else:
                    v, j = _varint(payload, j)
                    out.append(_signed64(v))  # type: ignore[arg-type]
            return out
        if field == 19:
            return None
    raise ValueError(f"unsupported feast Value field {field} (wire type {wire})")


def decode_timestamp(buf: bytes) -> float:
    """Decode a serialised ``google.protobuf.Timestamp`` → epoch seconds (float)."""
    seconds = nanos = 0
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        v, i = _varint(buf, i)
        if key >> 3 == 1:
            seconds = _signed64(v)
        elif key >> 3 == 2:
            nanos = v
    return seconds + nanos / 1e9


# Value field numbers of the types written here (feast/types/Value.proto)
_DOUBLE_KEY = bytes([5 << 3 | 1])  # double_val, fixed64
_FLOAT_LIST_KEY = bytes([0x82, 0x01])  # float_list_val = 16, length-delimited
_PACKED_1 = bytes([1 << 3 | 2])  # FloatList.val = 1, packed


def _put_varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def encode_double(v: float) -> bytes:
    """``Value(double_val=v).SerializeToString()``."""
    return _DOUBLE_KEY + _F64.pack(v)


def encode_float_list(values: np.ndarray) -> bytes:
    """``Value(float_list_val=FloatList(val=values)).SerializeToString()`` (float32, packed)."""
    raw = np.ascontiguousarray(values, dtype="<f4").tobytes()
    inner = _PACKED_1 + _put_varint(len(raw)) + raw if raw else b""
    return _FLOAT_LIST_KEY + _put_varint(len(inner)) + inner


def encode_timestamp(seconds: int, nanos: int = 0) -> bytes:
    """``google.protobuf.Timestamp(seconds=, nanos=).SerializeToString()``."""
    out = b""
    if seconds:
        out += b"\x08" + _put_varint(seconds & ((1 << 64) - 1))
    if nanos:
        out += b"\x10" + _put_varint(nanos)
    return out


def decode_float32_array(buf: bytes) -> np.ndarray:
    """A serialised ``float_list_val`` → ``float32`` array, without a Python float per element.

    Fast path for the packed layout Feast writes; anything else goes through
    :func:`decode_value`."""
    if buf[:2] == _FLOAT_LIST_KEY:
        n, i = _varint(buf, 2)
        if n == 0:
            return np.empty(0, dtype=np.float32)
        if i + n == len(buf) and buf[i : i + 1] == _PACKED_1:
            m, j = _varint(buf, i + 1)
            if j + m == len(buf):
                return np.frombuffer(buf, dtype="<f4", count=m // 4, offset=j).astype(np.float32)
    v = decode_value(buf)
    if not isinstance(v, list):
        raise ValueError("not a float list value")
    return np.asarray(v, dtype=np.float32)
