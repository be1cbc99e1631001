"""The hub applying an edge's batches: once per seq, stale and conflict rules, deletes."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from edge_agent.graph import GraphStore
from edge_agent.graph.deltas import DeltaResult
from edge_agent.graph.outbox import BatchLimits
from edge_agent.sync.codec import decode_deltas
from edge_agent.sync.filters import compile_filter
from edge_agent.sync.frames import EntityDelta
from tests.unit.graph.events import ALL_INDEXES, LAT, LON, NOW, Feed, at, ev, gone

HUB_NOW = NOW + 5_000


class Edge(Feed):
    """An edge's store with a state outbox: apply events, take and decode batches."""

    def __init__(self, path: Path) -> None:
        super().__init__(GraphStore(path, origin="edge-1", indexes=ALL_INDEXES, outbox="state"))

    def take(self) -> tuple[int, list[EntityDelta]]:
        batch, _ = self.store.sync_take(BatchLimits(), compile_filter({}), "zstd", NOW + 60_000)
        assert batch is not None
        return batch.seq, decode_deltas(batch.payload, batch.encoding, max_bytes=1 << 24)


@pytest.fixture
def edge(tmp_path: Path) -> Edge:
    return Edge(tmp_path / "edge.db")


@pytest.fixture
def hub(tmp_path: Path) -> GraphStore:
    return GraphStore(tmp_path / "hub.db", origin="hub", indexes=ALL_INDEXES, outbox=None)


def sync(edge: Edge, hub: GraphStore, edge_id: str = "e1") -> DeltaResult:
    seq, deltas = edge.take()
    return hub.apply_deltas(edge_id, seq, deltas, HUB_NOW)


def view(store: GraphStore, entity_id: str) -> dict[str, Any] | None:
    """What must match between the edge and the hub (not created_at nor origin)."""
    entity = store.entity(entity_id)
    if entity is None:
        return None
    keep = ("entity_type", "version", "priority", "updated_at", "properties")
    shown = {key: entity[key] for key in keep}
    shown["relationships"] = sorted(tuple(r.values()) for r in entity["relationships"])
    shown["aliases"] = sorted(entity["aliases"])
    return shown


def delta(entity_id: str = "UAV-1", **fields: Any) -> EntityDelta:
    base: dict[str, Any] = {
        "entity_id": entity_id,
        "entity_type": "drone",
        "version": 1,
        "updated_at": NOW,
        "priority": 1,
        "triples": [("battery", 50, NOW, "sim")],
        **fields,
    }
    return EntityDelta(**base)


def battery(store: GraphStore, entity_id: str = "UAV-1") -> Any:
    entity = store.entity(entity_id)
    assert entity is not None
    return entity["properties"].get("battery")


def count(store: GraphStore, sql: str) -> int:
    with sqlite3.connect(store.path) as db:
        return int(db.execute(sql).fetchone()[0])


def test_the_hub_copy_equals_the_edge_entity(edge: Edge, hub: GraphStore) -> None:
    edge(
        ev(
            "UAV-1",
            priority=3,
            properties={LAT: 37.7, LON: -122.4, "battery": 90, "mode": "idle"},
            relationships=[{"predicate": "member_of", "object": "fleet-west"}],
            aliases=["tail-N1"],
            timestamp=at(1),
        ),
        ev("fleet-west", entity_type="fleet", timestamp=at(1)),
    )
    edge(ev("UAV-1", properties={"battery": 85}, timestamp=at(2)))
    result = sync(edge, hub)
    assert (result.duplicate, result.applied, result.stale, result.conflicts) == (False, 2, 0, 0)
    assert result.newest_ms == 1_704_067_202_000  # at(2)
    for eid in ("UAV-1", "fleet-west"):
        assert view(hub, eid) == view(edge.store, eid)
    hub_copy = hub.entity("UAV-1")
    assert hub_copy is not None and hub_copy["origin"] == "e1" and hub_copy["version"] == 2

    # a partial delta (battery only, a new edge and alias) merges into the hub's copy
    edge(
        ev(
            "UAV-1",
            priority=5,
            properties={LAT: 37.7, "battery": 70},
            relationships=[{"predicate": "near", "object": "UAV-2", "weight": 0.5}],
            aliases=["tail-N2"],
            timestamp=at(3),
        )
    )
    _, [partial] = edge.take()
    assert [t[0] for t in partial.triples] == ["battery"]
    assert hub.apply_deltas("e1", 2, [partial], HUB_NOW).applied == 1
    assert view(hub, "UAV-1") == view(edge.store, "UAV-1")
    assert view(hub, "UAV-1")["properties"]["mode"] == "idle"  # type: ignore[index]
    with sqlite3.connect(hub.path) as db:
        assert db.execute("SELECT count(*) FROM spatial").fetchone()[0] == 1


def test_a_batch_seen_before_changes_nothing(edge: Edge, hub: GraphStore) -> None:
    edge(ev("UAV-1", properties={"battery": 90}))
    seq, deltas = edge.take()
    assert not hub.apply_deltas("e1", seq, deltas, HUB_NOW).duplicate
    before = view(hub, "UAV-1")
    newer = [delta(version=7, triples=[("battery", 1, NOW + 1, "x")])]
    assert hub.apply_deltas("e1", seq, newer, HUB_NOW + 1) == DeltaResult(duplicate=True)
    assert hub.apply_deltas("e1", seq - 1, newer, HUB_NOW + 1).duplicate
    assert view(hub, "UAV-1") == before
    assert hub.sync_edges() == {"e1": (seq, HUB_NOW)}
    # the mark is per edge: the same seq from another edge is a new batch
    assert not hub.apply_deltas("e2", seq, [delta("UAV-9")], HUB_NOW).duplicate


def test_a_delta_not_newer_than_the_copy_from_its_origin_is_stale(hub: GraphStore) -> None:
    hub.apply_deltas("e1", 1, [delta(version=3, triples=[("battery", 30, NOW, "")])], HUB_NOW)
    for seq, version in ((2, 3), (3, 2)):
        late = delta(version=version, updated_at=NOW + 10, triples=[("battery", 99, NOW + 10, "")])
        result = hub.apply_deltas("e1", seq, [late], HUB_NOW)
        assert (result.applied, result.stale, result.conflicts) == (0, 1, 0)
        assert result.touched == frozenset()
    assert battery(hub) == 30
    entity = hub.entity("UAV-1")
    assert entity is not None and entity["version"] == 3
    assert hub.sync_edges()["e1"][0] == 3  # the batch is settled all the same
    with sqlite3.connect(hub.path) as db:
        recorded = db.execute(
            "SELECT origin, version, kept_origin FROM sync_conflicts ORDER BY rowid"
        ).fetchall()
    assert recorded == [("e1", 3, "e1"), ("e1", 2, "e1")]  # kept_origin = origin: stale


def test_an_older_write_from_another_origin_is_a_recorded_conflict(hub: GraphStore) -> None:
    hub.apply_deltas("e1", 1, [delta(version=4, updated_at=NOW)], HUB_NOW)
    older = delta(version=9, updated_at=NOW - 1, triples=[("battery", 1, NOW - 1, "")])
    result = hub.apply_deltas("e2", 1, [older], HUB_NOW + 1)
    assert (result.applied, result.stale, result.conflicts) == (0, 0, 1)
    assert battery(hub) == 50
    with sqlite3.connect(hub.path) as db:
        recorded = db.execute("SELECT * FROM sync_conflicts").fetchall()
    assert recorded == [("UAV-1", "e2", 9, NOW - 1, "e1", 4, NOW, HUB_NOW + 1)]
    entity = hub.entity("UAV-1")
    assert entity is not None and entity["origin"] == "e1"


def test_a_newer_write_from_another_origin_takes_over(hub: GraphStore) -> None:
    hub.apply_deltas("e1", 1, [delta(version=4, updated_at=NOW)], HUB_NOW)
    newer = delta(version=1, updated_at=NOW + 1, triples=[("battery", 7, NOW + 1, "")])
    result = hub.apply_deltas("e2", 1, [newer], HUB_NOW)
    assert (result.applied, result.conflicts) == (1, 0)
    entity = hub.entity("UAV-1")
    assert entity is not None
    assert (entity["origin"], entity["version"], battery(hub)) == ("e2", 1, 7)
    assert count(hub, "SELECT count(*) FROM sync_conflicts") == 0


def test_a_deleted_delta_removes_the_entity(edge: Edge, hub: GraphStore) -> None:
    edge(
        ev("UAV-1", properties={LAT: 1.0, LON: 2.0}, aliases=["a"]),
        ev("UAV-2", relationships=[{"predicate": "follows", "object": "UAV-1"}]),
    )
    sync(edge, hub)
    edge(gone("UAV-1"))
    seq, deltas = edge.take()
    assert [d.deleted for d in deltas] == [True]
    result = hub.apply_deltas("e1", seq, deltas, HUB_NOW)
    assert result.applied == 1
    assert result.touched == {"UAV-1", "UAV-2"}  # UAV-2 lost its edge
    assert hub.entity("UAV-1") is None
    assert view(hub, "UAV-2") == view(edge.store, "UAV-2")
    for table in ("spatial", "aliases", "temporal WHERE entity_id = 'UAV-1'"):
        assert count(hub, f"SELECT count(*) FROM {table}") == 0


def test_a_replace_delta_drops_what_the_new_state_lacks(edge: Edge, hub: GraphStore) -> None:
    edge(
        ev(
            "UAV-1",
            properties={"a": 1, "b": 2},
            relationships=[{"predicate": "member_of", "object": "fleet"}],
            aliases=["old"],
        )
    )
    edge(ev("UAV-1", properties={"a": 2}))
    sync(edge, hub)
    edge(gone("UAV-1"), ev("UAV-1", properties={"c": 3}))
    seq, [replace] = edge.take()
    assert replace.replace and replace.version == 1  # lower than the hub's copy
    assert hub.apply_deltas("e1", seq, [replace], HUB_NOW).applied == 1
    assert view(hub, "UAV-1") == view(edge.store, "UAV-1")
    entity = hub.entity("UAV-1")
    assert entity is not None
    assert (entity["properties"], entity["relationships"], entity["aliases"]) == ({"c": 3}, [], [])


def test_a_batch_applies_in_order_within_itself(hub: GraphStore) -> None:
    batch = [
        delta(version=1, triples=[("battery", 1, NOW, "")]),
        delta(version=0, updated_at=0, triples=[], deleted=True),
        delta(version=1, triples=[("mode", "idle", NOW, "")]),
        delta(version=2, triples=[("mode", "busy", NOW + 1, "")]),
    ]
    result = hub.apply_deltas("e1", 1, batch, HUB_NOW)
    assert (result.applied, result.stale) == (4, 0)
    entity = hub.entity("UAV-1")
    assert entity is not None
    assert (entity["version"], entity["properties"]) == (2, {"mode": "busy"})


def test_sync_edges_reports_each_edges_high_water_mark(edge: Edge, hub: GraphStore) -> None:
    assert hub.sync_edges() == {}
    for i in range(3):
        edge(ev(f"UAV-{i}"))
        sync(edge, hub)
    hub.apply_deltas("e2", 7, [delta("X-1")], HUB_NOW + 9)
    assert hub.sync_edges() == {"e1": (3, HUB_NOW), "e2": (7, HUB_NOW + 9)}
