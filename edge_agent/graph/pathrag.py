"""PathRAG: scored breadth-first traversal of the graph from one entity.

Pure over a SQLite connection: no other I/O, and the clock is a parameter. The score of
a node is the best product of ``decay_factor * edge weight`` over the paths (of at most
``max_depth`` hops) that reach it, not the score of the first path found: the search
relaxes a node again whenever a later level reaches it with a better score, as
Bellman-Ford does, level by level.

Limits never raise: hitting ``max_nodes``, ``max_paths`` or ``timeout`` returns what was
found with ``truncated: true``.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable
from typing import Annotated, Any, Literal

import msgspec

from edge_agent.graph.queries import chunks, summaries

__all__ = ["PathQuery", "PathResult", "UnknownEntity", "run_path_query"]

Direction = Literal["outgoing", "incoming", "both"]


class PathQuery(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``graph.query.path``: PathRAG, a scored traversal from a start entity."""

    start_entity: Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
    direction: Direction = "outgoing"
    max_depth: Annotated[int, msgspec.Meta(ge=0, le=10)] = 3
    max_nodes: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 500
    max_paths: Annotated[int, msgspec.Meta(ge=0, le=100_000)] = 100
    timeout: Annotated[float, msgspec.Meta(gt=0, le=60)] = 1.0
    decay_factor: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.8
    predicates: list[str] = msgspec.field(default_factory=list)
    entity_types: list[str] = msgspec.field(default_factory=list)


class PathResult(msgspec.Struct, frozen=True):
    """Entities reached (best score first), their best paths, scores, and ``truncated``.

    ``visited`` holds every node the search looked at (including ones a filter
    dropped): a change to any of them can change this result, so the query cache
    keys its invalidation on it. It is not part of the JSON answer.
    """

    entities: list[dict[str, Any]]
    paths: list[list[str]]
    scores: dict[str, float]
    truncated: bool
    visited: frozenset[str] = frozenset()

    def to_json(self) -> dict[str, Any]:
        """The answer as served over HTTP and NATS."""
        return {
            "entities": self.entities,
            "paths": self.paths,
            "scores": self.scores,
            "truncated": self.truncated,
        }


class UnknownEntity(LookupError):
    """The start entity does not exist."""


_OUT = "SELECT subject, object, weight FROM edges WHERE subject IN ({ids})"
_IN = "SELECT object, subject, weight FROM edges WHERE object IN ({ids})"


def run_path_query(
    db: sqlite3.Connection,
    query: PathQuery,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> PathResult:
    """Run a PathRAG query.

    Args:
        db: a connection to the graph store.
        query: the request.
        clock: a monotonic clock in seconds (tests pass a fake one).

    Raises:
        UnknownEntity: ``start_entity`` does not exist.
    """
    start = query.start_entity
    if not _types(db, [start]):
        raise UnknownEntity(start)
    deadline = clock() + query.timeout
    wanted_types = set(query.entity_types)
    best: dict[str, float] = {start: 1.0}
    path: dict[str, tuple[str, ...]] = {start: (start,)}
    visited = {start}
    frontier = {start: 1.0}
    truncated = False
    for _ in range(query.max_depth):
        if not frontier:
            break
        if clock() > deadline:
            truncated = True
            break
        steps = _neighbours(db, frontier, query)
        candidates = {node for _, node, _ in steps} - visited
        types = _types(db, candidates) if wanted_types else {}
        visited |= candidates
        improved: dict[str, float] = {}
        for source, node, weight in steps:
            if node in path[source]:
                continue  # simple paths only
            if wanted_types and node not in best and types.get(node) not in wanted_types:
                continue
            score = frontier[source] * query.decay_factor * weight
            if score <= best.get(node, 0.0):
                continue
            if node not in best and len(best) >= query.max_nodes:
                truncated = True
                continue
            best[node] = score
            path[node] = (*path[source], node)
            improved[node] = score
        frontier = improved
    return _result(
        db, best=best, path=path, visited=visited, truncated=truncated, max_paths=query.max_paths
    )


def _neighbours(
    db: sqlite3.Connection, frontier: dict[str, float], query: PathQuery
) -> list[tuple[str, str, float]]:
    """(from, to, weight) for every edge leaving the frontier in the asked direction."""
    templates = {"outgoing": [_OUT], "incoming": [_IN], "both": [_OUT, _IN]}[query.direction]
    predicate_clause = ""
    if query.predicates:
        predicate_clause = f" AND predicate IN ({','.join('?' * len(query.predicates))})"
    steps: list[tuple[str, str, float]] = []
    for chunk in chunks(sorted(frontier)):
        marks = ",".join("?" * len(chunk))
        for template in templates:
            sql = template.format(ids=marks) + predicate_clause
            steps.extend(db.execute(sql, [*chunk, *query.predicates]))
    return steps


def _types(db: sqlite3.Connection, ids: Iterable[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for chunk in chunks(list(ids)):
        marks = ",".join("?" * len(chunk))
        found.update(db.execute(f"SELECT id, type FROM entities WHERE id IN ({marks})", chunk))
    return found


def _result(
    db: sqlite3.Connection,
    *,
    best: dict[str, float],
    path: dict[str, tuple[str, ...]],
    visited: set[str],
    truncated: bool,
    max_paths: int,
) -> PathResult:
    ranked = sorted(best, key=lambda node: (-best[node], node))
    if len(ranked) - 1 > max_paths:
        truncated = True
    paths = [list(path[node]) for node in ranked[1 : max_paths + 1]]
    return PathResult(
        entities=summaries(db, ranked),
        paths=paths,
        scores={node: round(best[node], 6) for node in ranked},
        truncated=truncated,
        visited=frozenset(visited),
    )
