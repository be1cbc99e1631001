"""Whole-entity records: export a graph as JSONL, import it back exactly and idempotently.

A record carries every triple and edge of an entity with its timestamp and source, so
export → wipe → import gives back an identical graph, and importing the same export
twice changes nothing the second time.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Generator, Iterator
from datetime import datetime
from typing import Literal

import msgspec

__all__ = ["EntityRecord", "ImportOutcome", "export_jsonl", "export_records", "import_record"]

_PAGE = 500
#: How often (in SQLite virtual machine steps) a running statement checks the deadline.
_PROGRESS_STEPS = 10_000
_encoder = msgspec.json.Encoder()


class EntityRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One entity with all its triples and edges, as one JSONL line.

    ``triples`` are ``[predicate, value, timestamp, source]``; ``edges`` are
    ``[predicate, object, weight, timestamp, source]``; timestamps are RFC 3339.
    """

    entity_id: str
    entity_type: str
    version: int
    priority: int
    created_at: datetime
    updated_at: datetime
    origin: str
    triples: list[tuple[str, str | int | float | bool | None, datetime, str]]
    edges: list[tuple[str, str, float, datetime, str]] = msgspec.field(default_factory=list)
    aliases: list[str] = msgspec.field(default_factory=list)


ImportOutcome = Literal["applied", "unchanged"]


def _dt(ms: int) -> datetime:
    return msgspec.convert(ms / 1000, datetime, strict=False)


def _ms(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)


def export_records(db: sqlite3.Connection, entity_type: str | None) -> Iterator[EntityRecord]:
    """Every entity (of one type, if given) in id order, a page at a time.

    Memory stays constant: pages are fetched by key, never the whole graph at once.
    """
    after = ""
    while True:
        rows = db.execute(
            "SELECT id, type, version, priority, created_at, updated_at, origin FROM entities"
            " WHERE id > ? AND (?2 IS NULL OR type = ?2) ORDER BY id LIMIT ?3",
            (after, entity_type, _PAGE),
        ).fetchall()
        if not rows:
            return
        for row in rows:
            yield _record(db, row)
        after = rows[-1][0]


def export_jsonl(
    db: sqlite3.Connection,
    entity_type: str | None,
    *,
    chunk_bytes: int,
    deadline: float,
    clock: Callable[[], float] = time.monotonic,
) -> Generator[bytes, None, None]:
    """:func:`export_records` as JSONL, in chunks of whole lines of about ``chunk_bytes``.

    Raises:
        TimeoutError: ``clock()`` passed ``deadline``, between records or inside a
            statement (SQLite's progress handler interrupts it).
    """
    db.set_progress_handler(lambda: clock() > deadline, _PROGRESS_STEPS)
    chunk = bytearray()
    try:
        for record in export_records(db, entity_type):
            if clock() > deadline:
                raise TimeoutError
            _encoder.encode_into(record, chunk, -1)
            chunk += b"\n"
            if len(chunk) >= chunk_bytes:
                yield bytes(chunk)
                chunk.clear()
    except sqlite3.OperationalError as exc:
        if clock() > deadline:
            raise TimeoutError from exc
        raise
    finally:
        db.set_progress_handler(None, 0)
    if chunk:
        yield bytes(chunk)


def _record(db: sqlite3.Connection, row: tuple[str, str, int, int, int, int, str]) -> EntityRecord:
    entity_id = row[0]
    triples = [
        (p, msgspec.json.decode(o), _dt(ts), src)
        for p, o, ts, src in db.execute(
            "SELECT predicate, object, ts, source FROM triples WHERE subject = ? ORDER BY 1",
            (entity_id,),
        )
    ]
    edges = [
        (p, o, w, _dt(ts), src)
        for p, o, w, ts, src in db.execute(
            "SELECT predicate, object, weight, ts, source FROM edges WHERE subject = ?"
            " ORDER BY 1, 2",
            (entity_id,),
        )
    ]
    aliases = [
        a
        for (a,) in db.execute(
            "SELECT alias FROM aliases WHERE entity_id = ? ORDER BY 1", (entity_id,)
        )
    ]
    return EntityRecord(
        entity_id=entity_id,
        entity_type=row[1],
        version=row[2],
        priority=row[3],
        created_at=_dt(row[4]),
        updated_at=_dt(row[5]),
        origin=row[6],
        triples=triples,
        edges=edges,
        aliases=aliases,
    )


def import_record(db: sqlite3.Connection, record: EntityRecord) -> ImportOutcome:
    """Make the stored entity exactly ``record``; a no-op when it already is.

    Must run inside the caller's write transaction. The spatial and temporal indexes
    are the caller's to refresh (the store does it for the entities imported).
    """
    rows = db.execute(
        "SELECT id, type, version, priority, created_at, updated_at, origin FROM entities"
        " WHERE id = ?",
        (record.entity_id,),
    ).fetchone()
    if rows is not None and _record(db, rows) == _normalised(record):
        return "unchanged"
    for table, column in (("triples", "subject"), ("edges", "subject"), ("aliases", "entity_id")):
        db.execute(f"DELETE FROM {table} WHERE {column} = ?", (record.entity_id,))
    db.execute(
        "INSERT INTO entities (id, type, version, priority, created_at, updated_at, origin)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET type = excluded.type,"
        " version = excluded.version, priority = excluded.priority,"
        " created_at = excluded.created_at, updated_at = excluded.updated_at,"
        " origin = excluded.origin",
        (
            record.entity_id,
            record.entity_type,
            record.version,
            record.priority,
            _ms(record.created_at),
            _ms(record.updated_at),
            record.origin,
        ),
    )
    db.executemany(
        "INSERT INTO triples (subject, predicate, object, ts, source) VALUES (?, ?, ?, ?, ?)",
        [
            (record.entity_id, p, msgspec.json.encode(v).decode(), _ms(ts), src)
            for p, v, ts, src in record.triples
        ],
    )
    db.executemany(
        "INSERT INTO edges (subject, predicate, object, weight, ts, source)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        [(record.entity_id, p, o, w, _ms(ts), src) for p, o, w, ts, src in record.edges],
    )
    db.executemany(
        "INSERT INTO aliases VALUES (?, ?)", [(record.entity_id, a) for a in record.aliases]
    )
    return "applied"


def _normalised(record: EntityRecord) -> EntityRecord:
    """The record as export would write it back (sorted, millisecond timestamps)."""
    return msgspec.structs.replace(
        record,
        created_at=_dt(_ms(record.created_at)),
        updated_at=_dt(_ms(record.updated_at)),
        triples=sorted((p, v, _dt(_ms(ts)), s) for p, v, ts, s in record.triples),
        edges=sorted((p, o, w, _dt(_ms(ts)), s) for p, o, w, ts, s in record.edges),
        aliases=sorted(record.aliases),
    )
