"""The SQL statements that write entities, shared by the edge's apply and the hub's.

Upserts are multi-row: one statement per few hundred rows, where ``executemany`` steps
into SQLite once per row. Each step releases and retakes the GIL, and while the event
loop is busy every retake waits.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any, NamedTuple

from edge_agent.graph.indexes import LATITUDE, LONGITUDE

__all__ = [
    "DELETE_ENTITY",
    "NEIGHBOURS",
    "RDF_TYPE",
    "RESTATE_EDGE",
    "ROWS_PER_STATEMENT",
    "UPDATE_SPATIAL",
    "UPSERT_EDGE",
    "UPSERT_ENTITY",
    "UPSERT_TEMPORAL",
    "UPSERT_TRIPLE",
    "Upsert",
    "delete_entity",
    "upsert_rows",
]

RDF_TYPE = "rdf:type"
# 500 rows x 7 parameters stays far inside SQLite's 32,766.
ROWS_PER_STATEMENT = 500


class Upsert(NamedTuple):
    """A multi-row upsert: ``head``, then one ``row`` per row, then ``tail``."""

    head: str
    row: str
    tail: str


#: The edge's own writes: each one is a new version.
UPSERT_ENTITY = Upsert(
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
# ``cseq`` (the change sequence) moves only when the value changes: a reading that
# restates a value is not a change the sync link has to carry.
UPSERT_TRIPLE = Upsert(
    "INSERT INTO triples (subject, predicate, object, ts, source, cseq) VALUES",
    "(?, ?, ?, ?, ?, ?)",
    """ON CONFLICT (subject, predicate) DO UPDATE SET
        object = excluded.object, ts = excluded.ts, source = excluded.source,
        cseq = CASE WHEN excluded.object IS triples.object THEN triples.cseq
                    ELSE excluded.cseq END
    WHERE excluded.ts >= triples.ts""",
)
# An edge whose weight changed, or a new one. A restated weight is left to RESTATE_EDGE:
# the weight is in two indexes (PathRAG reads each node's edges strongest first), and
# SQLite rewrites the entries of every indexed column an UPDATE sets, changed or not,
# which halved upserts/s when every reading restated its relationships.
UPSERT_EDGE = Upsert(
    "INSERT INTO edges (subject, predicate, object, weight, ts, source, cseq) VALUES",
    "(?, ?, ?, ?, ?, ?, ?)",
    """ON CONFLICT (subject, predicate, object) DO UPDATE SET
        weight = excluded.weight, ts = excluded.ts, source = excluded.source,
        cseq = excluded.cseq
    WHERE excluded.ts >= edges.ts AND excluded.weight IS NOT edges.weight""",
)
#: The same rows as UPSERT_EDGE, run before it: an edge restated with its weight takes
#: the newer timestamp and source and keeps its ``cseq`` (nothing for the link to send).
#: Each (subject, predicate, object) may appear once per statement (see store.py).
RESTATE_EDGE = Upsert(
    "WITH restated (subject, predicate, object, weight, ts, source, cseq) AS (VALUES",
    "(?, ?, ?, ?, ?, ?, ?)",
    """) UPDATE edges SET ts = restated.ts, source = restated.source FROM restated
    WHERE edges.subject = restated.subject AND edges.predicate = restated.predicate
      AND edges.object = restated.object AND edges.weight IS restated.weight
      AND restated.ts >= edges.ts""",
)


def upsert_rows(
    db: sqlite3.Connection, upsert: Upsert, rows: Sequence[tuple[Any, ...]], chunk: int
) -> None:
    """Run ``upsert`` over ``rows`` in order, at most ``chunk`` rows per statement.

    A statement holds ``chunk`` rows, or, for the rest, the largest power of two that
    fits, so that only a few statement texts exist. sqlite3 keeps every text it prepared
    (128 per connection) and one of 500 rows is a large program: with every length from
    1 to 500 (partial batches) the write connection's cache grew by ~19 MB.
    """
    start, total = 0, len(rows)
    while start < total:
        left = total - start
        size = chunk if left >= chunk else 1 << (left.bit_length() - 1)
        part = rows[start : start + size]
        sql = f"{upsert.head} {','.join([upsert.row] * size)} {upsert.tail}"
        db.execute(sql, [value for row in part for value in row])
        start += size


UPDATE_SPATIAL = f"""
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
UPSERT_TEMPORAL = """
INSERT INTO temporal (entity_id, bucket) VALUES (?, ?)
ON CONFLICT (entity_id) DO UPDATE SET bucket = max(bucket, excluded.bucket)
"""
NEIGHBOURS = """
SELECT object FROM edges WHERE subject = :id UNION SELECT subject FROM edges WHERE object = :id
"""
DELETE_ENTITY = [
    "DELETE FROM spatial WHERE entity_rowid = (SELECT rowid FROM entities WHERE id = :id)",
    "DELETE FROM triples WHERE subject = :id",
    "DELETE FROM edges WHERE subject = :id",
    "DELETE FROM edges WHERE object = :id",
    "DELETE FROM aliases WHERE entity_id = :id",
    "DELETE FROM temporal WHERE entity_id = :id",
    "DELETE FROM entities WHERE id = :id",
]


def delete_entity(db: sqlite3.Connection, entity_id: str) -> set[str]:
    """Remove an entity from every table and index.

    Returns:
        Its neighbours across the edges removed (their view of the graph changed).
    """
    neighbours = {node for (node,) in db.execute(NEIGHBOURS, {"id": entity_id}).fetchall()}
    for sql in DELETE_ENTITY:
        db.execute(sql, {"id": entity_id})
    return neighbours
