"""The embedder: keeps each entity's vector current with its searchable text.

A part of the hub (see :mod:`edge_agent.blueprint`). At start it loads the stored
vectors into the :class:`VectorIndex`; then it drains ``graphrag_embed_queue``, oldest
first, ``batch_size`` rows a round: it reads them, asks the embedding service for their
vectors, and in one write transaction stores them and deletes the rows still holding
the text it embedded (a row queued again meanwhile stays for the next round); then it
updates the index with what was written. A gone entity (text ``''``) loses its vector.

When the service is down, or refuses, the rows stay queued: the embedder waits (until
the breaker lets a trial through, or a jittered back-off, at most 30 s) and tries
again, so nothing is lost and the backlog drains once the service is back. Meanwhile
:meth:`Embedder.embed_query` answers ``None`` and searches answer from text alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import numpy as np
from numpy.typing import NDArray

from cloud_hub.graphrag.embedding.client import EmbeddingClient, EmbeddingError, backoff
from cloud_hub.graphrag.vectors import QueuedText, QueueStats, VectorIndex, queue_stats, store, take
from cloud_hub.metrics import HubMetrics
from edge_agent.errors import GraphError
from edge_agent.tasks import stop_task

__all__ = ["Embedder", "Read", "Write"]

log = logging.getLogger(__name__)
_T = TypeVar("_T")
#: The longest wait between two tries while the service is down.
_MAX_WAIT = 30.0


class Read(Protocol):
    """Runs ``fn(connection)`` on a read-only connection of the graph database, blocking
    (``Database.read``); the embedder calls it in a worker thread."""

    def __call__(self, fn: Callable[[sqlite3.Connection], _T], /) -> _T: ...


class Write(Protocol):
    """Runs ``fn(connection)`` in one write transaction on the store's writer thread
    (``Database.write_transaction``)."""

    def __call__(self, fn: Callable[[sqlite3.Connection], _T], /) -> Awaitable[_T]: ...


class Embedder:
    """Drains the embedding queue into the vector tables and the index.

    Args:
        client: the embedding service's client (closed by :meth:`stop`).
        index: the index searches read; the embedder fills it and keeps it current.
        read: see :class:`Read`.
        write: see :class:`Write`.
        metrics: the hub's metrics, or ``None``.
        idle: seconds between looks at an empty queue.
        clock: epoch seconds (``queued_at`` and ``embedded_at`` are epoch seconds).
        rand: uniform numbers in [0, 1), for the back-off's jitter.
    """

    name = "embedder"

    def __init__(
        self,
        client: EmbeddingClient,
        index: VectorIndex,
        *,
        read: Read,
        write: Write,
        metrics: HubMetrics | None = None,
        idle: float = 1.0,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.client = client
        self.index = index
        self._read = read
        self._write = write
        self._metrics = metrics
        self._idle = idle
        self._clock = clock
        self._rand = rand
        self._batch = client.settings.batch_size
        self._stats = QueueStats(backlog=0, oldest=None)
        self._failures = 0
        self._last_error = ""
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Load the stored vectors of the configured model (or of the newest vector's,
        when the service chooses) into the index, then drain the queue in a task."""
        loaded = await asyncio.to_thread(
            self._read, functools.partial(self.index.load, model=self.client.settings.model)
        )
        log.info("embedder: %d vectors of %s loaded", loaded, self.index.model or "no model")
        self._task = asyncio.create_task(self._run(), name="embedder")

    async def stop(self) -> None:
        """Stop draining (what is queued stays queued) and close the client."""
        if self._task is not None:
            await stop_task(self._task)
        await self.client.aclose()

    async def _run(self) -> None:
        while True:
            try:
                done = await self.drain_once()
            except (EmbeddingError, GraphError) as exc:
                wait = self._failed(exc)
            except Exception as exc:  # a bug: logged with its traceback, never silent
                log.exception("embedder: round failed")
                wait = self._failed(exc)
            else:
                if self._failures:
                    log.info("embedder: working again after %d failed rounds", self._failures)
                self._failures, self._last_error = 0, ""
                wait = 0.0 if done else self._idle
            with contextlib.suppress(GraphError):  # the next round reports it
                await self.refresh()
            await asyncio.sleep(wait)

    def _failed(self, exc: Exception) -> float:
        """Note a failed round; the seconds to wait before the next."""
        if not self._failures:
            log.warning("embedder: %s; the queue waits, retrying", exc)
        self._failures += 1
        self._last_error = str(exc)
        wait = backoff(min(self._failures, 6), self._rand())
        return min(_MAX_WAIT, max(self.client.retry_in(), wait))

    async def drain_once(self) -> int:
        """Embed the oldest queued rows, one batch; how many were applied.

        Raises:
            EmbeddingError: the service is down or refused (nothing was written).
            GraphError: the database refused.
        """
        rows = await asyncio.to_thread(self._read, functools.partial(take, limit=self._batch))
        if not rows:
            return 0
        texts = [row for row in rows if row.text]
        embedded = await self.client.embed([row.text for row in texts])
        model = embedded.model or self.index.model
        if model != self.index.model:
            if len(self.index):
                log.warning(
                    "embedder: the service's model is now %s (was %s): the index starts over",
                    model,
                    self.index.model,
                )
            self.index.reset(model)
        vectors = dict(zip((row.entity_id for row in texts), embedded.vectors, strict=True))
        done = [(row, vectors.get(row.entity_id)) for row in rows]
        applied = await self._write(
            functools.partial(store, model=model, done=done, now=self._clock())
        )
        self._apply(applied, vectors)
        return len(applied)

    def _apply(self, applied: list[QueuedText], vectors: dict[str, NDArray[np.float32]]) -> None:
        """Bring the index in line with what was written."""
        kept = [row.entity_id for row in applied if row.text]
        if kept:
            self.index.upsert(kept, np.stack([vectors[entity_id] for entity_id in kept]))
        self.index.remove(row.entity_id for row in applied if not row.text)
        if self._metrics is not None:
            self._metrics.embeddings.inc(len(applied))

    async def refresh(self) -> QueueStats:
        """Read the queue's length and age again (and set the gauges)."""
        self._stats = await asyncio.to_thread(self._read, queue_stats)
        if self._metrics is not None:
            self._metrics.embedding_backlog.set(self._stats.backlog)
            self._metrics.embedding_lag.set(self.lag_seconds())
        return self._stats

    def embed_query(self, text: str) -> NDArray[np.float32] | None:
        """``text``'s vector, comparable with the index's; ``None`` when the service is
        down, refuses, the breaker is open, or its vector has another length than the
        index's (the caller answers from text: degraded). Blocking: call it from a
        thread."""
        vector = self.client.embed_now(text)
        if vector is None or (len(self.index) and len(vector) != self.index.dim):
            return None
        return vector

    def backlog(self) -> int:
        """Queued rows, as of the last look (each round, and at least every
        ``idle`` seconds or back-off)."""
        return self._stats.backlog

    def lag_seconds(self) -> float:
        """Age of the oldest queued row (0 when none), as of the last look."""
        if self._stats.oldest is None:
            return 0.0
        return max(0.0, self._clock() - self._stats.oldest)

    def health(self) -> dict[str, Any]:
        """``ok``, or ``degraded`` while the service fails (searches answer from text)."""
        return {
            "status": "degraded" if self._failures else "ok",
            "breaker": self.client.state(),
            "model": self.index.model,
            "vectors": len(self.index),
            "backlog": self.backlog(),
            "lag_seconds": round(self.lag_seconds(), 1),
            "error": self._last_error,
        }
