"""Events and a feeder for the graph tests that write through a store's outbox."""

from __future__ import annotations

import json
from typing import Any

from edge_agent.config import IndexesConfig
from edge_agent.graph import GraphStore
from edge_agent.model import EntityEvent, decode_event

ALL_INDEXES = IndexesConfig(predicate=True, incoming=True, alias=True, spatial=True, temporal=True)
#: The wall clock (epoch ms) the events are applied at.
NOW = 1_700_000_000_000
LAT, LON = "geo.location.latitude", "geo.location.longitude"


def ev(entity_id: str, **fields: Any) -> EntityEvent:
    """A ``drone`` event without properties; ``fields`` adds to or overrides its JSON."""
    raw = {"entity_id": entity_id, "entity_type": "drone", "properties": {}, **fields}
    return decode_event(json.dumps(raw).encode(), max_bytes=1 << 20)


def gone(entity_id: str) -> EntityEvent:
    """A delete of the ``drone`` ``entity_id``."""
    raw = {"entity_id": entity_id, "entity_type": "drone", "op": "delete"}
    return decode_event(json.dumps(raw).encode(), max_bytes=1 << 20)


def at(second: int) -> str:
    """An RFC 3339 timestamp ``second`` seconds into 2024."""
    return f"2024-01-01T00:00:{second:02d}Z"


class Feed:
    """Applies events, one apply (one transaction) per call, with increasing sequences."""

    def __init__(self, store: GraphStore, seq: int = 0) -> None:
        self.store = store
        self.seq = seq
        #: The agent's clock at the applies (when changes are queued for the link).
        self.now_ms = NOW

    def __call__(self, *events: EntityEvent) -> None:
        batch = []
        for event in events:
            self.seq += 1
            batch.append((self.seq, event))
        self.store.apply(batch, consumer="c", now_ms=self.now_ms)
