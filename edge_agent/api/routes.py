"""Every HTTP route of the edge agent, in one table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.routing import BaseRoute, Route

from edge_agent.api import admin, views
from edge_agent.api.openapi import openapi
from edge_agent.api.security import security_middleware
from edge_agent.api.views import ServiceCore
from edge_agent.config import AuthConfig, RateLimitConfig

__all__ = ["ROUTES", "SHARED_ROUTES", "build_app"]

#: What both the edge agent and the hub serve.
SHARED_ROUTES = [
    Route("/health", views.health, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
    Route("/metrics", views.metrics, methods=["GET"]),
    Route("/graph/stats", views.graph_stats, methods=["GET"]),
    Route("/graph/entities/{entity_id}", views.entity, methods=["GET"]),
    Route("/graph/entities/{entity_id}/relationships", views.relationships, methods=["GET"]),
    Route("/graph/query/{name}", views.query, methods=["POST"]),
    Route("/admin/export", admin.admin_export, methods=["POST"]),
]

#: The edge agent's routes: the shared ones, and those that write its own graph
#: (a hub's graph is written by its materialiser only, so it serves neither).
ROUTES = [
    *SHARED_ROUTES,
    Route("/ingest", views.ingest, methods=["POST"]),
    Route("/admin/import", admin.admin_import, methods=["POST"]),
    Route("/admin/config", admin.admin_config, methods=["GET", "POST"]),
]


def build_app(
    agent: ServiceCore,
    *,
    routes: Sequence[BaseRoute] = ROUTES,
    auth: AuthConfig | None = None,
    rate_limit: RateLimitConfig | None = None,
    openapi_paths: Mapping[str, Any] | None = None,
    title: str = "SemStreams edge agent",
) -> Starlette:
    """The ASGI app serving ``routes`` for ``agent``, behind the auth and rate limit given.

    ``openapi_paths`` documents routes of the assembly's own (``/openapi.json`` lists
    them with the shared ones it serves), under ``title``.
    """
    middleware = security_middleware(
        auth or AuthConfig(), rate_limit or RateLimitConfig(), agent.metrics
    )
    app = Starlette(
        routes=list(routes),
        middleware=middleware,
        exception_handlers={views.BodyTooLarge: views.too_large},
    )
    app.state.agent = agent
    app.state.openapi_paths = dict(openapi_paths or {})
    app.state.openapi_title = title
    return app
