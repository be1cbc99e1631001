"""Wiring: start the parts of the agent in order, report their health, stop them in reverse.

This module holds no domain logic; it connects config to the capabilities.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
from nats.aio.client import Client
from nats.js import JetStreamContext
from starlette.applications import Starlette
from starlette.routing import BaseRoute, Route

from edge_agent import __version__
from edge_agent.api import build_app, views
from edge_agent.api.nats_queries import serve_queries
from edge_agent.api.routes import ROUTES
from edge_agent.api.security import server_ssl_context
from edge_agent.api.server import HttpServer
from edge_agent.config import AuthConfig, ComponentConfig, Config
from edge_agent.config.runtime import change_graph_settings, runtime_values
from edge_agent.config.schema import WebsocketOutputConfig
from edge_agent.config.units import ByteSize
from edge_agent.errors import NatsServerError
from edge_agent.graph import GraphStore
from edge_agent.graph.querier import Querier
from edge_agent.ingest.dead_letters import DeadLetters
from edge_agent.ingest.processor import GraphProcessor
from edge_agent.ingest.publisher import EventPublisher
from edge_agent.ingest.simulator import run_simulator
from edge_agent.metrics import Metrics
from edge_agent.nats.client import connect, embedded_port, ensure_streams
from edge_agent.nats.server import EmbeddedNatsServer
from edge_agent.nats.subjects import DEAD_LETTER_STREAM, ENTITY_STREAM
from edge_agent.tracing import setup_tracing, shutdown_tracing

# What only some configs use (provisioning: zeroconf, cryptography; GPIO: gpiozero;
# telemetry: psutil; the sync link: websockets' client) loads where it is used: each
# megabyte counts on a 1 GB board.
if TYPE_CHECKING:
    from edge_agent.provision.client import Provisioner
    from edge_agent.provision.mdns import Advertiser
    from edge_agent.sync.output import SyncOutput

__all__ = ["Agent"]

log = logging.getLogger(__name__)
_STREAM_POLL_S = 2.0
_JETSTREAM_READY_TIMEOUT_S = 20.0
_T = TypeVar("_T")


def sync_output_settings(config: Config) -> tuple[int, WebsocketOutputConfig] | None:
    """The agent's ``websocket_output`` component (index, settings), if it has one."""
    for index, component in enumerate(config.components):
        if isinstance(component.config, WebsocketOutputConfig):
            return index, component.config
    return None


class Agent:
    """The running edge agent.

    Call :meth:`start`, then :meth:`stop`; between them the HTTP API answers on
    :attr:`http_port`.
    """

    #: What the logs call this program.
    program = "edge agent"

    def __init__(self, config: Config) -> None:
        self.config = config
        self.state_dir = Path(config.state_dir)
        self.metrics = Metrics(include_runtime=config.services.metrics.config.include_go_metrics)
        self.nats_server: EmbeddedNatsServer | None = None
        self.nc: Client | None = None
        self.js: JetStreamContext | None = None
        self.store: GraphStore
        self.querier: Querier
        self.publisher: EventPublisher
        self.processor: GraphProcessor
        self.sync_output: SyncOutput | None = None
        self.provisioner: Provisioner | None = None
        self._advertiser: Advertiser | None = None
        #: The API's TLS context (also the hub's sync listener's), once started.
        self.api_ssl: ssl.SSLContext | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._servers: list[HttpServer] = []
        self._api: HttpServer | None = None
        self._stream_stats = {"dead_letters": 0, "stream_pending": 0}
        self.started_at = 0.0

    @property
    def http_port(self) -> int:
        """The port the API listens on (resolved when configured as 0)."""
        assert self._api is not None, "the API is not started"
        return self._api.port

    # ---- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Start NATS (or connect), the store, the processor, components and the API.

        Raises:
            SemStreamsError: a part could not start; the message says which.
            OSError: the HTTP port could not be bound.
        """
        # Before anything starts, so a bad certificate fails fast and leaves nothing behind.
        tls = self.config.services.service_manager.config.tls
        self.api_ssl = api_ssl = server_ssl_context(tls) if tls and tls.cert_file else None
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._prepare_identity()
        setup_tracing(self.config.telemetry, service=f"semstreams-edge {self.config.platform.id}")
        nats_config = self.config.nats
        graph = self.config.graph.config
        urls = list(nats_config.urls)
        port = await embedded_port(nats_config)
        if port is not None:
            self.nats_server = EmbeddedNatsServer(
                self.state_dir,
                port=port,
                # Headroom over the streams' own limits, which are what bound the disk use:
                # the server refuses a stream whose reservation does not fit.
                max_file_store=2
                * (
                    nats_config.jetstream.max_bytes
                    + nats_config.jetstream.dead_letter_max_bytes
                    + self.extra_stream_bytes()
                ),
                name=self.config.platform.id,
                on_restart=self.metrics.nats_server_restarts.inc,
            )
            await self.nats_server.start()
            urls = [self.nats_server.url]
        self.nc = await connect(
            nats_config,
            urls,
            name=f"edge-agent {self.config.platform.id}",
            on_resync=self._on_resync,
        )
        self.js = self.nc.jetstream()
        await self._ensure_streams()
        output = sync_output_settings(self.config)
        self.store = GraphStore(
            self.state_dir / "graph.db",
            origin=self.config.platform.id,
            indexes=graph.indexer.indexes,
            edge_batch_size=graph.data_manager.edge_batch_size,
            outbox=output[1].mode if output else ("state" if self.provisioner else None),
        )
        querier_config = graph.querier
        self.querier = Querier(
            self.store,
            indexes=graph.indexer.indexes,
            metrics=self.metrics,
            cache_enabled=querier_config.cache_enabled,
            max_cache_size=querier_config.max_cache_size,
        )
        dead_letters = DeadLetters(self.js, self.metrics)
        self.publisher = EventPublisher(
            self.js, dead_letters, self.metrics, max_event_bytes=graph.max_event_bytes
        )
        self.processor = GraphProcessor(
            self.nc,
            self.store,
            graph,
            dead_letters,
            self.metrics,
            instance=self.config.platform.id,
            owns_stream=self.nats_server is not None,
            on_commit=self._committed,
        )
        self._spawn(self.processor.run(), "graph-processor")
        try:
            await asyncio.wait_for(self.processor.bound.wait(), _JETSTREAM_READY_TIMEOUT_S)
        except TimeoutError as exc:
            cause = self.processor.status.last_error or "no answer from JetStream"
            raise NatsServerError(f"graph consumer not ready: {cause}") from exc
        self._spawn(self._watch_stream(), "stream-watch")
        await serve_queries(self.nc, self.querier)
        await self._start_components()
        await self._start_http(api_ssl)
        await self._start_edge_provisioning()
        self.started_at = time.time()
        log.info(
            "%s %s up: id=%s nats=%s api=%s://%s:%d",
            self.program,
            __version__,
            self.config.platform.id,
            ",".join(urls),
            "https" if api_ssl else "http",
            self.config.services.service_manager.config.http_host,
            self.http_port,
        )

    async def stop(self) -> None:
        """Stop everything in reverse order; safe to call after a failed start."""
        if self._advertiser is not None:
            await self._advertiser.stop()
        for server in reversed(self._servers):
            await server.stop()
        for task in reversed(self._tasks):
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()
        if self.nats_server is not None:
            await self.nats_server.stop()
        if hasattr(self, "store"):
            self.store.close()
        shutdown_tracing()
        log.info("%s stopped", self.program)

    # ---- zero-touch provisioning (edge) ------------------------------------------------

    def _prepare_identity(self) -> None:
        """With provisioning on: the device key, and the id the agent runs (and enrols) as."""
        settings = self.config.provisioning
        if not settings.enabled:
            return
        from edge_agent.provision.client import Provisioner, device_id_for
        from edge_agent.provision.identity import Identity

        identity = Identity.load_or_create(self.state_dir / "device_key.pem")
        device_id = device_id_for(settings, self.config.platform.id, identity)
        platform = msgspec.structs.replace(self.config.platform, id=device_id)
        self.config = msgspec.structs.replace(self.config, platform=platform)
        self.provisioner = Provisioner(settings, self.state_dir, device_id, identity)
        log.info("provisioning: device %s, key %s", device_id, identity.fingerprint)

    async def _start_edge_provisioning(self) -> None:
        """Advertise the device; enrol and sync in the background if no link is configured."""
        settings = self.config.provisioning
        if self.provisioner is None:
            return
        from edge_agent.provision.mdns import EDGE_SERVICE, Advertiser

        if settings.advertise:
            properties = {
                "id": self.config.platform.id,
                "version": __version__,
                "api_port": str(self.http_port),
            }
            self._advertiser = Advertiser(
                EDGE_SERVICE,
                self.config.platform.id,
                self.http_port,
                properties,
                interfaces=settings.interfaces or None,
            )
            await self._advertiser.start()
        if sync_output_settings(self.config) is None:
            self._spawn(self._enrol_and_sync(self.provisioner), "provisioning")

    async def _enrol_and_sync(self, provisioner: Provisioner) -> None:
        from edge_agent.provision.client import ProvisionError

        enrolment = await provisioner.enrolment()
        config = enrolment.config
        settings = WebsocketOutputConfig(
            url=config.sync_url,
            filters=config.filters,
            max_bytes_per_second=ByteSize(config.max_bytes_per_second),
        )
        sync_output = self._run_sync_output(settings, enrolment.credential, "sync (provisioned)")
        while True:  # renew the credential two thirds into its life
            await asyncio.sleep(max(1.0, provisioner.renewal_due(enrolment) - time.time()))
            try:
                enrolment = await provisioner.renew(enrolment)
            except (OSError, ProvisionError) as exc:
                log.warning("provisioning: credential renewal failed: %s", exc)
                await asyncio.sleep(60)
                continue
            sync_output.set_token(enrolment.credential)
            log.info("provisioning: credential renewed until %s", enrolment.expires_at)

    def _committed(self, touched: frozenset[str]) -> None:
        """On the writer thread, after each commit: stale cache out, the sync link woken."""
        self.querier.invalidate(touched)
        if self.sync_output is not None:
            self.sync_output.notify()

    def _on_resync(self) -> None:
        if hasattr(self, "processor"):
            self.processor.request_rebind()

    def _spawn(self, coro: Any, name: str) -> None:
        self._tasks.append(asyncio.create_task(coro, name=name))

    async def _ensure_streams(self) -> None:
        assert self.js is not None
        deadline = time.monotonic() + _JETSTREAM_READY_TIMEOUT_S
        while True:
            try:
                await ensure_streams(self.js, self.config.nats.jetstream)
                return
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise NatsServerError(f"JetStream not available: {exc}") from exc
                await asyncio.sleep(0.25)

    async def _start_components(self) -> None:
        starters = self.component_starters()
        for index, component in enumerate(self.config.components):
            starter = starters.get(component.type)
            if starter is None:
                log.warning(
                    "component %s: type %s is not run by this program",
                    component.id,
                    component.type,
                )
                continue
            await starter(component, index)

    def component_starters(self) -> dict[str, Callable[[ComponentConfig, int], Awaitable[None]]]:
        """Each component type this program runs, with what starts it."""
        return {
            "simulator": self._start_simulator,
            "websocket_output": self._start_sync_output,
            "gpio_input": self._start_gpio_input,
            "system_telemetry": self._start_system_telemetry,
        }

    async def _start_simulator(self, component: ComponentConfig, index: int) -> None:
        self._spawn(run_simulator(component.config, self.publisher), f"component {component.id}")

    async def _start_gpio_input(self, component: ComponentConfig, index: int) -> None:
        from edge_agent.ingest.gpio import GpioInput

        gpio = GpioInput(component.config, self.publisher, where=f"components[{index}]")
        await gpio.open()  # a device that can't be opened fails the start, named
        self._spawn(gpio.run(), f"component {component.id}")

    async def _start_system_telemetry(self, component: ComponentConfig, index: int) -> None:
        from edge_agent.ingest.telemetry import SystemSampler, run_system_telemetry

        sampler = SystemSampler(
            self.state_dir,
            nats_pid=lambda: self.nats_server.pid if self.nats_server else None,
            backlog=self.store.sync_backlog if self.store.outbox else None,
        )
        entity_id = component.config.entity_id or self.config.platform.id
        self._spawn(
            run_system_telemetry(component.config, self.publisher, sampler, entity_id=entity_id),
            f"component {component.id}",
        )

    async def _start_sync_output(self, component: ComponentConfig, index: int) -> None:
        from edge_agent.sync.output import read_token

        token = read_token(component.config, f"components[{index}].config")
        self._run_sync_output(component.config, token, f"component {component.id}")

    def _run_sync_output(
        self, settings: WebsocketOutputConfig, token: str, name: str
    ) -> SyncOutput:
        """Start the link to the hub (configured, or given by enrolment) as task ``name``."""
        from edge_agent.sync.output import SyncOutput

        self.sync_output = SyncOutput(
            settings,
            edge_id=self.config.platform.id,
            token=token,
            store=self.store,
            write=self.write,
            metrics=self.metrics,
        )
        self._spawn(self.sync_output.run(), name)
        return self.sync_output

    async def _start_http(self, ssl_context: ssl.SSLContext | None) -> None:
        service = self.config.services.service_manager.config
        app = build_app(
            self,
            routes=self.routes(),
            auth=self.auth_settings(),
            rate_limit=self.config.api_gateway.config.rate_limit,
        )
        api = HttpServer(
            app,
            host=service.http_host,
            port=service.http_port,
            ssl_context=ssl_context,
            options=self.http_options(),
        )
        await api.start()
        self._servers.append(api)
        self._api = api
        metrics = self.config.services.metrics
        if metrics.enabled:
            app = Starlette(routes=[Route(metrics.config.path, views.metrics, methods=["GET"])])
            app.state.agent = self
            server = HttpServer(app, host=service.http_host, port=metrics.config.port)
            await server.start()
            self._servers.append(server)

    def auth_settings(self) -> AuthConfig:
        """The API's bearer auth (the hub opens its enrolment paths to devices)."""
        return self.config.services.service_manager.config.auth

    def extra_stream_bytes(self) -> int:
        """Bytes of JetStream streams beyond the agent's own (the hub's sync stream)."""
        return 0

    def http_options(self) -> dict[str, Any]:
        """Extra uvicorn settings for the API listener (the hub adds WebSocket ones)."""
        return {}

    def routes(self) -> list[BaseRoute]:
        """The HTTP routes this program serves."""
        return list(ROUTES)

    # ---- administration ------------------------------------------------------------

    async def write(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run ``fn(*args)`` on the graph's single writer thread."""
        return await self.processor.run_on_writer(fn, *args)

    def runtime_settings(self) -> dict[str, Any]:
        """The settings ``POST /admin/config`` can change, with their values."""
        return runtime_values(self.processor.settings)

    async def change_settings(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Apply run-time settings to the processor, store and cache, all or nothing.

        Raises:
            ConfigError: an unknown key or a bad value, named.
        """
        settings = change_graph_settings(self.processor.settings, changes)
        await self.processor.update_settings(settings)
        self.store.edge_batch_size = settings.data_manager.edge_batch_size
        self.querier.cache_enabled = settings.querier.cache_enabled
        self.querier.cache.resize(settings.querier.max_cache_size)
        log.info("run-time settings changed: %s", ", ".join(sorted(changes)))
        return self.runtime_settings()

    # ---- status ----------------------------------------------------------------------

    async def _watch_stream(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                await self._refresh_stream_stats()
            await asyncio.sleep(_STREAM_POLL_S)

    async def _refresh_stream_stats(self) -> dict[str, int]:
        assert self.js is not None
        consumer = await self.js.consumer_info(ENTITY_STREAM, self.processor.consumer, timeout=1)
        dead = await self.js.stream_info(DEAD_LETTER_STREAM)
        pending = int(consumer.num_pending or 0) + int(consumer.num_ack_pending or 0)
        self._stream_stats = {"dead_letters": int(dead.state.messages), "stream_pending": pending}
        self.metrics.stream_pending.set(pending)
        return self._stream_stats

    async def stream_stats(self) -> dict[str, int]:
        """Dead letters kept and events not yet acked by the processor (last known on error)."""
        with contextlib.suppress(Exception):
            return await self._refresh_stream_stats()
        return dict(self._stream_stats)

    def status_line(self) -> str:
        """A one-line summary for systemd's ``STATUS=`` (call after :meth:`start`).

        Returns:
            e.g. "1,234 events applied, 0 pending, sync linked (hwm 42)"; problems
            ("NATS down", "processor retrying") are named in it.
        """
        applied = self.metrics.registry.get_sample_value("semstreams_messages_processed_total")
        pending = self._stream_stats["stream_pending"]
        parts = [f"{int(applied or 0):,} events applied", f"{pending:,} pending"]
        if self.nc is None or not self.nc.is_connected:
            parts.append("NATS down")
        if not self.processor.status.running:
            parts.append("processor down")
        elif self.processor.status.last_error:
            parts.append("processor retrying")
        if self.sync_output is not None:
            link = "linked" if self.sync_output.connected else "connecting"
            parts.append(f"sync {link} (hwm {self.sync_output.hwm})")
        elif self.provisioner is not None:
            parts.append(f"provisioning: {self.provisioner.status}")
        return ", ".join(parts)

    async def health(self) -> dict[str, Any]:
        """Per-component status and the overall verdict.

        ``unhealthy`` (503) when the store or the processor is down; ``degraded`` when
        NATS is unreachable or the processor is retrying; else ``healthy``.
        """
        nats_ok = self.nc is not None and self.nc.is_connected
        server = self.nats_server
        components: dict[str, dict[str, Any]] = {
            "nats": {
                "status": "ok" if nats_ok else "down",
                "embedded": server is not None,
                "server_running": server.running if server else None,
                "server_restarts": server.restarts if server else 0,
            },
            "store": {"status": "ok" if await asyncio.to_thread(self._store_ok) else "down"},
            "processor": {
                "status": "ok" if self.processor.status.running else "down",
                "batches": self.processor.status.batches,
                "last_error": self.processor.status.last_error,
            },
        }
        if self.provisioner is not None:
            components["provisioning"] = {
                "status": self.provisioner.status,
                "device_key": self.provisioner.identity.fingerprint,
                "hub_key": self.provisioner.hub_fingerprint,
            }
        if self.sync_output is not None:
            # Informational: an edge offline for days is normal operation, not ill health.
            components["sync"] = self.sync_output.status()
        if components["processor"]["status"] == "ok" and self.processor.status.last_error:
            components["processor"]["status"] = "retrying"
        if "down" in (components["store"]["status"], components["processor"]["status"]):
            status = "unhealthy"
        elif not nats_ok or components["processor"]["status"] != "ok":
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

    def _store_ok(self) -> bool:
        try:
            with self.store.reader() as db:
                db.execute("SELECT 1 FROM entities LIMIT 1").fetchall()
        except Exception:
            return False
        return True
