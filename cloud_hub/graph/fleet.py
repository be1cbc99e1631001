"""Cross-edge reads of the hub's graph: per-edge state and types, who reports what,
contributions and conflicts. Each function takes a read connection."""

from __future__ import annotations

import sqlite3
from typing import Any

import msgspec

from edge_agent.graph.statements import RDF_TYPE
from edge_agent.graph.store import iso_ms

__all__ = [
    "conflicts",
    "contributions",
    "edge_positions",
    "edge_states",
    "shared_entities",
    "type_reporters",
]


def edge_states(db: sqlite3.Connection) -> dict[str, dict[str, Any]]:
    """Per edge heard from: its last batch, freshness, and the entity types it reports."""
    states: dict[str, dict[str, Any]] = {}
    for edge, seq, applied, newest, batches, deltas in db.execute(
        "SELECT edge_id, seq, applied_at, newest_change, batches, deltas FROM hub_edge_state"
    ):
        states[edge] = {
            "hwm": seq,
            "applied_at": iso_ms(applied),
            "freshness": iso_ms(newest) if newest else None,
            "batches_applied": batches,
            "deltas_applied": deltas,
            "types": {},
            "entities": 0,
        }
    for edge, kind, count in db.execute(
        "SELECT edge_id, type, count(*) FROM hub_contributions GROUP BY edge_id, type"
    ):
        state = states.setdefault(edge, {"types": {}, "entities": 0})
        state["types"][kind] = count
        state["entities"] += count
    return states


def edge_positions(db: sqlite3.Connection) -> dict[str, int]:
    """Each edge's last applied batch seq, as ``edge:<id>`` (a backup's manifest); none
    from a file without the hub's tables (the device registry)."""
    if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'hub_edge_state'").fetchone():
        return {}
    rows = db.execute("SELECT edge_id, seq FROM hub_edge_state")
    return {f"edge:{edge}": int(seq) for edge, seq in rows}


def type_reporters(db: sqlite3.Connection) -> dict[str, dict[str, int]]:
    """Per entity type: each edge reporting it, with how many entities."""
    found: dict[str, dict[str, int]] = {}
    for kind, edge, count in db.execute(
        "SELECT type, edge_id, count(*) FROM hub_contributions GROUP BY type, edge_id"
    ):
        found.setdefault(kind, {})[edge] = count
    return found


def shared_entities(db: sqlite3.Connection, limit: int) -> list[dict[str, Any]]:
    """Entities reported by more than one edge, with those edges (at most ``limit``)."""
    rows = db.execute(
        "SELECT entity_id, group_concat(edge_id, ',') FROM hub_contributions"
        " GROUP BY entity_id HAVING count(*) > 1 ORDER BY entity_id LIMIT ?",
        (limit,),
    )
    return [{"entity_id": eid, "edges": sorted(edges.split(","))} for eid, edges in rows]


def contributions(db: sqlite3.Connection, entity_id: str) -> dict[str, dict[str, Any]]:
    """Each edge's own part of ``entity_id``: properties, relationships, version, stamps."""
    found: dict[str, dict[str, Any]] = {}
    for edge, kind, version, priority, updated, received in db.execute(
        "SELECT edge_id, type, version, priority, updated_at, received_at"
        " FROM hub_contributions WHERE entity_id = ?",
        (entity_id,),
    ):
        found[edge] = {
            "entity_type": kind,
            "version": version,
            "priority": priority,
            "updated_at": iso_ms(updated),
            "received_at": iso_ms(received),
            "properties": {},
            "relationships": [],
            "aliases": [],
        }
    for edge, predicate, value in db.execute(
        "SELECT edge_id, predicate, object FROM hub_triples WHERE subject = ? AND predicate != ?",
        (entity_id, RDF_TYPE),
    ):
        if edge in found:
            found[edge]["properties"][predicate] = msgspec.json.decode(value)
    for edge, predicate, obj, weight in db.execute(
        "SELECT edge_id, predicate, object, weight FROM hub_edges WHERE subject = ?", (entity_id,)
    ):
        if edge in found:
            found[edge]["relationships"].append(
                {"predicate": predicate, "object": obj, "weight": weight}
            )
    for edge, alias in db.execute(
        "SELECT edge_id, alias FROM hub_aliases WHERE entity_id = ?", (entity_id,)
    ):
        if edge in found:
            found[edge]["aliases"].append(alias)
    return found


def conflicts(
    db: sqlite3.Connection, *, limit: int, entity_id: str = "", edge_id: str = ""
) -> list[dict[str, Any]]:
    """The newest conflicts first (of one entity, or caused by one edge, when given)."""
    filters = [
        (column, value)
        for column, value in (("entity_id", entity_id), ("edge_id", edge_id))
        if value
    ]
    where = " AND ".join(f"{column} = ?" for column, _ in filters)
    rows = db.execute(
        "SELECT id, entity_id, edge_id, kind, detail, kept_edge, recorded_at FROM hub_conflicts"
        f" {'WHERE ' + where if where else ''} ORDER BY id DESC LIMIT ?",
        (*(value for _, value in filters), limit),
    )
    return [
        {
            "id": cid,
            "entity_id": eid,
            "edge_id": edge,
            "kind": kind,
            "detail": detail,
            "kept_edge": kept or None,
            "recorded_at": iso_ms(at),
        }
        for cid, eid, edge, kind, detail, kept, at in rows
    ]
