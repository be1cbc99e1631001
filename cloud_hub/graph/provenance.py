"""Apply an edge's batch to the hub's graph as that edge's contribution, once.

Invariants (inside the materialiser's write transaction, see ``schema.py`` for how the
merged view follows the contributions):
- ``hub_edge_state`` holds, per edge, the last batch ``seq`` applied; it advances in the
  same transaction as the batch, so a batch at or below it changes nothing.
- A delta writes only its own edge's contribution: ``replace`` replaces it, ``deleted``
  removes it (with the relationships that edge gave towards the entity, as the edge's
  own delete did); no edge can overwrite, erase or lock out another's part.
- Within an edge's contribution the newer timestamp wins per triple and relationship
  (and per entity row, by ``updated_at``), as on the edge itself: an edge restored from
  a backup re-sends the changes its backup had not seen acked, and the hub may hold
  newer ones from before the disaster, which a stale re-send must not overwrite.
- Every timestamp is clamped to the batch's ``ceiling_ms`` (the receiving hub's clock
  plus ``max_clock_skew``, stamped into the log by the instance that received it, so
  every instance clamps alike); a clamped delta is recorded as a ``future_timestamp``
  conflict. A delete of an entity others still report is a ``foreign_delete``; a
  property value that lost to another edge's newer, different value is an
  ``older_write``. Equal values from several edges (shared reference entities) are
  no conflict at all.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from edge_agent.config import IndexesConfig
from edge_agent.graph.indexes import LATITUDE, LONGITUDE, TEMPORAL_BUCKET_MS
from edge_agent.graph.statements import (
    RDF_TYPE,
    ROWS_PER_STATEMENT,
    UPDATE_SPATIAL,
    Upsert,
    upsert_rows,
)
from edge_agent.sync.frames import EntityDelta

__all__ = ["MAX_CONFLICTS", "BatchResult", "BatchStamp", "applied_seq", "apply_batch"]

#: Conflicts kept (the newest); older ones are counted in metrics, then forgotten.
MAX_CONFLICTS = 10_000
_json = msgspec.json.Encoder()

_UPSERT_CONTRIBUTION = Upsert(
    "INSERT INTO hub_contributions"
    " (entity_id, edge_id, type, version, priority, updated_at, received_at) VALUES",
    "(?, ?, ?, ?, ?, ?, ?)",
    """ON CONFLICT (entity_id, edge_id) DO UPDATE SET
        type = excluded.type, version = excluded.version, priority = excluded.priority,
        updated_at = excluded.updated_at, received_at = excluded.received_at
    WHERE excluded.updated_at >= hub_contributions.updated_at""",
)
_UPSERT_TRIPLE = Upsert(
    "INSERT INTO hub_triples (subject, predicate, edge_id, object, ts, source) VALUES",
    "(?, ?, ?, ?, ?, ?)",
    """ON CONFLICT (subject, predicate, edge_id) DO UPDATE SET
        object = excluded.object, ts = excluded.ts, source = excluded.source
    WHERE excluded.ts >= hub_triples.ts""",
)
_UPSERT_EDGE = Upsert(
    "INSERT INTO hub_edges (subject, predicate, object, edge_id, weight, ts, source) VALUES",
    "(?, ?, ?, ?, ?, ?, ?)",
    """ON CONFLICT (subject, predicate, object, edge_id) DO UPDATE SET
        weight = excluded.weight, ts = excluded.ts, source = excluded.source
    WHERE excluded.ts >= hub_edges.ts""",
)
_REMOVE_CONTRIBUTION = [
    "DELETE FROM hub_triples WHERE subject = :id AND edge_id = :edge",
    "DELETE FROM hub_edges WHERE subject = :id AND edge_id = :edge",
    "DELETE FROM hub_aliases WHERE entity_id = :id AND edge_id = :edge",
    "DELETE FROM hub_contributions WHERE entity_id = :id AND edge_id = :edge",
]
# As the edge's own delete did: its relationships towards the entity go too.
_REMOVE_INCOMING = "DELETE FROM hub_edges WHERE object = :id AND edge_id = :edge"
_UNINDEX = [
    "DELETE FROM spatial WHERE entity_rowid = (SELECT rowid FROM entities WHERE id = :id)",
    "DELETE FROM temporal WHERE entity_id = :id",
]
_TEMPORAL = """
INSERT INTO temporal (entity_id, bucket)
SELECT id, updated_at / :bucket FROM entities WHERE id = :id
ON CONFLICT (entity_id) DO UPDATE SET bucket = excluded.bucket
"""


class BatchStamp(msgspec.Struct, frozen=True):
    """Where a batch came from and when the hub received it (from its log message).

    Attributes:
        edge_id: the edge that sent it.
        seq: its batch sequence number.
        stream_seq: its position in the ``SYNC_BATCHES`` stream.
        received_ms: when the receiving instance took it (epoch ms).
        ceiling_ms: the latest timestamp it may carry (``received_ms`` plus the skew).
        wire_bytes: its frame's size as the edge sent it.
        raw_bytes: its payload's size before compression.
    """

    edge_id: str
    seq: int
    stream_seq: int
    received_ms: int
    ceiling_ms: int
    wire_bytes: int = 0
    raw_bytes: int = 0


class BatchResult(msgspec.Struct, frozen=True):
    """What one batch did on the hub.

    Attributes:
        duplicate: the batch was at or below the edge's high-water mark: nothing done.
        applied: deltas applied.
        conflicts: conflicts recorded, by kind.
        touched: entities whose view of the graph changed (for cache invalidation).
        newest_ms: the newest (clamped) ``updated_at`` in the batch, 0 when none.
    """

    duplicate: bool
    applied: int = 0
    conflicts: dict[str, int] = msgspec.field(default_factory=dict)
    touched: frozenset[str] = frozenset()
    newest_ms: int = 0


class _Rows:
    """One edge's contribution rows, gathered for multi-row upserts."""

    def __init__(self, edge_id: str, received_ms: int) -> None:
        self.edge_id = edge_id
        self.received_ms = received_ms
        self.clear()

    def clear(self) -> None:
        self.contributions: list[tuple[Any, ...]] = []
        # Keyed as their tables are: a batch often carries many readings of one entity,
        # and only the last value (with the newest stamp) of each would remain.
        self.triples: dict[tuple[str, str], tuple[Any, ...]] = {}
        self.edges: dict[tuple[str, str, str], tuple[Any, ...]] = {}
        self.aliases: list[tuple[str, str, str]] = []
        self.ids: list[str] = []
        self.located: list[str] = []

    def add(self, delta: EntityDelta, ceiling: int) -> None:
        eid, edge, ts = delta.entity_id, self.edge_id, min(delta.updated_at, ceiling)
        self.ids.append(eid)
        self.contributions.append(
            (eid, edge, delta.entity_type, delta.version, delta.priority, ts, self.received_ms)
        )
        triples, edges = self.triples, self.edges
        kind = _json.encode(delta.entity_type).decode()
        triples[eid, RDF_TYPE] = _newest(
            triples.get((eid, RDF_TYPE)), (eid, RDF_TYPE, edge, kind, ts, "")
        )
        for p, v, t, src in delta.triples:
            triple = (eid, p, edge, _json.encode(v).decode(), min(t, ceiling), src)
            triples[eid, p] = _newest(triples.get((eid, p)), triple)
        for p, o, w, t, src in delta.edges:
            relationship = (eid, p, o, edge, w, min(t, ceiling), src)
            edges[eid, p, o] = _newest(edges.get((eid, p, o)), relationship)
        self.aliases.extend((eid, alias, edge) for alias in delta.aliases)
        if delta.replace or any(t[0] in (LATITUDE, LONGITUDE) for t in delta.triples):
            self.located.append(eid)

    def flush(self, db: sqlite3.Connection, indexes: IndexesConfig) -> None:
        upsert_rows(db, _UPSERT_CONTRIBUTION, self.contributions, ROWS_PER_STATEMENT)
        upsert_rows(db, _UPSERT_TRIPLE, list(self.triples.values()), ROWS_PER_STATEMENT)
        upsert_rows(db, _UPSERT_EDGE, list(self.edges.values()), ROWS_PER_STATEMENT)
        db.executemany("INSERT OR IGNORE INTO hub_aliases VALUES (?, ?, ?)", self.aliases)
        # The index rows follow the merged entity, so once per entity is enough however
        # many of its readings the batch carried.
        if indexes.temporal:
            ids = dict.fromkeys(self.ids)
            db.executemany(_TEMPORAL, [{"id": eid, "bucket": TEMPORAL_BUCKET_MS} for eid in ids])
        if indexes.spatial:
            db.executemany(UPDATE_SPATIAL, [{"id": eid} for eid in dict.fromkeys(self.located)])
        self.clear()


def _newest(earlier: tuple[Any, ...] | None, row: tuple[Any, ...]) -> tuple[Any, ...]:
    """The newer of ``row`` and ``earlier`` by timestamp (the one before last column),
    ``row`` on a tie: what upserting both in turn would leave."""
    if earlier is None or earlier[-2] <= row[-2]:
        return row
    return earlier


def _contributors(db: sqlite3.Connection, entity_ids: Iterable[str]) -> dict[str, set[str]]:
    """The edges contributing to each of ``entity_ids`` now, a few queries for a batch."""
    found: dict[str, set[str]] = {}
    unique = list(dict.fromkeys(entity_ids))
    for start in range(0, len(unique), ROWS_PER_STATEMENT):
        part = unique[start : start + ROWS_PER_STATEMENT]
        rows = db.execute(
            "SELECT entity_id, edge_id FROM hub_contributions"
            f" WHERE entity_id IN ({','.join('?' * len(part))})",
            part,
        )
        for eid, edge in rows:
            found.setdefault(eid, set()).add(edge)
    return found


class _Conflicts:
    def __init__(self, db: sqlite3.Connection, stamp: BatchStamp) -> None:
        self._db = db
        self._stamp = stamp
        self.counts: dict[str, int] = {}

    def record(self, entity_id: str, kind: str, detail: str, kept_edge: str = "") -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self._db.execute(
            "INSERT INTO hub_conflicts (entity_id, edge_id, kind, detail, kept_edge, recorded_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (entity_id, self._stamp.edge_id, kind, detail, kept_edge, self._stamp.received_ms),
        )


def _future(delta: EntityDelta, ceiling: int) -> int:
    """How far (ms) the delta's latest stamp lies past ``ceiling``; 0 when it does not."""
    latest = max([delta.updated_at, *(t[2] for t in delta.triples), *(e[3] for e in delta.edges)])
    return max(0, latest - ceiling)


def applied_seq(db: sqlite3.Connection, edge_id: str) -> int:
    """The last batch ``seq`` of ``edge_id`` applied to this graph (0: none)."""
    row = db.execute("SELECT seq FROM hub_edge_state WHERE edge_id = ?", (edge_id,)).fetchone()
    return int(row[0]) if row is not None else 0


def apply_batch(
    db: sqlite3.Connection,
    stamp: BatchStamp,
    deltas: Sequence[EntityDelta],
    *,
    indexes: IndexesConfig,
) -> BatchResult:
    """Apply batch ``stamp.seq`` of ``stamp.edge_id`` as its contribution, unless it was
    applied before (see the module's invariants)."""
    edge = stamp.edge_id
    if stamp.seq <= applied_seq(db, edge):
        return BatchResult(duplicate=True)
    conflicts = _Conflicts(db, stamp)
    contributors = _contributors(db, (d.entity_id for d in deltas))
    rows = _Rows(edge, stamp.received_ms)
    touched: set[str] = set()
    contested: dict[str, set[str]] = {}
    for delta in deltas:
        eid = delta.entity_id
        touched.add(eid)
        others = contributors.get(eid, set()) - {edge}
        if late := _future(delta, stamp.ceiling_ms):
            conflicts.record(eid, "future_timestamp", f"{late / 1000:.0f} s past the receive time")
        if delta.deleted or delta.replace:
            rows.flush(db, indexes)
            touched.update(_remove(db, eid, edge, last=not others, deleted=delta.deleted))
            contributors[eid] = others
        if delta.deleted:
            if others:
                conflicts.record(eid, "foreign_delete", "removed only this edge's part")
            continue
        rows.add(delta, stamp.ceiling_ms)
        touched.update(e[1] for e in delta.edges)
        contributors.setdefault(eid, set()).add(edge)
        if others:
            contested.setdefault(eid, set()).update(t[0] for t in delta.triples)
    rows.flush(db, indexes)
    _record_lost_writes(db, edge, contested, conflicts)
    newest = max((min(d.updated_at, stamp.ceiling_ms) for d in deltas), default=0)
    _advance(db, stamp, len(deltas), newest)
    return BatchResult(
        duplicate=False,
        applied=len(deltas),
        conflicts=conflicts.counts,
        touched=frozenset(touched),
        newest_ms=newest,
    )


def _remove(db: sqlite3.Connection, eid: str, edge: str, *, last: bool, deleted: bool) -> set[str]:
    """Remove ``edge``'s contribution to ``eid``; the neighbours whose view changed."""
    params = {"id": eid, "edge": edge}
    neighbours = {
        node
        for (node,) in db.execute(
            "SELECT object FROM hub_edges WHERE subject = :id AND edge_id = :edge"
            " UNION SELECT subject FROM hub_edges WHERE object = :id AND edge_id = :edge",
            params,
        )
    }
    if last:  # the merged entity goes with its last contribution: its index rows first
        for sql in _UNINDEX:
            db.execute(sql, params)
    for sql in _REMOVE_CONTRIBUTION:
        db.execute(sql, params)
    if deleted:
        db.execute(_REMOVE_INCOMING, params)
    return neighbours


def _record_lost_writes(
    db: sqlite3.Connection,
    edge: str,
    contested: dict[str, set[str]],
    conflicts: _Conflicts,
) -> None:
    """An ``older_write`` for each property this batch set that shows another edge's
    different (newer) value."""
    for eid, predicates in contested.items():
        rows = db.execute(
            "SELECT h.predicate, t.edge_id FROM hub_triples h JOIN triples t"
            " ON t.subject = h.subject AND t.predicate = h.predicate"
            " WHERE h.subject = ? AND h.edge_id = ? AND t.edge_id != h.edge_id"
            " AND t.object != h.object",
            (eid, edge),
        )
        for predicate, kept in rows:
            if predicate in predicates:
                conflicts.record(
                    eid, "older_write", f"{predicate}: kept {kept}'s newer value", kept
                )


def _advance(db: sqlite3.Connection, stamp: BatchStamp, deltas: int, newest: int) -> None:
    db.execute(
        """INSERT INTO hub_edge_state (edge_id, seq, stream_seq, applied_at, received_at,
            newest_change, batches, deltas, wire_bytes, raw_bytes)
        VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?, ?)
        ON CONFLICT (edge_id) DO UPDATE SET
            seq = excluded.seq, stream_seq = excluded.stream_seq,
            applied_at = excluded.applied_at, received_at = excluded.received_at,
            newest_change = max(newest_change, excluded.newest_change),
            batches = batches + 1, deltas = deltas + excluded.deltas,
            wire_bytes = wire_bytes + excluded.wire_bytes,
            raw_bytes = raw_bytes + excluded.raw_bytes""",
        (
            stamp.edge_id,
            stamp.seq,
            stamp.stream_seq,
            stamp.received_ms,
            stamp.received_ms,
            newest,
            deltas,
            stamp.wire_bytes,
            stamp.raw_bytes,
        ),
    )
    # Bounded retention: the newest conflicts stay, older ones live on in the metrics.
    db.execute(
        "DELETE FROM hub_conflicts WHERE id <= (SELECT max(id) FROM hub_conflicts) - ?",
        (MAX_CONFLICTS,),
    )
