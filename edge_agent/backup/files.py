"""File work shared by backup and restore: checksums, private files, fsync."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from pathlib import Path

from edge_agent.private_files import fill_private

__all__ = ["copy_private", "create_private", "fsync_tree", "measure"]

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


def copy_private(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` (0600), streaming, atomically and durably
    (:func:`~edge_agent.private_files.fill_private`)."""
    with source.open("rb") as into:
        fill_private(target, lambda out: shutil.copyfileobj(into, out, _READ_BYTES))


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
