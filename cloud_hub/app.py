"""Wiring of the cloud hub: the edge agent's parts plus the edges' sync links.

The hub is an :class:`~edge_agent.app.Agent` (embedded NATS, JetStream, the graph store,
queries, the HTTP API) that also runs ``websocket_input`` components and serves
``GET /edges``. On the API's port the sync path is a route of the API server; on
another port it gets a listener of its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.routing import BaseRoute, Route, WebSocketRoute

from cloud_hub.api.views import edges
from cloud_hub.provision.advertise import hub_advertiser
from cloud_hub.provision.api import ENROL_PATH, provisioning_routes
from cloud_hub.provision.registry import Registry
from cloud_hub.provision.service import Enrolment
from cloud_hub.sync.input import SyncInput
from edge_agent.api.server import HttpServer
from edge_agent.app import Agent
from edge_agent.config import AuthConfig, ComponentConfig
from edge_agent.config.schema import WebsocketInputConfig
from edge_agent.provision.identity import Identity

__all__ = ["Hub"]

log = logging.getLogger(__name__)


class Hub(Agent):
    """The running cloud hub."""

    program = "cloud hub"
    sync_input: SyncInput | None = None
    enrolment: Enrolment | None = None

    @property
    def sync_path(self) -> str:
        """Where edges sync (the first ``websocket_input``'s path)."""
        return self.sync_input.settings.path if self.sync_input else "/edge-sync"

    @property
    def sync_port(self) -> int | None:
        """The sync listener's port when it is not the API's, else ``None``."""
        if self.sync_input is None or self._shares_api_port(self.sync_input.settings):
            return None
        return self.sync_input.settings.port

    async def start(self) -> None:
        """Start the agent's parts and the hub's; then advertise the hub by mDNS."""
        await super().start()
        settings = self.config.provisioning
        if self.enrolment is not None and settings.advertise:
            self._advertiser = hub_advertiser(self, settings)
            await self._advertiser.start()

    async def stop(self) -> None:
        """Stop everything, then close the registry."""
        await super().stop()
        if self.enrolment is not None:
            self.enrolment.registry.close()

    def _prepare_identity(self) -> None:
        """The hub's identity is its own key (made in :meth:`_start_components`)."""

    async def _start_edge_provisioning(self) -> None:
        """A hub does not enrol; it advertises itself in :meth:`start`."""

    async def _start_components(self) -> None:
        if self.config.provisioning.enabled:
            self._loop = asyncio.get_running_loop()
            self.enrolment = Enrolment(
                self.config.provisioning,
                Identity.load_or_create(self.state_dir / "hub_key.pem"),
                Registry(self.state_dir / "registry.db"),
                on_revoke=self._cut_off,
            )
            log.info("provisioning: hub key %s", self.enrolment.identity.fingerprint)
        await super()._start_components()

    def _cut_off(self, device_id: str) -> None:
        """Called from any thread when a device is revoked or rejected."""
        if self.sync_input is not None:
            kick = self.sync_input.kick(device_id, "device revoked")
            asyncio.run_coroutine_threadsafe(kick, self._loop)

    def auth_settings(self) -> AuthConfig:
        """The API's auth, with the enrolment paths open: devices prove themselves by keys."""
        auth = super().auth_settings()
        if self.enrolment is None:
            return auth
        return msgspec.structs.replace(auth, open_paths=(*auth.open_paths, ENROL_PATH))

    def component_starters(self) -> dict[str, Callable[[ComponentConfig, int], Awaitable[None]]]:
        """The edge's component types plus ``websocket_input``."""
        return {**super().component_starters(), "websocket_input": self._start_sync_input}

    async def _start_sync_input(self, component: ComponentConfig, index: int) -> None:
        settings: WebsocketInputConfig = component.config
        assert self.js is not None
        self.sync_input = SyncInput(
            settings,
            store=self.store,
            write=self.write,
            js=self.js,
            metrics=self.metrics,
            on_commit=self.querier.invalidate,
            authenticate=self.enrolment.authenticate if self.enrolment else None,
            max_payload=self.nc.max_payload if self.nc else 0,
        )
        await self.sync_input.ensure_stream(self.config.nats.jetstream.replicas)
        if self._shares_api_port(settings):
            return
        app = Starlette(routes=[WebSocketRoute(settings.path, self.sync_input.endpoint)])
        server = HttpServer(
            app,
            host=self.config.services.service_manager.config.http_host,
            port=settings.port,
            ssl_context=self.api_ssl,  # wss:// whenever the API speaks https://
            options=_websocket_options(settings),
        )
        await server.start()
        self._servers.append(server)
        log.info("sync: listening for edges on port %d at %s", server.port, settings.path)

    def _shares_api_port(self, settings: WebsocketInputConfig) -> bool:
        return settings.port == self.config.services.service_manager.config.http_port

    def extra_stream_bytes(self) -> int:
        """The ``SYNC_BATCHES`` stream's byte limit."""
        return sum(
            int(c.config.stream_max_bytes)
            for c in self.config.components
            if isinstance(c.config, WebsocketInputConfig)
        )

    def http_options(self) -> dict[str, Any]:
        """WebSocket settings for the API listener when it also serves the sync path."""
        if self.sync_input is None or not self._shares_api_port(self.sync_input.settings):
            return {}
        return _websocket_options(self.sync_input.settings)

    def routes(self) -> list[BaseRoute]:
        """The edge agent's routes, ``GET /edges``, and the sync path on the API port."""
        routes = [*super().routes(), Route("/edges", edges, methods=["GET"])]
        if self.enrolment is not None:
            routes += provisioning_routes()
        if self.sync_input is not None and self._shares_api_port(self.sync_input.settings):
            routes.append(WebSocketRoute(self.sync_input.settings.path, self.sync_input.endpoint))
        return routes

    async def health(self) -> dict[str, Any]:
        """The agent's health plus how many edges are linked."""
        report = await super().health()
        if self.sync_input is not None:
            links = self.sync_input.links.values()
            report["components"]["sync"] = {
                "status": "ok",
                "edges": len(links),
                "connected": sum(1 for link in links if link.connected),
            }
        return report


def _websocket_options(settings: WebsocketInputConfig) -> dict[str, Any]:
    return {
        "ws": "websockets-sansio",
        # Frames past our own limit still reach the protocol, which closes with a reason
        # and counts it; twice that is refused by the WebSocket layer itself.
        "ws_max_size": 2 * settings.max_frame_bytes,
        "ws_per_message_deflate": False,  # payloads are compressed already
        "ws_ping_interval": settings.ping_interval or None,
        "ws_ping_timeout": settings.ping_timeout or None,
    }
