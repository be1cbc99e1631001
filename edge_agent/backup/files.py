"""File work shared by backup and restore: checksums, SQLite copies, private files."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path

from edge_agent.backup.manifest import BackupError
from edge_agent.graph.positions import read_positions

__all__ = ["copy_sqlite", "create_private", "fsync_tree", "measure"]

_READ_BYTES = 1 << 20


def measure(path: Path) -> tuple[int | None, str]:
    """(size, sha256 hex) of a regular file; (None, "") when it is missing or is not a
    plain file (a symlink in a backup could point anywhere)."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return None, ""
    if not stat.S_ISREG(info.st_mode):
        return None, ""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as file:
        while chunk := file.read(_READ_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def create_private(path: Path) -> None:
    """Create ``path`` empty, 0600 (before SQLite or a snapshot fills it)."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def copy_sqlite(
    source: Path,
    target: Path,
    extra_positions: Callable[[sqlite3.Connection], dict[str, int]] | None = None,
) -> dict[str, int]:
    """Copy a live SQLite file with SQLite's online backup API; the copy's positions.

    The copy is one step, so it reads one consistent snapshot of the source (in WAL
    mode the service's writer goes on meanwhile). The copy is a self-contained file
    (rollback journal, no ``-wal`` beside it) that passes ``quick_check``.

    Raises:
        BackupError: the source cannot be read, or the copy is not sound.
    """
    create_private(target)
    try:
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
        try:
            dst = sqlite3.connect(target)
            try:
                src.backup(dst)
                dst.execute("PRAGMA journal_mode = DELETE")
                (verdict,) = dst.execute("PRAGMA quick_check").fetchone()
                if verdict != "ok":
                    raise BackupError(f"the copy of {source} fails quick_check: {verdict}")
                positions = read_positions(dst)
                if extra_positions is not None:
                    positions.update(extra_positions(dst))
            finally:
                dst.close()
        finally:
            src.close()
    except sqlite3.Error as exc:
        raise BackupError(f"cannot copy {source}: {exc}") from exc
    return positions


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under ``root`` (and ``root``), so a power cut
    after a backup or restore reports done leaves it whole."""
    for directory, _, names in os.walk(root):
        for name in names:
            fd = os.open(Path(directory) / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
