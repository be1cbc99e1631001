"""The hub's side of the sync link: apply an edge's batch of entity deltas, once.

Invariants (inside the caller's write transaction):
- ``sync_hwm`` holds, per edge, the last batch ``seq`` applied; it advances in the same
  transaction as the batch, so a batch at or below it is a re-send and changes nothing.
  There is no time window: the mark is kept for as long as the edge exists.
- An entity's copy carries its origin's version and stamps. Two writes of one entity
  are ordered by (``updated_at``, ``origin``, ``version``): a delta from the copy's own
  origin must bring a higher version (else it is *stale*: counted, never applied); one
  from another edge must carry a newer stamp, else it is a *conflict*. Both are
  recorded in ``sync_conflicts`` (a stale one with ``kept_origin = origin``) and
  counted. Nothing is lost silently, and nothing is applied twice.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

import msgspec

from edge_agent.config import IndexesConfig
from edge_agent.graph.indexes import LATITUDE, LONGITUDE, TEMPORAL_BUCKET_MS
from edge_agent.graph.statements import (
    COPY_ENTITY,
    RDF_TYPE,
    ROWS_PER_STATEMENT,
    UPDATE_SPATIAL,
    UPSERT_EDGE,
    UPSERT_TEMPORAL,
    UPSERT_TRIPLE,
    delete_entity,
    upsert_rows,
)
from edge_agent.sync.frames import EntityDelta

__all__ = ["DeltaResult", "apply_deltas"]

_json = msgspec.json.Encoder()
Stamp = tuple[int, str, int]  # (updated_at, origin, version)


class DeltaResult(msgspec.Struct, frozen=True):
    """What one batch did on the hub.

    Attributes:
        duplicate: the batch was at or below the edge's high-water mark: nothing done.
        applied: deltas applied.
        stale: deltas from the copy's own origin that were not newer (not applied).
        conflicts: deltas from another origin with an older stamp (recorded, not applied).
        touched: entities whose view of the graph changed (for cache invalidation).
        newest_ms: the newest ``updated_at`` in the batch (0 when none), for lag.
    """

    duplicate: bool
    applied: int = 0
    stale: int = 0
    conflicts: int = 0
    touched: frozenset[str] = frozenset()
    newest_ms: int = 0


class _Rows:
    """Rows gathered for multi-row upserts, flushed before a delete and at the end."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.entities: list[tuple[Any, ...]] = []
        self.triples: list[tuple[Any, ...]] = []
        self.edges: list[tuple[Any, ...]] = []
        self.aliases: list[tuple[str, str]] = []
        self.temporal: list[tuple[str, int]] = []
        self.located: list[dict[str, str]] = []

    def add(self, delta: EntityDelta, origin: str, now_ms: int) -> None:
        eid, ts = delta.entity_id, delta.updated_at
        self.entities.append(
            (eid, delta.entity_type, delta.version, delta.priority, now_ms, ts, origin)
        )
        self.triples.append((eid, RDF_TYPE, _json.encode(delta.entity_type).decode(), ts, "", 0))
        self.triples.extend(
            (eid, p, _json.encode(v).decode(), t, src, 0) for p, v, t, src in delta.triples
        )
        self.edges.extend((eid, p, o, w, t, src, 0) for p, o, w, t, src in delta.edges)
        self.aliases.extend((eid, alias) for alias in delta.aliases)
        self.temporal.append((eid, ts // TEMPORAL_BUCKET_MS))
        if delta.replace or any(t[0] in (LATITUDE, LONGITUDE) for t in delta.triples):
            self.located.append({"id": eid})

    def flush(self, db: sqlite3.Connection, indexes: IndexesConfig) -> None:
        upsert_rows(db, COPY_ENTITY, self.entities, ROWS_PER_STATEMENT)
        upsert_rows(db, UPSERT_TRIPLE, self.triples, ROWS_PER_STATEMENT)
        upsert_rows(db, UPSERT_EDGE, self.edges, ROWS_PER_STATEMENT)
        db.executemany("INSERT OR IGNORE INTO aliases VALUES (?, ?)", self.aliases)
        if indexes.temporal:
            db.executemany(UPSERT_TEMPORAL, self.temporal)
        if indexes.spatial:
            db.executemany(UPDATE_SPATIAL, self.located)
        self.clear()


def _stamps(db: sqlite3.Connection, entity_ids: Sequence[str]) -> dict[str, Stamp | None]:
    """The current stamp of each entity (``None``: not here), a few queries for a batch."""
    stamps: dict[str, Stamp | None] = dict.fromkeys(entity_ids)
    unique = list(stamps)
    for start in range(0, len(unique), ROWS_PER_STATEMENT):
        part = unique[start : start + ROWS_PER_STATEMENT]
        rows = db.execute(
            "SELECT id, updated_at, origin, version FROM entities"
            f" WHERE id IN ({','.join('?' * len(part))})",
            part,
        )
        stamps.update({eid: (int(at), str(origin), int(v)) for eid, at, origin, v in rows})
    return stamps


def _verdict(delta: EntityDelta, origin: str, kept: Stamp | None) -> str:
    """``apply``, ``stale`` or ``conflict`` for ``delta`` against the copy's stamp."""
    if kept is None:
        return "apply"
    if kept[1] == origin:
        return "apply" if delta.replace or delta.deleted or delta.version > kept[2] else "stale"
    incoming = (delta.updated_at, origin, delta.version)
    return "apply" if not delta.deleted and incoming > kept else "conflict"


def apply_deltas(
    db: sqlite3.Connection,
    edge_id: str,
    seq: int,
    deltas: Sequence[EntityDelta],
    *,
    now_ms: int,
    indexes: IndexesConfig,
) -> DeltaResult:
    """Apply batch ``seq`` of ``edge_id`` unless it was applied before."""
    row = db.execute("SELECT seq FROM sync_hwm WHERE edge_id = ?", (edge_id,)).fetchone()
    if row is not None and seq <= row[0]:
        return DeltaResult(duplicate=True)
    rows = _Rows()
    stamps = _stamps(db, [delta.entity_id for delta in deltas])
    touched: set[str] = set()
    counts = {"apply": 0, "stale": 0, "conflict": 0}
    for delta in deltas:
        eid = delta.entity_id
        kept = stamps[eid]
        verdict = _verdict(delta, edge_id, kept)
        counts[verdict] += 1
        if verdict != "apply":
            assert kept is not None
            db.execute(
                "INSERT INTO sync_conflicts VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (eid, edge_id, delta.version, delta.updated_at, kept[1], kept[2], kept[0], now_ms),
            )
            continue
        touched.add(eid)
        if delta.deleted or delta.replace:
            rows.flush(db, indexes)
            touched.update(delete_entity(db, eid))
        if delta.deleted:
            stamps[eid] = None
            continue
        rows.add(delta, edge_id, now_ms)
        touched.update(edge[1] for edge in delta.edges)
        stamps[eid] = (delta.updated_at, edge_id, delta.version)
    rows.flush(db, indexes)
    db.execute("INSERT OR REPLACE INTO sync_hwm VALUES (?, ?, ?)", (edge_id, seq, now_ms))
    return DeltaResult(
        duplicate=False,
        applied=counts["apply"],
        stale=counts["stale"],
        conflicts=counts["conflict"],
        touched=frozenset(touched),
        newest_ms=max((d.updated_at for d in deltas), default=0),
    )
