"""Versioned schema migrations, recorded by name in ``schema_migrations``.

Append new migrations to :data:`MIGRATIONS`; never edit or reorder an applied one.
Secondary indexes that config switches on and off are not migrations: see
``indexes.py``.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence

__all__ = ["MIGRATIONS", "Migration", "migrate"]

#: A named schema change: (name, SQL script).
Migration = tuple[str, str]


# entities keeps a rowid so the R*Tree spatial index can refer to it by integer.
_M001_INITIAL = """
        CREATE TABLE entities (
            id TEXT PRIMARY KEY,
            type TEXT NOT NULL,
            version INTEGER NOT NULL,
            priority INTEGER NOT NULL,
            created_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL,
            origin TEXT NOT NULL
        );
        CREATE INDEX entities_by_type ON entities(type);
        CREATE TABLE triples (
            subject TEXT NOT NULL,
            predicate TEXT NOT NULL,
            object TEXT NOT NULL,
            ts INTEGER NOT NULL,
            source TEXT NOT NULL,
            PRIMARY KEY (subject, predicate)
        ) WITHOUT ROWID;
        CREATE TABLE edges (
            subject TEXT NOT NULL,
            predicate TEXT NOT NULL,
            object TEXT NOT NULL,
            weight REAL NOT NULL,
            ts INTEGER NOT NULL,
            source TEXT NOT NULL,
            PRIMARY KEY (subject, predicate, object)
        ) WITHOUT ROWID;
        CREATE TABLE aliases (
            entity_id TEXT NOT NULL,
            alias TEXT NOT NULL,
            PRIMARY KEY (entity_id, alias)
        ) WITHOUT ROWID;
        CREATE VIRTUAL TABLE spatial USING rtree(entity_rowid, min_lat, max_lat, min_lon, max_lon);
        CREATE TABLE temporal (
            bucket INTEGER NOT NULL,
            entity_id TEXT NOT NULL,
            PRIMARY KEY (bucket, entity_id)
        ) WITHOUT ROWID;
        CREATE INDEX temporal_by_entity ON temporal(entity_id);
        CREATE TABLE consumer_state (
            consumer TEXT PRIMARY KEY,
            stream_created TEXT NOT NULL,
            applied_seq INTEGER NOT NULL
        );
        CREATE TABLE index_state (
            name TEXT PRIMARY KEY,
            enabled INTEGER NOT NULL
        );
        """


# The temporal index keeps each entity's latest update bucket, one row per entity:
# bounded on a device that runs for months, and the same whether filled by writes or
# rebuilt from the entities.
_M002_TEMPORAL_LATEST = """
        DROP TABLE temporal;
        CREATE TABLE temporal (
            entity_id TEXT PRIMARY KEY,
            bucket INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX temporal_by_bucket ON temporal(bucket, entity_id);
        INSERT INTO temporal
            SELECT id, updated_at / 3600000 FROM entities
            WHERE (SELECT enabled FROM index_state WHERE name = 'temporal') = 1
"""

# The sync link (see ``graph/outbox.py`` on the edge and ``graph/deltas.py`` on the hub).
# ``cseq`` is the change sequence of the transaction that last changed a triple or edge:
# an outbox row sends the triples changed since its ``since``.
_M003_SYNC = """
        ALTER TABLE triples ADD COLUMN cseq INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE edges ADD COLUMN cseq INTEGER NOT NULL DEFAULT 0;
        CREATE TABLE sync_outbox (
            entity_id TEXT PRIMARY KEY,
            cseq INTEGER NOT NULL,
            since INTEGER NOT NULL,
            priority INTEGER NOT NULL,
            reset INTEGER NOT NULL,
            size INTEGER NOT NULL,
            queued_at INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX sync_outbox_by_cseq ON sync_outbox(cseq);
        CREATE INDEX sync_outbox_by_lane ON sync_outbox(priority DESC, cseq);
        CREATE TABLE sync_filtered (
            entity_id TEXT PRIMARY KEY
        ) WITHOUT ROWID;
        CREATE TABLE sync_events (
            seq INTEGER PRIMARY KEY,
            priority INTEGER NOT NULL,
            size INTEGER NOT NULL,
            queued_at INTEGER NOT NULL,
            delta BLOB NOT NULL
        );
        CREATE INDEX sync_events_by_lane ON sync_events(priority DESC, seq);
        CREATE TABLE sync_inflight (
            seq INTEGER PRIMARY KEY,
            encoding TEXT NOT NULL,
            count INTEGER NOT NULL,
            raw_bytes INTEGER NOT NULL,
            payload BLOB NOT NULL
        );
        CREATE TABLE sync_state (
            name TEXT PRIMARY KEY,
            value INTEGER NOT NULL
        );
"""

# The hub's tables (``sync_hwm``, ``sync_conflicts``) were created by 003 once; they are
# the hub's own migrations now (``cloud_hub/graph/schema.py``), 003 no longer makes them,
# and this drops them from databases made before: an edge's database holds nothing of
# the hub's.
_M004_HUB_TABLES_LEAVE = """
        DROP TABLE IF EXISTS sync_hwm;
        DROP TABLE IF EXISTS sync_conflicts;
"""

# PathRAG reads a node's outgoing edges strongest first and stops when the answer is
# full: a hub entity costs the few rows the answer needs, not all of its edges. (The
# incoming side is the switchable ``incoming`` index, also by weight: indexes.py.) On a
# WITHOUT ROWID table the index carries the key's predicate too, so it also covers a
# predicate-filtered walk.
_M005_EDGES_FROM_BY_WEIGHT = """
        CREATE INDEX edges_from_by_weight ON edges(subject, weight DESC, object);
"""

# The processor's position carries what checks it against the stream at bind
# (edge_agent/graph/position.py): the applied message's stream timestamp, and the
# highest sequence the stream was known to hold. 0: unknown (rows made before).
_M006_POSITION_MARK = """
        ALTER TABLE consumer_state ADD COLUMN applied_ts INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE consumer_state ADD COLUMN seen_seq INTEGER NOT NULL DEFAULT 0;
"""

# When a waiting outbox row's entity was last deleted here (ms; 0: not deleted while it
# waited, or queued before this column). A resync compares the hub's copy with it:
# ``queued_at`` is when the row was first queued, which may be long before the deletion.
_M007_OUTBOX_DELETED_AT = """
        ALTER TABLE sync_outbox ADD COLUMN deleted_at INTEGER NOT NULL DEFAULT 0;
"""

#: The graph's migrations, in order; each runs once, inside its own transaction.
MIGRATIONS: list[Migration] = [
    ("001_initial", _M001_INITIAL),
    ("002_temporal_latest", _M002_TEMPORAL_LATEST),
    ("003_sync", _M003_SYNC),
    ("004_hub_tables_leave", _M004_HUB_TABLES_LEAVE),
    ("005_edges_from_by_weight", _M005_EDGES_FROM_BY_WEIGHT),
    ("006_position_mark", _M006_POSITION_MARK),
    ("007_outbox_deleted_at", _M007_OUTBOX_DELETED_AT),
]


def migrate(db: sqlite3.Connection, migrations: Sequence[Migration] = MIGRATIONS) -> list[str]:
    """Apply the ``migrations`` this database has not had yet, in order.

    Returns:
        The names applied now, in order.
    """
    db.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at REAL)"
    )
    done = {row[0] for row in db.execute("SELECT name FROM schema_migrations")}
    applied = []
    for name, script in migrations:
        if name in done:
            continue
        # executescript commits whatever is open first, so the script carries its own
        # transaction: the migration and its record land together or not at all.
        db.executescript(
            f"BEGIN IMMEDIATE; {script}; "
            f"INSERT INTO schema_migrations VALUES ('{name}', {time.time()}); COMMIT;"
        )
        applied.append(name)
    return applied
