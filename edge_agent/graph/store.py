"""The graph store: one SQLite file in WAL mode, one writer, any number of readers.

The store owns its single writer (:meth:`GraphStore.write`): write methods
(:meth:`GraphStore.apply`, :meth:`GraphStore.position`, the ``sync_*`` ones) run on that
thread only, whoever asks for them. Read methods use a read-only connection per calling
thread, so API queries never wait for the writer (WAL) and never see a half-applied
batch.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import msgspec

from edge_agent.config import IndexesConfig
from edge_agent.errors import GraphError
from edge_agent.graph import outbox
from edge_agent.graph.database import Database, Synchronous
from edge_agent.graph.indexes import LATITUDE, LONGITUDE, TEMPORAL_BUCKET_MS, reconcile_indexes
from edge_agent.graph.migrations import MIGRATIONS, Migration
from edge_agent.graph.outbox import Backlog, BatchLimits, OutboxBatch, SyncMode
from edge_agent.graph.position import PositionMark
from edge_agent.graph.records import EntityRecord, import_record
from edge_agent.graph.sql import write_transaction
from edge_agent.graph.statements import (
    DELETE_ENTITY,
    RDF_TYPE,
    RESTATE_EDGE,
    ROWS_PER_STATEMENT,
    UPDATE_SPATIAL,
    UPSERT_EDGE,
    UPSERT_ENTITY,
    UPSERT_TEMPORAL,
    UPSERT_TRIPLE,
    delete_entity,
    upsert_rows,
)
from edge_agent.model import EntityEvent
from edge_agent.sync.filters import SyncFilter
from edge_agent.sync.frames import EntityDelta

__all__ = ["ApplyResult", "GraphStore", "ImportResult", "iso_ms"]

_json = msgspec.json.Encoder()
_T = TypeVar("_T")
_P = ParamSpec("_P")
#: (subject, predicate, object, weight, ts, source, cseq), as the edge statements take it.
_EdgeRow = tuple[str, str, str, float, int, str, int]


class ImportResult(msgspec.Struct, frozen=True):
    """What one :meth:`GraphStore.import_records` call did; ``touched`` as in ApplyResult."""

    applied: int
    unchanged: int
    touched: frozenset[str]


class ApplyResult(msgspec.Struct, frozen=True):
    """What one :meth:`GraphStore.apply` call did.

    Attributes:
        applied: events applied now (upserts and deletes).
        skipped: events at or below the consumer's position, already applied before.
        entity_ids: ids of the entities changed, in first-seen order.
        touched: the changed entities and their neighbours across changed edges: every
            node whose view of the graph (its state or its edges) this batch changed.
    """

    applied: int
    skipped: int
    entity_ids: list[str]
    touched: frozenset[str] = frozenset()


def iso_ms(ms: int) -> str:
    """Format epoch milliseconds as an RFC 3339 UTC timestamp."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def _properties(event: EntityEvent) -> dict[str, Any]:
    return event.properties if isinstance(event.properties, dict) else {}


def _event_size(event: EntityEvent) -> int:
    """About what the event adds to a delta, in bytes, for the outbox's byte bound."""
    size = 16 + len(event.entity_id) + len(event.entity_type)
    size += sum(len(key) + 12 for key in _properties(event))
    return size + sum(len(r.predicate) + len(r.object) + 12 for r in event.relationships)


def _event_ms(event: EntityEvent, default_ms: int) -> int:
    stamp = event.timestamp
    if stamp is None:
        return default_ms
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return int(stamp.timestamp() * 1000)


class GraphStore:
    """The knowledge graph in one SQLite file.

    Args:
        path: the database file (created with its directory if missing).
        origin: the id written into ``origin`` of entities this store applies.
        indexes: which secondary indexes to keep.
        edge_batch_size: relationship rows per SQL statement.
        outbox: queue every change for a sync link, coalesced per entity (``"state"``)
            or one per reading (``"events"``); ``None`` keeps no outbox.
        max_outbox_bytes: the outbox's byte limit, kept in every transaction that adds
            to it (0: none); what is dropped is counted (:meth:`sync_dropped`).
        migrations: the schema (the hub passes the graph's plus its own).
        synchronous: SQLite's ``synchronous`` (``graph.config.sqlite_synchronous``).

    Raises:
        GraphError: the file cannot be opened, migrated or indexed.
    """

    def __init__(
        self,
        path: Path,
        *,
        origin: str,
        indexes: IndexesConfig,
        edge_batch_size: int = 100,
        outbox: SyncMode | None = None,
        max_outbox_bytes: int = 0,
        migrations: Sequence[Migration] = MIGRATIONS,
        synchronous: Synchronous = "full",
    ) -> None:
        self.path = path
        self.max_outbox_bytes = max_outbox_bytes
        self.origin = origin
        self.indexes = indexes
        self.edge_batch_size = edge_batch_size
        self.outbox = outbox
        self.database = Database(path, migrations, what="graph store", synchronous=synchronous)
        self.migrations_applied = self.database.migrations_applied
        self._db = self.database.connection
        try:
            self.index_changes = reconcile_indexes(self._db, indexes)
        except sqlite3.Error as exc:
            self.database.close()
            raise GraphError(f"cannot index graph store {path}: {exc}") from exc
        #: :meth:`sync_dropped` at open: the metric counts the drops since.
        self.sync_dropped_at_open = self.sync_dropped() if outbox else 0

    def close(self) -> None:
        """Finish queued writes and close the write connection (readers close with their
        threads)."""
        self.database.close()

    async def write(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """Run ``fn(*args)`` on the store's single writer thread; await its result.

        Every write method of the store (and any function that writes through
        :attr:`database`) must run there.
        """
        return await self.database.write(fn, *args, **kwargs)

    # ---- writes (the writer thread) ------------------------------------------------

    def position(self, consumer: str, stream_created: str) -> int:
        """The last stream sequence applied for ``consumer``.

        A stream created at another time (wiped and re-made) restarts at 0, so a
        new stream's low sequences are not mistaken for ones already applied.
        """
        row = self._db.execute(
            "SELECT stream_created, applied_seq FROM consumer_state WHERE consumer = ?",
            (consumer,),
        ).fetchone()
        if row and row[0] == stream_created:
            return int(row[1])
        self.set_position(consumer, stream_created, 0)
        return 0

    def position_mark(self, consumer: str) -> PositionMark | None:
        """What the store recorded with ``consumer``'s position; ``None`` without a row."""
        row = self._db.execute(
            "SELECT stream_created, applied_seq, applied_ts, seen_seq FROM consumer_state"
            " WHERE consumer = ?",
            (consumer,),
        ).fetchone()
        return PositionMark(*row) if row else None

    def set_position(self, consumer: str, stream_created: str, seq: int) -> None:
        """Set ``consumer``'s position in the stream created at ``stream_created`` (its
        timestamp unknown until the next apply)."""
        self._db.execute(
            "INSERT OR REPLACE INTO consumer_state"
            " (consumer, stream_created, applied_seq, applied_ts, seen_seq)"
            " VALUES (?, ?, ?, 0, ?)",
            (consumer, stream_created, seq, seq),
        )

    def apply(
        self,
        batch: Sequence[tuple[int, EntityEvent]],
        *,
        consumer: str,
        now_ms: int,
        stream_ts: int = 0,
        seen_seq: int = 0,
    ) -> ApplyResult:
        """Apply a batch of (stream sequence, event) in one transaction.

        Events at or below the consumer's recorded position are skipped, which makes a
        redelivered batch a no-op; the position advances in the same transaction, and
        so do the sync outbox rows of what changed.

        Args:
            batch: events in stream order with their stream sequences.
            consumer: the durable consumer whose position to use and advance.
            now_ms: the time of receipt, for events without a timestamp.
            stream_ts: the stream timestamp (ns) of the batch's last message, recorded
                with the position (:class:`PositionMark`).
            seen_seq: the highest sequence the stream is known to hold.

        Raises:
            GraphError: SQLite refused the transaction; nothing of the batch is applied.
        """
        try:
            with write_transaction(self._db) as db:
                (position,) = db.execute(
                    "SELECT applied_seq FROM consumer_state WHERE consumer = ?", (consumer,)
                ).fetchone() or (0,)
                fresh = [event for seq, event in batch if seq > position]
                cseq = outbox.next_change_seq(db) if fresh else 0
                changed, touched = self._apply_events(fresh, now_ms, cseq)
                if fresh:
                    self._record_outbox(fresh, now_ms, cseq)
                    db.execute(
                        "UPDATE consumer_state SET applied_seq = ?, applied_ts = ?,"
                        " seen_seq = max(seen_seq, ?) WHERE consumer = ?",
                        (batch[-1][0], stream_ts, seen_seq, consumer),
                    )
        except sqlite3.Error as exc:
            raise GraphError(f"batch not applied: {exc}") from exc
        return ApplyResult(len(fresh), len(batch) - len(fresh), changed, frozenset(touched))

    def _apply_events(
        self, events: Sequence[EntityEvent], now_ms: int, cseq: int
    ) -> tuple[list[str], set[str]]:
        """Apply runs of upserts with multi-row statements, and each delete between them."""
        changed: dict[str, None] = {}
        touched: set[str] = set()
        run: list[EntityEvent] = []
        for event in events:
            changed[event.entity_id] = None
            if event.op == "upsert":
                touched.update(rel.object for rel in event.relationships)
                run.append(event)
                continue
            self._upsert_run(run, now_ms, cseq)
            run = []
            touched.update(delete_entity(self._db, event.entity_id))
        self._upsert_run(run, now_ms, cseq)
        touched.update(changed)
        return list(changed), touched

    def _upsert_run(self, run: Sequence[EntityEvent], now_ms: int, cseq: int) -> None:
        if not run:
            return
        entities: list[tuple[str, str, int, int, int, str]] = []
        triples: list[tuple[str, str, str, int, str, int]] = []
        edges: list[_EdgeRow] = []
        aliases: list[tuple[str, str]] = []
        temporal: list[tuple[str, int]] = []
        located: list[dict[str, str]] = []
        origin = self.origin
        for event in run:
            ts = _event_ms(event, now_ms)
            eid = event.entity_id
            entities.append((eid, event.entity_type, event.priority, now_ms, ts, origin))
            source = event.source
            type_json = _json.encode(event.entity_type).decode()
            triples.append((eid, RDF_TYPE, type_json, ts, source, cseq))
            properties = _properties(event)
            for predicate, value in properties.items():
                triples.append((eid, predicate, _json.encode(value).decode(), ts, source, cseq))
            for rel in event.relationships:
                edges.append((eid, rel.predicate, rel.object, rel.weight, ts, source, cseq))
            aliases.extend((eid, alias) for alias in event.aliases)
            temporal.append((eid, ts // TEMPORAL_BUCKET_MS))
            if LATITUDE in properties or LONGITUDE in properties:
                located.append({"id": eid})
        db = self._db
        upsert_rows(db, UPSERT_ENTITY, entities, ROWS_PER_STATEMENT)
        upsert_rows(db, UPSERT_TRIPLE, triples, ROWS_PER_STATEMENT)
        edges = _last_word(edges)
        upsert_rows(db, RESTATE_EDGE, edges, self.edge_batch_size)
        upsert_rows(db, UPSERT_EDGE, edges, self.edge_batch_size)
        db.executemany("INSERT OR IGNORE INTO aliases VALUES (?, ?)", aliases)
        if self.indexes.temporal:
            db.executemany(UPSERT_TEMPORAL, temporal)
        if self.indexes.spatial:
            db.executemany(UPDATE_SPATIAL, located)

    def _record_outbox(self, events: Sequence[EntityEvent], now_ms: int, cseq: int) -> None:
        """Queue what ``events`` changed for the sync link (nothing when there is none)."""
        if self.outbox == "state":
            changes: dict[str, tuple[str, int, bool, int]] = {}
            for event in events:
                old = changes.get(event.entity_id)
                deleted = event.op == "delete" or (old is not None and old[2])
                size = max(_event_size(event), old[3] if old else 0)
                priority = max(event.priority, old[1] if old else 0)
                changes[event.entity_id] = (event.entity_id, priority, deleted, size)
            added = outbox.record_state(self._db, changes.values(), cseq, now_ms)
        elif self.outbox == "events":
            added = outbox.record_events(self._db, self._event_deltas(events, now_ms), now_ms)
        else:
            return
        if self.max_outbox_bytes:
            outbox.bound(self._db, self.outbox, self.max_outbox_bytes, added)

    def _event_deltas(self, events: Sequence[EntityEvent], now_ms: int) -> list[EntityDelta]:
        """One delta per event, each with the version that event made."""
        ids = list({event.entity_id: None for event in events})
        versions = {
            eid: version
            for start in range(0, len(ids), ROWS_PER_STATEMENT)
            for eid, version in self._db.execute(
                "SELECT id, version FROM entities WHERE id IN"
                f" ({','.join('?' * len(ids[start : start + ROWS_PER_STATEMENT]))})",
                ids[start : start + ROWS_PER_STATEMENT],
            )
        }
        remaining = Counter(event.entity_id for event in events)
        deltas = []
        for event in events:
            eid = event.entity_id
            remaining[eid] -= 1
            if event.op == "delete":
                deltas.append(
                    EntityDelta(eid, event.entity_type, 0, 0, event.priority, deleted=True)
                )
                continue
            ts = _event_ms(event, now_ms)
            version = max(1, versions.get(eid, 1) - remaining[eid])
            triples = [(p, v, ts, event.source) for p, v in _properties(event).items()]
            edges = [
                (r.predicate, r.object, r.weight, ts, event.source) for r in event.relationships
            ]
            deltas.append(
                EntityDelta(
                    eid,
                    event.entity_type,
                    version,
                    ts,
                    event.priority,
                    triples,
                    edges,
                    list(event.aliases),
                )
            )
        return deltas

    def import_records(self, records: Sequence[EntityRecord]) -> ImportResult:
        """Import whole-entity records in one transaction (see :mod:`records`).

        Raises:
            GraphError: SQLite refused the transaction; nothing of it is applied.
        """
        applied: list[str] = []
        try:
            with write_transaction(self._db) as db:
                for record in records:
                    if import_record(db, record) == "applied":
                        applied.append(record.entity_id)
                        self._refresh_indexes(record)
        except sqlite3.Error as exc:
            raise GraphError(f"import not applied: {exc}") from exc
        touched = set(applied)
        for record in records:
            if record.entity_id in touched:
                touched.update(edge[1] for edge in record.edges)
        return ImportResult(len(applied), len(records) - len(applied), frozenset(touched))

    def _refresh_indexes(self, record: EntityRecord) -> None:
        params = {"id": record.entity_id}
        if self.indexes.spatial:
            self._db.execute(DELETE_ENTITY[0], params)
            self._db.execute(UPDATE_SPATIAL, params)
        if self.indexes.temporal:
            bucket = int(record.updated_at.timestamp() * 1000) // TEMPORAL_BUCKET_MS
            # The record's updated_at is the truth, even when older than what was here.
            self._db.execute(
                "INSERT OR REPLACE INTO temporal VALUES (?, ?)", (record.entity_id, bucket)
            )

    # ---- the sync link (writer thread) -----------------------------------------------

    def sync_take(
        self, limits: BatchLimits, sync_filter: SyncFilter, encoding: str, now_ms: int
    ) -> tuple[OutboxBatch | None, int]:
        """Move the next ready outbox batch into flight (see :func:`outbox.take_batch`)."""
        mode = self.outbox
        assert mode is not None, "the store keeps no outbox"
        return self.database.transaction(
            lambda db: outbox.take_batch(
                db, mode, limits, sync_filter, encoding=encoding, now_ms=now_ms
            )
        )

    def sync_requeue_all(self, now_ms: int) -> int:
        """Queue every entity this edge wrote again, whole, within the outbox's byte
        bound (see :func:`outbox.requeue_all`); the entities queued."""
        mode = self.outbox
        assert mode is not None, "the store keeps no outbox"

        def requeue(db: sqlite3.Connection) -> int:
            queued = outbox.requeue_all(db, mode, self.origin, outbox.next_change_seq(db), now_ms)
            if self.max_outbox_bytes:  # measured now: the estimate knows nothing of these
                outbox.bound(db, mode, self.max_outbox_bytes, self.max_outbox_bytes + 1)
            return queued

        return self.database.transaction(requeue)

    def sync_ack(self, seq: int) -> None:
        """The hub has every batch up to ``seq``."""
        self.database.transaction(outbox.acknowledge, seq)

    def sync_resume(self, hwm: int) -> list[OutboxBatch]:
        """Settle in-flight batches against the hub's ``hwm``; return those to send again."""
        return self.database.transaction(outbox.resume, hwm)

    def sync_trim(self, max_bytes: int) -> int:
        """Drop waiting outbox rows over ``max_bytes``; the number dropped."""
        assert self.outbox is not None, "the store keeps no outbox"
        return self.database.transaction(outbox.trim, self.outbox, max_bytes)

    def sync_dropped(self) -> int:
        """Outbox rows ever dropped to stay within the byte limit (kept in the file)."""
        with self.reader() as db:
            return outbox.dropped(db)

    def sync_acked_seq(self) -> int:
        """The highest batch seq the hub has acked, as far as this edge knows."""
        with self.reader() as db:
            return outbox.acked_seq(db)

    def sync_backlog(self) -> Backlog:
        """What the hub has not acked yet."""
        with self.reader() as db:
            return outbox.backlog(db)

    # ---- reads (any thread) --------------------------------------------------------

    def snapshot(self) -> AbstractContextManager[sqlite3.Connection]:
        """A dedicated read-only connection holding one consistent snapshot (see
        :meth:`Database.snapshot`)."""
        return self.database.snapshot()

    def reader(self) -> AbstractContextManager[sqlite3.Connection]:
        """This thread's read-only connection (see :meth:`Database.reader`)."""
        return self.database.reader()

    def stats(self) -> dict[str, Any]:
        """Counts of entities, triples and edges, and entities per type."""
        with self.reader() as db:
            by_type = dict(db.execute("SELECT type, count(*) FROM entities GROUP BY type"))
            (triples,) = db.execute("SELECT count(*) FROM triples").fetchone()
            (edges,) = db.execute("SELECT count(*) FROM edges").fetchone()
        return {
            "entities": sum(by_type.values()),
            "triples": triples,
            "edges": edges,
            "by_type": by_type,
        }

    def entity(self, entity_id: str) -> dict[str, Any] | None:
        """The merged state of one entity, or ``None`` if it does not exist."""
        with self.reader() as db:
            row = db.execute(
                "SELECT id, type, version, priority, created_at, updated_at, origin"
                " FROM entities WHERE id = ?",
                (entity_id,),
            ).fetchone()
            if row is None:
                return None
            triples = db.execute(
                "SELECT predicate, object FROM triples WHERE subject = ? AND predicate != ?",
                (entity_id, RDF_TYPE),
            ).fetchall()
            edges = db.execute(
                "SELECT predicate, object, weight FROM edges WHERE subject = ?", (entity_id,)
            ).fetchall()
            aliases = [
                a
                for (a,) in db.execute(
                    "SELECT alias FROM aliases WHERE entity_id = ?", (entity_id,)
                )
            ]
        return {
            "entity_id": row[0],
            "entity_type": row[1],
            "version": row[2],
            "priority": row[3],
            "created_at": iso_ms(row[4]),
            "updated_at": iso_ms(row[5]),
            "origin": row[6],
            "properties": {p: msgspec.json.decode(o) for p, o in triples},
            "relationships": [{"predicate": p, "object": o, "weight": w} for p, o, w in edges],
            "aliases": aliases,
        }


def _last_word(edges: list[_EdgeRow]) -> list[_EdgeRow]:
    """Each edge once: the row applying them in order would leave, the last of the newest.

    RESTATE_EDGE and UPSERT_EDGE each see every row in one statement, so an edge written
    twice in a batch would be judged against its old weight twice.
    """
    last: dict[tuple[str, str, str], _EdgeRow] = {}
    for row in edges:
        key = row[:3]
        kept = last.get(key)
        if kept is None or row[4] >= kept[4]:
            last[key] = row
    return list(last.values()) if len(last) < len(edges) else edges
