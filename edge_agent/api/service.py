"""The API part of a program: its HTTP listeners and its queries over NATS.

Both are adapters over the same capabilities: the route table's views and the NATS
request/reply service call the same querier.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from nats.aio.subscription import Subscription
from starlette.applications import Starlette
from starlette.routing import BaseRoute, Route

from edge_agent.api import views
from edge_agent.api.nats_queries import serve_queries
from edge_agent.api.routes import build_app
from edge_agent.api.security import server_ssl_context
from edge_agent.api.server import HttpServer
from edge_agent.api.views import ServiceCore
from edge_agent.config import AuthConfig, Config
from edge_agent.config.loader import is_loopback
from edge_agent.nats.connection import NatsConnection

__all__ = ["ApiService"]

log = logging.getLogger(__name__)


class ApiService:
    """The HTTP API (and the metrics listener when configured apart), and NATS queries.

    Args:
        services: what the views call (the running program).
        config: the program's config (service-manager, metrics and gateway sections).
        routes: the routes to serve; called at start, after the parts before it ran.
        auth: the API's bearer auth.
        nats: where to answer ``graph.query.*`` requests.
        http_options: more uvicorn settings (the hub's WebSocket ones), called at start.
        openapi_paths, title: the OpenAPI document's paths of the program's own routes,
            and its title.

    Raises:
        ConfigError: the TLS certificate or key cannot be loaded (at construction,
            so a bad certificate fails before anything starts).
    """

    name = "api"

    def __init__(
        self,
        services: ServiceCore,
        config: Config,
        *,
        routes: Callable[[], Sequence[BaseRoute]],
        auth: Callable[[], AuthConfig],
        nats: NatsConnection,
        http_options: Callable[[], dict[str, Any]] = dict,
        openapi_paths: Mapping[str, Any] | None = None,
        title: str = "SemStreams edge agent",
    ) -> None:
        self._services = services
        self._config = config
        self._routes = routes
        self._auth = auth
        self._nats = nats
        self._http_options = http_options
        self._openapi_paths = openapi_paths
        self._title = title
        tls = config.services.service_manager.config.tls
        #: The API's TLS context (also the hub's sync listener's), or ``None``.
        self.ssl_context: ssl.SSLContext | None = (
            server_ssl_context(tls) if tls and tls.cert_file else None
        )
        self._servers: list[HttpServer] = []
        self._queries: Subscription | None = None

    @property
    def port(self) -> int:
        """The port the API listens on (resolved when configured as 0)."""
        assert self._servers, "the API is not started"
        return self._servers[0].port

    @property
    def scheme(self) -> str:
        """``https`` or ``http``."""
        return "https" if self.ssl_context else "http"

    async def start(self) -> None:
        """Answer NATS queries; bind and serve the API (and the metrics port).

        Raises:
            OSError: a port could not be bound.
        """
        self._queries = await serve_queries(self._nats.client, self._services.querier)
        service = self._config.services.service_manager.config
        app = build_app(
            self._services,
            routes=self._routes(),
            auth=self._auth(),
            rate_limit=self._config.api_gateway.config.rate_limit,
            openapi_paths=self._openapi_paths,
            title=self._title,
        )
        await self.serve(
            app, port=service.http_port, ssl_context=self.ssl_context, options=self._http_options()
        )
        if warning := self.open_warning():
            log.warning("api: %s", warning)
        metrics = self._config.services.metrics
        if metrics.enabled:
            app = Starlette(routes=[Route(metrics.config.path, views.metrics, methods=["GET"])])
            app.state.agent = self._services
            await self.serve(app, port=metrics.config.port)

    async def serve(
        self,
        app: Any,
        *,
        port: int,
        ssl_context: ssl.SSLContext | None = None,
        options: dict[str, Any] | None = None,
    ) -> HttpServer:
        """One more listener on the API's host, stopped with the API."""
        server = HttpServer(
            app,
            host=self._config.services.service_manager.config.http_host,
            port=port,
            ssl_context=ssl_context,
            options=options or {},
        )
        await server.start()
        self._servers.append(server)
        return server

    async def stop(self) -> None:
        """Stop the listeners, newest first, and the NATS query service."""
        for server in reversed(self._servers):
            await server.stop()
        if self._queries is not None:
            with contextlib.suppress(Exception):
                await self._queries.unsubscribe()

    def health(self) -> dict[str, Any] | None:
        """Nothing to report (a request that reaches ``/health`` proves the API), but
        that it serves the network without auth, when it was told to."""
        warning = self.open_warning()
        return {"status": "ok", "warning": warning} if warning else None

    def open_warning(self) -> str:
        """Why the API is open to anyone who reaches it ("" when it is not)."""
        service = self._config.services.service_manager.config
        if self._auth().type != "none" or is_loopback(service.http_host):
            return ""
        return (
            f"the API listens on {service.http_host} without auth"
            " (auth.allow_unauthenticated): anyone who reaches it can write and administer"
        )
