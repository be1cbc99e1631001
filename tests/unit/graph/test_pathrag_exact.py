"""PathRAG against brute force: on random graphs, every answer is the exact best one.

The reference enumerates every simple path of at most ``max_depth`` hops from the start
(following the asked direction, predicates and entity types) and keeps each node's best
product of ``decay_factor * weight``. An untruncated answer must hold exactly those
scores, each with a path that really scores it; a truncated one the ``max_nodes``
strongest of them.
"""

from __future__ import annotations

import itertools
import math
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.config import IndexesConfig
from edge_agent.graph import GraphStore
from edge_agent.graph.pathrag import PathQuery, PathResult, run_path_query
from edge_agent.model import EntityEvent, Relationship

NODES = [f"n{i}" for i in range(9)]
TYPES = ["drone", "relay"]
PREDICATES = ["link", "near"]

Edge = tuple[str, str, str, float]  # subject, predicate, object, weight
edges_strategy = st.lists(
    st.tuples(
        st.sampled_from(NODES),
        st.sampled_from(PREDICATES),
        st.sampled_from(NODES),
        st.sampled_from([0.1, 0.25, 0.5, 0.7, 0.9, 1.0]),
    ).filter(lambda edge: edge[0] != edge[2]),
    max_size=30,
    unique_by=lambda edge: edge[:3],
)
queries = st.builds(
    PathQuery,
    start_entity=st.sampled_from(NODES),
    direction=st.sampled_from(["outgoing", "incoming", "both"]),
    max_depth=st.integers(0, 4),
    max_nodes=st.integers(1, 12),
    max_paths=st.just(100),
    decay_factor=st.sampled_from([0.5, 0.8, 1.0]),
    predicates=st.one_of(st.just([]), st.lists(st.sampled_from(PREDICATES), max_size=1)),
    entity_types=st.one_of(st.just([]), st.lists(st.sampled_from(TYPES), max_size=1)),
)


def type_of(node: str) -> str:
    return TYPES[int(node[1:]) % 2]


def load(path: Path, edges: list[Edge]) -> sqlite3.Connection:
    store = GraphStore(path, origin="e", indexes=IndexesConfig())
    store.position("c", "s")
    events = [
        EntityEvent(
            entity_id=node,
            entity_type=type_of(node),
            relationships=[Relationship(p, o, w) for s, p, o, w in edges if s == node],
        )
        for node in NODES
    ]
    store.apply(list(enumerate(events, 1)), consumer="c", now_ms=0)
    store.close()
    return sqlite3.connect(path)


def steps(edges: list[Edge], query: PathQuery, node: str) -> Iterator[tuple[str, float]]:
    """(neighbour, weight) of every edge the query may follow out of ``node``."""
    for subject, predicate, obj, weight in edges:
        if query.predicates and predicate not in query.predicates:
            continue
        if subject == node and query.direction in ("outgoing", "both"):
            yield obj, weight
        if obj == node and query.direction in ("incoming", "both"):
            yield subject, weight


def brute_force(edges: list[Edge], query: PathQuery) -> dict[str, float]:
    """Each reachable node's best score over all simple paths the query allows."""
    best = {query.start_entity: 1.0}

    def extend(path: tuple[str, ...], score: float) -> None:
        if len(path) - 1 == query.max_depth:
            return
        for neighbour, weight in steps(edges, query, path[-1]):
            if neighbour in path:
                continue
            if query.entity_types and type_of(neighbour) not in query.entity_types:
                continue
            reached = score * query.decay_factor * weight
            best[neighbour] = max(best.get(neighbour, 0.0), reached)
            extend((*path, neighbour), reached)

    extend((query.start_entity,), 1.0)
    return best


def path_score(edges: list[Edge], query: PathQuery, path: list[str]) -> float:
    """The score of ``path``, taking the strongest of parallel edges for each hop."""
    score = 1.0
    for here, there in itertools.pairwise(path):
        weights = [w for neighbour, w in steps(edges, query, here) if neighbour == there]
        assert weights, f"{here} -> {there} is no edge the query may follow"
        score *= query.decay_factor * max(weights)
    return score


def check_paths(result: PathResult, edges: list[Edge], query: PathQuery) -> None:
    for path in result.paths:
        assert path[0] == query.start_entity
        assert len(path) - 1 <= query.max_depth
        assert len(set(path)) == len(path), "not a simple path"
        assert math.isclose(path_score(edges, query, path), result.scores[path[-1]], abs_tol=1e-6)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edges=edges_strategy, query=queries)
def test_the_answer_is_the_exact_best_one(edges: list[Edge], query: PathQuery) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = load(Path(tmp) / "g.db", edges)
        try:
            result = run_path_query(db, query)
        finally:
            db.close()
    expected = brute_force(edges, query)
    check_paths(result, edges, query)
    if len(expected) <= query.max_nodes:
        assert result.truncated is False
        assert result.scores.keys() == expected.keys()
        for node, score in expected.items():
            assert math.isclose(result.scores[node], score, abs_tol=1e-6), node
        return
    assert result.truncated is True
    strongest = sorted(expected.values(), reverse=True)[: query.max_nodes]
    got = sorted(result.scores.values(), reverse=True)
    assert got == [round(score, 6) for score in strongest]
