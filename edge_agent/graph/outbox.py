"""The sync outbox: what the edge still owes the hub, kept in the graph's own SQLite file.

Invariants (each function runs inside the caller's write transaction):
- A change enters the outbox in the transaction that applies it (:func:`record_state`
  or :func:`record_events`), so a crash can lose neither the change nor its outbox row.
- ``state`` mode keeps one row per changed entity: ``since`` is the change sequence of
  its first change not yet sent, so a delta carries only the triples changed since then.
  ``events`` mode keeps one pre-encoded delta per reading.
- :func:`take_batch` moves rows into ``sync_inflight`` under the next ``seq`` in one
  transaction: the payload is stored before it is sent, and re-sent byte for byte after
  a reconnect or a crash until the hub acks it. Batches therefore reach the hub in
  ``seq`` order, so an entity's deltas are applied in the order they were made.
- What :func:`trim` and :func:`bound` drop to stay under the byte limit is the oldest,
  lowest-priority rows not yet in flight, and it is counted in ``sync_state``
  (``dropped_outbox_full``) in the same transaction, so the count is exact across
  crashes and the metric is exported from it (:func:`dropped`).
- :func:`bound` runs in the transaction that records changes, so the outbox never
  exceeds its limit after a commit (in-flight batches aside, which it cannot drop).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import msgspec

from edge_agent.graph.statements import RDF_TYPE, ROWS_PER_STATEMENT
from edge_agent.sync.codec import compress, msgpack_array
from edge_agent.sync.filters import SyncFilter, compile_filter
from edge_agent.sync.frames import EntityDelta

__all__ = [
    "Backlog",
    "BatchLimits",
    "OutboxBatch",
    "QueuedReading",
    "SyncMode",
    "acked_seq",
    "acknowledge",
    "backlog",
    "bound",
    "drop_held_by_hub",
    "dropped",
    "next_change_seq",
    "queued_readings",
    "record_events",
    "record_state",
    "requeue_all",
    "resume",
    "take_batch",
    "trim",
    "waiting_resets",
]

SyncMode = Literal["state", "events"]
_encoder = msgspec.msgpack.Encoder()
_delta_decoder = msgspec.msgpack.Decoder(EntityDelta)
_json_decoder = msgspec.json.Decoder()
#: No filter: an events-mode row is filtered when its batch is taken.
_EVERYTHING = compile_filter({})
# The most a msgpack array header takes (0xdd + 4 bytes), counted against max_bytes.
_ARRAY_HEADER_MAX = 5


class BatchLimits(msgspec.Struct, frozen=True, kw_only=True):
    """When a batch is ready and how big it may be.

    A batch is taken once ``max_count`` rows wait, or the oldest has waited ``max_age_ms``,
    or a row of ``urgent_priority`` or more waits. With ``lanes``, higher priorities are
    taken first; else oldest first.
    """

    max_count: int = 500
    max_bytes: int = 256 << 10
    max_age_ms: int = 500
    urgent_priority: int = 7
    lanes: bool = True


class OutboxBatch(msgspec.Struct, frozen=True):
    """One batch as stored in flight: sent, or to be sent again, byte for byte."""

    seq: int
    encoding: str
    count: int
    raw_bytes: int
    payload: bytes


class Backlog(msgspec.Struct, frozen=True):
    """What the hub has not acked yet: changes waiting or in flight, their bytes, the
    batches in flight, and when the oldest waiting change was queued (epoch ms, 0: none).
    """

    entities: int
    bytes: int
    in_flight: int
    oldest_ms: int


def _state_value(db: sqlite3.Connection, name: str, default: int) -> int:
    row = db.execute("SELECT value FROM sync_state WHERE name = ?", (name,)).fetchone()
    return int(row[0]) if row else default


def _set_state(db: sqlite3.Connection, name: str, value: int) -> None:
    db.execute("INSERT OR REPLACE INTO sync_state VALUES (?, ?)", (name, value))


def next_change_seq(db: sqlite3.Connection) -> int:
    """Allocate the change sequence of the transaction in progress."""
    cseq = _state_value(db, "cseq", 0) + 1
    _set_state(db, "cseq", cseq)
    return cseq


def acked_seq(db: sqlite3.Connection) -> int:
    """The highest batch ``seq`` the hub has acked, as far as this edge knows."""
    return _state_value(db, "acked_seq", 0)


# ---- recording, in the apply transaction ---------------------------------------------

# A waiting change keeps the highest priority it was queued with, so a routine reading
# right after an alarm does not demote the alarm. An entity the filter once kept back is
# sent whole (``reset``) when it next passes: the hub may lack its unchanged triples.
_RECORD_STATE = """
INSERT INTO sync_outbox (entity_id, cseq, since, priority, reset, size, queued_at, deleted_at)
VALUES (?1, ?2, ?2, ?3,
        max(?4, EXISTS (SELECT 1 FROM sync_filtered WHERE entity_id = ?1)), ?5, ?6, ?4 * ?6)
ON CONFLICT (entity_id) DO UPDATE SET
    cseq = excluded.cseq,
    priority = max(priority, excluded.priority),
    reset = max(reset, excluded.reset),
    size = max(size, excluded.size),
    deleted_at = max(deleted_at, excluded.deleted_at)
"""


def record_state(
    db: sqlite3.Connection,
    changes: Iterable[tuple[str, int, bool, int]],
    cseq: int,
    now_ms: int,
) -> int:
    """Mark entities changed by this transaction: (entity id, priority, deleted, size).

    A deletion sets ``reset``: the next delta replaces the hub's copy whole.

    Returns:
        The most the outbox grew by (the sizes recorded), for :func:`bound`.
    """
    rows = [
        (eid, cseq, priority, int(deleted), size, now_ms)
        for eid, priority, deleted, size in changes
    ]
    db.executemany(_RECORD_STATE, rows)
    return sum(row[4] for row in rows)


def record_events(db: sqlite3.Connection, deltas: Sequence[EntityDelta], now_ms: int) -> int:
    """Queue one delta per reading (``events`` mode), in order; the bytes queued."""
    rows = []
    for delta in deltas:
        blob = _encoder.encode(delta)
        rows.append((delta.priority, len(blob), now_ms, blob))
    db.executemany(
        "INSERT INTO sync_events (priority, size, queued_at, delta) VALUES (?, ?, ?, ?)", rows
    )
    return sum(row[1] for row in rows)


# Every entity this edge wrote, whole (``since`` 0: every triple and relationship).
_REQUEUE_STATE = """
INSERT INTO sync_outbox (entity_id, cseq, since, priority, reset, size, queued_at)
SELECT id, ?1, 0, priority, 0,
       64 + (SELECT coalesce(sum(length(predicate) + length(object) + 12), 0)
             FROM triples WHERE subject = entities.id),
       ?2
FROM entities WHERE origin = ?3
ON CONFLICT (entity_id) DO UPDATE SET
    cseq = excluded.cseq, since = 0, size = max(size, excluded.size)
"""


def requeue_all(db: sqlite3.Connection, mode: SyncMode, origin: str, cseq: int, now_ms: int) -> int:
    """Queue every entity of ``origin`` (this edge) whole, for a hub that lost some of
    what it had acked; inside the caller's write transaction.

    Returns:
        The entities queued.
    """
    if mode == "state":
        before = db.total_changes
        db.execute(_REQUEUE_STATE, (cseq, now_ms, origin))
        return db.total_changes - before
    ids = [eid for (eid,) in db.execute("SELECT id FROM entities WHERE origin = ?", (origin,))]
    deltas = [_state_delta(db, eid, 0, False, _EVERYTHING) for eid in ids]
    record_events(db, [delta for delta in deltas if delta is not None], now_ms)
    return len(ids)


# ---- taking batches, on the sender's behalf ------------------------------------------

_TABLES: dict[SyncMode, tuple[str, str, str]] = {
    # (table, key column, the column that orders rows oldest first)
    "state": ("sync_outbox", "entity_id", "cseq"),
    "events": ("sync_events", "seq", "seq"),
}


def _ready(db: sqlite3.Connection, table: str, limits: BatchLimits, now_ms: int) -> bool:
    count, oldest = db.execute(
        f"SELECT count(*), min(queued_at) FROM (SELECT queued_at FROM {table} LIMIT ?)",
        (limits.max_count,),
    ).fetchone()
    if not count:
        return False
    if count >= limits.max_count or oldest <= now_ms - limits.max_age_ms:
        return True
    if not limits.lanes:
        return False
    (top,) = db.execute(f"SELECT max(priority) FROM {table}").fetchone()
    return bool(top >= limits.urgent_priority)


def _state_delta(
    db: sqlite3.Connection, entity_id: str, since: int, reset: bool, sync_filter: SyncFilter
) -> EntityDelta | None:
    """The delta of one entity since change ``since``, filtered, or ``None``."""
    entity = db.execute(
        "SELECT type, version, updated_at, priority FROM entities WHERE id = ?", (entity_id,)
    ).fetchone()
    if entity is None:
        # Sent whatever the filter says: the hub has nothing to delete if it never had it.
        return EntityDelta(entity_id, "", 0, 0, 0, deleted=True)
    etype, version, updated_at, priority = entity
    if reset:
        since = 0
        db.execute("DELETE FROM sync_filtered WHERE entity_id = ?", (entity_id,))
    properties: dict[str, object] = {}
    triples = []
    for predicate, obj, ts, source, cseq in db.execute(
        "SELECT predicate, object, ts, source, cseq FROM triples WHERE subject = ?",
        (entity_id,),
    ):
        if predicate == RDF_TYPE:
            continue
        value = _json_decoder.decode(obj)
        properties[predicate] = value
        if cseq >= since:
            triples.append((predicate, value, ts, source))
    edges = [
        (p, o, w, ts, src)
        for p, o, w, ts, src in db.execute(
            "SELECT predicate, object, weight, ts, source FROM edges"
            " WHERE subject = ? AND cseq >= ?",
            (entity_id, since),
        )
    ]
    aliases = [
        a for (a,) in db.execute("SELECT alias FROM aliases WHERE entity_id = ?", (entity_id,))
    ]
    delta = EntityDelta(
        entity_id, etype, version, updated_at, priority, triples, edges, aliases, replace=reset
    )
    return sync_filter.apply(delta, properties)


def _event_delta(blob: bytes, sync_filter: SyncFilter) -> tuple[EntityDelta | None, bytes]:
    delta = _delta_decoder.decode(blob)
    kept = sync_filter.apply(delta, {t[0]: t[1] for t in delta.triples})
    if kept is None or kept is delta:
        return kept, blob
    return kept, _encoder.encode(kept)


def take_batch(
    db: sqlite3.Connection,
    mode: SyncMode,
    limits: BatchLimits,
    sync_filter: SyncFilter,
    *,
    encoding: str,
    now_ms: int,
) -> tuple[OutboxBatch | None, int]:
    """Move the next ready batch into flight.

    Returns:
        (the batch, or ``None`` when nothing is ready; the rows the filter dropped).
    """
    table, key, age = _TABLES[mode]
    if not _ready(db, table, limits, now_ms):
        return None, 0
    order = f"priority DESC, {age}" if limits.lanes else age
    columns = "entity_id, since, reset" if mode == "state" else "seq, delta"
    rows = db.execute(
        f"SELECT {columns} FROM {table} ORDER BY {order} LIMIT ?", (limits.max_count,)
    ).fetchall()
    parts: list[bytes] = []
    taken: list[tuple[object]] = []
    held_back: list[tuple[object]] = []
    size = 0
    for row in rows:
        if mode == "state":
            delta = _state_delta(db, row[0], row[1], bool(row[2]), sync_filter)
            blob = _encoder.encode(delta) if delta is not None else b""
        else:
            delta, blob = _event_delta(row[1], sync_filter)
        if parts and size + len(blob) + _ARRAY_HEADER_MAX > limits.max_bytes:
            break
        taken.append((row[0],))
        if delta is not None:
            parts.append(blob)
            size += len(blob)
        elif mode == "state":
            held_back.append((row[0],))
    db.executemany(f"DELETE FROM {table} WHERE {key} = ?", taken)
    db.executemany("INSERT OR IGNORE INTO sync_filtered VALUES (?)", held_back)
    filtered = len(taken) - len(parts)
    if not parts:
        return None, filtered
    raw = msgpack_array(parts)
    seq = _state_value(db, "next_seq", 1)
    batch = OutboxBatch(seq, encoding, len(parts), len(raw), compress(raw, encoding))
    db.execute(
        "INSERT INTO sync_inflight VALUES (?, ?, ?, ?, ?)",
        (batch.seq, batch.encoding, batch.count, batch.raw_bytes, batch.payload),
    )
    _set_state(db, "next_seq", seq + 1)
    return batch, filtered


# ---- the hub's answers -----------------------------------------------------------------


def acknowledge(db: sqlite3.Connection, seq: int) -> None:
    """The hub has made every batch up to ``seq`` durable: forget them."""
    db.execute("DELETE FROM sync_inflight WHERE seq <= ?", (seq,))
    if seq > acked_seq(db):
        _set_state(db, "acked_seq", seq)


def resume(db: sqlite3.Connection, hwm: int) -> list[OutboxBatch]:
    """After a Welcome: batches up to the hub's ``hwm`` are acked; the rest go again.

    A hub that knows a higher ``seq`` than this edge ever sent (the edge's store was
    replaced) moves this edge's next ``seq`` past it.

    Returns:
        The batches still in flight, in ``seq`` order, to send again as they are.
    """
    acknowledge(db, hwm)
    if _state_value(db, "next_seq", 1) <= hwm:
        _set_state(db, "next_seq", hwm + 1)
    rows = db.execute(
        "SELECT seq, encoding, count, raw_bytes, payload FROM sync_inflight ORDER BY seq"
    ).fetchall()
    return [OutboxBatch(*row) for row in rows]


# A waiting change the hub already holds at least as new: the entity here is no newer
# than the hub's copy. A reset row (deleted, or deleted and made again) goes too: sent,
# it would replace the hub's copy whole with this entity, which the share's merge has
# just made the hub's copy when that was newer.
_HELD_BY_HUB = """
DELETE FROM sync_outbox
WHERE entity_id = ?1
  AND EXISTS (SELECT 1 FROM entities WHERE id = ?1 AND updated_at <= ?2)
"""


class QueuedReading(msgspec.Struct, frozen=True):
    """One events-mode row waiting to be sent, decoded."""

    seq: int
    queued_at: int
    delta: EntityDelta


def queued_readings(db: sqlite3.Connection) -> list[QueuedReading]:
    """Every events-mode reading waiting to be sent, oldest first (none in state mode).

    A resync's chunk reads them once for :func:`waiting_resets` and
    :func:`drop_held_by_hub` both (the merge between them does not touch them).
    """
    rows = db.execute("SELECT seq, queued_at, delta FROM sync_events ORDER BY seq")
    return [QueuedReading(seq, at, _delta_decoder.decode(blob)) for seq, at, blob in rows]


def waiting_resets(
    db: sqlite3.Connection, ids: Sequence[str], readings: Sequence[QueuedReading]
) -> dict[str, int]:
    """Entity id -> how new this edge's whole state of it is (ms), for those of ``ids``
    deleted here (and perhaps made again) since the hub last heard of them.

    Such a waiting change replaces the hub's copy whole when sent. A share carries no
    tombstones and merges per property: an older hub copy merged here would bring back
    an entity deleted here since, or properties its deletion removed. The time is the
    entity's ``updated_at``, or for one still deleted, when it was deleted (in events
    mode, when its deletion was queued).

    Args:
        readings: :func:`queued_readings`.
    """
    found: dict[str, int] = {}
    for start in range(0, len(ids), ROWS_PER_STATEMENT):
        part = ids[start : start + ROWS_PER_STATEMENT]
        found.update(
            db.execute(
                "SELECT entity_id, max(queued_at, deleted_at) FROM sync_outbox"
                f" WHERE reset = 1 AND entity_id IN ({','.join('?' * len(part))})",
                part,
            ).fetchall()
        )
    wanted = set(ids)
    for reading in readings:
        if reading.delta.deleted and reading.delta.entity_id in wanted:
            found[reading.delta.entity_id] = reading.queued_at
    for eid in found:
        row = db.execute("SELECT updated_at FROM entities WHERE id = ?", (eid,)).fetchone()
        if row is not None:
            found[eid] = row[0]
    return found


def drop_held_by_hub(
    db: sqlite3.Connection, hub_stamps: Mapping[str, int], readings: Sequence[QueuedReading]
) -> int:
    """Drop the waiting changes the hub's copy already covers, in a resync's transaction.

    An edge restored from a backup (or rebuilt) still holds changes its lost self sent
    and the hub acked under batch numbers the edge no longer knows; sent again they
    would be no-ops at the hub (the newer timestamp wins there), but duplicates all the
    same. The hub's share says, per entity, how new its copy of this edge's data is.

    Args:
        hub_stamps: entity id -> ``updated_at`` of the hub's copy of this edge's share.
        readings: :func:`queued_readings`, read in the same transaction.

    Returns:
        The waiting rows dropped (of either mode's table).
    """
    before = db.total_changes
    db.executemany(_HELD_BY_HUB, hub_stamps.items())
    doomed = [(r.seq,) for r in readings if _held_by_hub(r.delta, hub_stamps)]
    db.executemany("DELETE FROM sync_events WHERE seq = ?", doomed)
    return db.total_changes - before


def _held_by_hub(delta: EntityDelta, hub_stamps: Mapping[str, int]) -> bool:
    """Whether a queued reading is stale against the hub's copy in the share.

    A deletion goes when the hub holds the entity: the share's merge has just put the
    hub's copy back into this graph (a share carries no tombstones), and sent, the
    deletion would erase it at the hub alone; edge and hub would disagree for good.
    """
    stamp = hub_stamps.get(delta.entity_id)
    if stamp is None:
        return False
    return delta.deleted or delta.updated_at <= stamp


# ---- bounds and gauges -------------------------------------------------------------------


def backlog(db: sqlite3.Connection) -> Backlog:
    """Rows waiting in either mode and batches in flight, with their bytes."""
    entities, size, oldest = db.execute(
        "SELECT (SELECT count(*) FROM sync_outbox) + (SELECT count(*) FROM sync_events),"
        " (SELECT coalesce(sum(size), 0) FROM sync_outbox)"
        " + (SELECT coalesce(sum(size), 0) FROM sync_events),"
        " (SELECT min(q) FROM (SELECT min(queued_at) AS q FROM sync_outbox"
        "  UNION ALL SELECT min(queued_at) FROM sync_events))"
    ).fetchone()
    in_flight, flight_count, flight_bytes = db.execute(
        "SELECT count(*), coalesce(sum(count), 0), coalesce(sum(length(payload)), 0)"
        " FROM sync_inflight"
    ).fetchone()
    return Backlog(entities + flight_count, size + flight_bytes, in_flight, oldest or 0)


def trim(db: sqlite3.Connection, mode: SyncMode, max_bytes: int) -> int:
    """Drop the oldest, lowest-priority waiting rows until the outbox fits ``max_bytes``.

    Returns:
        The rows dropped.
    """
    excess = backlog(db).bytes - max_bytes
    if excess <= 0:
        return 0
    return _drop(db, mode, excess)[0]


#: ``bound`` trims this fraction of the limit below it, so that at the limit it measures
#: the outbox (a scan of its rows) once per 1/200 of the limit added, not per commit.
_BOUND_SLACK = 200


def bound(db: sqlite3.Connection, mode: SyncMode, max_bytes: int, added: int) -> int:
    """Keep the outbox within ``max_bytes`` in the transaction that grew it by ``added``.

    An upper bound of the outbox's bytes is kept in ``sync_state`` (in the transaction,
    so a rollback rolls it back too): below the limit a commit only adds to it; past it,
    the outbox is measured, and if it is really over, trimmed to 0.5 % under the limit.
    Sending and acks only shrink the outbox, so the bound stays an upper bound.

    Returns:
        The rows dropped.
    """
    estimate = _state_value(db, "outbox_bytes_max", -1)
    if estimate >= 0 and estimate + added <= max_bytes:
        _set_state(db, "outbox_bytes_max", estimate + added)
        return 0
    size = backlog(db).bytes
    rows = 0
    if size > max_bytes:
        rows, freed = _drop(db, mode, size - (max_bytes - max_bytes // _BOUND_SLACK))
        size -= freed
    _set_state(db, "outbox_bytes_max", size)
    return rows


def dropped(db: sqlite3.Connection) -> int:
    """Rows dropped to stay within the byte limit, ever, in this database."""
    return _state_value(db, "dropped_outbox_full", 0)


def _drop(db: sqlite3.Connection, mode: SyncMode, excess: int) -> tuple[int, int]:
    """Drop waiting rows, lowest priority and oldest first, until ``excess`` bytes are
    gone (or none is left); count them. Returns (rows, bytes) dropped."""
    table, key, age = _TABLES[mode]
    doomed: list[tuple[object]] = []
    freed = 0
    order = f"priority ASC, {age} ASC"
    for row_key, size in db.execute(f"SELECT {key}, size FROM {table} ORDER BY {order}"):
        doomed.append((row_key,))
        freed += size
        if freed >= excess:
            break
    db.executemany(f"DELETE FROM {table} WHERE {key} = ?", doomed)
    _set_state(db, "dropped_outbox_full", dropped(db) + len(doomed))
    return len(doomed), freed
