"""PathRAG on a small real graph: best-path scores, directions, filters, limits."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config import IndexesConfig
from edge_agent.graph import GraphStore
from edge_agent.graph.pathrag import PathQuery, UnknownEntity, run_path_query
from edge_agent.model import decode_event


def node(entity_id: str, entity_type: str = "drone", *edges: tuple[str, str, float]) -> Any:
    raw = {
        "entity_id": entity_id,
        "entity_type": entity_type,
        "properties": {"name": entity_id},
        "relationships": [{"predicate": p, "object": o, "weight": w} for p, o, w in edges],
    }
    return decode_event(json.dumps(raw).encode(), max_bytes=65536)


@pytest.fixture
def db(tmp_path: Path) -> sqlite3.Connection:
    """A -> B -> D (weights 1, 1) and A -> C -> D (0.5, 1) plus A -> D direct at 0.1.

    D's first-found path is the direct hop (0.8 x 0.1 = 0.08); its best path is A-B-D
    (0.8 x 1 x 0.8 x 1 = 0.64).
    """
    store = GraphStore(tmp_path / "g.db", origin="e", indexes=IndexesConfig())
    store.position("c", "s")
    events = [
        node("A", "drone", ("link", "B", 1.0), ("link", "C", 0.5), ("near", "D", 0.1)),
        node("B", "relay", ("link", "D", 1.0)),
        node("C", "relay", ("link", "D", 1.0)),
        node("D", "base", ("link", "E", 1.0)),
        node("E", "base"),
        node("X", "drone", ("link", "A", 1.0)),
    ]
    store.apply(list(enumerate(events, 1)), consumer="c", now_ms=0)
    return sqlite3.connect(store.path)


def run(db: sqlite3.Connection, **fields: Any) -> Any:
    return run_path_query(db, PathQuery(start_entity="A", **fields))


def test_best_path_score_wins_over_first_found(db: sqlite3.Connection) -> None:
    result = run(db, max_depth=2)
    assert result.scores["D"] == pytest.approx(0.64)
    assert ["A", "B", "D"] in result.paths
    assert result.scores["B"] == pytest.approx(0.8)
    assert result.scores["C"] == pytest.approx(0.4)
    assert result.truncated is False
    # E is two hops away only through the weak direct edge: 0.08 x 0.8.
    assert result.scores["E"] == pytest.approx(0.064)
    assert [e["entity_id"] for e in result.entities] == ["A", "B", "D", "C", "E"]
    assert result.entities[1]["properties"] == {"name": "B"}


def test_paths_alone_are_the_same_answer_without_reading_the_entities(
    db: sqlite3.Connection,
) -> None:
    query = PathQuery(start_entity="A", direction="both")
    whole = run_path_query(db, query)
    statements: list[str] = []
    db.set_trace_callback(statements.append)
    bare = run_path_query(db, query, with_entities=False)
    db.set_trace_callback(None)
    assert (bare.paths, bare.scores, bare.truncated) == (whole.paths, whole.scores, False)
    assert bare.visited == whole.visited
    assert bare.entities == []
    assert not [sql for sql in statements if "json_group_array" in sql]  # no summaries read


def test_depth_limits_the_walk(db: sqlite3.Connection) -> None:
    assert set(run(db, max_depth=1).scores) == {"A", "B", "C", "D"}
    assert set(run(db, max_depth=3).scores) == {"A", "B", "C", "D", "E"}
    assert run(db, max_depth=3).scores["E"] == pytest.approx(0.512)


def test_directions(db: sqlite3.Connection) -> None:
    assert set(run(db, direction="incoming").scores) == {"A", "X"}
    both = run(db, direction="both", max_depth=1)
    assert set(both.scores) == {"A", "B", "C", "D", "X"}


def test_predicate_and_type_filters(db: sqlite3.Connection) -> None:
    assert set(run(db, predicates=["near"]).scores) == {"A", "D"}
    assert set(run(db, entity_types=["relay"]).scores) == {"A", "B", "C"}


def test_limits_truncate_instead_of_failing(db: sqlite3.Connection) -> None:
    capped = run(db, max_nodes=2)
    assert capped.truncated is True
    assert len(capped.scores) == 2
    paths = run(db, max_paths=1)
    assert paths.truncated is True
    assert paths.paths == [["A", "B"]]


def test_timeout_returns_partial_result(db: sqlite3.Connection) -> None:
    ticks = iter([0.0, 0.0, 5.0, 5.0, 5.0])
    result = run_path_query(db, PathQuery(start_entity="A", timeout=1.0), clock=lambda: next(ticks))
    assert result.truncated is True
    assert set(result.scores) == {"A", "B", "C", "D"}  # one level done before the deadline


def test_unknown_start_entity(db: sqlite3.Connection) -> None:
    with pytest.raises(UnknownEntity):
        run_path_query(db, PathQuery(start_entity="nobody"))


def test_a_full_answer_keeps_the_strongest_neighbours(tmp_path: Path) -> None:
    store = GraphStore(tmp_path / "star.db", origin="e", indexes=IndexesConfig())
    store.position("c", "s")
    spokes = [("link", f"S{i:03d}", (i % 97) / 97 + 0.01) for i in range(300)]
    store.apply([(1, node("hub", "drone", *spokes))], consumer="c", now_ms=0)
    db = sqlite3.connect(store.path)
    result = run_path_query(db, PathQuery(start_entity="hub", max_depth=1, max_nodes=11))
    assert result.truncated is True
    kept = sorted(result.scores.values(), reverse=True)[1:]
    strongest = sorted((0.8 * w for _, _, w in spokes), reverse=True)[:10]
    assert kept == pytest.approx(strongest)


def test_the_deadline_cuts_a_statement_reading_a_hub_nodes_edges(tmp_path: Path) -> None:
    store = GraphStore(tmp_path / "hub.db", origin="e", indexes=IndexesConfig())
    store.position("c", "s")
    events = [
        node("hub", "relay", *[("link", f"S{b}-{i}", 1.0) for i in range(200)]) for b in range(100)
    ]
    store.apply(list(enumerate(events, 1)), consumer="c", now_ms=0)
    db = sqlite3.connect(store.path)
    query = PathQuery(start_entity="hub", max_depth=1, max_nodes=100_000, timeout=1.0)
    assert len(run_path_query(db, query).scores) == 20_001
    # The clock passes the deadline once the walk has begun: only SQLite's progress
    # handler can see it, in the middle of the one statement that reads the 20,000 edges.
    ticks = iter([0.0, 0.0])
    cut = run_path_query(db, query, clock=lambda: next(ticks, 10.0))
    assert cut.truncated is True and len(cut.scores) < 20_001
    # The connection is left as it was: the next query runs whole.
    assert len(run_path_query(db, query).scores) == 20_001
