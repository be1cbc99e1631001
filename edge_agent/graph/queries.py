"""Graph lookups other than PathRAG: relationships, predicate, alias, spatial, temporal.

Pure functions over a SQLite connection; each returns JSON-ready dicts. Requests are
Structs shared by the HTTP API and the NATS request/reply service, so both speak the
same JSON.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import msgspec

from edge_agent.graph.indexes import LATITUDE, LONGITUDE, TEMPORAL_BUCKET_MS

__all__ = [
    "AliasQuery",
    "EntityQuery",
    "PredicateQuery",
    "RelationshipsQuery",
    "SpatialQuery",
    "TemporalQuery",
    "by_alias",
    "by_predicate",
    "relationships",
    "spatial",
    "summaries",
    "temporal",
]

_EARTH_RADIUS_M = 6_371_000.0
# One statement and one JSON document for any number of entities: SQLite builds each
# summary, so Python decodes one string instead of a row per property (a PathRAG answer
# summarises up to max_nodes entities; this halves what that costs).
_SUMMARIES = """
    SELECT json_group_array(json_object(
        'entity_id', e.id, 'entity_type', e.type, 'version', e.version,
        'properties', (SELECT json_group_object(t.predicate, json(t.object)) FROM triples AS t
                       WHERE t.subject = e.id AND t.predicate != 'rdf:type')))
    FROM json_each(?) AS wanted JOIN entities AS e ON e.id = wanted.value
"""
_encoder = msgspec.json.Encoder()
_summaries_decoder = msgspec.json.Decoder(list[dict[str, Any]])
Limit = Annotated[int, msgspec.Meta(ge=1, le=10_000)]
EntityId = Annotated[str, msgspec.Meta(min_length=1, max_length=255)]


class _Request(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base of query requests: immutable, unknown fields refused."""


class EntityQuery(_Request, frozen=True):
    """``graph.query.entity``: one entity by id."""

    entity_id: EntityId


class RelationshipsQuery(_Request, frozen=True):
    """``graph.query.relationships``: an entity's edges."""

    entity_id: EntityId
    direction: Literal["outgoing", "incoming", "both"] = "both"
    predicate: str | None = None


class PredicateQuery(_Request, frozen=True):
    """``graph.query.predicate``: entities having a predicate (optionally equal to a value)."""

    predicate: Annotated[str, msgspec.Meta(min_length=1)]
    value: str | int | float | bool | None = None
    limit: Limit = 100


class AliasQuery(_Request, frozen=True):
    """``graph.query.alias``: the entity known by an alias."""

    alias: Annotated[str, msgspec.Meta(min_length=1, max_length=255)]


class SpatialQuery(_Request, frozen=True):
    """``graph.query.spatial``: a bounding box, or a radius in metres around a point."""

    min_lat: float | None = None
    max_lat: float | None = None
    min_lon: float | None = None
    max_lon: float | None = None
    lat: float | None = None
    lon: float | None = None
    radius_m: Annotated[float, msgspec.Meta(gt=0, le=20_000_000)] | None = None
    limit: Limit = 100


class TemporalQuery(_Request, frozen=True):
    """``graph.query.temporal``: entities last updated in [start, end] (RFC 3339)."""

    start: str
    end: str
    limit: Limit = 100


def summaries(db: sqlite3.Connection, ids: Sequence[str]) -> list[dict[str, Any]]:
    """id, type, version and properties of each entity in ``ids`` that exists, in order."""
    if not ids:
        return []
    # In key order, neighbouring entities share index pages (~10 % faster for 500).
    (found,) = db.execute(_SUMMARIES, (_encoder.encode(sorted(ids)),)).fetchone()
    rows = {row["entity_id"]: row for row in _summaries_decoder.decode(found)}
    return [rows[i] for i in ids if i in rows]


def _listing(db: sqlite3.Connection, ids: list[str], limit: int) -> dict[str, Any]:
    return {
        "entities": summaries(db, ids[:limit]),
        "count": min(len(ids), limit),
        "truncated": len(ids) > limit,
    }


def relationships(db: sqlite3.Connection, query: RelationshipsQuery) -> dict[str, Any]:
    """Outgoing and/or incoming edges of one entity."""
    result: dict[str, Any] = {"entity_id": query.entity_id}
    predicate = "" if query.predicate is None else " AND predicate = ?"
    extra = [] if query.predicate is None else [query.predicate]
    if query.direction in ("outgoing", "both"):
        rows = db.execute(
            f"SELECT predicate, object, weight FROM edges WHERE subject = ?{predicate}",
            [query.entity_id, *extra],
        )
        result["outgoing"] = [{"predicate": p, "object": o, "weight": w} for p, o, w in rows]
    if query.direction in ("incoming", "both"):
        rows = db.execute(
            f"SELECT predicate, subject, weight FROM edges WHERE object = ?{predicate}",
            [query.entity_id, *extra],
        )
        result["incoming"] = [{"predicate": p, "subject": s, "weight": w} for p, s, w in rows]
    return result


def by_predicate(db: sqlite3.Connection, query: PredicateQuery) -> dict[str, Any]:
    """Entities with a triple or an edge of this predicate (equal to ``value`` if given)."""
    if query.value is None:
        rows = db.execute(
            "SELECT subject FROM triples WHERE predicate = ?1"
            " UNION SELECT subject FROM edges WHERE predicate = ?1 ORDER BY 1 LIMIT ?2",
            (query.predicate, query.limit + 1),
        )
    else:
        encoded = msgspec.json.encode(query.value).decode()
        rows = db.execute(
            "SELECT subject FROM triples WHERE predicate = ? AND object = ?"
            " ORDER BY subject LIMIT ?",
            (query.predicate, encoded, query.limit + 1),
        )
    return _listing(db, [s for (s,) in rows], query.limit)


def by_alias(db: sqlite3.Connection, query: AliasQuery) -> list[str]:
    """Ids of the entities known by ``alias`` (usually one)."""
    rows = db.execute("SELECT entity_id FROM aliases WHERE alias = ? ORDER BY 1", (query.alias,))
    return [entity_id for (entity_id,) in rows]


def spatial(db: sqlite3.Connection, query: SpatialQuery) -> dict[str, Any]:
    """Entities inside a bounding box, or within ``radius_m`` of (lat, lon), nearest first."""
    if query.radius_m is not None and query.lat is not None and query.lon is not None:
        return _radius(db, query.lat, query.lon, query.radius_m, query.limit)
    box = (query.min_lat, query.max_lat, query.min_lon, query.max_lon)
    if any(v is None for v in box):
        raise ValueError("give min_lat, max_lat, min_lon and max_lon, or lat, lon and radius_m")
    rows = db.execute(
        "SELECT e.id FROM spatial s JOIN entities e ON e.rowid = s.entity_rowid"
        " WHERE s.max_lat >= ? AND s.min_lat <= ? AND s.max_lon >= ? AND s.min_lon <= ?"
        " ORDER BY e.id LIMIT ?",
        (query.min_lat, query.max_lat, query.min_lon, query.max_lon, query.limit + 1),
    )
    return _listing(db, [i for (i,) in rows], query.limit)


def _radius(
    db: sqlite3.Connection, lat: float, lon: float, radius_m: float, limit: int
) -> dict[str, Any]:
    # The R*Tree narrows to a box around the circle; haversine on the exact triples decides.
    dlat = math.degrees(radius_m / _EARTH_RADIUS_M)
    dlon = dlat / max(math.cos(math.radians(lat)), 1e-6)
    rows = db.execute(
        "SELECT e.id, json_extract(la.object, '$'), json_extract(lo.object, '$')"
        " FROM spatial s JOIN entities e ON e.rowid = s.entity_rowid"
        f" JOIN triples la ON la.subject = e.id AND la.predicate = '{LATITUDE}'"
        f" JOIN triples lo ON lo.subject = e.id AND lo.predicate = '{LONGITUDE}'"
        " WHERE s.max_lat >= ? AND s.min_lat <= ? AND s.max_lon >= ? AND s.min_lon <= ?",
        (lat - dlat, lat + dlat, lon - dlon, lon + dlon),
    )
    near = sorted(
        (distance, entity_id)
        for entity_id, plat, plon in rows
        if (distance := _haversine_m(lat, lon, plat, plon)) <= radius_m
    )
    listing = _listing(db, [entity_id for _, entity_id in near], limit)
    distances = {e: d for d, e in near}
    for entity in listing["entities"]:
        entity["distance_m"] = round(distances[entity["entity_id"]], 1)
    return listing


def _haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * _EARTH_RADIUS_M * math.asin(math.sqrt(a))


def temporal(db: sqlite3.Connection, start_ms: int, end_ms: int, limit: int) -> dict[str, Any]:
    """Entities whose latest update lies between ``start_ms`` and ``end_ms``."""
    # The hourly buckets narrow the search; updated_at decides exactly.
    rows = db.execute(
        "SELECT t.entity_id FROM temporal t JOIN entities e ON e.id = t.entity_id"
        " WHERE t.bucket BETWEEN ? AND ? AND e.updated_at BETWEEN ? AND ?"
        " ORDER BY t.entity_id LIMIT ?",
        (start_ms // TEMPORAL_BUCKET_MS, end_ms // TEMPORAL_BUCKET_MS, start_ms, end_ms, limit + 1),
    )
    return _listing(db, [i for (i,) in rows], limit)
