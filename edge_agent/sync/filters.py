"""The sync filter language: which entities and triples leave the device.

A filter is a JSON object of ``field: {operator: operand}``, all of which must hold::

    {"priority": {"gte": 3},
     "entity_type": {"in": ["drone", "sensor"]},
     "entity_id": {"prefix": "UAV-"},
     "properties.battery": {"lt": 20},
     "predicate": {"prefix": "geo."}}

``priority``, ``entity_type``, ``entity_id`` and ``properties.<key>`` select whole
entities (a missing property never matches). ``predicate`` selects the triples and
edges of a selected entity that are sent. Operators: eq, ne, gt, gte, lt, lte, in,
prefix. A filter is compiled once, at config time; errors name the key.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from edge_agent.sync.frames import EntityDelta

__all__ = ["OPERATORS", "SyncFilter", "compile_filter"]

Test = Callable[[Any], bool]


def _compare(op: Callable[[Any, Any], bool], operand: Any) -> Test:
    def test(value: Any) -> bool:
        try:
            return value is not None and bool(op(value, operand))
        except TypeError:  # e.g. "idle" < 3: a different type never matches
            return False

    return test


def _member(operand: Any) -> Test:
    if not isinstance(operand, list):
        raise ValueError("in: expected a list")
    return lambda value: value in operand


def _prefix(operand: Any) -> Test:
    if not isinstance(operand, str):
        raise ValueError("prefix: expected a string")
    return lambda value: isinstance(value, str) and value.startswith(operand)


OPERATORS: dict[str, Callable[[Any], Test]] = {
    "eq": lambda v: lambda x: x == v,
    "ne": lambda v: lambda x: x != v,
    "gt": lambda v: _compare(operator.gt, v),
    "gte": lambda v: _compare(operator.ge, v),
    "lt": lambda v: _compare(operator.lt, v),
    "lte": lambda v: _compare(operator.le, v),
    "in": _member,
    "prefix": _prefix,
}
_ENTITY_FIELDS = ("priority", "entity_type", "entity_id")


class SyncFilter:
    """A compiled filter; an empty spec lets everything through."""

    def __init__(self, entity: list[tuple[str, Test]], predicate: list[Test]) -> None:
        self._entity = entity
        self._predicate = predicate

    def selects(self, delta: EntityDelta, properties: Mapping[str, Any]) -> bool:
        """Whether the entity is sent at all, given its current ``properties``."""
        for field, test in self._entity:
            if field.startswith("properties."):
                value = properties.get(field.removeprefix("properties."))
            else:
                value = getattr(delta, field)
            if not test(value):
                return False
        return True

    def keeps(self, predicate: str) -> bool:
        """Whether a triple or edge with this predicate is sent."""
        return all(test(predicate) for test in self._predicate)

    def apply(self, delta: EntityDelta, properties: Mapping[str, Any]) -> EntityDelta | None:
        """The part of ``delta`` that leaves the device, or ``None``."""
        if not self.selects(delta, properties):
            return None
        if not self._predicate or delta.deleted:
            return delta
        return msgspec.structs.replace(
            delta,
            triples=[t for t in delta.triples if self.keeps(t[0])],
            edges=[e for e in delta.edges if self.keeps(e[0])],
        )


def compile_filter(spec: Mapping[str, Any], *, where: str = "filters") -> SyncFilter:
    """Compile a filter spec.

    Raises:
        ValueError: an unknown field or operator, or a bad operand; the message names
            the key path (``filters.priority.gte: ...``).
    """
    entity: list[tuple[str, Test]] = []
    predicate: list[Test] = []
    for field, conditions in spec.items():
        if field not in (*_ENTITY_FIELDS, "predicate") and not field.startswith("properties."):
            raise ValueError(
                f"{where}.{field}: unknown field (priority, entity_type, entity_id, "
                "predicate, properties.<key>)"
            )
        if not isinstance(conditions, Mapping) or not conditions:
            raise ValueError(f'{where}.{field}: expected an object such as {{"gte": 3}}')
        for name, operand in conditions.items():
            build = OPERATORS.get(name)
            if build is None:
                known = ", ".join(OPERATORS)
                raise ValueError(f"{where}.{field}.{name}: unknown operator ({known})")
            try:
                test = build(operand)
            except ValueError as exc:
                raise ValueError(f"{where}.{field}.{exc}") from exc
            if field == "predicate":
                predicate.append(test)
            else:
                entity.append((field, test))
    return SyncFilter(entity, predicate)
