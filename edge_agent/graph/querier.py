"""The query capability: every graph query by name, with its cache and index checks.

HTTP and NATS request/reply are thin adapters over :meth:`Querier.handle`, which takes
a query name and the raw JSON request and returns (status, JSON body): both transports
therefore speak exactly the same JSON and the same errors.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec

from edge_agent.config import IndexesConfig
from edge_agent.errors import BadQueryError, GraphError, NotFoundError, QueryError
from edge_agent.graph import queries
from edge_agent.graph.cache import QueryCache
from edge_agent.graph.pathrag import PathQuery, UnknownEntity, run_path_query
from edge_agent.graph.queries import (
    AliasQuery,
    EntityQuery,
    PredicateQuery,
    RelationshipsQuery,
    SpatialQuery,
    TemporalQuery,
)
from edge_agent.graph.store import GraphStore
from edge_agent.metrics import Metrics
from edge_agent.tracing import span

__all__ = ["QUERY_NAMES", "QUERY_REQUESTS", "Querier"]

#: Roughly what one dependency costs in the cache's index (an id and set slots).
_DEPENDENCY_BYTES = 96
_encoder = msgspec.json.Encoder()
_T = TypeVar("_T")


class StatsQuery(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``graph.query.stats``: counts of entities, triples and edges (no fields)."""


#: Each query name and the Struct its JSON request decodes into.
QUERY_REQUESTS: dict[str, type[msgspec.Struct]] = {
    "path": PathQuery,
    "entity": EntityQuery,
    "relationships": RelationshipsQuery,
    "predicate": PredicateQuery,
    "alias": AliasQuery,
    "spatial": SpatialQuery,
    "temporal": TemporalQuery,
    "stats": StatsQuery,
}
#: The queries served, as ``graph.query.<name>`` and ``POST /graph/query/<name>``.
QUERY_NAMES = tuple(QUERY_REQUESTS)


class Querier:
    """Runs graph queries against the store's read connections.

    Args:
        store: the graph store.
        indexes: which indexes are on (queries needing an off index are refused).
        metrics: counts cache requests and hits.
        cache_enabled: ``graph.config.querier.cache_enabled``.
        max_cache_size: ``graph.config.querier.max_cache_size``.
        max_cache_bytes: ``graph.config.querier.max_cache_bytes``.
        clock: monotonic clock for PathRAG timeouts.
    """

    def __init__(
        self,
        store: GraphStore,
        *,
        indexes: IndexesConfig,
        metrics: Metrics,
        cache_enabled: bool = True,
        max_cache_size: int = 10_000,
        max_cache_bytes: int = 32 << 20,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self.indexes = indexes
        self._metrics = metrics
        self.cache_enabled = cache_enabled
        self.cache = QueryCache(max_cache_size, max_cache_bytes)
        self._clock = clock
        self._extra: dict[str, tuple[type[msgspec.Struct], Callable[[Any, Any], Any]]] = {}

    def add_query(
        self,
        name: str,
        kind: type[msgspec.Struct],
        run: Callable[[sqlite3.Connection, Any], Any],
    ) -> None:
        """Serve ``name`` too, as ``graph.query.<name>`` and ``POST /graph/query/<name>``:
        ``run(read connection, request decoded as kind)``, never cached (a program's own
        queries, such as the hub's search, follow every write)."""
        self._extra[name] = (kind, run)

    def handle(self, name: str, body: bytes) -> tuple[int, bytes]:
        """Decode a request for query ``name``, run it, and encode the answer.

        Returns:
            (HTTP status, JSON body); errors are ``{"error": message}`` with 400/404/500.
        """
        with span("graph.query", query=name) as current:
            status, body = self._handle(name, body)
            if current is not None:
                current.set_attribute("status", status)
            return status, body

    def _handle(self, name: str, body: bytes) -> tuple[int, bytes]:
        kind, extra = QUERY_REQUESTS.get(name), self._extra.get(name)
        if extra is not None:
            kind = extra[0]
        if kind is None:
            return 404, _encoder.encode({"error": f"unknown query {name!r}"})
        try:
            request = msgspec.json.decode(body or b"{}", type=kind)
            if extra is not None:
                runner = extra[1]
                return 200, _encoder.encode(self._read(lambda db: runner(db, request)))
            return 200, _encoder.encode(self.run(request))
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            return 400, _encoder.encode({"error": f"bad {name} request: {exc}"})
        except QueryError as exc:
            return exc.status, _encoder.encode({"error": str(exc)})
        except GraphError as exc:
            return 500, _encoder.encode({"error": str(exc)})

    def run(self, request: msgspec.Struct) -> Any:
        """Run one decoded request.

        Raises:
            NotFoundError: the entity asked for does not exist.
            BadQueryError: the request needs an index that is off, or is inconsistent.
        """
        match request:
            case PathQuery():
                return self._cached(request, self._path)
            case EntityQuery():
                return self._cached(request, self._entity)
            case RelationshipsQuery():
                if request.direction != "outgoing":
                    self._require("incoming")
                return self._read(lambda db: queries.relationships(db, request))
            case PredicateQuery():
                self._require("predicate")
                return self._read(lambda db: queries.by_predicate(db, request))
            case AliasQuery():
                self._require("alias")
                return self._alias(request)
            case SpatialQuery():
                self._require("spatial")
                return self._spatial(request)
            case TemporalQuery():
                self._require("temporal")
                return self._temporal(request)
            case _:
                return self._store.stats()

    def invalidate(self, touched: frozenset[str]) -> None:
        """Forget cached results that depend on entities a write touched."""
        if touched:
            self.cache.invalidate(touched)

    # ---- queries -------------------------------------------------------------------

    def _path(self, query: PathQuery) -> tuple[dict[str, Any], frozenset[str]]:
        if query.direction != "outgoing":
            self._require("incoming")
        try:
            with self._store.reader() as db:
                result = run_path_query(db, query, clock=self._clock)
        except UnknownEntity as exc:
            raise NotFoundError(f"start entity {query.start_entity!r} not found") from exc
        return result.to_json(), result.visited

    def _entity(self, query: EntityQuery) -> tuple[dict[str, Any], frozenset[str]]:
        found = self._store.entity(query.entity_id)
        if found is None:
            raise NotFoundError(f"entity {query.entity_id!r} not found")
        return found, frozenset([query.entity_id])

    def _alias(self, query: AliasQuery) -> dict[str, Any]:
        def lookup(db: sqlite3.Connection) -> dict[str, Any]:
            ids = queries.by_alias(db, query)
            if not ids:
                raise NotFoundError(f"no entity has alias {query.alias!r}")
            return {"alias": query.alias, "entities": queries.summaries(db, ids)}

        return self._read(lookup)

    def _spatial(self, query: SpatialQuery) -> dict[str, Any]:
        try:
            return self._read(lambda db: queries.spatial(db, query))
        except ValueError as exc:
            raise BadQueryError(str(exc)) from exc

    def _temporal(self, query: TemporalQuery) -> dict[str, Any]:
        start, end = _epoch_ms(query.start, "start"), _epoch_ms(query.end, "end")
        if end < start:
            raise BadQueryError("end is before start")
        return self._read(lambda db: queries.temporal(db, start, end, query.limit))

    # ---- plumbing ------------------------------------------------------------------

    def _require(self, index: str) -> None:
        if not getattr(self.indexes, index):
            raise BadQueryError(
                f"the {index} index is off (graph.config.indexer.indexes.{index}: false)"
            )

    def _read(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        with self._store.reader() as db:
            return fn(db)

    def _cached(self, request: msgspec.Struct, run: Callable[[Any], Any]) -> Any:
        if not self.cache_enabled:
            return run(request)[0]
        self._metrics.cache_requests.inc()
        key = (type(request).__name__, _encoder.encode(request))
        hit = self.cache.get(key)
        if hit is not None:
            self._metrics.cache_hits.inc()
            return hit
        token = self.cache.token()
        value, depends_on = run(request)
        # What the entry weighs: its key, its result as JSON, its dependency index.
        size = len(key[1]) + len(_encoder.encode(value)) + _DEPENDENCY_BYTES * len(depends_on)
        self.cache.put(key, value, depends_on, token, size)
        return value


def _epoch_ms(stamp: str, field: str) -> int:
    try:
        moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError as exc:
        raise BadQueryError(f"{field}: {stamp!r} is not an RFC 3339 timestamp") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)
