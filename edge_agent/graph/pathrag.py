"""PathRAG: scored best-first traversal of the graph from one entity.

Pure over a SQLite connection: no other I/O, and the clock is a parameter. The score of
a node is the best product of ``decay_factor * edge weight`` over the paths (of at most
``max_depth`` hops) that reach it.

The walk is Dijkstra's, for the largest product instead of the smallest sum: a heap
hands out reached nodes strongest first, so the ``max_nodes`` strongest are exactly the
first ``max_nodes`` accepted and the walk stops there. A node's edges are read from
SQLite strongest first, a page at a time, and only when the heap reaches the best score
they could still give: a hub entity with thousands of edges costs the few pages the
answer needs, not all of its rows. With edge weights above ``1 / decay_factor`` a
longer path can score higher than a shorter one; a better path found later still
replaces the first one, so an untruncated answer is exact for any weights.

Limits never raise: hitting ``max_nodes``, ``max_paths`` or ``timeout`` returns what was
found with ``truncated: true``.
"""

from __future__ import annotations

import heapq
import itertools
import sqlite3
import time
from collections.abc import Callable, Iterable
from typing import Annotated, Any, Literal, NamedTuple

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


#: How often (in SQLite virtual machine steps) a running statement checks the deadline.
_PROGRESS_STEPS = 10_000
#: Edges read by a node's first page; each further page reads four times as many.
_FIRST_PAGE = 8
_PAGE_GROWTH = 4
# (neighbour, weight) of one node, strongest first; ``both`` merges the two index scans.
# ``{predicates}`` is empty or `` AND predicate IN (...)``.
_OUT = "SELECT object, weight FROM edges WHERE subject = ?{predicates}"
_IN = "SELECT subject, weight FROM edges WHERE object = ?{predicates}"
_PAGES = {
    "outgoing": _OUT,
    "incoming": _IN,
    "both": f"{_OUT} UNION ALL {_IN}",
}
_PAGE_ORDER = " ORDER BY 2 DESC LIMIT ? OFFSET ?"


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
    search = _Search(db, query, deadline=clock() + query.timeout, clock=clock)
    # A statement reading many rows is cut at the deadline too (SQLite calls this every
    # _PROGRESS_STEPS virtual machine steps).
    db.set_progress_handler(lambda: int(clock() > search.deadline), _PROGRESS_STEPS)
    try:
        search.walk()
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


#: A heap item: (-priority, tie-breaker, node, score, path, page). Without a page it is
#: ``node`` reached along ``path`` with ``score``; with one, the next page of that
#: node's edges still to read, and the priority is the best score they could give.
_Item = tuple[float, int, str, float, tuple[str, ...], "_Page | None"]


class _Page(NamedTuple):
    """The next ``limit`` edges (from ``offset``) of a reached node."""

    offset: int
    limit: int


class _Search:
    """The state of one PathRAG walk: best scores, their paths, what was looked at."""

    def __init__(
        self,
        db: sqlite3.Connection,
        query: PathQuery,
        *,
        deadline: float,
        clock: Callable[[], float],
    ) -> None:
        self.db = db
        self.query = query
        self.deadline = deadline
        self.clock = clock
        self.wanted_types = frozenset(query.entity_types)
        self.best: dict[str, float] = {}
        self.path: dict[str, tuple[str, ...]] = {}
        self.visited = {query.start_entity}
        self.truncated = False
        #: Per node, the (hops, score) of every path expanded from it: a later path is
        #: worth expanding only if it is shorter than each of them or scores higher.
        self.expanded: dict[str, list[tuple[int, float]]] = {}
        self.types: dict[str, str | None] = {}
        self.heap: list[_Item] = []
        self.ties = itertools.count()
        predicates = ""
        if query.predicates:
            predicates = f" AND predicate IN ({','.join('?' * len(query.predicates))})"
        self.sql = _PAGES[query.direction].format(predicates=predicates) + _PAGE_ORDER
        #: How many times the statement names the node (and the predicates).
        self.arms = 2 if query.direction == "both" else 1

    def walk(self) -> None:
        """Accept reached nodes strongest first until the heap is empty or a limit hit."""
        start = self.query.start_entity
        self.heap.append((-1.0, next(self.ties), start, 1.0, (start,), None))
        reading = True
        while self.heap:
            _, _, node, score, path, page = heapq.heappop(self.heap)
            if page is None:
                if not self.accept(node, score, path):
                    return
            elif reading:
                reading = self.read(node, score, path, page)
        # Without ``reading``, the walk ended at the deadline: what was already read is
        # found, and accepted above.

    def accept(self, node: str, score: float, path: tuple[str, ...]) -> bool:
        """Take a reached node into the answer; False once the answer is full."""
        if score <= self.best.get(node, 0.0):
            self.expand(node, score, path)  # may still be shorter than the better path
            return True
        if node not in self.best:
            if not self.wanted(node):
                return True
            if len(self.best) >= self.query.max_nodes:
                self.truncated = True
                return False
        self.best[node] = score
        self.path[node] = path
        self.expand(node, score, path)
        return True

    def wanted(self, node: str) -> bool:
        """Whether the node is of a type the query asks for (the start always is)."""
        if not self.wanted_types or node == self.query.start_entity:
            return True
        if node not in self.types:
            self.types[node] = _types(self.db, [node]).get(node)
        return self.types[node] in self.wanted_types

    def expand(self, node: str, score: float, path: tuple[str, ...]) -> None:
        """Queue the first page of the node's edges, unless an expanded path dominates."""
        hops = len(path) - 1
        if hops >= self.query.max_depth:
            return
        done = self.expanded.setdefault(node, [])
        if any(h <= hops and s >= score for h, s in done):
            return
        done.append((hops, score))
        bound = -score * self.query.decay_factor
        page = _Page(0, _FIRST_PAGE)
        heapq.heappush(self.heap, (bound, next(self.ties), node, score, path, page))

    def read(self, node: str, score: float, path: tuple[str, ...], page: _Page) -> bool:
        """Read one page of the node's edges and push what they reach; False at the deadline."""
        if self.clock() > self.deadline:
            self.truncated = True
            return False
        params = (node, *self.query.predicates) * self.arms + (page.limit, page.offset)
        try:
            rows = self.db.execute(self.sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            if "interrupted" not in str(exc):
                raise
            self.truncated = True  # the deadline passed inside this statement
            return False
        heap, ties, step = self.heap, self.ties, score * self.query.decay_factor
        weight = 0.0
        for neighbour, weight in rows:
            reached = step * weight
            if reached > 0.0 and neighbour not in path:  # simple paths only
                heapq.heappush(
                    heap, (-reached, next(ties), neighbour, reached, (*path, neighbour), None)
                )
        self.visited.update(neighbour for neighbour, _ in rows)
        if len(rows) == page.limit and weight > 0.0:
            more = _Page(page.offset + page.limit, page.limit * _PAGE_GROWTH)
            heapq.heappush(heap, (-step * weight, next(ties), node, score, path, more))
        return True


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
