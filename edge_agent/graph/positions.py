"""Where a graph file stands: its consumers' stream positions and the sync link's.

Backups read these from their SQLite copies into the manifest, and a restore re-keys
the positions to the restored stream: JetStream stamps a restored stream with a new
creation time, and a position kept under the old one would be taken for a position in
another stream (see :meth:`GraphStore.position`) and start again at 0.
"""

from __future__ import annotations

import sqlite3

__all__ = ["applied_seq", "read_positions", "rekey_stream"]


def _has_table(db: sqlite3.Connection, name: str) -> bool:
    row = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
    return row.fetchone() is not None


def read_positions(db: sqlite3.Connection) -> dict[str, int]:
    """Each consumer's applied stream sequence (``consumer:<name>``) and the sync link's
    ``sync:acked_seq`` / ``sync:next_seq``, as far as this file has them."""
    positions: dict[str, int] = {}
    if _has_table(db, "consumer_state"):
        for consumer, seq in db.execute("SELECT consumer, applied_seq FROM consumer_state"):
            positions[f"consumer:{consumer}"] = int(seq)
    if _has_table(db, "sync_state"):
        for name, value in db.execute(
            "SELECT name, value FROM sync_state WHERE name IN ('acked_seq', 'next_seq')"
        ):
            positions[f"sync:{name}"] = int(value)
    return positions


def rekey_stream(db: sqlite3.Connection, old_created: str, new_created: str) -> int:
    """Move the positions kept for the stream created at ``old_created`` to the same
    stream restored at ``new_created``; the number of consumers moved."""
    cursor = db.execute(
        "UPDATE consumer_state SET stream_created = ? WHERE stream_created = ?",
        (new_created, old_created),
    )
    return cursor.rowcount


def applied_seq(db: sqlite3.Connection, stream_created: str) -> int:
    """The highest stream sequence any consumer of the stream created at
    ``stream_created`` has applied (0: none)."""
    (seq,) = db.execute(
        "SELECT coalesce(max(applied_seq), 0) FROM consumer_state WHERE stream_created = ?",
        (stream_created,),
    ).fetchone()
    return int(seq)
