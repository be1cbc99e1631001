"""The text index on the hub's real write path: edges' batches through ``apply_batch`` in
a hub store with the GraphRAG migrations, then ``text.refresh`` in the same transaction,
as the materialiser does."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud_hub.graph.provenance import BatchStamp, apply_batch
from cloud_hub.graphrag import text
from cloud_hub.graphrag.schema import GRAPH_MIGRATIONS
from edge_agent.config import IndexesConfig
from edge_agent.graph import GraphStore
from edge_agent.sync.frames import EntityDelta

ALL = IndexesConfig(predicate=True, incoming=True, alias=True, spatial=True, temporal=True)
NOW = 1_800_000_000_000


@pytest.fixture
def store(tmp_path: Path) -> Iterator[GraphStore]:
    made = GraphStore(tmp_path / "hub.db", origin="hub", indexes=ALL, migrations=GRAPH_MIGRATIONS)
    yield made
    made.close()


def _note(entity_id: str, words: str, version: int, at: int) -> EntityDelta:
    return EntityDelta(
        entity_id,
        "maintenance_note",
        version,
        at,
        3,
        [("text", words, at, "sim"), ("severity", 5, at, "sim")],
        [("about", "UAV-001", 1.0, at, "sim")],
        [f"alias-{entity_id}"],
    )


def _apply(store: GraphStore, edge: str, seq: int, *deltas: EntityDelta) -> int:
    """One batch and the text refresh, in one transaction; how many texts changed."""

    def write(db: sqlite3.Connection) -> int:
        apply_batch(db, BatchStamp(edge, seq, seq, NOW, NOW + 1000), list(deltas), indexes=ALL)
        return text.refresh(db)

    return store.database.transaction(write)


def _search(store: GraphStore, words: str) -> list[str]:
    return [hit.entity_id for hit in store.database.read(lambda db: text.search_text(db, words, 5))]


def test_repeated_upserts_of_one_entity_in_a_transaction_keep_the_batch(store: GraphStore) -> None:
    # The same entity written twice in one batch, by two edges, batch after batch: each
    # write marks it again (on the previous triggers, INSERT OR IGNORE inside a trigger
    # took the hub upsert's conflict rule and failed the whole batch).
    first = _note("note-1", "battery swelling found", 1, NOW)
    again = _note("note-1", "battery swelling found after landing", 2, NOW + 1)
    assert _apply(store, "edge-a", 1, first, again) == 1
    assert _apply(store, "edge-b", 1, _note("note-1", "rotor cracked", 1, NOW + 2)) == 1
    assert _apply(store, "edge-a", 2, _note("note-1", "battery swelling", 3, NOW + 3)) == 1
    assert store.entity("note-1") is not None
    assert _search(store, "swelling") == ["note-1"]


def test_the_text_follows_changes_and_deletes(store: GraphStore) -> None:
    _apply(store, "edge-a", 1, _note("note-1", "GPS signal lost twice", 1, NOW))
    assert _search(store, "GPS signal") == ["note-1"]
    assert _search(store, "alias-note-1") == ["note-1"]
    _apply(store, "edge-a", 2, _note("note-1", "motor overheating on climb", 2, NOW + 1))
    assert _search(store, "GPS") == [] and _search(store, "overheating") == ["note-1"]
    gone = EntityDelta("note-1", "maintenance_note", 3, NOW + 2, 3, deleted=True)
    _apply(store, "edge-a", 3, gone)
    assert _search(store, "overheating") == []
    assert store.database.read(
        lambda db: db.execute("SELECT count(*) FROM graphrag_text_dirty").fetchone()
    ) == (0,)


def test_user_words_never_reach_fts5_as_syntax() -> None:
    assert text.fts_query('battery" OR NEAR(x y) *') == '"battery" OR "NEAR" OR "x" OR "y"'
    assert text.fts_query("the at of") == '"the" OR "at" OR "of"'  # only stop words: kept
    assert text.fts_query("¡¿!") == ""


def test_or_queries_leave_out_words_most_entities_hold(
    store: GraphStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(text, "FREQUENT_MIN", 5)  # a small graph, as if it were a large one
    notes = [_note(f"note-{n}", f"drone inspected near depot {n}", n + 1, NOW) for n in range(20)]
    notes.append(_note("note-x", "drone gearbox leaking oil", 1, NOW))
    _apply(store, "edge-a", 1, *notes)
    rare = store.database.read(lambda db: text.rare_words(db, "leaking drones near the depot"))
    assert rare == ["leaking"]  # 'drones' (stemmed: drone), 'near', 'depot' are everywhere
    everywhere = store.database.read(lambda db: text.rare_words(db, "drones near depots"))
    assert len(everywhere) == 1  # the rarest of the common ones, not nothing
    assert _search(store, "leaking drones near the depot")[0] == "note-x"


def test_numbers_changing_leave_the_text_alone(store: GraphStore) -> None:
    _apply(store, "edge-a", 1, _note("note-1", "battery swelling", 1, NOW))
    reading = EntityDelta(
        "note-1", "maintenance_note", 2, NOW + 1, 3, [("severity", 9, NOW + 1, "sim")]
    )

    def write(db: sqlite3.Connection) -> int:
        apply_batch(db, BatchStamp("edge-a", 2, 2, NOW, NOW + 1000), [reading], indexes=ALL)
        (marked,) = db.execute("SELECT count(*) FROM graphrag_text_dirty").fetchone()
        text.refresh(db)
        return int(marked)

    # Telemetry is most of what a hub writes: it marks nothing to rebuild.
    assert store.database.transaction(write) == 0
    assert store.entity("note-1")["properties"]["severity"] == 9  # type: ignore[index]
    assert _search(store, "swelling") == ["note-1"]
