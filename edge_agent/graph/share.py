"""This edge's share, back from the hub in a resync: merged into the graph as imports.

A share delta is the hub's copy of an entity this edge wrote. It is merged, never
imposed: per predicate (and per edge) the newer timestamp wins, so what the edge
applied since it restarted (its stream's tail, new events) is never rolled back by the
hub's older copy. Nothing merged here enters the sync outbox (``cseq`` stays 0), so
the share is not echoed back to the hub, and the changes waiting in the outbox that the
hub's copy already covers are dropped (an edge restored from a backup would otherwise
send again what its lost self had sent).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import msgspec

from edge_agent.config import IndexesConfig
from edge_agent.graph import outbox
from edge_agent.graph.indexes import TEMPORAL_BUCKET_MS
from edge_agent.graph.statements import RDF_TYPE, UPDATE_SPATIAL
from edge_agent.sync.frames import EntityDelta

__all__ = ["ShareMerge", "merge_share"]

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


class ShareMerge(msgspec.Struct, frozen=True):
    """What merging one share chunk did."""

    #: Entities whose graph rows changed.
    changed: int
    #: Those ids and their edges' objects (the query caches to invalidate).
    touched: frozenset[str]
    #: Waiting outbox rows dropped because the hub already holds them.
    held_by_hub: int


def merge_share(
    db: sqlite3.Connection, deltas: Sequence[EntityDelta], origin: str, indexes: IndexesConfig
) -> ShareMerge:
    """Merge share deltas into the graph, inside the caller's write transaction.

    Args:
        db: the write connection, in a transaction.
        deltas: whole-entity deltas from the hub (deleted ones are skipped: a share
            holds none). A copy older than a deletion waiting here (the entity
            gone, or made again since) is skipped too: this edge's state is newer and
            replaces the hub's copy when sent, as it would have.
        origin: this edge's id, the ``origin`` of what it merges.
        indexes: which secondary indexes to refresh.

    Returns:
        What changed, and the waiting changes dropped as held by the hub.
    """
    changed = 0
    touched: set[str] = set()
    readings = outbox.queued_readings(db)
    ids = [d.entity_id for d in deltas if not d.deleted]
    replaced_here = outbox.waiting_resets(db, ids, readings)
    kept = [
        d for d in deltas if not d.deleted and d.updated_at > replaced_here.get(d.entity_id, -1)
    ]
    for delta in kept:
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
    stamps = {delta.entity_id: delta.updated_at for delta in kept}
    held = outbox.drop_held_by_hub(db, stamps, readings)
    return ShareMerge(changed, frozenset(touched), held)
