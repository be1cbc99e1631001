"""Size-limited filesystems for tests: a tmpfs mounted on a directory, and a way to fill it."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

__all__ = ["fill", "free_bytes", "tmpfs"]


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` (e.g. ``"32m"``) on ``path`` (made if missing); unmount
    it on exit, lazily, so a process still holding files open cannot keep it mounted.

    Needs root (the test VM's user); the mount is on a test's own temp directory.
    """
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)], check=True
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def free_bytes(path: Path) -> int:
    """Bytes free for writing on ``path``'s filesystem."""
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def fill(path: Path, *, leave: int = 0) -> Path:
    """Write ``path`` (a filler file) until its filesystem has about ``leave`` bytes free
    (0: until the filesystem refuses, ``ENOSPC``). Returns ``path``; delete it to free."""
    chunk = b"\0" * (64 << 10)
    with path.open("wb") as out:
        try:
            while True:
                want = free_bytes(path.parent) - leave
                if want <= 0:
                    break
                out.write(chunk[: min(len(chunk), want)])
                out.flush()
        except OSError:  # ENOSPC: full, as asked for leave=0
            pass
    return path
