"""The graph part of a program: the store (its single writer) and the querier over it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge_agent.config import GraphSettings
from edge_agent.graph.migrations import MIGRATIONS, Migration
from edge_agent.graph.outbox import SyncMode
from edge_agent.graph.querier import Querier
from edge_agent.graph.recovery import Recovery, heal
from edge_agent.graph.store import GraphStore
from edge_agent.metrics import Metrics

__all__ = ["GraphService"]

log = logging.getLogger(__name__)
#: A recount of what a recovery still misses reads every salvaged id: not at every
#: ``/health``.
_RECOUNT_S = 2.0


class GraphService:
    """The knowledge graph in ``<state_dir>/graph.db`` and its (cached) queries.

    Args:
        path: the database file.
        origin: this program's id, written into ``origin`` of what it applies.
        settings: ``graph.config``.
        metrics: the program's metrics (the query cache counts into them).
        outbox: the sync outbox's mode, or ``None`` for none.
        max_outbox_bytes: the outbox's byte limit (0: none).
        migrations: the schema (the hub passes the graph's plus its own).
    """

    name = "store"

    def __init__(
        self,
        path: Path,
        *,
        origin: str,
        settings: GraphSettings,
        metrics: Metrics,
        outbox: SyncMode | None = None,
        max_outbox_bytes: int = 0,
        migrations: Sequence[Migration] = MIGRATIONS,
    ) -> None:
        self._path = path
        self._origin = origin
        self._settings = settings
        self._metrics = metrics
        self._outbox = outbox
        self._max_outbox_bytes = max_outbox_bytes
        self._migrations = migrations
        self.store: GraphStore
        self.querier: Querier
        self._ok = True
        #: What healing the store at start did (None: it was whole or new).
        self.recovery: Recovery | None = None
        self._counted_at = 0.0

    async def start(self) -> None:
        """Check the store (moving a damaged one aside, see :mod:`recovery`), open and
        migrate it; build the querier.

        Raises:
            GraphError: the file cannot be opened, migrated or indexed.
        """
        settings = self._settings
        # Only a program with a sync link can ask a hub for its share; the hub
        # rebuilds from its own log.
        self.recovery = await asyncio.to_thread(heal, self._path, resync=self._outbox is not None)
        if self.recovery is not None:
            self._metrics.storage_recoveries.labels(self.recovery.verdict).inc()
        self.store = await asyncio.to_thread(
            GraphStore,
            self._path,
            origin=self._origin,
            indexes=settings.indexer.indexes,
            edge_batch_size=settings.data_manager.edge_batch_size,
            outbox=self._outbox,
            max_outbox_bytes=self._max_outbox_bytes,
            migrations=self._migrations,
            synchronous=settings.sqlite_synchronous,
        )
        await self.store.write(self.store.database.set_cache_size, settings.sqlite_cache_size)
        self.querier = Querier(
            self.store,
            indexes=settings.indexer.indexes,
            metrics=self._metrics,
            cache_enabled=settings.querier.cache_enabled,
            max_cache_size=settings.querier.max_cache_size,
            max_cache_bytes=int(settings.querier.max_cache_bytes),
        )

    async def stop(self) -> None:
        """Finish queued writes and close the store."""
        if hasattr(self, "store"):
            await asyncio.to_thread(self.store.close)

    async def check(self) -> None:
        """Read one row, to tell ``/health`` whether the store answers; after a
        recovery, count what is still missing (at most every few seconds)."""
        self._ok = await asyncio.to_thread(self._readable)
        if self.recovery is not None and time.monotonic() - self._counted_at > _RECOUNT_S:
            self._counted_at = time.monotonic()
            await asyncio.to_thread(self.recovery.recount, self._path)
            # The count that finished last, not this one's (a newer may have finished).
            self._metrics.storage_unrecovered.set(self.recovery.unrecovered or 0)

    def _readable(self) -> bool:
        try:
            with self.store.reader() as db:
                db.execute("SELECT 1 FROM entities LIMIT 1").fetchall()
        except Exception:
            return False
        return True

    async def share_ended(self, figures: dict[str, int]) -> None:
        """The hub's share came back whole: record it, and log what is still missing."""
        recovery = self.recovery
        if recovery is None:
            return
        recovery.hub_resync, recovery.share = "done", dict(figures)
        missing = await asyncio.to_thread(recovery.recount, self._path)
        self._metrics.storage_unrecovered.set(missing or 0)
        if missing is None:  # nothing was moved aside: a WAL that lost frames
            log.info("recovery: the hub's share is merged (%s)", figures)
        elif not recovery.read_complete:
            log.warning(
                "recovery: the hub's share is merged; the damaged store could not be read to"
                " its end: of the %d entities read in it, %d are not back, and what it held"
                " beyond that and the hub did not is unknown",
                recovery.damaged_entities,
                missing,
            )
        else:
            (log.warning if missing else log.info)(
                "recovery: the hub's share is merged; %d of the %d entities in the damaged"
                " store are not back",
                missing,
                recovery.damaged_entities,
            )

    def health(self) -> dict[str, Any]:
        """``ok`` or ``down``, as of the last :meth:`check`, and any recovery at start."""
        view: dict[str, Any] = {"status": "ok" if self._ok else "down"}
        if self.recovery is not None:
            view["recovery"] = self.recovery.view()
        return view

    def committed(self, touched: frozenset[str]) -> None:
        """After a commit: drop what it made stale from the query cache."""
        self.querier.invalidate(touched)
