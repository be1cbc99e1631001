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


_FRONTIER_CHUNK = 64
#: How often (in SQLite virtual machine steps) a running statement checks the deadline.
_PROGRESS_STEPS = 10_000
_OUT = "SELECT subject, object, weight FROM edges WHERE subject IN ({ids}){predicates}"
_IN = "SELECT object, subject, weight FROM edges WHERE object IN ({ids}){predicates}"


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
    if not _types(db, [query.start_entity]):
        raise UnknownEntity(query.start_entity)
    search = _Search(db, query, deadline=clock() + query.timeout)
    # Inside a chunk too: a statement reading a hub node's thousands of edges is cut at
    # the deadline (SQLite calls this every _PROGRESS_STEPS virtual machine steps).
    db.set_progress_handler(lambda: int(clock() > search.deadline), _PROGRESS_STEPS)
    try:
        _walk(search, query, clock)
    finally:
        db.set_progress_handler(None, 0)
    return _result(
        db,
        best=search.best,
        path=search.path,
        visited=search.visited,
        truncated=search.truncated,
        max_paths=query.max_paths,
    )


def _walk(search: _Search, query: PathQuery, clock: Callable[[], float]) -> None:
    frontier = {query.start_entity: 1.0}
    for _ in range(query.max_depth):
        improved: dict[str, float] = {}
        # Best-scored nodes first, a chunk at a time, so that when max_nodes fills up
        # the answer holds the strongest neighbours and the rest is never read.
        ranked = sorted(frontier, key=lambda node: (-frontier[node], node))
        for chunk in chunks(ranked, _FRONTIER_CHUNK):
            if search.full or clock() > search.deadline:
                search.truncated = True
                break
            try:
                search.expand({node: frontier[node] for node in chunk}, improved)
            except sqlite3.OperationalError as exc:
                if "interrupted" not in str(exc):
                    raise
                search.truncated = True  # the deadline passed inside this chunk
                break
        frontier = improved
        if not frontier or search.truncated:
            break


class _Search:
    """The state of one PathRAG walk: best scores, their paths, what was looked at."""

    def __init__(self, db: sqlite3.Connection, query: PathQuery, *, deadline: float) -> None:
        start = query.start_entity
        self.db = db
        self.query = query
        self.deadline = deadline
        self.wanted_types = set(query.entity_types)
        self.best: dict[str, float] = {start: 1.0}
        self.path: dict[str, tuple[str, ...]] = {start: (start,)}
        self.visited = {start}
        self.truncated = False

    @property
    def full(self) -> bool:
        return len(self.best) >= self.query.max_nodes

    def expand(self, sources: dict[str, float], improved: dict[str, float]) -> None:
        """Relax every edge out of ``sources``; nodes whose score improved go to ``improved``."""
        steps = _neighbours(self.db, sources, self.query)
        # Strongest first: when max_nodes fills up, the weakest are the ones left out.
        steps.sort(key=lambda step: -sources[step[0]] * step[2])
        candidates = {node for _, node, _ in steps} - self.visited
        types = _types(self.db, candidates) if self.wanted_types else {}
        self.visited |= candidates
        decay = self.query.decay_factor
        wanted = self.wanted_types
        full = self.full
        for source, node, weight in steps:
            if node in self.path[source]:
                continue  # simple paths only
            known = node in self.best
            if not known and (full or (wanted and types.get(node) not in wanted)):
                self.truncated |= full
                continue
            score = sources[source] * decay * weight
            if score <= self.best.get(node, 0.0):
                continue
            self.best[node] = score
            self.path[node] = (*self.path[source], node)
            improved[node] = score
            full = self.full


def _neighbours(
    db: sqlite3.Connection, frontier: dict[str, float], query: PathQuery
) -> list[tuple[str, str, float]]:
    """(from, to, weight) for every edge leaving the frontier in the asked direction."""
    templates = {"outgoing": [_OUT], "incoming": [_IN], "both": [_OUT, _IN]}[query.direction]
    predicates = ""
    if query.predicates:
        predicates = f" AND predicate IN ({','.join('?' * len(query.predicates))})"
    # The caller passes at most _FRONTIER_CHUNK sources: one statement per direction.
    sources = list(frontier)
    marks = ",".join("?" * len(sources))
    steps: list[tuple[str, str, float]] = []
    for template in templates:
        sql = template.format(ids=marks, predicates=predicates)
        steps.extend(db.execute(sql, [*sources, *query.predicates]))
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
