"""Files that hold secrets (keys, seeds, tokens, credentials): written so a power cut
leaves the old file or the new one, never half of one, and only ever readable by their
owner; read only when nobody else can read them.

A Pi's SD card is often copied, and its files often end up 0644 after a careless
``cp``: a credential readable by every local user (or a web server's process) is a
stolen credential, so the agent refuses to start rather than use it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from edge_agent.errors import ConfigError

__all__ = ["check_private", "fill_private", "write_private"]


def check_private(path: Path | str, where: str) -> None:
    """Refuse a secret file that group or others may read or write.

    Args:
        where: the config key (or what the file is) for the message.

    Raises:
        ConfigError: the mode lets group or others in; the message says how to fix it.
    """
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError as exc:
        raise ConfigError([f"{where}: cannot read {path}: {exc.strerror}"]) from exc
    if mode & 0o077:
        raise ConfigError(
            [f"{where}: {path} is open to group or others (mode {mode:04o}); chmod 600 it"]
        )


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path``, 0600, atomically and durably (:func:`fill_private`)."""
    fill_private(path, lambda file: file.write(data))


def fill_private(path: Path, fill: Callable[[BinaryIO], object]) -> None:
    """Let ``fill`` write ``path``'s content, 0600, atomically and durably.

    A temp file beside it is filled and fsynced, renamed over ``path``, and the
    directory fsynced, so after a crash ``path`` holds the old or the new content.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            fill(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
