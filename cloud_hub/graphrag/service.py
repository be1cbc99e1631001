"""The hub's GraphRAG part: the text index follows the graph, the embedder follows the
text, the community service follows the relationships, and the querier answers
``graph.query.search``, ``graph.query.local`` and ``graph.query.global``.

The text index is rebuilt by :meth:`GraphRag.after_apply` inside the materialiser's
write transaction, and the entities whose text changed are queued for embedding in that
same transaction: what the graph holds is findable by text as soon as it is committed,
and by vector once the embedder has caught up (seconds), with nothing lost while the
embedding service is away.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Sequence
from typing import Any

from cloud_hub.graphrag import text, vectors
from cloud_hub.graphrag.communities import store as communities
from cloud_hub.graphrag.communities.config import CommunitiesConfig
from cloud_hub.graphrag.communities.service import CommunityService
from cloud_hub.graphrag.search import GlobalQuery, LocalQuery, Searcher, SearchQuery
from cloud_hub.metrics import HubMetrics
from edge_agent.config.schema import EmbeddingConfig
from edge_agent.graph.service import GraphService
from edge_agent.tasks import stop_task

__all__ = ["GraphRag"]


class GraphRag:
    """A part of the hub (see :mod:`edge_agent.blueprint`), started after the graph.

    Args:
        graph: the hub's graph service (its querier serves the queries).
        embedding: ``graph.config.indexer.embedding``.
        settings: the ``communities`` component's settings.
        metrics: the hub's metrics.
    """

    name = "graphrag"

    def __init__(
        self,
        graph: GraphService,
        embedding: EmbeddingConfig,
        settings: CommunitiesConfig,
        metrics: HubMetrics,
    ) -> None:
        self._graph = graph
        self._embedding = embedding
        self._settings = settings
        self._metrics = metrics
        self.embedder: Any = None  # an Embedder when embeddings are on (import on use)
        self.communities: CommunityService | None = None
        self._task: asyncio.Task[None] | None = None
        self.searcher = Searcher()
        self.refreshed = 0

    async def start(self) -> None:
        """Start the embedder (when on) and the community service; serve the queries."""
        database = self._graph.store.database
        embed, nearest = None, None
        if self._embedding.enabled:
            await self._start_embedder()
            embed, nearest = self.embedder.embed_query, self.embedder.index.search
        self.searcher = Searcher(
            embed=embed,
            nearest=nearest,
            memberships=communities.memberships,
            rank_communities=communities.search_communities,
            community=communities.community,
        )
        self.communities = CommunityService(
            database.read, database.write_transaction, self._settings, self._metrics
        )
        self._task = asyncio.create_task(self.communities.run(), name="communities")
        querier = self._graph.querier
        querier.add_query("search", SearchQuery, self.searcher.search)
        querier.add_query("local", LocalQuery, self.searcher.local)
        querier.add_query("global", GlobalQuery, self.searcher.global_)

    async def _start_embedder(self) -> None:
        from cloud_hub.graphrag.embedder import Embedder
        from cloud_hub.graphrag.embedding.client import EmbeddingClient
        from cloud_hub.graphrag.vectors import VectorIndex

        metrics = self._metrics
        client = EmbeddingClient(
            self._embedding,
            on_request=lambda outcome: metrics.embedding_requests.labels(outcome).inc(),
        )
        index = VectorIndex()
        database = self._graph.store.database
        self.embedder = Embedder(
            client, index, read=database.read, write=database.write_transaction, metrics=metrics
        )
        await self.embedder.start()

    async def stop(self) -> None:
        """Stop the community service and the embedder (what is queued stays queued)."""
        if self._task is not None:
            await stop_task(self._task)
        if self.embedder is not None:
            await self.embedder.stop()

    def health(self) -> dict[str, Any]:
        """The text index's, the embedder's and the communities' state."""
        report: dict[str, Any] = {"status": "ok", "text_refreshed": self.refreshed}
        parts = {"embedding": self.embedder, "communities": self.communities}
        for name, part in parts.items():
            if part is None:
                continue
            report[name] = part.health()
            if report[name]["status"] != "ok":
                report["status"] = report[name]["status"]
        return report

    def after_apply(self, db: sqlite3.Connection) -> None:
        """In the materialiser's write transaction: the text of what it wrote, and the
        embedding queue of what changed."""
        changed = self._queue if self._embedding.enabled else None
        self.refreshed += text.refresh(db, changed)

    @staticmethod
    def _queue(db: sqlite3.Connection, rows: Sequence[tuple[str, str, str]]) -> None:
        vectors.enqueue(db, rows, time.time())
