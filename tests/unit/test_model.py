"""Entity events: each kind of bad input is refused with its own reason."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from edge_agent.errors import EventError
from edge_agent.model import REASONS, EntityEvent, clamp_future, decode_event, encode_event

GOOD = {"entity_id": "UAV-001", "entity_type": "drone", "properties": {"battery": 85.2}}


def refuse(data: bytes, max_bytes: int = 65536) -> str:
    with pytest.raises(EventError) as caught:
        decode_event(data, max_bytes=max_bytes)
    assert caught.value.detail
    return caught.value.reason


def with_(**changes: object) -> bytes:
    return json.dumps({**GOOD, **changes}).encode()


def without(field: str) -> bytes:
    return json.dumps({k: v for k, v in GOOD.items() if k != field}).encode()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"this is not json", "not_json"),
        (b'{"entity_id": "a",', "not_json"),
        (b"[1, 2, 3]", "not_object"),
        (b'"just a string"', "not_object"),
        (without("entity_id"), "missing_field"),
        (without("entity_type"), "missing_field"),
        (without("properties"), "missing_field"),
        (with_(entity_id="has space"), "bad_id"),
        (with_(entity_id="-leading-dash"), "bad_id"),
        (with_(entity_id="semi;colon"), "bad_id"),
        (with_(entity_id=""), "bad_id"),
        (with_(entity_id="a" * 256), "id_too_long"),
        (with_(entity_id=42), "bad_field_type"),
        (with_(properties={"battery": {"nested": 1}}), "bad_property_type"),
        (with_(properties={"battery": [1, 2]}), "bad_property_type"),
        (with_(properties="full"), "bad_property_type"),
        (with_(op="explode"), "unknown_op"),
        (with_(priority=10), "bad_priority"),
        (with_(priority="high"), "bad_field_type"),
        (with_(entity_type="drone.v2"), "bad_entity_type"),
        (with_(relationships=[{"predicate": "near", "object": "bad id"}]), "bad_id"),
        (with_(timestamp="yesterday"), "bad_field_type"),
    ],
)
def test_bad_event_is_refused_with_its_reason(data: bytes, reason: str) -> None:
    assert refuse(data) == reason
    assert reason in REASONS


def test_event_over_the_size_limit() -> None:
    big = with_(properties={"blob": "x" * 2000})
    assert refuse(big, max_bytes=1000) == "too_large"
    assert decode_event(big, max_bytes=4000).entity_id == "UAV-001"


def test_id_of_exactly_255_chars_is_accepted() -> None:
    assert len(decode_event(with_(entity_id="a" * 255), max_bytes=4096).entity_id) == 255


def test_full_event_round_trips() -> None:
    raw = {
        **GOOD,
        "priority": 3,
        "timestamp": "2024-01-15T10:30:00Z",
        "relationships": [{"predicate": "member_of", "object": "fleet-west", "weight": 0.5}],
        "aliases": ["tail-N123"],
        "source": "sensor-hub",
        "unknown_future_field": True,
    }
    event = decode_event(json.dumps(raw).encode(), max_bytes=4096)
    assert event.relationships[0].weight == 0.5
    assert event.timestamp is not None and event.timestamp.year == 2024
    assert decode_event(encode_event(event), max_bytes=4096) == event


def test_delete_needs_no_properties() -> None:
    event = decode_event(b'{"entity_id": "a", "entity_type": "t", "op": "delete"}', max_bytes=99)
    assert event.op == "delete"


def test_a_future_stamp_is_clamped_and_a_present_one_kept() -> None:
    latest = datetime(2026, 1, 1, tzinfo=UTC)
    ahead = EntityEvent(entity_id="a", entity_type="t", timestamp=datetime(2999, 1, 1, tzinfo=UTC))
    clamped = clamp_future(ahead, latest)
    assert clamped is not None and clamped.timestamp == latest and clamped.entity_id == "a"
    assert (
        clamp_future(EntityEvent(entity_id="a", entity_type="t", timestamp=latest), latest) is None
    )
    assert clamp_future(EntityEvent(entity_id="a", entity_type="t"), latest) is None
