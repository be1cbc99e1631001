"""Is a SQLite file whole? Checked at open; a damaged one is moved aside, never deleted.

The pure part reads bytes: :func:`header_problem` (the file's first 100 bytes) and
:func:`wal_problem` (the write-ahead log: its header and the checksum chain of its
frames). The shell, :func:`inspect`, adds ``PRAGMA quick_check``; :func:`quarantine`
moves a damaged file with its ``-wal`` and ``-shm`` into
``<state dir>/damaged/<UTC time>-<name>/``; :func:`salvage_ids` reads what entity ids
can still be read from it, so what a rebuild did not bring back can be counted
(:func:`count_missing`).

What this cannot see: SQLite keeps no checksum of page contents, so a bit flipped
inside a stored value (not in the b-tree's structure) passes ``quick_check``; and a WAL
cut exactly at a frame boundary looks like one whose last transactions were never
written. A WAL frame whose checksum fails while later frames of the same WAL follow
is damage (a torn write at a power cut leaves only the tail bad, or only frames of an
uncommitted transaction): SQLite would silently drop it and everything after it.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sqlite3
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final, Literal, TypeVar

import msgspec

from edge_agent.errors import GraphError

__all__ = [
    "Inspection",
    "copy_evidence",
    "count_missing",
    "header_problem",
    "inspect",
    "quarantine",
    "refuse_if_damaged",
    "salvage_ids",
    "wal_problem",
]

log = logging.getLogger(__name__)
_T = TypeVar("_T")

_MAGIC: Final = b"SQLite format 3\x00"
_WAL_MAGIC: Final = (0x377F0682, 0x377F0683)
_WAL_HEADER: Final = 32
_FRAME_HEADER: Final = 24
#: ``quick_check`` messages kept in a verdict.
_MESSAGES: Final = 5
#: Rows inserted into the salvaged-ids file per statement.
_SALVAGE_BATCH: Final = 1000
_SIDE_FILES: Final = ("-wal", "-shm", "-journal")

Verdict = Literal["fresh", "ok", "wal_damaged", "damaged"]


class Inspection(msgspec.Struct, frozen=True):
    """What :func:`inspect` found.

    Attributes:
        verdict: ``fresh`` (no file), ``ok``, ``wal_damaged`` (the database is whole but
            its WAL lost committed frames: SQLite keeps the valid prefix, what followed
            is gone) or ``damaged`` (not usable: move it aside).
        reason: why, in words, for the log and ``/health``.
    """

    verdict: Verdict
    reason: str = ""


# ---- pure: bytes in, a reason (or "") out -------------------------------------------------


def header_problem(head: bytes, file_size: int, *, wal: bool = False) -> str:
    """What is wrong with a database file's first 100 bytes ("" when nothing).

    With a non-empty WAL (``wal``) a size that is not a whole number of pages is left
    to ``quick_check``: a checkpoint cut short by a power cut leaves a torn last page
    the WAL still holds, and SQLite reads it from there.
    """
    if file_size < 100 or len(head) < 100:
        return f"truncated to {file_size} bytes"
    if head[:16] != _MAGIC:
        return "not an SQLite database (bad header)"
    (raw_size,) = struct.unpack(">H", head[16:18])
    page_size = 65536 if raw_size == 1 else raw_size
    if page_size < 512 or page_size & (page_size - 1):
        return f"bad page size {raw_size} in the header"
    if file_size % page_size and not wal:
        return f"size {file_size} is not a whole number of {page_size}-byte pages"
    return ""


def _checksum(data: bytes, big_endian: bool, s0: int, s1: int) -> tuple[int, int]:
    """SQLite's WAL checksum (https://sqlite.org/fileformat.html#checksum_algorithm)."""
    words = struct.unpack(f"{'>' if big_endian else '<'}{len(data) // 4}I", data)
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return s0, s1


def wal_problem(wal: bytes) -> str:
    """What is wrong with a WAL's contents ("" when nothing, or nothing that could
    hold a committed transaction SQLite would then drop).

    Damage is: a non-empty WAL with a short or bad header, or a frame of this WAL
    (its salts match the header's) whose checksum fails while another frame of this
    WAL follows it. A bad final frame, or frames of an older WAL generation (other
    salts) after the valid ones, are what SQLite writes itself and recovers from.
    """
    if not wal:
        return ""
    if len(wal) < _WAL_HEADER:
        return f"WAL cut to {len(wal)} bytes, inside its header"
    magic, _version, page_size, _ckpt, salt1, salt2, c1, c2 = struct.unpack(">8I", wal[:32])
    if magic not in _WAL_MAGIC:
        return "WAL header damaged (bad magic)"
    big = magic & 1 == 1
    if _checksum(wal[:24], big, 0, 0) != (c1, c2):
        return "WAL header damaged (checksum)"
    if page_size < 512 or page_size > 65536 or page_size & (page_size - 1):
        return f"WAL header damaged (page size {page_size})"
    frame = _FRAME_HEADER + page_size
    s0, s1 = c1, c2
    bad_at = -1
    for index, start in enumerate(range(_WAL_HEADER, len(wal) - frame + 1, frame)):
        header = wal[start : start + _FRAME_HEADER]
        _page, _commit, f_salt1, f_salt2, f_c1, f_c2 = struct.unpack(">6I", header)
        if (f_salt1, f_salt2) != (salt1, salt2):
            continue  # an older generation's frame, or never written
        if bad_at >= 0:
            return f"WAL frame {bad_at} damaged (checksum) with later frames after it"
        s0, s1 = _checksum(header[:8], big, s0, s1)
        s0, s1 = _checksum(wal[start + _FRAME_HEADER : start + frame], big, s0, s1)
        if (s0, s1) != (f_c1, f_c2):
            bad_at = index
    return ""


def _quick_check_problem(rows: list[tuple[object, ...]]) -> str:
    messages = [str(row[0]) for row in rows[:_MESSAGES]]
    return "" if messages == ["ok"] else "quick_check: " + "; ".join(messages)


# ---- the shell ---------------------------------------------------------------------------


def _read_only(path: Path, fn: Callable[[sqlite3.Connection], _T]) -> _T:
    """``fn`` on a read-only connection to ``path``: SQLite reads the WAL as always, and
    closing it never checkpoints, so the files stay exactly as they were found."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return fn(db)
    finally:
        db.close()


def _quick_check(db: sqlite3.Connection) -> list[tuple[object, ...]]:
    rows: list[tuple[object, ...]] = db.execute("PRAGMA quick_check").fetchall()
    db.execute("SELECT count(*) FROM sqlite_schema").fetchone()
    return rows


def inspect(path: Path) -> Inspection:
    """Check the database at ``path`` (and its WAL): fresh, whole, or damaged.

    The header and WAL checks need no SQLite; then ``PRAGMA quick_check`` on a
    read-only connection, which changes no file.
    """
    if not path.exists():
        return Inspection("fresh")
    size = path.stat().st_size
    with path.open("rb") as file:
        head = file.read(100)
    wal_path = path.with_name(path.name + "-wal")
    wal = wal_path.read_bytes() if wal_path.exists() else b""
    if problem := header_problem(head, size, wal=bool(wal)):
        return Inspection("damaged", problem)
    wal_damage = wal_problem(wal)
    try:
        rows = _read_only(path, _quick_check)
    except sqlite3.Error as exc:
        return Inspection("damaged", f"cannot be read: {exc}")
    if problem := _quick_check_problem(rows):
        return Inspection("damaged", problem)
    if wal_damage:
        return Inspection("wal_damaged", wal_damage)
    return Inspection("ok")


def refuse_if_damaged(path: Path, what: str, remedy: str) -> None:
    """For a store nothing can rebuild: refuse to start on a damaged one, saying why.

    Raises:
        GraphError: the file (or its WAL) is damaged; names the file, the damage and
            ``remedy``.
    """
    found = inspect(path)
    if found.verdict in ("damaged", "wal_damaged"):
        raise GraphError(f"{what} {path} is damaged ({found.reason}): {remedy}")


def quarantine(path: Path, damaged_dir: Path, *, now: float | None = None) -> Path:
    """Move ``path`` and its ``-wal``, ``-shm`` and ``-journal`` into a new directory
    under ``damaged_dir`` (mode 0700, named by UTC time and file); that directory."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    damaged_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = damaged_dir / f"{stamp}-{path.stem}"
    suffix = 1
    while target.exists():  # two recoveries within a second keep both
        suffix += 1
        target = damaged_dir / f"{stamp}-{path.stem}-{suffix}"
    target.mkdir(mode=0o700)
    for side in ("", *_SIDE_FILES):
        source = path.with_name(path.name + side)
        if source.exists():
            source.rename(target / source.name)
    return target


def copy_evidence(path: Path, damaged_dir: Path, *, now: float | None = None) -> Path:
    """Copy (not move) ``path`` and its side files aside, as :func:`quarantine` would."""
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        staging = Path(scratch) / path.name
        for side in ("", *_SIDE_FILES):
            source = path.with_name(path.name + side)
            if source.exists():
                shutil.copy2(source, staging.with_name(source.name))
        return quarantine(staging, damaged_dir, now=now)


def _readable_ids(db: sqlite3.Connection) -> Iterator[str]:
    """Every entity id one can still read, through the table and through its index,
    each in both directions, so one bad page hides as little as it can."""
    scans = (
        "SELECT id FROM entities NOT INDEXED ORDER BY rowid",
        "SELECT id FROM entities NOT INDEXED ORDER BY rowid DESC",
        "SELECT id FROM entities ORDER BY id",
        "SELECT id FROM entities ORDER BY id DESC",
    )
    for sql in scans:
        with contextlib.suppress(sqlite3.Error):
            for (entity_id,) in db.execute(sql):
                if isinstance(entity_id, str):
                    yield entity_id


def salvage_ids(quarantined: Path, name: str) -> tuple[int, bool]:
    """Read the entity ids still readable in the quarantined database ``name`` into
    ``<quarantined>/entity-ids.db``.

    Reads through a read-only connection (the evidence stays as it was found).
    Returns (ids read, whether every scan read to its end); ``(0, False)`` when
    nothing could be read at all.
    """
    out = sqlite3.connect(quarantined / "entity-ids.db", isolation_level=None)
    try:
        out.execute("CREATE TABLE IF NOT EXISTS ids (id TEXT PRIMARY KEY) WITHOUT ROWID")
        out.execute("BEGIN")
        complete = _read_only(quarantined / name, lambda db: _copy_ids(db, out))
        out.execute("COMMIT")
        (count,) = out.execute("SELECT count(*) FROM ids").fetchone()
    except (sqlite3.Error, OSError) as exc:
        log.warning("salvage of %s failed: %s", quarantined / name, exc)
        return 0, False
    finally:
        out.close()
    return int(count), complete and count > 0


def _copy_ids(db: sqlite3.Connection, out: sqlite3.Connection) -> bool:
    """Insert every readable id of ``db`` into ``out``; whether both scans were whole."""
    complete = _scans_complete(db)
    batch: list[tuple[str]] = []
    for entity_id in _readable_ids(db):
        batch.append((entity_id,))
        if len(batch) >= _SALVAGE_BATCH:
            out.executemany("INSERT OR IGNORE INTO ids VALUES (?)", batch)
            batch = []
    out.executemany("INSERT OR IGNORE INTO ids VALUES (?)", batch)
    return complete


def _scans_complete(db: sqlite3.Connection) -> bool:
    """Whether both ways of reading the entity ids read to their end without an error."""
    for sql in (
        "SELECT count(*) FROM entities NOT INDEXED",
        "SELECT count(*) FROM entities INDEXED BY sqlite_autoindex_entities_1",
    ):
        try:
            db.execute(sql).fetchone()
        except sqlite3.Error:
            return False
    return True


def count_missing(ids_path: Path, graph_path: Path) -> int:
    """How many ids salvaged into ``ids_path`` the graph at ``graph_path`` lacks.

    Raises:
        sqlite3.Error: either file cannot be read.
    """
    db = sqlite3.connect(f"file:{ids_path}?mode=ro", uri=True)
    try:
        db.execute("ATTACH ? AS graph", (f"file:{graph_path}?mode=ro",))
        (missing,) = db.execute(
            "SELECT count(*) FROM ids WHERE id NOT IN (SELECT id FROM graph.entities)"
        ).fetchone()
    finally:
        db.close()
    return int(missing)
