"""What the real-terminal adapters share: turning the official module's return values into
this package's types, and requests into plain literals.

The official ``MetaTrader5`` module returns its own named-tuple classes (``AccountInfo``,
``SymbolInfo``, ``TradeDeal``, …) and numpy structured arrays; the ``mt5linux`` bridge returns
the same values from another process. :func:`to_record` maps any of them, by *field name*, onto
the named tuples of :mod:`engine.mt5.protocol` (a newer terminal's extra fields are dropped, a
field it lacks takes the protocol's default), and :func:`to_rates` casts any bar array that has
the :data:`~engine.mt5.protocol.RATES_DTYPE` fields onto that dtype.
"""

from __future__ import annotations

import calendar
import math
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, TypeVar

import numpy as np

from engine.mt5.protocol import (
    RATES_DTYPE,
    OrderCheckResult,
    OrderSendResult,
    TradeRequest,
)

__all__ = ["plain_request", "server_seconds", "to_rates", "to_record", "to_records"]

R = TypeVar("R")

_REQUEST_FIELDS = frozenset(TradeRequest._fields)
_NESTED: dict[type, dict[str, type]] = {
    OrderSendResult: {"request": TradeRequest},
    OrderCheckResult: {"request": TradeRequest},
}


def to_record(cls: type[R], value: Any) -> R | None:
    """``value`` (a named tuple of the official module, a decoded bridge record, or already a
    ``cls``) as a ``cls``; ``None`` stays ``None``.

    Fields are matched by name. Raises ``TypeError`` when ``value`` lacks a field of ``cls``
    that has no default, or has no field names and not exactly ``cls``'s field count.
    """
    if value is None:
        return None
    if type(value) is cls:
        return value  # type: ignore[no-any-return]
    ctor: Any = cls  # a NamedTuple class
    own: tuple[str, ...] = ctor._fields
    values = tuple(value)
    fields = getattr(value, "_fields", None)
    if fields is None:
        if len(values) != len(own):
            raise TypeError(f"{cls.__name__}: expected {len(own)} values, got {len(values)}")
        fields = own
    data = dict(zip(fields, values, strict=True))
    nested = _NESTED.get(cls, {})
    kwargs: dict[str, Any] = {}
    for name in own:
        if name not in data:
            continue
        v = data[name]
        sub = nested.get(name)
        if sub is not None and v is not None and not isinstance(v, Mapping):
            v = to_record(sub, v)
        elif isinstance(v, np.generic):
            v = v.item()
        kwargs[name] = v
    try:
        return ctor(**kwargs)  # type: ignore[no-any-return]
    except TypeError as exc:
        missing = [f for f in own if f not in data]
        raise TypeError(f"{cls.__name__}: terminal value lacks field(s) {missing}") from exc


def to_records(cls: type[R], values: Iterable[Any] | None) -> tuple[R, ...] | None:
    """A tuple of records (``positions_get``, ``history_deals_get``), ``None`` kept."""
    if values is None:
        return None
    out = []
    for v in values:
        rec = to_record(cls, v)
        if rec is not None:
            out.append(rec)
    return tuple(out)


def to_rates(value: Any) -> np.ndarray | None:
    """A ``copy_rates_*`` answer as a :data:`RATES_DTYPE` array (``None`` kept)."""
    if value is None:
        return None
    arr = np.asarray(value)
    if arr.dtype == RATES_DTYPE:
        return arr
    names = arr.dtype.names or ()
    missing = [n for n in RATES_DTYPE.names or () if n not in names]
    if missing:
        raise TypeError(f"rates array lacks field(s) {missing}: dtype {arr.dtype}")
    out = np.empty(arr.shape, dtype=RATES_DTYPE)
    for n in RATES_DTYPE.names or ():
        out[n] = arr[n]
    return out


def plain_request(request: Mapping[str, Any]) -> dict[str, Any]:
    """A trade request with builtin ``int``/``float``/``str`` values only (numpy scalars
    converted), so that it survives ``repr`` (the bridge) and the C module alike.

    Raises ``TypeError`` for a field the official ``TradeRequest`` does not have or a value that
    is not a number or string.
    """
    if not isinstance(request, Mapping):
        raise TypeError(f"request must be a dict, got {type(request).__name__}")
    out: dict[str, Any] = {}
    for key, v in request.items():
        if key not in _REQUEST_FIELDS:
            raise TypeError(f"unknown trade request field {key!r}")
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, bool) or not isinstance(v, int | float | str):
            raise TypeError(f"trade request field {key!r}: {v!r} is not a number or string")
        if isinstance(v, float) and not math.isfinite(v):
            raise TypeError(f"trade request field {key!r}: {v!r} is not finite")
        out[str(key)] = v
    return out


def server_seconds(value: datetime | int | float) -> int:
    """A time argument as server-time epoch seconds, the way the simulated terminal reads it:
    a naive ``datetime`` is a server wall clock, an aware one an instant."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            return calendar.timegm(value.timetuple())
        return int(value.timestamp())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a datetime or epoch seconds, got {value!r}")
    return int(value)
