"""PathRAG: scored best-first traversal of the graph from one entity.

Pure over a SQLite connection: no other I/O, and the clock is a parameter. The score of
a node is the best product of ``decay_factor * edge weight`` over the paths (of at most
``max_depth`` hops) that reach it.

The walk is Dijkstra's, for the largest product instead of the smallest sum: a heap
hands out reached nodes strongest first, so the ``max_nodes`` strongest are exactly the
first ``max_nodes`` accepted and the walk stops there. A node's edges are read from
SQLite strongest first, a page at a time, and only when the heap reaches the best score
they could still give: a hub entity with thousands of edges costs the few pages the
answer needs, not all of its rows.

The answer is exact while every ``decay_factor * weight`` is at most 1, which weights
of at most 1 (the default is 1.0) ensure. Above that a longer path can score higher
than a shorter one: a better path found later still replaces the first, but the answer
is the best the walk found, not a proven best (finding that is the longest-path
problem).

Limits never raise: hitting ``max_nodes``, ``max_paths`` or ``timeout`` returns what was
found with ``truncated: true``.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import sqlite3
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal, NamedTuple

import msgspec

from edge_agent.graph.queries import summaries

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
#: First pages read by one statement (one compound SELECT, an arm per node).
_FIRST_PAGES_AT_ONCE = 64
# (neighbour, weight) of one node; ``both`` merges the two index scans. ``{predicates}``
# is empty or `` AND predicate IN (...)``.
_OUT = "SELECT object, weight FROM edges WHERE subject = ?{predicates}"
_IN = "SELECT subject, weight FROM edges WHERE object = ?{predicates}"
_PAGES = {
    "outgoing": _OUT,
    "incoming": _IN,
    "both": f"{_OUT} UNION ALL {_IN}",
}
#: Strongest first: each side is read along its weight index and stops at the limit.
_STRONGEST = " ORDER BY 2 DESC LIMIT ? OFFSET ?"


@functools.lru_cache(maxsize=64)
def _pages_sql(page: str, count: int) -> str:
    """(arm, neighbour, weight) of a page of each of ``count`` nodes, in one statement."""
    arm = f"SELECT {{}}, * FROM ({page}{_STRONGEST})"
    return " UNION ALL ".join(arm.format(index) for index in range(count))


def run_path_query(
    db: sqlite3.Connection,
    query: PathQuery,
    *,
    clock: Callable[[], float] = time.monotonic,
    with_entities: bool = True,
) -> PathResult:
    """Run a PathRAG query.

    Args:
        db: a connection to the graph store.
        query: the request.
        clock: a monotonic clock in seconds (tests pass a fake one).
        with_entities: summarise the entities reached. A caller that uses only the
            paths and scores skips it: it reads every reached entity (up to
            ``max_nodes``), most of a ``both`` answer's time; ``entities`` is then empty.

    Raises:
        UnknownEntity: ``start_entity`` does not exist.
    """
    if _type_of(db, query.start_entity) is None:
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
        with_entities=with_entities,
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
        #: Expanded paths whose first page is not read yet, as a heap by the best score
        #: their edges could give: read once the main heap's best falls below that.
        self.pending: list[tuple[float, int, str, float, tuple[str, ...]]] = []
        predicates = ""
        if query.predicates:
            predicates = f" AND predicate IN ({','.join('?' * len(query.predicates))})"
        self.page_sql = _PAGES[query.direction].format(predicates=predicates)
        #: The statement's parameters for one node (it may name it on both sides).
        self.arms = 2 if query.direction == "both" else 1

    def walk(self) -> None:
        """Accept reached nodes strongest first until the heap is empty or a limit hit."""
        start = self.query.start_entity
        self.heap.append((-1.0, next(self.ties), start, 1.0, (start,), None))
        reading = True
        while self.heap or self.pending:
            if self.pending and (not self.heap or self.heap[0][0] >= self.pending[0][0]):
                reading = reading and self.read_first_pages()
                if not reading:
                    self.pending.clear()
                continue
            _, _, node, score, path, page = heapq.heappop(self.heap)
            if page is None:
                if not self.accept(node, score, path):
                    return
            elif reading:
                reading = self.read_more(node, score, path, page)
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
            self.types[node] = _type_of(self.db, node)
        return self.types[node] in self.wanted_types

    def expand(self, node: str, score: float, path: tuple[str, ...]) -> None:
        """Queue the node's first page, unless an expanded path dominates this one."""
        hops = len(path) - 1
        if hops >= self.query.max_depth:
            return
        done = self.expanded.setdefault(node, [])
        if any(h <= hops and s >= score for h, s in done):
            return
        done.append((hops, score))
        bound = -score * self.query.decay_factor
        heapq.heappush(self.pending, (bound, next(self.ties), node, score, path))

    def read_first_pages(self) -> bool:
        """Read the first page of the pending paths whose edges could beat the heap's best
        (up to a statement's worth, strongest first); False at the deadline.

        While what is known stays far below ``max_nodes`` every pending page will be
        needed anyway, so all are read at once.
        """
        floor = self.heap[0][0] if self.heap else 0.0
        if len(self.best) + len(self.heap) < self.query.max_nodes:
            floor = 0.0
        chunk: list[tuple[str, float, tuple[str, ...]]] = []
        while self.pending and self.pending[0][0] <= floor and len(chunk) < _FIRST_PAGES_AT_ONCE:
            _, _, node, score, path = heapq.heappop(self.pending)
            chunk.append((node, score, path))
        # Padded to a power of two (with an id no entity has) so that a few statements
        # serve every batch size from SQLite's statement cache.
        count = 1 << (len(chunk) - 1).bit_length()
        nodes = [node for node, _, _ in chunk] + [""] * (count - len(chunk))
        first = _Page(0, _FIRST_PAGE)
        params = [value for node in nodes for value in self.page_params(node, first)]
        rows = self.fetch(_pages_sql(self.page_sql, count), params)
        if rows is None:
            return False
        found: list[list[tuple[str, float]]] = [[] for _ in chunk]
        for index, neighbour, weight in rows:
            found[index].append((neighbour, weight))
        for (node, score, path), edges in zip(chunk, found, strict=True):
            self.relax(node, score, path, edges, first)
        return True

    def read_more(self, node: str, score: float, path: tuple[str, ...], page: _Page) -> bool:
        """Read a further page of the node's edges; False at the deadline."""
        rows = self.fetch(self.page_sql + _STRONGEST, self.page_params(node, page))
        if rows is None:
            return False
        self.relax(node, score, path, rows, page)
        return True

    def page_params(self, node: str, page: _Page) -> list[Any]:
        """The parameters of the page statement for one node (named on each side)."""
        return [*(node, *self.query.predicates) * self.arms, page.limit, page.offset]

    def fetch(self, sql: str, params: list[Any]) -> list[Any] | None:
        """The statement's rows, or None once the deadline has passed."""
        if self.clock() > self.deadline:
            self.truncated = True
            return None
        try:
            return self.db.execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            if "interrupted" not in str(exc):
                raise
            self.truncated = True  # the deadline passed inside this statement
            return None

    def relax(
        self,
        node: str,
        score: float,
        path: tuple[str, ...],
        edges: list[tuple[str, float]],
        page: _Page,
    ) -> None:
        """Push what one page of the node's edges (strongest first) reaches, and the next page."""
        heap, ties, step = self.heap, self.ties, score * self.query.decay_factor
        # A node reached at the last hop is never expanded: no better score, no use.
        best = self.best if len(path) >= self.query.max_depth else {}
        weight = 0.0
        for neighbour, weight in edges:
            reached = step * weight
            if reached <= best.get(neighbour, 0.0) or neighbour in path:  # simple paths only
                continue
            heapq.heappush(
                heap, (-reached, next(ties), neighbour, reached, (*path, neighbour), None)
            )
        self.visited.update(neighbour for neighbour, _ in edges)
        if len(edges) == page.limit and weight > 0.0:
            more = _Page(page.offset + page.limit, page.limit * _PAGE_GROWTH)
            heapq.heappush(heap, (-step * weight, next(ties), node, score, path, more))


def _type_of(db: sqlite3.Connection, entity_id: str) -> str | None:
    """The entity's type, or None when it does not exist."""
    row = db.execute("SELECT type FROM entities WHERE id = ?", (entity_id,)).fetchone()
    return None if row is None else str(row[0])


def _result(
    db: sqlite3.Connection,
    *,
    best: dict[str, float],
    path: dict[str, tuple[str, ...]],
    visited: set[str],
    truncated: bool,
    max_paths: int,
    with_entities: bool,
) -> PathResult:
    ranked = sorted(best, key=lambda node: (-best[node], node))
    if len(ranked) - 1 > max_paths:
        truncated = True
    paths = [list(path[node]) for node in ranked[1 : max_paths + 1]]
    return PathResult(
        entities=summaries(db, ranked) if with_entities else [],
        paths=paths,
        scores={node: round(best[node], 6) for node in ranked},
        truncated=truncated,
        visited=frozenset(visited),
    )
