"""The hub's GraphRAG part: the text index follows the graph, and the querier answers
``graph.query.search``, ``graph.query.local`` and ``graph.query.global``.

The text index is rebuilt by :meth:`GraphRag.after_apply` inside the materialiser's
write transaction, so what the graph holds is findable by text as soon as it is
committed.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from cloud_hub.graphrag import text
from cloud_hub.graphrag.search import GlobalQuery, LocalQuery, Searcher, SearchQuery
from edge_agent.graph.service import GraphService

__all__ = ["GraphRag"]


class GraphRag:
    """A part of the hub (see :mod:`edge_agent.blueprint`), started after the graph.

    Args:
        graph: the hub's graph service (its querier serves the queries).
    """

    name = "graphrag"

    def __init__(self, graph: GraphService) -> None:
        self._graph = graph
        self.searcher = Searcher()
        self.refreshed = 0

    async def start(self) -> None:
        """Serve the GraphRAG queries through the graph's querier."""
        querier = self._graph.querier
        querier.add_query("search", SearchQuery, self.searcher.search)
        querier.add_query("local", LocalQuery, self.searcher.local)
        querier.add_query("global", GlobalQuery, self.searcher.global_)

    async def stop(self) -> None:
        """Nothing runs in the background yet."""

    def health(self) -> dict[str, Any]:
        """The text index's state."""
        return {"status": "ok", "text_refreshed": self.refreshed}

    def after_apply(self, db: sqlite3.Connection) -> None:
        """In the materialiser's write transaction: the text of what it wrote."""
        self.refreshed += text.refresh(db)
