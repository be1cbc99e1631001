"""One edge's share of the hub's graph: what that edge contributed, and nothing else.

A resync (an edge whose store was lost asks for its share back) reads it here, a page
at a time in entity-id order, from the per-edge provenance tables: only rows whose
``edge_id`` is the asking edge's (its authenticated id), so no edge ever receives
another's data, not even for an entity both report.
"""

from __future__ import annotations

import sqlite3

import msgspec

from edge_agent.graph.statements import RDF_TYPE
from edge_agent.sync.frames import EntityDelta

__all__ = ["read_share"]

_json = msgspec.json.Decoder()


def read_share(
    db: sqlite3.Connection, edge_id: str, *, after: str, limit: int
) -> list[EntityDelta]:
    """Up to ``limit`` entities of ``edge_id``'s share with ids above ``after``, as
    whole (``replace``) deltas holding only that edge's triples, edges and aliases."""
    rows = db.execute(
        "SELECT entity_id, type, version, priority, updated_at FROM hub_contributions"
        " WHERE edge_id = ? AND entity_id > ? ORDER BY entity_id LIMIT ?",
        (edge_id, after, limit),
    ).fetchall()
    return [_delta(db, edge_id, row) for row in rows]


def _delta(
    db: sqlite3.Connection, edge_id: str, row: tuple[str, str, int, int, int]
) -> EntityDelta:
    eid, etype, version, priority, updated_at = row
    triples = [
        (p, _json.decode(o), ts, src)
        for p, o, ts, src in db.execute(
            "SELECT predicate, object, ts, source FROM hub_triples"
            " WHERE subject = ? AND edge_id = ? AND predicate != ?",
            (eid, edge_id, RDF_TYPE),
        )
    ]
    edges = [
        (p, o, w, ts, src)
        for p, o, w, ts, src in db.execute(
            "SELECT predicate, object, weight, ts, source FROM hub_edges"
            " WHERE subject = ? AND edge_id = ?",
            (eid, edge_id),
        )
    ]
    aliases = [
        a
        for (a,) in db.execute(
            "SELECT alias FROM hub_aliases WHERE entity_id = ? AND edge_id = ?", (eid, edge_id)
        )
    ]
    return EntityDelta(
        eid, etype, version, updated_at, priority, triples, edges, aliases, replace=True
    )
