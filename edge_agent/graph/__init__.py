"""The SQLite knowledge graph: schema, migrations, the single-writer store and queries."""

from edge_agent.graph.store import ApplyResult, GraphStore

__all__ = ["ApplyResult", "GraphStore"]
