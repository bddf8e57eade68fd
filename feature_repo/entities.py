"""Feast entities."""

from feast import Entity, ValueType

symbol = Entity(
    name="symbol",
    join_keys=["symbol"],
    value_type=ValueType.STRING,
    description="Broker symbol, e.g. EURUSD.",
)
