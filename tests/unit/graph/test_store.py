"""The graph store on real SQLite files: merge rules, versions, deletes, indexes, positions."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest

from edge_agent.config import IndexesConfig
from edge_agent.graph import GraphStore
from edge_agent.graph.migrations import MIGRATIONS
from edge_agent.graph.queries import temporal
from edge_agent.graph.records import export_records
from edge_agent.model import EntityEvent, decode_event

ALL_INDEXES = IndexesConfig(predicate=True, incoming=True, alias=True, spatial=True, temporal=True)
NOW = 1_700_000_000_000


def ev(entity_id: str, **fields: Any) -> EntityEvent:
    raw = {"entity_id": entity_id, "entity_type": "drone", "properties": {}, **fields}
    return decode_event(json.dumps(raw).encode(), max_bytes=65536)


@pytest.fixture
def store(tmp_path: Path) -> GraphStore:
    graph = GraphStore(tmp_path / "graph.db", origin="edge-1", indexes=ALL_INDEXES)
    graph.position("c", "stream-1")
    return graph


class Feed:
    """Applies events with increasing stream sequences."""

    def __init__(self, store: GraphStore) -> None:
        self.store = store
        self.seq = 0

    def __call__(self, *events: EntityEvent) -> int:
        batch = []
        for event in events:
            self.seq += 1
            batch.append((self.seq, event))
        return self.store.apply(batch, consumer="c", now_ms=NOW).applied


def count(store: GraphStore, sql: str, *args: Any) -> int:
    with sqlite3.connect(store.path) as db:
        return int(db.execute(sql, args).fetchone()[0])


def test_migrations_are_recorded_once(tmp_path: Path) -> None:
    first = GraphStore(tmp_path / "g.db", origin="e", indexes=IndexesConfig())
    assert first.migrations_applied == [name for name, _ in MIGRATIONS]
    first.close()
    again = GraphStore(tmp_path / "g.db", origin="e", indexes=IndexesConfig())
    assert again.migrations_applied == []
    assert count(again, "SELECT count(*) FROM schema_migrations") == len(MIGRATIONS)


def test_update_merges_properties_and_bumps_version(store: GraphStore) -> None:
    feed = Feed(store)
    feed(ev("UAV-1", properties={"battery": 90, "mode": "idle"}, timestamp="2024-01-01T00:00:00Z"))
    feed(ev("UAV-1", properties={"battery": 80}, timestamp="2024-01-01T00:01:00Z"))
    entity = store.entity("UAV-1")
    assert entity is not None
    assert entity["version"] == 2
    assert entity["properties"] == {"battery": 80, "mode": "idle"}
    assert entity["updated_at"].startswith("2024-01-01T00:01:00")
    assert entity["origin"] == "edge-1"


def test_older_timestamp_does_not_overwrite_newer_value(store: GraphStore) -> None:
    feed = Feed(store)
    feed(ev("UAV-1", properties={"battery": 50}, timestamp="2024-01-01T00:05:00Z"))
    feed(ev("UAV-1", properties={"battery": 99}, timestamp="2024-01-01T00:00:00Z"))
    entity = store.entity("UAV-1")
    assert entity is not None
    assert entity["properties"]["battery"] == 50
    assert entity["version"] == 2  # the late write still counts as a version


def test_edges_merge_by_predicate_and_object(store: GraphStore) -> None:
    feed = Feed(store)
    rel = [{"predicate": "member_of", "object": "fleet-west"}]
    feed(ev("UAV-1", relationships=rel), ev("UAV-1", relationships=rel))
    feed(ev("UAV-1", relationships=[{"predicate": "near", "object": "UAV-2", "weight": 0.3}]))
    entity = store.entity("UAV-1")
    assert entity is not None
    assert sorted((r["predicate"], r["object"], r["weight"]) for r in entity["relationships"]) == [
        ("member_of", "fleet-west", 1.0),
        ("near", "UAV-2", 0.3),
    ]


def test_redelivered_batch_is_a_no_op(store: GraphStore) -> None:
    batch = [(1, ev("UAV-1", properties={"a": 1})), (2, ev("UAV-1", properties={"a": 2}))]
    assert store.apply(batch, consumer="c", now_ms=NOW).applied == 2
    again = store.apply(batch, consumer="c", now_ms=NOW)
    assert (again.applied, again.skipped) == (0, 2)
    entity = store.entity("UAV-1")
    assert entity is not None and entity["version"] == 2


def test_a_recreated_stream_restarts_the_position(store: GraphStore) -> None:
    store.apply([(5, ev("UAV-1"))], consumer="c", now_ms=NOW)
    assert store.position("c", "stream-1") == 5
    assert store.position("c", "stream-2") == 0
    assert store.apply([(1, ev("UAV-1"))], consumer="c", now_ms=NOW).applied == 1


def located(lat: float, lon: float, **extra: Any) -> dict[str, Any]:
    return {"geo.location.latitude": lat, "geo.location.longitude": lon, **extra}


def test_delete_removes_the_entity_from_every_index(store: GraphStore) -> None:
    feed = Feed(store)
    feed(
        ev(
            "UAV-1",
            properties=located(37.7, -122.4, battery=5),
            relationships=[{"predicate": "member_of", "object": "fleet-west"}],
            aliases=["tail-N1"],
        ),
        ev("UAV-2", relationships=[{"predicate": "follows", "object": "UAV-1"}]),
    )
    assert count(store, "SELECT count(*) FROM spatial") == 1
    assert count(store, "SELECT count(*) FROM temporal WHERE entity_id = 'UAV-1'") == 1
    feed(decode_event(b'{"entity_id":"UAV-1","entity_type":"drone","op":"delete"}', max_bytes=999))
    assert store.entity("UAV-1") is None
    for table, column in [
        ("triples", "subject"),
        ("edges", "subject"),
        ("edges", "object"),
        ("aliases", "entity_id"),
        ("temporal", "entity_id"),
    ]:
        assert count(store, f"SELECT count(*) FROM {table} WHERE {column} = 'UAV-1'") == 0
    assert count(store, "SELECT count(*) FROM spatial") == 0
    assert store.entity("UAV-2") is not None


def test_upsert_after_delete_in_one_batch_keeps_order(store: GraphStore) -> None:
    feed = Feed(store)
    delete = decode_event(b'{"entity_id":"X","entity_type":"drone","op":"delete"}', max_bytes=999)
    feed(ev("X", properties={"a": 1}), delete, ev("X", properties={"b": 2}))
    entity = store.entity("X")
    assert entity is not None
    assert entity["properties"] == {"b": 2}
    assert entity["version"] == 1


def test_spatial_index_follows_moves(store: GraphStore) -> None:
    feed = Feed(store)
    feed(ev("UAV-1", properties=located(10.0, 20.0)))
    feed(ev("UAV-1", properties=located(11.0, 21.0)))
    with sqlite3.connect(store.path) as db:
        rows = db.execute("SELECT min_lat, min_lon FROM spatial").fetchall()
    assert rows == [(pytest.approx(11.0), pytest.approx(21.0))]


def test_indexes_follow_config_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    store = GraphStore(path, origin="e", indexes=IndexesConfig(spatial=False))
    store.position("c", "s")
    Feed(store)(ev("UAV-1", properties=located(1.0, 2.0)))
    assert count(store, "SELECT count(*) FROM spatial") == 0
    store.close()
    store = GraphStore(path, origin="e", indexes=IndexesConfig(spatial=True, predicate=False))
    assert set(store.index_changes) == {"+spatial", "-predicate"}
    assert count(store, "SELECT count(*) FROM spatial") == 1  # rebuilt from the triples
    names = {n for (n,) in sqlite3.connect(path).execute("SELECT name FROM sqlite_master")}
    assert "triples_predicate" not in names
    assert "edges_to_by_weight" in names
    store.close()
    assert (
        GraphStore(
            path, origin="e", indexes=IndexesConfig(spatial=True, predicate=False)
        ).index_changes
        == []
    )


def test_stats_counts_by_type(store: GraphStore) -> None:
    feed = Feed(store)
    feed(
        ev("UAV-1", properties={"a": 1}, relationships=[{"predicate": "p", "object": "f"}]),
        ev("f", entity_type="fleet"),
    )
    stats = store.stats()
    assert stats["entities"] == 2
    assert stats["by_type"] == {"drone": 1, "fleet": 1}
    assert stats["edges"] == 1
    assert stats["triples"] == 3  # two rdf:type triples and one property


def test_temporal_index_keeps_the_latest_update_like_a_rebuild(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    store = GraphStore(path, origin="e", indexes=ALL_INDEXES)
    store.position("c", "s")
    feed = Feed(store)
    for hour in (1, 5, 3):  # the late event (hour 3) does not move the entity back
        feed(ev("UAV-1", timestamp=f"2024-01-01T{hour:02d}:30:00Z"))
    written = sqlite3.connect(path).execute("SELECT * FROM temporal").fetchall()
    assert len(written) == 1
    store.close()
    without = msgspec.structs.replace(ALL_INDEXES, temporal=False)
    GraphStore(path, origin="e", indexes=without).close()
    rebuilt = GraphStore(path, origin="e", indexes=ALL_INDEXES)
    assert rebuilt.index_changes == ["+temporal"]
    assert sqlite3.connect(path).execute("SELECT * FROM temporal").fetchall() == written


def test_migration_002_turns_bucket_history_into_latest_only(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE schema_migrations (name TEXT PRIMARY KEY, applied_at REAL)")
        db.executescript(MIGRATIONS[0][1])
        db.execute("INSERT INTO schema_migrations VALUES ('001_initial', 0)")
        db.execute("INSERT INTO index_state VALUES ('temporal', 1)")
        db.execute("INSERT INTO entities VALUES ('A', 't', 2, 1, 0, 7200000, 'e')")
        db.executemany("INSERT INTO temporal VALUES (?, 'A')", [(0,), (1,), (2,)])
    store = GraphStore(path, origin="e", indexes=ALL_INDEXES)
    assert store.migrations_applied == [
        "002_temporal_latest",
        "003_sync",
        "004_hub_tables_leave",
        "005_edges_from_by_weight",
        "006_position_mark",
        "007_outbox_deleted_at",
    ]
    assert sqlite3.connect(path).execute("SELECT * FROM temporal").fetchall() == [("A", 2)]


def test_importing_an_older_record_moves_the_temporal_index_back(store: GraphStore) -> None:
    Feed(store)(ev("UAV-1", timestamp="2024-06-01T12:00:00Z"))
    with store.snapshot() as db:
        [record] = list(export_records(db, None))
    older = msgspec.structs.replace(
        record, version=1, updated_at=datetime(2024, 1, 1, 8, 30, tzinfo=UTC)
    )
    assert store.import_records([older]).applied == 1
    with store.reader() as db:
        found = temporal(db, 1704096000000, 1704099600000, 10)  # 2024-01-01 08:00-09:00
    assert [e["entity_id"] for e in found["entities"]] == ["UAV-1"]


def test_a_database_from_before_the_weight_indexes_gets_them_on_open(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    GraphStore(path, origin="e", indexes=IndexesConfig()).close()
    with sqlite3.connect(path) as db:  # as the previous release left it
        db.executescript(
            "DROP INDEX edges_to_by_weight; DROP INDEX edges_from_by_weight;"
            " CREATE INDEX edges_to ON edges(object, predicate, subject);"
            " DELETE FROM schema_migrations WHERE name = '005_edges_from_by_weight';"
        )
    store = GraphStore(path, origin="e", indexes=IndexesConfig())
    assert store.migrations_applied == ["005_edges_from_by_weight"]
    assert store.index_changes == ["+incoming"]
    names = {n for (n,) in sqlite3.connect(path).execute("SELECT name FROM sqlite_master")}
    assert {"edges_from_by_weight", "edges_to_by_weight"} <= names
    assert "edges_to" not in names
    store.close()
