"""The entity event: what producers publish, decoded and checked without I/O.

Shared by the edge's ingest paths (NATS, HTTP, simulator) and by the hub. The checks here
are the contract of ``ARCHITECTURE.md`` §3; each failure is an :class:`EventError` whose
``reason`` is a stable label for metrics and dead letters.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Final

import msgspec

from edge_agent.errors import EventError

__all__ = [
    "MAX_ID_LENGTH",
    "OPS",
    "REASONS",
    "EntityEvent",
    "EntityIdText",
    "EntityTypeText",
    "Priority",
    "Relationship",
    "Scalar",
    "Weight",
    "check_id",
    "clamp_future",
    "decode_event",
    "encode_event",
    "validate_event",
]

Scalar = str | int | float | bool | None

MAX_ID_LENGTH: Final = 255
OPS: Final = ("upsert", "delete")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*")
_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
#: The same rules as types, for msgspec to check while decoding a peer's bytes.
EntityIdText = Annotated[
    str, msgspec.Meta(pattern=rf"\A{_ID.pattern}\Z", min_length=1, max_length=MAX_ID_LENGTH)
]
#: An entity type, or empty (a deleted entity's delta carries none).
EntityTypeText = Annotated[str, msgspec.Meta(pattern=rf"\A({_TYPE.pattern})?\Z")]
Priority = Annotated[int, msgspec.Meta(ge=0, le=9)]
#: A relationship's weight: finite and bounded (NaN or infinity would break PathRAG's
#: ordering, and the hub refuses them).
Weight = Annotated[float, msgspec.Meta(ge=-1e12, le=1e12)]

#: Every reason an event can be refused for, as used in ``semstreams_errors_total{reason=...}``.
REASONS: Final = (
    "not_json",
    "not_object",
    "missing_field",
    "bad_field_type",
    "bad_property_type",
    "bad_id",
    "id_too_long",
    "bad_entity_type",
    "bad_priority",
    "unknown_op",
    "too_large",
)


class Relationship(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An edge from the event's entity to another entity, by id."""

    predicate: str
    object: str
    weight: Weight = 1.0


class EntityEvent(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One entity event (``ARCHITECTURE.md`` §3); unknown fields are ignored."""

    entity_id: str
    entity_type: str
    properties: dict[str, Scalar] | msgspec.UnsetType = msgspec.UNSET
    priority: int = 1
    timestamp: datetime | None = None
    relationships: list[Relationship] = msgspec.field(default_factory=list)
    aliases: list[str] = msgspec.field(default_factory=list)
    source: str = ""
    op: str = "upsert"


_decoder = msgspec.json.Decoder(EntityEvent)
_encoder = msgspec.json.Encoder()


def decode_event(data: bytes, *, max_bytes: int) -> EntityEvent:
    """Decode and validate one JSON entity event.

    Args:
        data: the raw JSON bytes as published.
        max_bytes: events larger than this are refused (``too_large``).

    Returns:
        The validated event.

    Raises:
        EventError: the event is refused; ``reason`` says why.
    """
    if len(data) > max_bytes:
        raise EventError("too_large", f"event is {len(data)} bytes, the limit is {max_bytes}")
    try:
        event = _decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise EventError(_classify(str(exc)), str(exc)) from exc
    except msgspec.DecodeError as exc:
        raise EventError("not_json", str(exc)) from exc
    validate_event(event)
    return event


def encode_event(event: EntityEvent) -> bytes:
    """Encode an event as compact JSON (the inverse of :func:`decode_event`)."""
    return _encoder.encode(event)


def validate_event(event: EntityEvent) -> None:
    """Check the rules a type can't express.

    Raises:
        EventError: with reason ``bad_id``, ``id_too_long``, ``bad_entity_type``,
            ``bad_priority``, ``unknown_op`` or ``missing_field``.
    """
    check_id(event.entity_id, "entity_id")
    if not _TYPE.fullmatch(event.entity_type):
        raise EventError(
            "bad_entity_type",
            f"entity_type {event.entity_type[:80]!r} must be 1-64 chars of [A-Za-z0-9_-]",
        )
    if event.op not in OPS:
        raise EventError("unknown_op", f"op {event.op[:40]!r} is not one of {', '.join(OPS)}")
    if not 0 <= event.priority <= 9:
        raise EventError("bad_priority", f"priority {event.priority} is outside 0-9")
    if event.op == "upsert" and event.properties is msgspec.UNSET:
        raise EventError("missing_field", "Object missing required field `properties`")
    for relationship in event.relationships:
        check_id(relationship.object, "relationships[].object")
    for alias in event.aliases:
        if not 0 < len(alias) <= MAX_ID_LENGTH:
            raise EventError("bad_id", f"alias must be 1-{MAX_ID_LENGTH} chars")


def clamp_future(event: EntityEvent, latest: datetime) -> EntityEvent | None:
    """The event stamped ``latest`` when its own stamp lies later, else ``None``.

    A graph keeps a property's newest stamp and ignores older ones, so one event stamped
    in the year 2999 would freeze that property for good; clamped, it wins for no longer
    than the allowed skew.
    """
    if event.timestamp is None or event.timestamp <= latest:
        return None
    return msgspec.structs.replace(event, timestamp=latest)


def check_id(value: str, field: str) -> None:
    """Check an entity id: 1-255 chars of ``[A-Za-z0-9._:-]``, starting alphanumeric.

    Raises:
        EventError: with reason ``id_too_long`` or ``bad_id``.
    """
    if len(value) > MAX_ID_LENGTH:
        raise EventError("id_too_long", f"{field} is {len(value)} chars, the limit is 255")
    if not _ID.fullmatch(value):
        raise EventError(
            "bad_id",
            f"{field} {value[:80]!r} must be [A-Za-z0-9._:-], starting with a letter or digit",
        )


def _classify(message: str) -> str:
    """Map a msgspec validation message to a reason label."""
    if message.startswith("Expected `object`, got") and "- at `$." not in message:
        return "not_object"
    if message.startswith("Object missing required field"):
        return "missing_field"
    if "- at `$.properties" in message:
        return "bad_property_type"
    return "bad_field_type"
