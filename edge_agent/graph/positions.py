"""A graph file for backup and restore: an online copy, and where it stands.

Backups copy a live file with SQLite's online backup API (:func:`copy_database`) and
read the copy's positions into the manifest: its consumers' stream positions and the
sync link's. A restore re-keys the positions to the restored stream
(:func:`rekey_stream`): JetStream stamps a restored stream with a new creation time,
and a position kept under the old one would be taken for a position in another stream
(see :meth:`GraphStore.position`) and start again at 0.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

from edge_agent.errors import GraphError

__all__ = [
    "PositionReader",
    "applied_seq",
    "copy_database",
    "read_positions",
    "rekey_stream",
]

#: Reads more positions from a copy (the hub's per-edge batch seq).
PositionReader = Callable[[sqlite3.Connection], dict[str, int]]


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


def copy_database(
    source: Path, target: Path, extra: PositionReader | None = None
) -> dict[str, int]:
    """Copy a live SQLite file with SQLite's online backup API; the copy's positions.

    The copy is one step, so it reads one consistent snapshot of the source (in WAL
    mode the service's writer goes on meanwhile). It is created 0600, and is a
    self-contained file (rollback journal, no ``-wal`` beside it) that passes
    ``quick_check``.

    Raises:
        GraphError: the source cannot be read, or the copy is not sound.
    """
    os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        with (
            contextlib.closing(sqlite3.connect(f"file:{source}?mode=ro", uri=True)) as src,
            contextlib.closing(sqlite3.connect(target)) as dst,
        ):
            src.backup(dst)
            dst.execute("PRAGMA journal_mode = DELETE")
            (verdict,) = dst.execute("PRAGMA quick_check").fetchone()
            if verdict != "ok":
                raise GraphError(f"the copy of {source} fails quick_check: {verdict}")
            positions = read_positions(dst)
            if extra is not None:
                positions.update(extra(dst))
    except sqlite3.Error as exc:
        raise GraphError(f"cannot copy {source}: {exc}") from exc
    return positions


def rekey_stream(path: Path, old_created: str, new_created: str) -> int:
    """Move the positions ``path`` keeps for the stream created at ``old_created`` to
    the same stream restored at ``new_created``; the number of consumers moved."""
    try:
        with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db, db:
            cursor = db.execute(
                "UPDATE consumer_state SET stream_created = ? WHERE stream_created = ?",
                (new_created, old_created),
            )
            return cursor.rowcount
    except sqlite3.Error as exc:
        raise GraphError(f"cannot re-key the positions in {path}: {exc}") from exc


def applied_seq(path: Path, stream_created: str) -> int:
    """The highest stream sequence any consumer in ``path`` of the stream created at
    ``stream_created`` has applied (0: none)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            (seq,) = db.execute(
                "SELECT coalesce(max(applied_seq), 0) FROM consumer_state WHERE stream_created = ?",
                (stream_created,),
            ).fetchone()
    except sqlite3.Error as exc:
        raise GraphError(f"cannot read the positions in {path}: {exc}") from exc
    return int(seq)
