"""The HTTP API: one route table, thin views over the agent's capabilities."""

from edge_agent.api.routes import build_app

__all__ = ["build_app"]
