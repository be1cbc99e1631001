"""Wiring of the edge agent: its parts, assembled in order, and what the API asks of it.

The agent is a blueprint (see :mod:`edge_agent.blueprint`) of the parts it shares with
the hub (the NATS connection, the graph service, the API) and its own (ingest, the
configured components, zero-touch provisioning). This module holds no domain logic;
it connects config to the capabilities.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import msgspec
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext

from edge_agent import __version__
from edge_agent.api.routes import ROUTES
from edge_agent.api.service import ApiService
from edge_agent.blueprint import Blueprint, Stage
from edge_agent.config import ComponentConfig, Config
from edge_agent.config.runtime import change_graph_settings, runtime_values
from edge_agent.config.schema import SyncTlsConfig, WebsocketOutputConfig
from edge_agent.config.units import ByteSize
from edge_agent.errors import NatsServerError
from edge_agent.graph import GraphStore
from edge_agent.graph.querier import Querier
from edge_agent.graph.recovery import RESYNC_MARKER
from edge_agent.graph.service import GraphService
from edge_agent.ingest.dead_letters import DeadLetters
from edge_agent.ingest.processor import GraphProcessor
from edge_agent.ingest.publisher import EventPublisher
from edge_agent.ingest.simulator import run_simulator
from edge_agent.metrics import Metrics
from edge_agent.nats.client import ensure_streams
from edge_agent.nats.connection import NatsConnection
from edge_agent.nats.server import EmbeddedNatsServer
from edge_agent.nats.subjects import DEAD_LETTER_STREAM, ENTITY_STREAM
from edge_agent.storage import StorageWatch, watch_agent_storage
from edge_agent.tasks import Tasks
from edge_agent.tracing import setup_tracing, shutdown_tracing

# What only some configs use (provisioning: zeroconf, cryptography; GPIO: gpiozero;
# telemetry: psutil; the sync link: websockets' client) loads where it is used: each
# megabyte counts on a 1 GB board.
if TYPE_CHECKING:
    from edge_agent.provision.client import Provisioner
    from edge_agent.provision.mdns import Advertiser
    from edge_agent.sync.output import SyncOutput

__all__ = ["Agent", "Tasks", "retry_until_ready"]

log = logging.getLogger(__name__)
_STREAM_POLL_S = 2.0
_JETSTREAM_READY_TIMEOUT_S = 20.0
_T = TypeVar("_T")
_P = ParamSpec("_P")


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

    def __init__(self, config: Config) -> None:
        self.config = config
        self.state_dir = Path(config.state_dir)
        self.metrics = Metrics(include_runtime=config.services.metrics.config.include_go_metrics)
        self.publisher: EventPublisher
        self.processor: GraphProcessor
        self.sync_output: SyncOutput | None = None
        self.provisioner: Provisioner | None = None
        self.storage: StorageWatch | None = None
        self._advertiser: Advertiser | None = None
        self._tasks = Tasks(on_failure=lambda name: self.metrics.task_failures.labels(name).inc())
        self._stream_stats = {"dead_letters": 0, "stream_pending": 0}
        self.started_at = 0.0
        self._prepare_identity()  # may change platform.id: before the parts read it
        self.nats: NatsConnection
        self.graph: GraphService
        self.api: ApiService
        self.parts = Blueprint([])

    def _assemble(self) -> Blueprint:
        config = self.config
        jetstream = config.nats.jetstream
        self.nats = NatsConnection(
            config.nats,
            self.state_dir,
            name=config.platform.id,
            client_name=f"edge-agent {config.platform.id}",
            stream_bytes=jetstream.max_bytes + jetstream.dead_letter_max_bytes,
            on_restart=self.metrics.nats_server_restarts.inc,
        )
        self.nats.on_resync(self._on_resync)
        output = sync_output_settings(config)
        self.graph = GraphService(
            self.state_dir / "graph.db",
            origin=config.platform.id,
            settings=config.graph.config,
            metrics=self.metrics,
            outbox=output[1].mode if output else ("state" if self.provisioner else None),
            max_outbox_bytes=int(output[1].max_outbox_bytes) if output else 0,
        )
        self.api = ApiService(
            self,
            config,
            routes=lambda: list(ROUTES),
            auth=lambda: config.services.service_manager.config.auth,
            nats=self.nats,
        )
        return Blueprint(
            [
                self.nats,
                self.graph,
                Stage("processor", self._start_ingest, self._tasks.cancel),
                Stage("components", self._start_components),
                self.api,
                Stage("provisioning", self._start_edge_provisioning, self._stop_advertising),
            ]
        )

    # ---- the parts, as the API and the CLI see them ------------------------------------

    @property
    def http_port(self) -> int:
        """The port the API listens on (resolved when configured as 0)."""
        return self.api.port

    @property
    def store(self) -> GraphStore:
        """The graph store."""
        return self.graph.store

    @property
    def querier(self) -> Querier:
        """The graph's querier."""
        return self.graph.querier

    @property
    def nats_server(self) -> EmbeddedNatsServer | None:
        """The embedded nats-server, when the agent runs one."""
        return self.nats.server

    @property
    def nc(self) -> Client:
        """The NATS client."""
        return self.nats.client

    @property
    def js(self) -> JetStreamContext:
        """JetStream on the NATS client."""
        return self.nats.jetstream

    # ---- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Start NATS (or connect), the store, the processor, components and the API.

        Raises:
            SemStreamsError: a part could not start; the message says which.
            OSError: the HTTP port could not be bound.
        """
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.parts = self._assemble()  # a bad API certificate fails here, before anything
        setup_tracing(self.config.telemetry, service=f"semstreams-edge {self.config.platform.id}")
        await self.parts.start()
        self.started_at = time.time()
        log.info(
            "edge agent %s up: id=%s nats=%s api=%s://%s:%d",
            __version__,
            self.config.platform.id,
            ",".join(self.nats.urls),
            self.api.scheme,
            self.config.services.service_manager.config.http_host,
            self.http_port,
        )

    async def stop(self) -> None:
        """Stop everything in reverse order; safe to call after a failed start."""
        await self.parts.stop()
        shutdown_tracing()
        log.info("edge agent stopped")

    # ---- ingest: JetStream streams, the publisher, the graph processor ------------------

    async def _start_ingest(self) -> None:
        limits = self.config.nats.jetstream
        await retry_until_ready(self._ensure_streams, "JetStream not available")
        graph = self.config.graph.config
        dead_letters = DeadLetters(self.js, self.metrics)
        self.storage = watch_agent_storage(self.state_dir, self.nats, limits, self.metrics)
        self.storage.read()  # before the first request: a full disk refuses from the start
        self._tasks.spawn(self.storage.run, "storage-watch")
        self.publisher = EventPublisher(
            self.js,
            dead_letters,
            self.metrics,
            max_event_bytes=graph.max_event_bytes,
            refused=self.storage.refused,
        )
        self.processor = GraphProcessor(
            self.nc,
            self.store,
            graph,
            dead_letters,
            self.metrics,
            open_delivery=self.nats.open_delivery,
            instance=self.config.platform.id,
            owns_stream=self.nats_server is not None,
            on_commit=self._committed,
            set_aside=self.nats_server.set_aside_consumer if self.nats_server else None,
        )
        self._tasks.spawn(self.processor.run, "graph-processor")
        try:
            await asyncio.wait_for(self.processor.bound.wait(), _JETSTREAM_READY_TIMEOUT_S)
        except TimeoutError as exc:
            cause = self.processor.status.last_error or "no answer from JetStream"
            raise NatsServerError(f"graph consumer not ready: {cause}") from exc
        self._tasks.spawn(self._watch_stream, "stream-watch")

    async def _ensure_streams(self) -> None:
        """Create or update the streams; one a damaged consumer took offline is healed
        first (then this fails once more, and is retried)."""
        try:
            await ensure_streams(self.js, self.config.nats.jetstream)
        except nats.js.errors.APIError as exc:
            if self.nats_server is not None:
                self.nats_server.heal_offline_stream(ENTITY_STREAM, exc.description or "")
            raise

    def _committed(self, touched: frozenset[str]) -> None:
        """On the writer thread, after each commit: stale cache out, the sync link woken."""
        self.graph.committed(touched)
        if self.sync_output is not None:
            self.sync_output.notify()

    def _on_resync(self) -> None:
        if hasattr(self, "processor"):
            self.processor.request_rebind()

    # ---- zero-touch provisioning (edge) ------------------------------------------------

    def _prepare_identity(self) -> None:
        """With provisioning on: the device key, and the id the agent runs (and enrols) as."""
        settings = self.config.provisioning
        if not settings.enabled:
            return
        from edge_agent.provision.client import Provisioner, device_id_for
        from edge_agent.provision.identity import Identity

        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
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
        from edge_agent.provision.mdns import EDGE_SERVICE, Advertiser, start_or_report

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
            # Where mDNS cannot run, the agent runs on without it (counted, in /health).
            mdns_errors = self.metrics.errors.labels(reason="mdns_error")
            await start_or_report(self._advertiser, mdns_errors.inc)
        if sync_output_settings(self.config) is None:
            # Not restarted: it starts the sync link once, and a second one would fight it.
            provisioner = self.provisioner
            self._tasks.spawn(
                lambda: self._enrol_and_sync(provisioner), "provisioning", restart=False
            )

    async def _stop_advertising(self) -> None:
        if self._advertiser is not None:
            await self._advertiser.stop()

    async def _enrol_and_sync(self, provisioner: Provisioner) -> None:
        from edge_agent.provision.client import ProvisionError
        from edge_agent.provision.messages import CREDENTIAL_ROTATED

        enrolment = await provisioner.enrolment()
        config = enrolment.config
        ca_file = self.config.provisioning.ca_file
        settings = WebsocketOutputConfig(
            url=config.sync_url,
            filters=config.filters,
            max_bytes_per_second=ByteSize(config.max_bytes_per_second),
            tls=SyncTlsConfig(ca_file=ca_file) if ca_file else None,
        )
        sync_output = self._run_sync_output(settings, enrolment.credential, "sync (provisioned)")
        while True:  # renew two thirds into the credential's life, or when the hub rotated it
            due = provisioner.renewal_due(enrolment)
            while time.time() < due and CREDENTIAL_ROTATED not in sync_output.last_error:
                await asyncio.sleep(1.0)
            rotated = CREDENTIAL_ROTATED in sync_output.last_error
            try:
                if rotated:
                    enrolment = await provisioner.enrol_again(enrolment)
                else:
                    enrolment = await provisioner.renew(enrolment)
            except (OSError, ProvisionError) as exc:
                log.warning("provisioning: credential renewal failed: %s", exc)
                await asyncio.sleep(5 if rotated else 60)
                continue
            sync_output.set_token(enrolment.credential)
            sync_output.last_error = ""
            log.info(
                "provisioning: credential %s until %s",
                "issued again after rotation" if rotated else "renewed",
                enrolment.expires_at,
            )

    # ---- components ----------------------------------------------------------------

    async def _start_components(self) -> None:
        starters = self._component_starters()
        for index, component in enumerate(self.config.components):
            starter = starters.get(component.type)
            if starter is None:
                log.warning(
                    "component %s: type %s is not run by the edge agent",
                    component.id,
                    component.type,
                )
                continue
            await starter(component, index)

    def _component_starters(self) -> dict[str, Callable[[ComponentConfig, int], Awaitable[None]]]:
        return {
            "simulator": self._start_simulator,
            "websocket_output": self._start_sync_output,
            "gpio_input": self._start_gpio_input,
            "system_telemetry": self._start_system_telemetry,
        }

    async def _start_simulator(self, component: ComponentConfig, index: int) -> None:
        self._tasks.spawn(
            lambda: run_simulator(component.config, self.publisher), f"component {component.id}"
        )

    async def _start_gpio_input(self, component: ComponentConfig, index: int) -> None:
        from edge_agent.ingest.gpio import GpioInput

        gpio = GpioInput(component.config, self.publisher, where=f"components[{index}]")
        await gpio.open()  # a device that can't be opened fails the start, named
        self._tasks.spawn(gpio.run, f"component {component.id}")

    def _telemetry_counters(self) -> dict[str, int]:
        """What the device entity reports of the agent's own counters (since it started)."""
        dead = self.metrics.registry.get_sample_value("semstreams_dead_letters_total")
        return {"ingest.dead_letters": int(dead or 0)}

    async def _start_system_telemetry(self, component: ComponentConfig, index: int) -> None:
        from edge_agent.ingest.telemetry import SystemSampler, run_system_telemetry

        sampler = SystemSampler(
            self.state_dir,
            nats_pid=lambda: self.nats_server.pid if self.nats_server else None,
            backlog=self.store.sync_backlog if self.store.outbox else None,
            counters=self._telemetry_counters,
        )
        entity_id = component.config.entity_id or self.config.platform.id
        self._tasks.spawn(
            lambda: run_system_telemetry(
                component.config, self.publisher, sampler, entity_id=entity_id
            ),
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
            # An enrolled device's credential is bound to its key: the hello proves it.
            prove=self.provisioner.prove_hello if self.provisioner else None,
            resync_marker=self.state_dir / RESYNC_MARKER,
            on_share=self.graph.committed,
            on_share_end=self.graph.share_ended,
        )
        self._tasks.spawn(self.sync_output.run, name)
        return self.sync_output

    # ---- administration ------------------------------------------------------------

    async def write(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """Run ``fn(*args)`` on the graph store's single writer thread."""
        return await self.store.write(fn, *args, **kwargs)

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
        if not self.nats.connected:
            parts.append("NATS down")
        if not self.processor.status.running:
            parts.append("processor down")
        elif self.processor.status.last_error:
            parts.append("processor retrying")
        if self.storage is not None and self.storage.refused():
            parts.append("disk under reserve, ingest refused")
        if self.sync_output is not None:
            link = "linked" if self.sync_output.connected else "connecting"
            parts.append(f"sync {link} (hwm {self.sync_output.hwm})")
        elif self.provisioner is not None:
            parts.append(f"provisioning: {self.provisioner.status}")
        return ", ".join(parts)

    def _processor_health(self) -> dict[str, Any]:
        status = self.processor.status
        verdict = "ok" if status.running else "down"
        if verdict == "ok" and status.last_error:
            verdict = "retrying"
        return {
            "status": verdict,
            "batches": status.batches,
            "last_error": status.last_error,
            # What the stream position checks found (docs/operations.md, "Power cuts").
            "stream_check": status.stream_check,
            "stream_problem": status.stream_problem,
        }

    async def health(self) -> dict[str, Any]:
        """Per-component status and the overall verdict.

        ``unhealthy`` (503) when the store or the processor is down; ``degraded`` when
        NATS is unreachable, the processor is retrying or a store's disk is under its
        reserve; else ``healthy``.
        """
        await self.graph.check()
        components = self.parts.health()
        components["processor"] = self._processor_health()
        if self.provisioner is not None:
            components["provisioning"] = {
                "status": self.provisioner.status,
                "advertising": self._advertiser.status if self._advertiser else "off",
                "device_key": self.provisioner.identity.fingerprint,
                "hub_key": self.provisioner.hub_fingerprint,
            }
        if self.sync_output is not None:
            # Informational: an edge offline for days is normal operation, not ill health.
            components["sync"] = self.sync_output.status()
        if self.storage is not None:
            components["storage"] = self.storage.health()
        if "down" in (components["store"]["status"], components["processor"]["status"]):
            status = "unhealthy"
        elif (
            not self.nats.connected
            or components["processor"]["status"] != "ok"
            or components.get("storage", {}).get("status", "ok") != "ok"
        ):
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


async def retry_until_ready(
    action: Callable[[], Awaitable[Any]], what: str, timeout: float = _JETSTREAM_READY_TIMEOUT_S
) -> None:
    """``await action()`` until it succeeds: a just-started JetStream, or a cluster
    electing a leader, refuses for a moment.

    Raises:
        NatsServerError: still failing after ``timeout`` seconds; names ``what``.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            await action()
            return
        except Exception as exc:
            if time.monotonic() > deadline:
                raise NatsServerError(f"{what}: {exc}") from exc
            await asyncio.sleep(0.25)
