"""The graph store: one SQLite file in WAL mode, one writer, any number of readers.

Write methods (:meth:`GraphStore.apply`, :meth:`GraphStore.position`) must be called from
one thread at a time: the graph processor owns a single-thread executor for them. Read
methods open a read-only connection per calling thread, so API queries never wait for
the writer (WAL) and never see a half-applied batch.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import msgspec

from edge_agent.config import IndexesConfig
from edge_agent.errors import GraphError
from edge_agent.graph.indexes import LATITUDE, LONGITUDE, TEMPORAL_BUCKET_MS, reconcile_indexes
from edge_agent.graph.migrations import migrate
from edge_agent.graph.records import EntityRecord, import_record
from edge_agent.graph.sql import write_transaction
from edge_agent.model import EntityEvent

__all__ = ["ApplyResult", "GraphStore", "ImportResult", "iso_ms"]

_RDF_TYPE = "rdf:type"
_json = msgspec.json.Encoder()


class _Upsert(NamedTuple):
    """A multi-row upsert: ``head``, then one ``row`` per row, then ``tail``."""

    head: str
    row: str
    tail: str


_UPSERT_ENTITY = _Upsert(
    "INSERT INTO entities (id, type, version, priority, created_at, updated_at, origin) VALUES",
    "(?, ?, 1, ?, ?, ?, ?)",
    """ON CONFLICT (id) DO UPDATE SET
        type = excluded.type,
        version = version + 1,
        priority = excluded.priority,
        updated_at = max(updated_at, excluded.updated_at),
        origin = excluded.origin""",
)
# The newer timestamp wins per predicate; an equal one is a re-statement and also wins.
_UPSERT_TRIPLE = _Upsert(
    "INSERT INTO triples (subject, predicate, object, ts, source) VALUES",
    "(?, ?, ?, ?, ?)",
    """ON CONFLICT (subject, predicate) DO UPDATE SET
        object = excluded.object, ts = excluded.ts, source = excluded.source
    WHERE excluded.ts >= triples.ts""",
)
_UPSERT_EDGE = _Upsert(
    "INSERT INTO edges (subject, predicate, object, weight, ts, source) VALUES",
    "(?, ?, ?, ?, ?, ?)",
    """ON CONFLICT (subject, predicate, object) DO UPDATE SET
        weight = excluded.weight, ts = excluded.ts, source = excluded.source
    WHERE excluded.ts >= edges.ts""",
)
# One statement per few hundred rows, where executemany steps into SQLite once per row:
# each step releases and retakes the GIL, and while the event loop is busy every retake
# waits. 500 rows x 7 parameters stays far inside SQLite's 32,766.
_ROWS_PER_STATEMENT = 500


def _upsert_rows(
    db: sqlite3.Connection, upsert: _Upsert, rows: Sequence[tuple[Any, ...]], chunk: int
) -> None:
    """Run ``upsert`` over ``rows`` in order, ``chunk`` rows per statement."""
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        sql = f"{upsert.head} {','.join([upsert.row] * len(part))} {upsert.tail}"
        db.execute(sql, [value for row in part for value in row])


_UPDATE_SPATIAL = f"""
INSERT OR REPLACE INTO spatial
SELECT e.rowid, lat.v, lat.v, lon.v, lon.v
FROM entities e,
     (SELECT json_extract(object, '$') AS v FROM triples
      WHERE subject = :id AND predicate = '{LATITUDE}'
        AND json_type(object) IN ('integer', 'real')) AS lat,
     (SELECT json_extract(object, '$') AS v FROM triples
      WHERE subject = :id AND predicate = '{LONGITUDE}'
        AND json_type(object) IN ('integer', 'real')) AS lon
WHERE e.id = :id
"""
_UPSERT_TEMPORAL = """
INSERT INTO temporal (entity_id, bucket) VALUES (?, ?)
ON CONFLICT (entity_id) DO UPDATE SET bucket = max(bucket, excluded.bucket)
"""
_NEIGHBOURS = """
SELECT object FROM edges WHERE subject = :id UNION SELECT subject FROM edges WHERE object = :id
"""
_DELETE_ENTITY = [
    "DELETE FROM spatial WHERE entity_rowid = (SELECT rowid FROM entities WHERE id = :id)",
    "DELETE FROM triples WHERE subject = :id",
    "DELETE FROM edges WHERE subject = :id",
    "DELETE FROM edges WHERE object = :id",
    "DELETE FROM aliases WHERE entity_id = :id",
    "DELETE FROM temporal WHERE entity_id = :id",
    "DELETE FROM entities WHERE id = :id",
]


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
    """

    def __init__(
        self,
        path: Path,
        *,
        origin: str,
        indexes: IndexesConfig,
        edge_batch_size: int = 100,
    ) -> None:
        self.path = path
        self.origin = origin
        self.indexes = indexes
        self.edge_batch_size = edge_batch_size
        self._local = threading.local()
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode = WAL")
            # FULL: a batch is acked to JetStream after commit, so the commit must survive
            # a power cut, or an acked event would be lost.
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.execute("PRAGMA busy_timeout = 5000")
            self.migrations_applied = migrate(self._db)
            self.index_changes = reconcile_indexes(self._db, indexes)
        except sqlite3.Error as exc:
            raise GraphError(f"cannot open graph store {path}: {exc}") from exc

    def close(self) -> None:
        """Close the write connection (readers close with their threads)."""
        self._db.close()

    # ---- writes (one thread) -------------------------------------------------------

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
        self._db.execute(
            "INSERT OR REPLACE INTO consumer_state VALUES (?, ?, 0)", (consumer, stream_created)
        )
        return 0

    def apply(
        self,
        batch: Sequence[tuple[int, EntityEvent]],
        *,
        consumer: str,
        now_ms: int,
    ) -> ApplyResult:
        """Apply a batch of (stream sequence, event) in one transaction.

        Events at or below the consumer's recorded position are skipped, which makes a
        redelivered batch a no-op; the position advances in the same transaction.

        Args:
            batch: events in stream order with their stream sequences.
            consumer: the durable consumer whose position to use and advance.
            now_ms: the time of receipt, for events without a timestamp.

        Raises:
            GraphError: SQLite refused the transaction; nothing of the batch is applied.
        """
        try:
            with write_transaction(self._db) as db:
                (position,) = db.execute(
                    "SELECT applied_seq FROM consumer_state WHERE consumer = ?", (consumer,)
                ).fetchone() or (0,)
                fresh = [(seq, event) for seq, event in batch if seq > position]
                changed, touched = self._apply_events([event for _, event in fresh], now_ms)
                if fresh:
                    db.execute(
                        "UPDATE consumer_state SET applied_seq = ? WHERE consumer = ?",
                        (fresh[-1][0], consumer),
                    )
        except sqlite3.Error as exc:
            raise GraphError(f"batch not applied: {exc}") from exc
        return ApplyResult(len(fresh), len(batch) - len(fresh), changed, frozenset(touched))

    def _apply_events(
        self, events: Sequence[EntityEvent], now_ms: int
    ) -> tuple[list[str], set[str]]:
        """Apply runs of upserts with executemany, and each delete between them."""
        changed: dict[str, None] = {}
        touched: set[str] = set()
        run: list[EntityEvent] = []
        for event in events:
            changed[event.entity_id] = None
            if event.op == "upsert":
                touched.update(rel.object for rel in event.relationships)
                run.append(event)
                continue
            self._upsert_run(run, now_ms)
            run = []
            touched.update(
                node
                for (node,) in self._db.execute(_NEIGHBOURS, {"id": event.entity_id}).fetchall()
            )
            for sql in _DELETE_ENTITY:
                self._db.execute(sql, {"id": event.entity_id})
        self._upsert_run(run, now_ms)
        touched.update(changed)
        return list(changed), touched

    def _upsert_run(self, run: Sequence[EntityEvent], now_ms: int) -> None:
        if not run:
            return
        entities: list[tuple[str, str, int, int, int, str]] = []
        triples: list[tuple[str, str, str, int, str]] = []
        edges: list[tuple[str, str, str, float, int, str]] = []
        aliases: list[tuple[str, str]] = []
        temporal: list[tuple[str, int]] = []
        located: list[dict[str, str]] = []
        origin = self.origin
        for event in run:
            ts = _event_ms(event, now_ms)
            eid = event.entity_id
            entities.append((eid, event.entity_type, event.priority, now_ms, ts, origin))
            source = event.source
            triples.append((eid, _RDF_TYPE, _json.encode(event.entity_type).decode(), ts, source))
            properties = event.properties if isinstance(event.properties, dict) else {}
            for predicate, value in properties.items():
                triples.append((eid, predicate, _json.encode(value).decode(), ts, source))
            for rel in event.relationships:
                edges.append((eid, rel.predicate, rel.object, rel.weight, ts, source))
            aliases.extend((eid, alias) for alias in event.aliases)
            temporal.append((eid, ts // TEMPORAL_BUCKET_MS))
            if LATITUDE in properties or LONGITUDE in properties:
                located.append({"id": eid})
        db = self._db
        _upsert_rows(db, _UPSERT_ENTITY, entities, _ROWS_PER_STATEMENT)
        _upsert_rows(db, _UPSERT_TRIPLE, triples, _ROWS_PER_STATEMENT)
        _upsert_rows(db, _UPSERT_EDGE, edges, self.edge_batch_size)
        db.executemany("INSERT OR IGNORE INTO aliases VALUES (?, ?)", aliases)
        if self.indexes.temporal:
            db.executemany(_UPSERT_TEMPORAL, temporal)
        if self.indexes.spatial:
            db.executemany(_UPDATE_SPATIAL, located)

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
            self._db.execute(_DELETE_ENTITY[0], params)
            self._db.execute(_UPDATE_SPATIAL, params)
        if self.indexes.temporal:
            bucket = int(record.updated_at.timestamp() * 1000) // TEMPORAL_BUCKET_MS
            # The record's updated_at is the truth, even when older than what was here.
            self._db.execute(
                "INSERT OR REPLACE INTO temporal VALUES (?, ?)", (record.entity_id, bucket)
            )

    # ---- reads (any thread) --------------------------------------------------------

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """A dedicated read-only connection holding one consistent snapshot until closed.

        For long reads (export) that span many pages: writes go on meanwhile, and the
        reader sees none of them.
        """
        db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
        try:
            db.execute("BEGIN")
            yield db
        except sqlite3.Error as exc:
            raise GraphError(f"read failed: {exc}") from exc
        finally:
            db.close()

    @contextmanager
    def reader(self) -> Iterator[sqlite3.Connection]:
        """A read-only connection for this thread, converting SQLite errors to GraphError."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
            db.execute("PRAGMA busy_timeout = 5000")
            self._local.db = db
        try:
            yield db
        except sqlite3.Error as exc:
            raise GraphError(f"query failed: {exc}") from exc

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
                (entity_id, _RDF_TYPE),
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
