"""GraphRAG search on the hub: text, vector and hybrid search, and local and global search.

Over a read connection and two callables (``embed``: the query's vector, or ``None``
when the embedding service is down or behind; ``nearest``: the vector index), with the
clock a parameter: the querier runs them on its read connections. The one concurrency:
a query's embedding is asked for on a small thread pool while its text search runs.

- **text**: FTS5 bm25 (:mod:`cloud_hub.graphrag.text`).
- **vector**: cosine similarity of the query's embedding to the entities' embeddings.
- **hybrid**: reciprocal rank fusion of both lists: ``score = Σ 1 / (RRF_K + rank)``
  over the lists an entity is in, ranks from 1. ``RRF_K = 60``, the constant of Cormack,
  Clarke and Büttcher (SIGIR 2009), which damps the weight of the very first ranks so
  that agreement between the lists counts more than either list's top.

When a query needs a vector and ``embed`` gives none, it is answered from text alone
and says ``"degraded": true``.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Annotated, Any, Literal

import msgspec

from cloud_hub.graphrag.text import search_text
from edge_agent.graph.pathrag import PathQuery, UnknownEntity, run_path_query

__all__ = [
    "RRF_K",
    "GlobalQuery",
    "LocalQuery",
    "SearchQuery",
    "Searcher",
    "rrf",
]

RRF_K = 60
#: Threads that wait on the embedding service while a query's text search runs.
_EMBEDDING = ThreadPoolExecutor(max_workers=4, thread_name_prefix="graphrag-embed")
#: How many hits of each list hybrid ranking fuses, per result asked for. One: fusing
#: deeper lets hits both lists only mildly like overtake one list's confident best (on the
#: planted-answer corpus of tests/integration/test_search_quality.py, top-3 hybrid: 0.90
#: fusing the best 3 of each list, 0.825 the best 6, 0.80 the best 12; vector alone 0.90).
_DEPTH = 1
#: Hits whose paths to each other local search looks for, and how far.
_PATH_HITS, _PATH_DEPTH = 5, 3
_NEIGHBOURS = 10

Mode = Literal["text", "vector", "hybrid"]
Embed = Callable[[str], Sequence[float] | None]
Nearest = Callable[[Sequence[float], int], list[tuple[str, float]]]
#: Community ids per level for entities; and communities of a level ranked for a query.
Memberships = Callable[[sqlite3.Connection, list[str]], dict[str, list[str]]]
RankCommunities = Callable[[sqlite3.Connection, str, int, int], list[tuple[str, float]]]
CommunityView = Callable[[sqlite3.Connection, str], dict[str, Any] | None]

_Text = Annotated[str, msgspec.Meta(min_length=1, max_length=1000)]
_Limit = Annotated[int, msgspec.Meta(ge=1, le=100)]
_Ids = Annotated[list[Annotated[str, msgspec.Meta(max_length=255)]], msgspec.Meta(max_length=50)]


class SearchQuery(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``graph.query.search``: entities for a text, by text, vector or both."""

    query: _Text
    mode: Mode = "hybrid"
    limit: _Limit = 10
    entity_types: _Ids = msgspec.field(default_factory=list)
    #: Only entities these edges report (hub provenance).
    edges: _Ids = msgspec.field(default_factory=list)


class LocalQuery(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``graph.query.local``: the best entities, their communities, neighbourhoods and
    the PathRAG paths between them."""

    query: _Text
    limit: _Limit = 10
    mode: Mode = "hybrid"


class GlobalQuery(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``graph.query.global``: communities of a level ranked for the text, then their
    best members."""

    query: _Text
    level: Annotated[int, msgspec.Meta(ge=0, le=10)] = 1
    limit: _Limit = 5


def rrf(*rankings: Sequence[str], k: int = RRF_K) -> list[tuple[str, float]]:
    """Reciprocal rank fusion of rankings (best first); (id, fused score), best first."""
    fused: dict[str, float] = {}
    for ranking in rankings:
        for rank, key in enumerate(ranking, start=1):
            fused[key] = fused.get(key, 0.0) + 1.0 / (k + rank)
    return sorted(fused.items(), key=lambda item: (-item[1], item[0]))


class Searcher:
    """Answers the three GraphRAG queries on a read connection.

    Args:
        embed: the query's embedding, or ``None`` (service down: degraded); ``None``
            itself when embeddings are off.
        nearest: the vector index's best (entity id, similarity) for a vector.
        memberships, rank_communities, community: the communities' read functions
            (``None`` until communities exist: local and global answer without them).
        clock: monotonic seconds, for timings.
    """

    def __init__(
        self,
        *,
        embed: Embed | None = None,
        nearest: Nearest | None = None,
        memberships: Memberships | None = None,
        rank_communities: RankCommunities | None = None,
        community: CommunityView | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._embed = embed
        self._nearest = nearest
        self._memberships = memberships
        self._rank_communities = rank_communities
        self._community = community
        self._clock = clock

    # ---- search ------------------------------------------------------------------------

    def search(self, db: sqlite3.Connection, query: SearchQuery) -> dict[str, Any]:
        """``{"results": [...], "mode", "degraded", "timings_ms"}``."""
        timings: dict[str, float] = {}
        snippets: dict[str, str] = {}
        hits, degraded = self._ranked(db, query, timings, snippets)
        started = self._clock()
        results = self._described(db, hits[: query.limit], snippets)
        timings["describe"] = _ms(self._clock() - started)
        return {
            "results": results,
            "mode": query.mode,
            "degraded": degraded,
            "timings_ms": timings,
        }

    def _ranked(
        self,
        db: sqlite3.Connection,
        query: SearchQuery,
        timings: dict[str, float],
        snippets: dict[str, str],
    ) -> tuple[list[tuple[str, float]], bool]:
        """(entity id, score) best first, and whether a wanted vector was missing; the
        text hits' snippets go into ``snippets``."""
        depth = query.limit * _DEPTH
        # The query's embedding (a call to the service) is made while text search runs.
        embedding = self._embedding(query.query) if query.mode != "text" else None
        text: list[tuple[str, float]] = []
        if query.mode != "vector":
            text = self._text(db, query, depth, timings, snippets)
        vector = None
        if embedding is not None:
            vector = self._vector(db, query, depth, timings, embedding)
        degraded = query.mode != "text" and vector is None
        if vector is None:
            if query.mode == "vector":  # answered from text alone, and says so
                text = self._text(db, query, depth, timings, snippets)
            return text, degraded
        if query.mode == "vector":
            return vector, False
        fused = rrf([key for key, _ in text], [key for key, _ in vector])
        return fused, False

    def _text(
        self,
        db: sqlite3.Connection,
        query: SearchQuery,
        depth: int,
        timings: dict[str, float],
        snippets: dict[str, str],
    ) -> list[tuple[str, float]]:
        started = self._clock()
        hits = search_text(db, query.query, depth * 2, query.entity_types)
        kept = _reported_by(db, [hit.entity_id for hit in hits], query.edges)
        snippets.update((hit.entity_id, hit.snippet) for hit in hits)
        timings["text"] = _ms(self._clock() - started)
        return [(hit.entity_id, hit.score) for hit in hits if hit.entity_id in kept][:depth]

    def _embedding(self, words: str) -> Future[tuple[Sequence[float] | None, float]] | None:
        """The embedding of ``words`` on its way (with the seconds it took), or ``None``
        when there are no vectors to search."""
        if self._embed is None or self._nearest is None:
            return None
        embed, clock = self._embed, self._clock

        def timed() -> tuple[Sequence[float] | None, float]:
            started = clock()
            return embed(words), clock() - started

        return _EMBEDDING.submit(timed)

    def _vector(
        self,
        db: sqlite3.Connection,
        query: SearchQuery,
        depth: int,
        timings: dict[str, float],
        embedding: Future[tuple[Sequence[float] | None, float]],
    ) -> list[tuple[str, float]] | None:
        assert self._nearest is not None
        vector, took = embedding.result()
        timings["embed"] = _ms(took)
        if vector is None:
            return None
        started = self._clock()
        wanted = depth * (8 if query.entity_types or query.edges else 1)
        near = self._nearest(vector, wanted)
        kept = _filtered(db, [key for key, _ in near], query.entity_types, query.edges)
        timings["vector"] = _ms(self._clock() - started)
        return [(key, score) for key, score in near if key in kept][:depth]

    def _described(
        self,
        db: sqlite3.Connection,
        hits: Sequence[tuple[str, float]],
        snippets: dict[str, str],
    ) -> list[dict[str, Any]]:
        if not hits:
            return []
        ids = [key for key, _ in hits]
        rows = db.execute(
            f"SELECT entity_id, entity_type, substr(body, 1, 160) FROM graphrag_text"
            f" WHERE entity_id IN ({','.join('?' * len(ids))})",
            ids,
        ).fetchall()
        known = {row[0]: (row[1], row[2]) for row in rows}
        return [
            {
                "entity_id": key,
                "entity_type": known[key][0],
                "score": round(score, 6),
                "snippet": snippets.get(key) or known[key][1],
            }
            for key, score in hits
            if key in known
        ]

    # ---- local -------------------------------------------------------------------------

    def local(self, db: sqlite3.Connection, query: LocalQuery) -> dict[str, Any]:
        """The best entities with their communities and neighbourhoods, and the PathRAG
        paths that join them."""
        found = self.search(db, SearchQuery(query=query.query, mode=query.mode, limit=query.limit))
        results = found["results"]
        started = self._clock()
        ids = [hit["entity_id"] for hit in results]
        memberships = self._memberships(db, ids) if self._memberships and ids else {}
        for hit in results:
            hit["communities"] = memberships.get(hit["entity_id"], [])
            hit["neighbours"] = _neighbours(db, hit["entity_id"])
        found["paths"] = _paths_between(db, ids[:_PATH_HITS])
        found["timings_ms"]["local"] = _ms(self._clock() - started)
        return found

    # ---- global ------------------------------------------------------------------------

    def global_(self, db: sqlite3.Connection, query: GlobalQuery) -> dict[str, Any]:
        """Communities of ``level`` ranked for the text (their own text, and where the
        best entities for it live, fused), then each one's best members."""
        found = self.search(db, SearchQuery(query=query.query, limit=50))
        started = self._clock()
        hits = [hit["entity_id"] for hit in found["results"]]
        if self._memberships is None or self._rank_communities is None:
            return {**found, "communities": [], "level": query.level}
        memberships = self._memberships(db, hits) if hits else {}
        by_members = _communities_of(hits, memberships, query.level)
        by_text = [key for key, _ in self._rank_communities(db, query.query, query.level, 50)]
        communities = []
        for key, score in rrf(by_text, by_members)[: query.limit]:
            view = self._community(db, key) if self._community else None
            members = [
                hit for hit in found["results"] if key in memberships.get(hit["entity_id"], [])
            ]
            communities.append(
                {"id": key, "score": round(score, 6), "community": view, "members": members[:5]}
            )
        timings = {**found["timings_ms"], "global": _ms(self._clock() - started)}
        return {
            "communities": communities,
            "level": query.level,
            "degraded": found["degraded"],
            "timings_ms": timings,
        }


def _communities_of(hits: list[str], memberships: dict[str, list[str]], level: int) -> list[str]:
    """Communities at ``level`` in the order of their best member among ``hits``."""
    seen: dict[str, None] = {}
    for key in hits:
        levels = memberships.get(key, [])
        if level < len(levels):
            seen.setdefault(levels[level], None)
    return list(seen)


def _reported_by(db: sqlite3.Connection, ids: list[str], edges: Sequence[str]) -> set[str]:
    """Those of ``ids`` that one of ``edges`` reports (all of them without ``edges``)."""
    if not edges or not ids:
        return set(ids)
    rows = db.execute(
        f"SELECT DISTINCT entity_id FROM hub_contributions"
        f" WHERE entity_id IN ({','.join('?' * len(ids))})"
        f" AND edge_id IN ({','.join('?' * len(edges))})",
        [*ids, *edges],
    ).fetchall()
    return {row[0] for row in rows}


def _filtered(
    db: sqlite3.Connection, ids: list[str], types: Sequence[str], edges: Sequence[str]
) -> set[str]:
    if not ids:
        return set()
    kept = _reported_by(db, ids, edges)
    if not types:
        return kept
    rows = db.execute(
        f"SELECT id FROM entities WHERE id IN ({','.join('?' * len(ids))})"
        f" AND type IN ({','.join('?' * len(types))})",
        [*ids, *types],
    ).fetchall()
    return kept & {row[0] for row in rows}


def _neighbours(db: sqlite3.Connection, entity_id: str) -> list[dict[str, Any]]:
    rows = db.execute(
        """SELECT 'outgoing', predicate, object, weight FROM edges WHERE subject = ?1
           UNION ALL
           SELECT 'incoming', predicate, subject, weight FROM edges WHERE object = ?1
           ORDER BY 4 DESC LIMIT ?2""",
        (entity_id, _NEIGHBOURS),
    ).fetchall()
    return [
        {"direction": row[0], "predicate": row[1], "entity_id": row[2], "weight": row[3]}
        for row in rows
    ]


def _paths_between(db: sqlite3.Connection, ids: list[str]) -> list[dict[str, Any]]:
    """PathRAG from each hit; the best path to every other hit it reaches."""
    wanted = set(ids)
    found = []
    for start in ids:
        query = PathQuery(
            start_entity=start, direction="both", max_depth=_PATH_DEPTH, max_nodes=500, timeout=0.2
        )
        try:
            result = run_path_query(db, query, with_entities=False)
        except UnknownEntity:
            continue
        for path in result.paths:
            end = path[-1]
            if end != start and end in wanted and start < end:
                found.append(
                    {"from": start, "to": end, "path": path, "score": result.scores.get(end, 0.0)}
                )
    return found


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)
