"""Wiring of the cloud hub: the parts it shares with the edge agent, and its own.

The hub is a blueprint (:mod:`edge_agent.blueprint`) of the NATS connection, the graph
service and the API (the edge's parts), plus the replicated log ``SYNC_BATCHES``, the
materialiser that applies it, enrolment, the ``websocket_input`` links and the mDNS
advertisement. It ingests nothing itself: its graph is written only from the log, so
every instance on a NATS cluster holds the same one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import msgspec
from starlette.applications import Starlette
from starlette.routing import BaseRoute, Route, WebSocketRoute

from cloud_hub.api import views as hub_views
from cloud_hub.api.openapi import HUB_PATHS
from cloud_hub.config import (
    WebsocketInputConfig,
    communities_settings,
    dashboard_settings,
    sync_inputs,
)
from cloud_hub.dashboard.routes import dashboard_routes
from cloud_hub.dashboard.service import Dashboard
from cloud_hub.graph.provenance import applied_seq
from cloud_hub.graph.share import read_share
from cloud_hub.graphrag.communities.api import community_routes
from cloud_hub.graphrag.schema import GRAPH_MIGRATIONS
from cloud_hub.graphrag.service import GraphRag
from cloud_hub.metrics import HubMetrics
from cloud_hub.provision.advertise import hub_advertiser
from cloud_hub.provision.api import ENROL_PATH, provisioning_routes
from cloud_hub.provision.registry import Registry
from cloud_hub.provision.service import Enrolment
from cloud_hub.sync.input import SyncInput
from cloud_hub.sync.log import SYNC_STREAM, SyncLog
from cloud_hub.sync.materialiser import Materialiser
from edge_agent import __version__
from edge_agent.api.routes import SHARED_ROUTES
from edge_agent.api.service import ApiService
from edge_agent.app import retry_until_ready
from edge_agent.blueprint import Blueprint, Stage
from edge_agent.config import AuthConfig, Config
from edge_agent.graph import GraphStore
from edge_agent.graph.querier import Querier
from edge_agent.graph.service import GraphService
from edge_agent.metrics import Metrics
from edge_agent.nats.connection import NatsConnection
from edge_agent.provision.identity import Identity
from edge_agent.provision.mdns import Advertiser, start_or_report
from edge_agent.sync.frames import EntityDelta

__all__ = ["Hub"]

log = logging.getLogger(__name__)
_T = TypeVar("_T")
_DEFAULT_SYNC = WebsocketInputConfig()


class Hub:
    """The running cloud hub (one instance; several share a NATS cluster's log)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.state_dir = Path(config.state_dir)
        self.metrics = Metrics(include_runtime=config.services.metrics.config.include_go_metrics)
        self.hub_metrics = HubMetrics(self.metrics)
        inputs = sync_inputs(config)
        self.sync_settings = inputs[0] if inputs else _DEFAULT_SYNC
        self.sync_input: SyncInput | None = None
        self.enrolment: Enrolment | None = None
        self._advertiser: Advertiser | None = None
        self.started_at = 0.0
        self.nats = NatsConnection(
            config.nats,
            self.state_dir,
            name=config.platform.id,
            client_name=f"cloud-hub {config.platform.id}",
            stream_bytes=int(self.sync_settings.stream_max_bytes),
            on_restart=self.metrics.nats_server_restarts.inc,
        )
        self.graph = GraphService(
            self.state_dir / "graph.db",
            origin=config.platform.id,
            settings=config.graph.config,
            metrics=self.metrics,
            migrations=GRAPH_MIGRATIONS,
        )
        self.api = ApiService(
            self,
            config,
            routes=self.routes,
            auth=self._auth,
            nats=self.nats,
            http_options=self._api_http_options,
            openapi_paths=HUB_PATHS,
            title="SemStreams cloud hub",
        )
        self.graphrag = GraphRag(
            self.graph,
            config.graph.config.indexer.embedding,
            communities_settings(config),
            self.hub_metrics,
        )
        self.materialiser: Materialiser
        self.dashboard: Dashboard
        self.parts = Blueprint(
            [
                self.nats,
                self.graph,
                self.graphrag,
                Stage("log", self._start_log),
                Stage("materialiser", self._start_materialiser, self._stop_materialiser),
                Stage("enrolment", self._start_enrolment, self._stop_enrolment),
                Stage("sync", self._start_sync_input),
                Stage("dashboard", self._start_dashboard, self._stop_dashboard),
                self.api,
                Stage("sync-listener", self._start_sync_listener),
                Stage("advertise", self._start_advertising, self._stop_advertising),
            ]
        )

    # ---- what the API and the CLI see ------------------------------------------------

    @property
    def http_port(self) -> int:
        """The port the API listens on."""
        return self.api.port

    @property
    def store(self) -> GraphStore:
        """The hub's graph store."""
        return self.graph.store

    @property
    def querier(self) -> Querier:
        """The hub graph's querier."""
        return self.graph.querier

    @property
    def sync_path(self) -> str:
        """Where edges sync."""
        return self.sync_settings.path

    @property
    def sync_port(self) -> int | None:
        """The sync listener's port when it is not the API's, else ``None``."""
        if self.sync_input is None or self._shares_api_port():
            return None
        return self.sync_settings.port

    # ---- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Start every part in order.

        Raises:
            SemStreamsError: a part could not start; the message says which.
            OSError: a port could not be bound.
        """
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        await self.parts.start()
        self.started_at = time.time()
        log.info(
            "cloud hub %s up: id=%s nats=%s api=%s://%s:%d",
            __version__,
            self.config.platform.id,
            ",".join(self.nats.urls),
            self.api.scheme,
            self.config.services.service_manager.config.http_host,
            self.http_port,
        )

    async def stop(self) -> None:
        """Stop every part, newest first; safe after a failed start."""
        await self.parts.stop()
        log.info("cloud hub stopped")

    async def _start_log(self) -> None:
        settings = self.sync_settings
        replicas = settings.stream_replicas or (1 if self.nats.server else 3)
        self.sync_log = SyncLog(
            self.nats.jetstream,
            max_bytes=int(settings.stream_max_bytes),
            max_msg_bytes=int(settings.max_frame_bytes) + 4096,
            replicas=replicas,
        )
        await retry_until_ready(self.sync_log.ensure, "SYNC_BATCHES not available")
        self.materialiser = Materialiser(
            self.nats.jetstream,
            self.store,
            instance=self.config.platform.id,
            metrics=self.metrics,
            hub_metrics=self.hub_metrics,
            on_commit=self.graph.committed,
            max_frame_bytes=int(settings.max_frame_bytes) + 4096,
            max_batch_bytes=int(settings.max_batch_bytes),
            after_apply=self.graphrag.after_apply,
        )

    async def _start_materialiser(self) -> None:
        await self.materialiser.start()

    async def _stop_materialiser(self) -> None:
        await self.materialiser.stop()

    async def _start_enrolment(self) -> None:
        if not self.config.provisioning.enabled:
            return
        loop = asyncio.get_running_loop()

        def cut_off(device_id: str) -> None:  # from any thread: revoked or rejected
            if self.sync_input is not None:
                kick = self.sync_input.kick(device_id, "device revoked")
                asyncio.run_coroutine_threadsafe(kick, loop)

        self.enrolment = Enrolment(
            self.config.provisioning,
            Identity.load_or_create(self.state_dir / "hub_key.pem"),
            await asyncio.to_thread(Registry, self.state_dir / "registry.db"),
            on_revoke=cut_off,
            hub_id=self.config.platform.id,
        )
        log.info("provisioning: hub key %s", self.enrolment.identity.fingerprint)

    async def _stop_enrolment(self) -> None:
        if self.enrolment is not None:
            self.enrolment.registry.close()

    async def _start_sync_input(self) -> None:
        if not sync_inputs(self.config):
            return
        self.sync_input = SyncInput(
            self.sync_settings,
            sync_log=self.sync_log,
            metrics=self.metrics,
            hub_metrics=self.hub_metrics,
            backlog=lambda appended: max(0, appended - self.materialiser.position),
            authenticate=self.enrolment.authenticate if self.enrolment else None,
            max_payload=self.nats.client.max_payload,
            hub_id=self.config.platform.id,
            read_share=self._read_share,
            applied_seq=self._applied_seq,
            on_linked=self.enrolment.linked if self.enrolment else None,
        )

    async def _read_share(self, edge_id: str, after: str, limit: int) -> list[EntityDelta]:
        """A page of ``edge_id``'s share of this instance's graph (for a resync)."""
        return await asyncio.to_thread(
            self.store.database.read, read_share, edge_id, after=after, limit=limit
        )

    async def _applied_seq(self, edge_id: str) -> int:
        """The last batch of ``edge_id`` this instance's graph applied."""
        return await asyncio.to_thread(self.store.database.read, applied_seq, edge_id)

    async def _start_dashboard(self) -> None:
        self.dashboard = Dashboard(
            dashboard_settings(self.config),
            store=self.store,
            links=self._link_states,
            devices=self._device_rows,
        )
        if self.dashboard.settings.enabled:
            await self.dashboard.start()

    async def _stop_dashboard(self) -> None:
        await self.dashboard.stop()

    def _link_states(self) -> dict[str, dict[str, Any]]:
        links = self.sync_input.links.values() if self.sync_input else []
        return {
            link.edge_id: {"connected": link.connected, "last_seen_ms": int(link.last_seen * 1000)}
            for link in links
        }

    def _device_rows(self) -> list[dict[str, Any]]:
        if self.enrolment is None:
            return []
        return [msgspec.structs.asdict(d) for d in self.enrolment.registry.devices()]

    async def hub_state(self) -> dict[str, Any]:
        """What the dashboard's hub page shows: NATS, the log stream, the materialiser."""
        client = self.nats.client
        state: dict[str, Any] = {
            "instance": self.config.platform.id,
            "version": __version__,
            "started_at": self.started_at,
            "nats": {
                "connected_url": str(client.connected_url.netloc) if client.connected_url else None,
                "servers": [f"{u.hostname}:{u.port}" for u in client.servers],
                "embedded": self.nats.server is not None,
            },
            "materialiser": {**self.materialiser.health(), "position": self.materialiser.position},
            "links_here": sum(1 for link in self._link_states().values() if link["connected"]),
        }
        try:
            info = await self.nats.jetstream.stream_info(SYNC_STREAM)
        except Exception as exc:
            state["stream"] = {"error": f"{type(exc).__name__}: {exc}"}
            return state
        cluster = info.cluster
        state["stream"] = {
            "name": SYNC_STREAM,
            "messages": info.state.messages,
            "bytes": info.state.bytes,
            "last_seq": info.state.last_seq,
            "replicas": info.config.num_replicas,
            "leader": cluster.leader if cluster else None,
            "peers": [
                {"name": r.name, "current": r.current, "lag": r.lag}
                for r in (cluster.replicas or [] if cluster else [])
            ],
        }
        return state

    async def _start_sync_listener(self) -> None:
        """The sync path on a port of its own, when it is not the API's."""
        if self.sync_input is None or self._shares_api_port():
            return
        app = Starlette(routes=[WebSocketRoute(self.sync_path, self.sync_input.endpoint)])
        server = await self.api.serve(
            app,
            port=self.sync_settings.port,
            ssl_context=self.api.ssl_context,  # wss:// whenever the API speaks https://
            options=_websocket_options(self.sync_settings),
        )
        log.info("sync: listening for edges on port %d at %s", server.port, self.sync_path)

    async def _start_advertising(self) -> None:
        if self.enrolment is not None and self.config.provisioning.advertise:
            self._advertiser = hub_advertiser(self, self.config.provisioning)
            mdns_errors = self.metrics.errors.labels(reason="mdns_error")
            await start_or_report(self._advertiser, mdns_errors.inc)

    async def _stop_advertising(self) -> None:
        if self._advertiser is not None:
            await self._advertiser.stop()

    def _shares_api_port(self) -> bool:
        return self.sync_settings.port == self.config.services.service_manager.config.http_port

    # ---- the API -------------------------------------------------------------------

    def _auth(self) -> AuthConfig:
        """The API's auth, with the enrolment paths open: devices prove themselves by keys."""
        auth = self.config.services.service_manager.config.auth
        if self.enrolment is None:
            return auth
        return msgspec.structs.replace(auth, open_paths=(*auth.open_paths, ENROL_PATH))

    def _api_http_options(self) -> dict[str, Any]:
        if self.sync_input is None or not self._shares_api_port():
            return {}
        return _websocket_options(self.sync_settings)

    def routes(self) -> list[BaseRoute]:
        """The shared graph routes (entities with provenance), the fleet views, enrolment,
        and the sync path when it shares the API's port."""
        routes: list[BaseRoute] = [
            Route("/graph/entities/{entity_id}", hub_views.entity_with_provenance),
            *SHARED_ROUTES,
            Route("/edges", hub_views.edges, methods=["GET"]),
            Route("/graph/types", hub_views.types, methods=["GET"]),
            Route("/graph/shared", hub_views.shared, methods=["GET"]),
            Route("/graph/conflicts", hub_views.conflicts, methods=["GET"]),
        ]
        if self.enrolment is not None:
            routes += provisioning_routes()
        if self.dashboard.settings.enabled:
            routes += dashboard_routes()
        routes += community_routes()
        if self.sync_input is not None and self._shares_api_port():
            routes.append(WebSocketRoute(self.sync_path, self.sync_input.endpoint))
        return routes

    def link_views(self) -> dict[str, dict[str, Any]]:
        """This instance's sync links, by edge id."""
        return self.sync_input.link_views() if self.sync_input else {}

    async def write(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run ``fn(*args)`` on the graph store's single writer thread."""
        return await self.store.write(fn, *args)

    async def stream_stats(self) -> dict[str, int]:
        """What ``/graph/stats`` adds: log batches this instance has not applied yet."""
        return {"dead_letters": 0, "stream_pending": self.materialiser.pending}

    def status_line(self) -> str:
        """A one-line summary for systemd's ``STATUS=``."""
        links = self.sync_input.links.values() if self.sync_input else []
        connected = sum(1 for link in links if link.connected)
        parts = [
            f"{connected} edges linked",
            f"{self.materialiser.applied:,} batches applied",
            f"{self.materialiser.pending:,} pending",
        ]
        if not self.nats.connected:
            parts.append("NATS down")
        return ", ".join(parts)

    async def health(self) -> dict[str, Any]:
        """Per-part status; ``unhealthy`` when the store or materialiser is down,
        ``degraded`` when NATS is away or the materialiser retries."""
        await self.graph.check()
        components = self.parts.health()
        components["materialiser"] = self.materialiser.health()
        if self.sync_input is not None:
            links = self.sync_input.links.values()
            components["sync"] = {
                "status": "ok",
                "edges": len(links),
                "connected": sum(1 for link in links if link.connected),
            }
        if self.enrolment is not None:
            advertising = self._advertiser.status if self._advertiser else "off"
            components["provisioning"] = {"advertising": advertising}
        verdicts = (components["store"]["status"], components["materialiser"]["status"])
        if "down" in verdicts:
            status = "unhealthy"
        elif not self.nats.connected or verdicts[1] != "ok":
            status = "degraded"
        else:
            status = "healthy"
        return {
            "status": status,
            "version": __version__,
            "id": self.config.platform.id,
            "uptime_s": round(time.time() - self.started_at, 1),
            "components": components,
        }


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
