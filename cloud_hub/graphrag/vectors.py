"""Entity vectors: their tables in the hub's graph database, and the in-memory index.

``graphrag_vectors`` keeps one unit-length float32 vector per entity (a BLOB), the
model that made it and the hash of the text it was made from. ``graphrag_embed_queue``
holds a row per entity whose searchable text changed and has no vector for it yet:
:func:`enqueue` puts it there inside the graph's write transaction, so a change and its
queue row commit together; text ``''`` means the entity is gone and its vector must go
too. The embedder takes rows (:func:`take`), and :func:`store` writes the vectors and
deletes exactly the rows whose text is still the one embedded: a row queued again
meanwhile stays, for the next round.

sqlite-vec is not used: this Python's ``sqlite3`` cannot load extensions (docs/graphrag.md,
"Vectors"). Search is :class:`VectorIndex`: every vector in one numpy matrix, cosine
similarity by one matrix-vector product.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence

import msgspec
import numpy as np
from numpy.typing import ArrayLike, NDArray

from edge_agent.graph.migrations import Migration

__all__ = [
    "VECTOR_MIGRATIONS",
    "QueueStats",
    "QueuedText",
    "VectorIndex",
    "enqueue",
    "queue_stats",
    "store",
    "take",
]

_V001_VECTORS = """
        CREATE TABLE graphrag_vectors (
            entity_id TEXT PRIMARY KEY,
            model TEXT NOT NULL,
            vector BLOB NOT NULL,
            text_hash TEXT NOT NULL,
            embedded_at REAL NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE graphrag_embed_queue (
            entity_id TEXT PRIMARY KEY,
            text TEXT NOT NULL,
            text_hash TEXT NOT NULL,
            queued_at REAL NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX graphrag_embed_queue_by_age ON graphrag_embed_queue(queued_at);
"""

#: The vector tables (after the hub's and the text index's migrations).
VECTOR_MIGRATIONS: list[Migration] = [("graphrag_001_vectors", _V001_VECTORS)]


class QueuedText(msgspec.Struct, frozen=True):
    """A queue row: the entity's text to embed (``''``: gone) and its hash."""

    entity_id: str
    text: str
    text_hash: str


class QueueStats(msgspec.Struct, frozen=True):
    """How many rows wait, and when the oldest was queued (``None``: none wait)."""

    backlog: int
    oldest: float | None


def enqueue(db: sqlite3.Connection, rows: Iterable[tuple[str, str, str]], now: float) -> None:
    """Queue ``(entity_id, text, text_hash)`` rows for embedding, in the caller's transaction.

    A row already queued takes the new text but keeps its ``queued_at``: the lag counts
    from the first change still without its vector, and the oldest goes first.
    """
    db.executemany(
        "INSERT INTO graphrag_embed_queue (entity_id, text, text_hash, queued_at)"
        " VALUES (?, ?, ?, ?) ON CONFLICT (entity_id) DO UPDATE SET"
        " text = excluded.text, text_hash = excluded.text_hash",
        ((entity_id, text, text_hash, now) for entity_id, text, text_hash in rows),
    )


def take(db: sqlite3.Connection, limit: int) -> list[QueuedText]:
    """The ``limit`` oldest queue rows (a read: they stay queued until :func:`store`)."""
    found = db.execute(
        "SELECT entity_id, text, text_hash FROM graphrag_embed_queue"
        " ORDER BY queued_at, entity_id LIMIT ?",
        (limit,),
    )
    return [QueuedText(*row) for row in found]


def queue_stats(db: sqlite3.Connection) -> QueueStats:
    """The queue's length and its oldest row's ``queued_at``."""
    backlog, oldest = db.execute(
        "SELECT count(*), min(queued_at) FROM graphrag_embed_queue"
    ).fetchone()
    return QueueStats(backlog=backlog, oldest=oldest)


def store(
    db: sqlite3.Connection,
    model: str,
    done: Sequence[tuple[QueuedText, NDArray[np.float32] | None]],
    now: float,
) -> list[QueuedText]:
    """Apply embedded rows, in the caller's write transaction: each row's vector (``None``
    for a gone entity: its vector is deleted), and its queue row deleted, for the rows
    whose queued text is still the one embedded. The others are left as they are.

    Returns:
        The rows applied.
    """
    applied = []
    for row, vector in done:
        gone = db.execute(
            "DELETE FROM graphrag_embed_queue WHERE entity_id = ? AND text_hash = ?"
            " RETURNING entity_id",
            (row.entity_id, row.text_hash),
        ).fetchone()
        if gone is None:
            continue
        if vector is None:
            db.execute("DELETE FROM graphrag_vectors WHERE entity_id = ?", (row.entity_id,))
        else:
            db.execute(
                "INSERT OR REPLACE INTO graphrag_vectors VALUES (?, ?, ?, ?, ?)",
                (row.entity_id, model, vector.astype(np.float32).tobytes(), row.text_hash, now),
            )
        applied.append(row)
    return applied


class VectorIndex:
    """Every vector of one model in memory, for nearest-neighbour search by cosine.

    A float32 matrix of unit rows (grown by doubling, so upserts are amortised O(1) a
    row) and the entity id of each row. Memory: 4 bytes a number of each vector, plus
    the id; 100,000 vectors of 384 numbers take 154 MB. A search is one matrix-vector
    product over them all (docs/graphrag.md, "Vectors", has the times). Thread-safe:
    the embedder writes from the event loop while searches read from query threads.
    """

    def __init__(self) -> None:
        self.model = ""
        self._lock = threading.Lock()
        self._matrix: NDArray[np.float32] = np.zeros((0, 0), dtype=np.float32)
        self._ids: list[str] = []
        self._rows: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def dim(self) -> int:
        """Numbers per vector (0 while empty and never filled)."""
        return int(self._matrix.shape[1])

    def reset(self, model: str) -> None:
        """Empty the index; it now holds vectors of ``model``."""
        with self._lock:
            self.model = model
            self._matrix = np.zeros((0, 0), dtype=np.float32)
            self._ids = []
            self._rows = {}

    def load(self, db: sqlite3.Connection, model: str = "") -> int:
        """Replace the contents with the stored vectors of ``model`` (empty: the model of
        the newest vector); how many were loaded."""
        if not model:
            newest = db.execute(
                "SELECT model FROM graphrag_vectors ORDER BY embedded_at DESC LIMIT 1"
            ).fetchone()
            model = newest[0] if newest else ""
        found = db.execute(
            "SELECT entity_id, vector FROM graphrag_vectors WHERE model = ?", (model,)
        ).fetchall()
        self.reset(model)
        if found:
            vectors = np.stack([np.frombuffer(blob, dtype=np.float32) for _, blob in found])
            self.upsert([entity_id for entity_id, _ in found], vectors)
        return len(found)

    def upsert(self, ids: Sequence[str], vectors: ArrayLike) -> None:
        """Add or replace the vectors of ``ids`` (one row each), normalised.

        Raises:
            ValueError: not one row per id, or rows of another length than the index's.
        """
        matrix = _unit_rows(vectors)
        if matrix.shape[0] != len(ids):
            raise ValueError(f"{len(ids)} ids for {matrix.shape[0]} vectors")
        with self._lock:
            if matrix.shape[1] != self.dim:
                if self._ids:
                    raise ValueError(
                        f"vectors of {matrix.shape[1]} numbers; the index has {self.dim}"
                    )
                self._matrix = np.zeros((0, matrix.shape[1]), dtype=np.float32)
            for entity_id, vector in zip(ids, matrix, strict=True):
                row = self._rows.get(entity_id)
                if row is None:
                    row = self._append(entity_id)
                self._matrix[row] = vector

    def remove(self, ids: Iterable[str]) -> None:
        """Drop the vectors of ``ids`` (those it has)."""
        with self._lock:
            for entity_id in ids:
                row = self._rows.pop(entity_id, None)
                if row is None:
                    continue
                last = len(self._ids) - 1
                moved = self._ids.pop()
                if row != last:  # the last row fills the hole
                    self._matrix[row] = self._matrix[last]
                    self._ids[row] = moved
                    self._rows[moved] = row

    def search(
        self,
        vector: ArrayLike,
        limit: int,
        allowed: Callable[[str], bool] | None = None,
    ) -> list[tuple[str, float]]:
        """The ``limit`` entities most similar to ``vector`` (cosine, best first), among
        those ``allowed`` accepts (all when ``None``; it is called outside the index's
        lock, so it may take its time).

        Raises:
            ValueError: ``vector`` has another length than the index's vectors.
        """
        query = _unit_rows(vector)[0]
        with self._lock:
            count = len(self._ids)
            if count == 0 or limit <= 0:
                return []
            if len(query) != self.dim:
                raise ValueError(f"a vector of {len(query)} numbers; the index has {self.dim}")
            scores = self._matrix[:count] @ query
            ids = self._ids[:]
        return _best(scores, ids, limit, allowed)

    def _append(self, entity_id: str) -> int:
        row = len(self._ids)
        if row == self._matrix.shape[0]:
            grown = np.zeros((max(16, 2 * row), self.dim), dtype=np.float32)
            grown[:row] = self._matrix
            self._matrix = grown
        self._ids.append(entity_id)
        self._rows[entity_id] = row
        return row


def _unit_rows(vectors: ArrayLike) -> NDArray[np.float32]:
    """``vectors`` as a 2-D float32 array of unit rows (zero rows stay zero)."""
    matrix = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
    norms = np.linalg.norm(matrix, axis=1, keepdims=True).astype(np.float32)
    norms[norms == 0] = 1.0
    unit: NDArray[np.float32] = matrix / norms
    return unit


def _best(
    scores: NDArray[np.float32],
    ids: list[str],
    limit: int,
    allowed: Callable[[str], bool] | None,
) -> list[tuple[str, float]]:
    """The best ``limit`` (id, score) of ``scores``, among ids ``allowed`` accepts: only
    the top few are sorted, and more only when the filter turned too many away."""
    wanted = limit if allowed is None else 4 * limit
    while True:
        wanted = min(wanted, len(scores))
        top = np.argpartition(-scores, wanted - 1)[:wanted]
        order = top[np.argsort(-scores[top], kind="stable")]
        found = [
            (ids[row], float(scores[row]))
            for row in order.tolist()
            if allowed is None or allowed(ids[row])
        ]
        if len(found) >= limit or wanted == len(scores):
            return found[:limit]
        wanted *= 4
