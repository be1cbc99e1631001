"""This edge's share, back from the hub in a resync: merged into the graph as imports.

A share delta is the hub's copy of an entity this edge wrote. It is merged, never
imposed: per predicate (and per edge) the newer timestamp wins, so what the edge
applied since it restarted (its stream's tail, new events) is never rolled back by the
hub's older copy. Nothing merged here enters the sync outbox (``cseq`` stays 0), so
the share is not echoed back to the hub.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import msgspec

from edge_agent.config import IndexesConfig
from edge_agent.graph.indexes import TEMPORAL_BUCKET_MS
from edge_agent.graph.statements import RDF_TYPE, UPDATE_SPATIAL
from edge_agent.sync.frames import EntityDelta

__all__ = ["merge_share"]

_json = msgspec.json.Encoder()

_ENTITY = """
INSERT INTO entities (id, type, version, priority, created_at, updated_at, origin)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (id) DO UPDATE SET
    type = CASE WHEN excluded.updated_at > updated_at THEN excluded.type ELSE type END,
    priority = CASE WHEN excluded.updated_at > updated_at THEN excluded.priority
                    ELSE priority END,
    version = max(version, excluded.version),
    updated_at = max(updated_at, excluded.updated_at)
WHERE excluded.updated_at > updated_at OR excluded.version > version
"""
_TRIPLE = """
INSERT INTO triples (subject, predicate, object, ts, source) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (subject, predicate) DO UPDATE SET
    object = excluded.object, ts = excluded.ts, source = excluded.source
WHERE excluded.ts > triples.ts
"""
_EDGE = """
INSERT INTO edges (subject, predicate, object, weight, ts, source) VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (subject, predicate, object) DO UPDATE SET
    weight = excluded.weight, ts = excluded.ts, source = excluded.source
WHERE excluded.ts > edges.ts
"""
_TEMPORAL = """
INSERT INTO temporal (entity_id, bucket) VALUES (?, ?)
ON CONFLICT (entity_id) DO UPDATE SET bucket = max(bucket, excluded.bucket)
"""


def merge_share(
    db: sqlite3.Connection, deltas: Sequence[EntityDelta], origin: str, indexes: IndexesConfig
) -> tuple[int, frozenset[str]]:
    """Merge share deltas into the graph, inside the caller's write transaction.

    Args:
        db: the write connection, in a transaction.
        deltas: whole-entity deltas from the hub (deleted ones are skipped: a share
            holds none).
        origin: this edge's id, the ``origin`` of what it merges.
        indexes: which secondary indexes to refresh.

    Returns:
        (entities that changed, the ids touched: those and their edges' objects).
    """
    changed = 0
    touched: set[str] = set()
    for delta in deltas:
        if delta.deleted:
            continue
        eid = delta.entity_id
        before = db.total_changes
        stamp = delta.updated_at
        db.execute(
            _ENTITY, (eid, delta.entity_type, delta.version, delta.priority, stamp, stamp, origin)
        )
        rows = [(eid, RDF_TYPE, _json.encode(delta.entity_type).decode(), stamp, "")]
        rows += [(eid, p, _json.encode(v).decode(), ts, src) for p, v, ts, src in delta.triples]
        db.executemany(_TRIPLE, rows)
        db.executemany(_EDGE, [(eid, p, o, w, ts, src) for p, o, w, ts, src in delta.edges])
        aliases = [(eid, alias) for alias in delta.aliases]
        db.executemany("INSERT OR IGNORE INTO aliases VALUES (?, ?)", aliases)
        if db.total_changes == before:
            continue
        changed += 1
        touched.add(eid)
        touched.update(edge[1] for edge in delta.edges)
        if indexes.temporal:
            db.execute(_TEMPORAL, (eid, stamp // TEMPORAL_BUCKET_MS))
        if indexes.spatial:
            db.execute(UPDATE_SPATIAL, {"id": eid})
    return changed, frozenset(touched)
