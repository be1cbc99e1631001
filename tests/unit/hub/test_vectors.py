"""Vectors: the in-memory index against brute force, and the queue and vector tables in a
real SQLite file with the hub's migrations."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cloud_hub.graph.schema import HUB_MIGRATIONS
from cloud_hub.graphrag.vectors import (
    VECTOR_MIGRATIONS,
    QueuedText,
    VectorIndex,
    enqueue,
    queue_stats,
    store,
    take,
)
from edge_agent.graph.database import Database

DIM = 32


def vectors(count: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, DIM)).astype(np.float32)


def brute_force(
    ids: list[str], matrix: np.ndarray, query: np.ndarray, limit: int
) -> list[tuple[str, float]]:
    unit = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    scores = unit @ (query / np.linalg.norm(query))
    ranked = sorted(zip(ids, scores.tolist(), strict=True), key=lambda pair: -pair[1])
    return ranked[:limit]


def assert_same(found: list[tuple[str, float]], expected: list[tuple[str, float]]) -> None:
    assert [entity_id for entity_id, _ in found] == [entity_id for entity_id, _ in expected]
    assert [score for _, score in found] == pytest.approx([s for _, s in expected], abs=1e-5)


def test_search_is_brute_force_cosine() -> None:
    ids = [f"e{n}" for n in range(1000)]
    matrix = vectors(1000)
    index = VectorIndex()
    index.upsert(ids, matrix)
    for query in vectors(20, seed=2):
        assert_same(index.search(query, 10), brute_force(ids, matrix, query, 10))
    assert len(index) == 1000
    assert index.dim == DIM


def test_a_vector_finds_itself_first_with_similarity_one() -> None:
    index = VectorIndex()
    index.upsert(["a", "b"], [[1.0, 0.0], [0.0, 3.0]])
    assert index.search([0.0, 0.5], 2) == [("b", pytest.approx(1.0)), ("a", 0.0)]


def test_the_filter_keeps_only_allowed_ids_and_still_fills_the_limit() -> None:
    ids = [f"e{n}" for n in range(500)]
    matrix = vectors(500)
    index = VectorIndex()
    index.upsert(ids, matrix)
    odd = [entity_id for entity_id in ids if int(entity_id[1:]) % 7 == 0]
    rows = [ids.index(entity_id) for entity_id in odd]
    query = vectors(1, seed=3)[0]
    found = index.search(query, 10, allowed=lambda entity_id: int(entity_id[1:]) % 7 == 0)
    assert_same(found, brute_force(odd, matrix[rows], query, 10))
    assert index.search(query, 5, allowed=lambda entity_id: False) == []


def test_upsert_replaces_and_remove_drops() -> None:
    ids = [f"e{n}" for n in range(100)]
    matrix = vectors(100)
    index = VectorIndex()
    index.upsert(ids, matrix)
    replaced = vectors(10, seed=4)
    index.upsert(ids[:10], replaced)
    matrix[:10] = replaced
    index.remove(["e3", "e50", "e99", "nobody"])
    kept = [n for n in range(100) if n not in (3, 50, 99)]
    for query in vectors(10, seed=5):
        assert_same(
            index.search(query, 100), brute_force([ids[n] for n in kept], matrix[kept], query, 100)
        )
    assert len(index) == 97
    index.remove(ids)
    assert index.search(vectors(1)[0], 5) == []


def test_vectors_of_another_length_are_refused() -> None:
    index = VectorIndex()
    index.upsert(["a"], vectors(1))
    with pytest.raises(ValueError, match="index has 32"):
        index.upsert(["b"], np.ones((1, 8)))
    with pytest.raises(ValueError, match="index has 32"):
        index.search(np.ones(8), 1)
    with pytest.raises(ValueError, match="2 ids for 1 vectors"):
        index.upsert(["a", "b"], vectors(1))


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    db = Database(tmp_path / "graph.db", [*HUB_MIGRATIONS, *VECTOR_MIGRATIONS], what="graph")
    yield db
    db.close()


def queued(database: Database) -> list[tuple[str, str, str, float]]:
    return database.read(
        lambda db: db.execute("SELECT * FROM graphrag_embed_queue ORDER BY entity_id").fetchall()
    )


def test_migrations_apply_once_with_unique_names(database: Database) -> None:
    assert "graphrag_001_vectors" in database.migrations_applied
    names = [name for name, _ in [*HUB_MIGRATIONS, *VECTOR_MIGRATIONS]]
    assert len(names) == len(set(names))
    again = Database(database.path, [*HUB_MIGRATIONS, *VECTOR_MIGRATIONS], what="graph")
    assert again.migrations_applied == []
    again.close()


def test_enqueue_keeps_one_row_per_entity_and_its_first_time(database: Database) -> None:
    database.transaction(enqueue, [("a", "drone a", "h1"), ("b", "drone b", "h2")], 100.0)
    database.transaction(enqueue, [("a", "drone a, landed", "h3")], 105.0)
    assert queued(database) == [
        ("a", "drone a, landed", "h3", 100.0),
        ("b", "drone b", "h2", 100.0),
    ]
    stats = database.read(queue_stats)
    assert (stats.backlog, stats.oldest) == (2, 100.0)


def test_take_gives_the_oldest_first(database: Database) -> None:
    database.transaction(enqueue, [("late", "x", "h")], 200.0)
    database.transaction(enqueue, [("early", "y", "h")], 100.0)
    assert [row.entity_id for row in database.read(take, 1)] == ["early"]
    assert len(database.read(take, 10)) == 2


def stored(database: Database) -> dict[str, tuple[str, np.ndarray, str]]:
    rows = database.read(
        lambda db: db.execute("SELECT entity_id, model, vector, text_hash FROM graphrag_vectors")
    )
    return {
        entity_id: (model, np.frombuffer(blob, dtype=np.float32), text_hash)
        for entity_id, model, blob, text_hash in rows
    }


def test_store_applies_rows_whose_text_is_still_queued(database: Database) -> None:
    database.transaction(enqueue, [("a", "one", "h1"), ("b", "two", "h2")], 100.0)
    rows = database.read(take, 10)
    database.transaction(enqueue, [("b", "two, changed", "h9")], 101.0)  # meanwhile
    done = [(row, np.array([1.0, 0.0], dtype=np.float32)) for row in rows]
    applied = database.transaction(store, "m1", done, 102.0)
    assert [row.entity_id for row in applied] == ["a"]
    assert queued(database) == [("b", "two, changed", "h9", 100.0)]  # b waits for its new text
    model, vector, text_hash = stored(database)["a"]
    assert (model, vector.tolist(), text_hash) == ("m1", [1.0, 0.0], "h1")
    assert "b" not in stored(database)


def test_a_gone_entity_loses_its_vector(database: Database) -> None:
    database.transaction(enqueue, [("a", "one", "h1")], 100.0)
    database.transaction(store, "m1", [(database.read(take, 1)[0], np.ones(2, np.float32))], 1.0)
    database.transaction(enqueue, [("a", "", "")], 110.0)
    gone = database.read(take, 1)
    assert gone == [QueuedText("a", "", "")]
    assert database.transaction(store, "m1", [(gone[0], None)], 111.0) == gone
    assert stored(database) == {}
    assert queued(database) == []


def test_load_reads_one_models_vectors(database: Database) -> None:
    database.transaction(enqueue, [("a", "one", "h1"), ("b", "two", "h2")], 100.0)
    a, b = database.read(take, 2)
    database.transaction(store, "old", [(a, np.array([1.0, 0.0], np.float32))], 1.0)
    database.transaction(store, "new", [(b, np.array([0.0, 1.0], np.float32))], 2.0)
    index = VectorIndex()
    assert database.read(index.load) == 1  # the newest vector's model
    assert (index.model, index.search([0.0, 1.0], 5)) == ("new", [("b", pytest.approx(1.0))])
    assert database.read(index.load, "old") == 1
    assert index.search([0.0, 1.0], 5) == [("a", 0.0)]
