"""Every HTTP route of the edge agent, in one table."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import Route

from edge_agent.api import admin, views
from edge_agent.api.openapi import openapi
from edge_agent.api.views import AgentServices

__all__ = ["ROUTES", "build_app"]

ROUTES = [
    Route("/health", views.health, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
    Route("/metrics", views.metrics, methods=["GET"]),
    Route("/graph/stats", views.graph_stats, methods=["GET"]),
    Route("/graph/entities/{entity_id}", views.entity, methods=["GET"]),
    Route("/graph/entities/{entity_id}/relationships", views.relationships, methods=["GET"]),
    Route("/graph/query/{name}", views.query, methods=["POST"]),
    Route("/ingest", views.ingest, methods=["POST"]),
    Route("/admin/export", admin.admin_export, methods=["POST"]),
    Route("/admin/import", admin.admin_import, methods=["POST"]),
    Route("/admin/config", admin.admin_config, methods=["GET", "POST"]),
]


def build_app(agent: AgentServices) -> Starlette:
    """The ASGI app serving ``agent``."""
    app = Starlette(routes=ROUTES)
    app.state.agent = agent
    return app
