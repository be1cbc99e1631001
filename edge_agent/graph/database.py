"""One SQLite file with a single writer: the machinery every store of the project shares.

The graph store (edge and hub) and the hub's device registry each hold a
:class:`Database`. It opens the file in WAL mode, applies the store's named
migrations, owns the one write connection and the one thread that writes on it, and
hands out read-only connections per thread, so readers never wait for the writer and
never see half a transaction. SQLite's own errors leave it as :class:`GraphError`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, TypeVar

from edge_agent.errors import GraphError
from edge_agent.graph.migrations import Migration, migrate
from edge_agent.graph.sql import write_transaction

__all__ = ["Database", "SnapshotBusy", "Synchronous"]

_T = TypeVar("_T")
#: ``graph.config.sqlite_synchronous``, and the pragma value each names.
Synchronous = Literal["full", "normal"]
_SYNCHRONOUS = {"full": "FULL", "normal": "NORMAL"}
log = logging.getLogger(__name__)


class SnapshotBusy(GraphError):
    """Another snapshot of the same file is open (:meth:`Database.snapshot`)."""


class Database:
    """A SQLite file in WAL mode: one writer thread, read-only connections per thread.

    Args:
        path: the file (created, with its directory, if missing).
        migrations: the store's named migrations, applied once each, in order.
        what: what the store is, for error messages ("graph store", "registry").
        synchronous: SQLite's ``synchronous``: ``"full"`` (the default) fsyncs the WAL at
            every commit, so what is acked after a commit (a JetStream message, a sync
            batch, an enrolment) survives a power cut; ``"normal"`` fsyncs only at
            checkpoints, and a power cut may undo the last commits (never corrupts).

    Raises:
        GraphError: the file cannot be opened or migrated.
    """

    def __init__(
        self,
        path: Path,
        migrations: Sequence[Migration],
        *,
        what: str,
        synchronous: Synchronous = "full",
    ) -> None:
        self.path = path
        self.what = what
        self._local = threading.local()
        self._lock = threading.Lock()
        self._snapshot_lock = threading.Lock()
        self._cache_kib = 0  # 0: SQLite's default, see set_cache_size
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{what}-writer")
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            self.connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self.connection.execute("PRAGMA journal_mode = WAL")
            self.connection.execute(f"PRAGMA synchronous = {_SYNCHRONOUS[synchronous]}")
            self.connection.execute("PRAGMA busy_timeout = 5000")
            self.migrations_applied = migrate(self.connection, migrations)
        except sqlite3.Error as exc:
            raise GraphError(f"cannot open {what} {path}: {exc}") from exc

    def set_cache_size(self, size: int) -> None:
        """SQLite's page cache for the write connection and every reader opened later,
        in bytes (rounded down to KiB). Call it before the store is used."""
        self._cache_kib = max(1, size // 1024)
        self.connection.execute(f"PRAGMA cache_size = -{self._cache_kib}")

    def close(self) -> None:
        """Finish queued writes, fold the WAL into the file, then close the write
        connection.

        SQLite checkpoints on its own only when the last connection closes, and reader
        threads may still hold theirs: without this, a clean stop left every write since
        the last checkpoint in ``-wal`` (a file copied alone would lack them).
        """
        self._writer.shutdown(wait=True)
        try:
            self.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error as exc:  # e.g. disk full: the WAL stays, nothing is lost
            log.warning("%s: WAL not checkpointed at close: %s", self.path, exc)
        self.connection.close()

    # ---- writes ------------------------------------------------------------------------

    async def write(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Run ``fn(*args, **kwargs)`` on the single writer thread; await its result."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._writer, functools.partial(fn, *args, **kwargs))

    def transaction(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Run ``fn(connection, *args)`` in one write transaction, from any thread.

        Writers take turns (a lock), so synchronous callers (request threads) and the
        writer thread never share the connection at once.

        Raises:
            GraphError: SQLite refused; nothing of ``fn``'s writes is kept.
        """
        with self._lock:
            try:
                with write_transaction(self.connection) as db:
                    return fn(db, *args, **kwargs)
            except sqlite3.Error as exc:
                raise GraphError(f"{self.what} not written: {exc}") from exc

    async def write_transaction(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """:meth:`transaction` on the writer thread."""
        return await self.write(self.transaction, fn, *args, **kwargs)

    # ---- reads -------------------------------------------------------------------------

    @contextmanager
    def reader(self) -> Iterator[sqlite3.Connection]:
        """This thread's read-only connection, converting SQLite errors to GraphError."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
            db.execute("PRAGMA busy_timeout = 5000")
            if self._cache_kib:
                db.execute(f"PRAGMA cache_size = -{self._cache_kib}")
            self._local.db = db
        try:
            yield db
        except sqlite3.Error as exc:
            raise GraphError(f"{self.what}: query failed: {exc}") from exc

    def read(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """``fn(reader, *args, **kwargs)`` on this thread's read-only connection."""
        with self.reader() as db:
            return fn(db, *args, **kwargs)

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """A dedicated read-only connection holding one consistent snapshot until closed.

        For long reads (export) that span many pages: writes go on meanwhile, and the
        reader sees none of them. While a snapshot is open SQLite cannot checkpoint the
        WAL past it, so every write makes the WAL longer; keeping a snapshot short is
        the caller's part (export has a deadline). Snapshots taken back to back, or
        overlapping, would still keep the WAL from ever being reset (measured: it grew
        without bound with each held for 2 s), so one is open at a time, and closing
        one checkpoints the WAL at once (passively: it waits for nobody).

        Raises:
            SnapshotBusy: another snapshot is open.
            GraphError: SQLite refused a read (also when a progress handler the
                caller set interrupted a statement).
        """
        if not self._snapshot_lock.acquire(blocking=False):
            raise SnapshotBusy(f"{self.what}: another snapshot is open")
        try:
            db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
            try:
                db.execute("BEGIN")
                yield db
            except sqlite3.Error as exc:
                raise GraphError(f"{self.what}: read failed: {exc}") from exc
            finally:
                db.close()
        finally:
            self._checkpoint()
            self._snapshot_lock.release()

    def _checkpoint(self) -> None:
        """Copy the WAL into the file as far as no reader holds it back, without waiting,
        so the writer can start the WAL over; on its own connection, from any thread."""
        try:
            db = sqlite3.connect(self.path, isolation_level=None)
            try:
                db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            finally:
                db.close()
        except sqlite3.Error as exc:  # the writer's automatic checkpoints go on anyway
            log.warning("%s: checkpoint after a snapshot failed: %s", self.what, exc)
