"""The GraphRAG tables in the hub's graph database, after the hub's own."""

from __future__ import annotations

from cloud_hub.graph.schema import HUB_MIGRATIONS
from cloud_hub.graphrag.communities.store import COMMUNITY_MIGRATIONS
from cloud_hub.graphrag.text import TEXT_MIGRATIONS
from cloud_hub.graphrag.vectors import VECTOR_MIGRATIONS
from edge_agent.graph.migrations import Migration

__all__ = ["GRAPH_MIGRATIONS"]

#: The hub graph's whole schema: the edge's graph, the hub's own, then GraphRAG's.
GRAPH_MIGRATIONS: list[Migration] = [
    *HUB_MIGRATIONS,
    *VECTOR_MIGRATIONS,
    *TEXT_MIGRATIONS,
    *COMMUNITY_MIGRATIONS,
]
