"""The config schema: frozen msgspec Structs mirroring the seed guide's JSON blocks.

Every struct forbids unknown fields, so a misspelt key fails at start-up with its path.
Defaults suit a Raspberry Pi edge (seed: "Edge configuration (Raspberry Pi)").
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import msgspec

from edge_agent.config.units import ByteSize, Duration
from edge_agent.errors import EventError
from edge_agent.model import EntityEvent, validate_event

__all__ = [
    "COMPONENT_TYPES",
    "EDGE_SYNC_INTERVAL",
    "ApiGatewayConfig",
    "AuthConfig",
    "ComponentConfig",
    "Config",
    "GpioInputConfig",
    "GraphConfig",
    "GraphSettings",
    "HttpTlsConfig",
    "IndexesConfig",
    "JetStreamConfig",
    "LoggingConfig",
    "MetricsConfig",
    "NatsConfig",
    "PlatformConfig",
    "ProvisioningConfig",
    "RateLimitConfig",
    "ReconnectConfig",
    "Section",
    "ServerTlsConfig",
    "ServiceManagerSettings",
    "ServicesConfig",
    "SimulatorConfig",
    "SpiConfig",
    "SyncBatchConfig",
    "SyncTlsConfig",
    "SystemTelemetryConfig",
    "TelemetryConfig",
    "TlsConfig",
    "WebsocketOutputConfig",
    "nkey_user_problem",
]

Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
Positive = Annotated[int, msgspec.Meta(ge=1)]
Fraction = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]


class Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base of every config section: immutable, and unknown keys are errors."""

    def problems(self) -> list[tuple[str, str]]:
        """What this section's types can't express: ``(key, cause)`` pairs; none by default.

        The loader prefixes each key with the section's path.
        """
        return []


class PlatformConfig(Section, frozen=True):
    """``platform``: what this instance is. ``id`` names the edge (default: the hostname)."""

    type: str = "edge"
    region: str = ""
    id: str = ""


class TlsConfig(Section, frozen=True):
    """``nats.tls``: the agent's side of a TLS connection to NATS (its client certificate,
    and the CA it trusts for the server)."""

    cert_file: str = ""
    key_file: str = ""
    ca_file: str = ""


#: An NKey user public key: 'U' and 55 base32 characters.
_USER_NKEY = re.compile(r"U[A-Z2-7]{55}", re.ASCII)
_USER_PREFIX_BYTE = 20 << 3  # base32 'U'
#: What a path written into the embedded server's config may not hold: it is quoted
#: there, and a quote, backslash, ``$`` or control character could end or change it.
_UNSAFE_IN_CONF = re.compile(r'["\\$\x00-\x1f\x7f]')


def nkey_user_problem(key: str) -> str | None:
    """Why ``key`` is not an NKey user public key (``U...``, 56 characters), or ``None``."""
    if not _USER_NKEY.fullmatch(key):
        return f"{key[:60]!r} is not an NKey user public key ('U' and 55 base32 characters)"
    try:
        raw = base64.b32decode(key + "=" * (-len(key) % 8))
    except binascii.Error:  # pragma: no cover - the pattern admits only base32
        return f"{key!r} is not base32"
    if raw[0] != _USER_PREFIX_BYTE:
        return f"{key!r} is not an NKey user public key (another role's prefix)"
    # base32(prefix byte + 32-byte key + CRC-16/XMODEM of both, little-endian)
    crc = 0
    for byte in raw[:-2]:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021 if crc & 0x8000 else crc << 1) & 0xFFFF
    if crc != int.from_bytes(raw[-2:], "little"):
        return f"{key!r}: the checksum is wrong (mistyped?)"
    return None


class ServerTlsConfig(Section, frozen=True):
    """``nats.server_tls``: TLS on the embedded server's own listener.

    The server presents ``cert_file`` (with ``key_file``) and takes TLS clients only;
    with ``client_ca_file`` it also requires each client to present a certificate that
    CA signed (mutual TLS). Unused when the agent runs no server of its own.
    """

    cert_file: str = ""
    key_file: str = ""
    client_ca_file: str = ""

    def problems(self) -> list[tuple[str, str]]:
        """Certificate and key both required; paths the server's config can quote."""
        found: list[tuple[str, str]] = []
        for key in ("cert_file", "key_file", "client_ca_file"):
            value = getattr(self, key)
            if not value and key != "client_ca_file":
                found.append((key, "required in nats.server_tls"))
            elif _UNSAFE_IN_CONF.search(value):
                found.append((key, "must not hold quotes, backslashes, '$' or control characters"))
        return found


_MIN_SERVER_MEMORY = 16 << 20
_MIN_SQLITE_CACHE = 64 << 10


#: The embedded server's ``sync_interval`` where the config leaves it unset, on an edge
#: (the hub's loader sets ``"always"``): see docs/operations.md, "Power cuts".
EDGE_SYNC_INTERVAL = "1s"


class JetStreamConfig(Section, frozen=True):
    """``nats.jetstream``: byte limits of the agent's streams on the local store, and how
    often the embedded server flushes its store to disk (``sync_interval``: ``"always"``,
    a duration, or unset for the program's default)."""

    max_bytes: ByteSize = ByteSize(1 << 30)
    dead_letter_max_bytes: ByteSize = ByteSize(64 << 20)
    #: Free space kept on the embedded JetStream store's filesystem: below it, ingest is
    #: refused (HTTP 507, NATS "maximum bytes exceeded") until 1.5 x as much is free.
    min_free_bytes: ByteSize = ByteSize(64 << 20)
    #: Stream replicas: 1 on an edge; 3 on a NATS cluster (R3) for high availability.
    replicas: Annotated[int, msgspec.Meta(ge=1, le=5)] = 1
    sync_interval: str = ""

    def __post_init__(self) -> None:
        if self.sync_interval in ("", "always"):
            return
        try:
            seconds = Duration.parse(self.sync_interval)
        except ValueError as exc:
            raise ValueError(f'sync_interval: "always" or a duration: {exc}') from None
        if seconds < 0.001:
            raise ValueError('sync_interval: at least 1ms (or "always")')


class NatsConfig(Section, frozen=True):
    """``nats``: where the broker is, and whether the agent runs it itself.

    ``embedded`` is ``"auto"`` (start a server when ``urls`` is empty or names only this
    host and nothing answers there), ``true`` (always) or ``false`` (never).

    The embedded server takes only the NKey users of ``nkey_seed`` (the agent's own) and
    ``authorized_nkeys`` when ``nkey_seed`` is set, and only TLS clients with
    ``server_tls``; ``tls`` and ``nkey_seed`` are what the agent connects with.
    """

    urls: list[str] = msgspec.field(default_factory=list)
    embedded: Literal["auto"] | bool = "auto"
    port: Port = 4222
    max_reconnect: Annotated[int, msgspec.Meta(ge=-1)] = -1
    reconnect_wait: Duration = Duration(2.0)
    nkey_seed: str = ""
    tls: TlsConfig | None = None
    #: Further NKey users (public keys) the embedded server lets in besides the agent.
    authorized_nkeys: list[str] = msgspec.field(default_factory=list)
    server_tls: ServerTlsConfig | None = None
    jetstream: JetStreamConfig = JetStreamConfig()
    #: The embedded server's Go memory limit (``GOMEMLIMIT``): its garbage collector
    #: works harder as the heap nears it. A soft limit (the server never fails for it);
    #: ``0`` leaves Go's default, no limit. Without one the server held 90-112 MB under
    #: a 200,000-event backlog, mostly garbage not yet collected.
    server_memory_limit: ByteSize = ByteSize(64 << 20)

    def problems(self) -> list[tuple[str, str]]:
        """The embedded server's keys: valid, used, and not locking the agent out."""
        found: list[tuple[str, str]] = []
        if 0 < self.server_memory_limit < _MIN_SERVER_MEMORY:
            found.append(
                (
                    "server_memory_limit",
                    "at least 16MiB, or 0 for no limit (below that the server's garbage"
                    " collector runs without pause)",
                )
            )
        for index, key in enumerate(self.authorized_nkeys):
            if problem := nkey_user_problem(key):
                found.append((f"authorized_nkeys[{index}]", problem))
        unused = "only used by an embedded server, and nats.embedded is false"
        if self.embedded is False:
            found += [
                (key, unused) for key in ("authorized_nkeys", "server_tls") if getattr(self, key)
            ]
            return found
        if self.authorized_nkeys and not self.nkey_seed:
            found.append(
                (
                    "authorized_nkeys",
                    "needs nats.nkey_seed: the agent's own key, without which it could not"
                    " connect to its own server",
                )
            )
        if self.server_tls is not None:
            found += [(f"server_tls.{key}", cause) for key, cause in self.server_tls.problems()]
            if self.server_tls.client_ca_file and not (self.tls and self.tls.cert_file):
                found.append(
                    (
                        "tls.cert_file",
                        "required with nats.server_tls.client_ca_file: the agent connects to"
                        " its own server with a client certificate that CA signed",
                    )
                )
        return found


class IndexesConfig(Section, frozen=True):
    """``graph.config.indexer.indexes``: which secondary indexes the store keeps."""

    predicate: bool = True
    incoming: bool = True
    alias: bool = False
    spatial: bool = False
    temporal: bool = False


class BatchProcessingConfig(Section, frozen=True):
    """``graph.config.indexer.batch_processing``: events applied per SQLite transaction."""

    size: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 500


class EmbeddingConfig(Section, frozen=True):
    """``graph.config.indexer.embedding``: vector embeddings (hub only).

    The hub sends entities' text to ``service_url``'s OpenAI-compatible
    ``/v1/embeddings`` (``cloud-hub embed-server``, or any other), ``batch_size`` texts
    a request, each request given up after ``timeout`` and tried ``max_retries`` times
    more with backoff. ``breaker_failures`` failed requests in a row open the circuit
    breaker: for ``breaker_reset`` calls fail at once (searches answer from text), then
    one trial request decides. ``model`` is sent as the request's model; empty lets the
    service use its default.
    """

    enabled: bool = False
    service_url: str = ""
    model: str = ""
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=256)] = 64
    timeout: Duration = Duration(30.0)
    max_retries: Annotated[int, msgspec.Meta(ge=0, le=10)] = 3
    breaker_failures: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 5
    breaker_reset: Duration = Duration(30.0)

    def problems(self) -> list[tuple[str, str]]:
        """When enabled: an http(s) service URL with a host; and positive durations."""
        found = [
            (key, "must be more than 0s")
            for key in ("timeout", "breaker_reset")
            if getattr(self, key) <= 0
        ]
        if not self.enabled:
            return found
        if not self.service_url:
            found.append(("service_url", "required when embedding is enabled"))
        elif not re.fullmatch(r"https?://[^/\s]+(/\S*)?", self.service_url):
            found.append(("service_url", f"{self.service_url!r} is not an http:// or https:// URL"))
        return found


class IndexerConfig(Section, frozen=True):
    """``graph.config.indexer``."""

    indexes: IndexesConfig = IndexesConfig()
    batch_processing: BatchProcessingConfig = BatchProcessingConfig()
    embedding: EmbeddingConfig = EmbeddingConfig()


class DataManagerConfig(Section, frozen=True):
    """``graph.config.data_manager``: relationship rows written per SQL statement."""

    edge_batch_size: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 100


class QuerierConfig(Section, frozen=True):
    """``graph.config.querier``: the query result cache."""

    cache_enabled: bool = True
    max_cache_size: Annotated[int, msgspec.Meta(ge=0, le=10_000_000)] = 10_000
    #: The cache's memory bound (results as JSON bytes, plus their dependency index).
    max_cache_bytes: ByteSize = ByteSize(32 << 20)


class GraphSettings(Section, frozen=True):
    """``graph.config``: the graph processor.

    ``workers`` bounds the batches in flight between JetStream and the single SQLite
    writer; ``queue_size`` bounds the events held in memory (it is also the consumer's
    ``max_ack_pending``), so a full queue slows the consumer and never drops.
    """

    # Defaults measured on 2 cores: 1,000 unacked events left the writer idle while
    # acks made their round trip (6,300 events/s drained); 5,000 and 4 batches kept it
    # busy (9,500 events/s).
    workers: Annotated[int, msgspec.Meta(ge=1, le=256)] = 4
    queue_size: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 5000
    input_subject: str = "events.graph.entity.>"
    max_event_bytes: Annotated[int, msgspec.Meta(ge=256, le=1 << 20)] = 64 << 10
    #: An event stamped later than now plus this is stamped now plus this (counted).
    max_clock_skew: Duration = Duration(60.0)
    #: The longest ``POST /admin/export`` may hold its snapshot (which holds the WAL
    #: back): past it the export ends with an incomplete-marker line, however slowly
    #: its client reads.
    export_timeout: Duration = Duration(60.0)
    data_manager: DataManagerConfig = DataManagerConfig()
    indexer: IndexerConfig = IndexerConfig()
    querier: QuerierConfig = QuerierConfig()
    #: SQLite's page cache per connection (the writer's and each reader thread's);
    #: the default is SQLite's own (``cache_size = -2000``, 2,000 KiB).
    sqlite_cache_size: ByteSize = ByteSize(2000 << 10)
    #: SQLite's ``synchronous`` for the graph: ``"full"`` fsyncs every commit, which is
    #: what acking a JetStream message after the commit relies on (docs/operations.md,
    #: "Power cuts"); ``"normal"`` may lose the last commits on a power cut.
    sqlite_synchronous: Literal["full", "normal"] = "full"

    def __post_init__(self) -> None:
        if self.sqlite_cache_size < _MIN_SQLITE_CACHE:
            raise ValueError(
                f"sqlite_cache_size: {int(self.sqlite_cache_size)} bytes is below 64KiB"
            )


class GraphConfig(Section, frozen=True):
    """``graph``."""

    config: GraphSettings = GraphSettings()


class ComponentConfig(Section, frozen=True):
    """One entry of ``components``; ``config`` is decoded by the component's type."""

    id: str
    type: str
    # A dict as read; the loader replaces it with the Struct of the component's type.
    config: Any = msgspec.field(default_factory=dict)


class SimulatorConfig(Section, frozen=True):
    """``components[].config`` of type ``simulator``: a small demo event source."""

    entities: Positive = 20
    interval: Duration = Duration(1.0)
    seed: int = 1
    #: The first drone's number: two simulators with different offsets make distinct drones.
    first: Annotated[int, msgspec.Meta(ge=0)] = 0
    #: Every this many rounds, a maintenance note or incident report (0: none).
    reports_every: Annotated[int, msgspec.Meta(ge=0)] = 0


Bcm = Annotated[int, msgspec.Meta(ge=0, le=27)]
Priority = Annotated[int, msgspec.Meta(ge=0, le=9)]
GpioKind = Literal["button", "digital_input", "motion_sensor", "distance_sensor", "mcp3008"]

#: Per GPIO kind: the wiring keys it requires, and the property it writes by default.
_GPIO_WIRING: dict[str, tuple[str, ...]] = {
    "button": ("pin",),
    "digital_input": ("pin",),
    "motion_sensor": ("pin",),
    "distance_sensor": ("echo", "trigger"),
    "mcp3008": ("channel",),
}
_GPIO_PROPERTY = {
    "button": "pressed",
    "digital_input": "value",
    "motion_sensor": "motion",
    "distance_sensor": "distance_m",
    "mcp3008": "value",
}
#: Which kinds each optional key applies to (a key set for another kind is an error).
_GPIO_APPLIES = {
    "spi": ("mcp3008",),
    "pull_up": ("button", "digital_input", "motion_sensor"),
    "sample_rate": ("motion_sensor", "distance_sensor", "mcp3008"),
}


def _entity_problems(entity_id: str, entity_type: str) -> list[tuple[str, str]]:
    """An entity id and type checked as an event would be, so a bad one fails at load."""
    event = EntityEvent(entity_id=entity_id or "x", entity_type=entity_type, properties={})
    try:
        validate_event(event)
    except EventError as exc:
        return [("entity_type" if exc.reason == "bad_entity_type" else "entity_id", exc.detail)]
    return []


class SpiConfig(Section, frozen=True):
    """``gpio_input`` ``spi``: the hardware SPI bus (``port``) and chip select (``device``)."""

    port: Annotated[int, msgspec.Meta(ge=0, le=1)] = 0
    device: Annotated[int, msgspec.Meta(ge=0, le=1)] = 0


class GpioInputConfig(Section, frozen=True):
    """``components[].config`` of type ``gpio_input``: one gpiozero input as an entity.

    ``kind`` picks the device: ``button``, ``digital_input`` and ``motion_sensor`` need a
    BCM ``pin`` and publish each change (``debounce`` holds changes back for that long
    after one is published, then publishes the settled value); ``distance_sensor``
    (HC-SR04: ``echo``, ``trigger``, ``max_distance`` in metres) and ``mcp3008``
    (``channel`` 0-7, optional ``spi``) are polled ``sample_rate`` times a second (default
    1; a PIR's own polling defaults to 10) and publish when the value moved by more than
    ``min_change``. ``pull_up`` defaults to true for a button, false otherwise.
    ``property`` is the key written (default per kind: ``pressed``, ``value``, ``motion``,
    ``distance_m``, ``value``). ``pin_factory: "mock"`` uses gpiozero's mock pins (demo
    and tests).
    """

    kind: GpioKind
    entity_id: str
    pin: Bcm | None = None
    echo: Bcm | None = None
    trigger: Bcm | None = None
    channel: Annotated[int, msgspec.Meta(ge=0, le=7)] | None = None
    spi: SpiConfig | None = None
    sample_rate: Annotated[float, msgspec.Meta(gt=0.0, le=100.0)] | None = None
    min_change: Annotated[float, msgspec.Meta(ge=0.0)] = 0.0
    debounce: Duration = Duration(0.0)
    pull_up: bool | None = None
    max_distance: Annotated[float, msgspec.Meta(gt=0.0, le=10.0)] = 1.0
    entity_type: str = "sensor"
    property: str = ""
    priority: Priority = 1
    pin_factory: Literal["default", "mock"] = "default"

    def edge_triggered(self) -> bool:
        """Whether this kind publishes on each change (else it is polled)."""
        return self.kind in ("button", "digital_input", "motion_sensor")

    def property_key(self) -> str:
        """The property this input writes: ``property``, or the kind's default."""
        return self.property or _GPIO_PROPERTY[self.kind]

    def problems(self) -> list[tuple[str, str]]:
        """Wiring keys the kind needs or can't use, and the entity id and type."""
        found: list[tuple[str, str]] = []
        needed = _GPIO_WIRING[self.kind]
        for key in ("pin", "echo", "trigger", "channel"):
            given = getattr(self, key) is not None
            if key in needed and not given:
                found.append((key, f"required for kind {self.kind!r}"))
            elif given and key not in needed:
                found.append((key, f"not used by kind {self.kind!r}"))
        for key, kinds in _GPIO_APPLIES.items():
            if getattr(self, key) is not None and self.kind not in kinds:
                found.append((key, f"not used by kind {self.kind!r}"))
        if self.kind == "distance_sensor" and self.echo is not None and self.echo == self.trigger:
            found.append(("trigger", "must be another pin than echo"))
        polled = not self.edge_triggered()
        if self.debounce and polled:
            found.append(("debounce", f"not used by kind {self.kind!r} (see min_change)"))
        if self.min_change and not polled:
            found.append(("min_change", f"not used by kind {self.kind!r} (see debounce)"))
        return found + _entity_problems(self.entity_id, self.entity_type)


class SystemTelemetryConfig(Section, frozen=True):
    """``components[].config`` of type ``system_telemetry``: the device as an entity.

    Every ``interval`` (and once at start) the agent publishes CPU, memory, disk,
    temperature, uptime, throttling, its own and NATS's memory, and the sync backlog as
    properties of ``entity_id`` (default: ``platform.id``).
    """

    interval: Duration = Duration(30.0)
    entity_id: str = ""
    entity_type: str = "device"
    priority: Priority = 1

    def problems(self) -> list[tuple[str, str]]:
        """A too-short interval, and the entity id and type."""
        found = [("interval", "must be at least 100ms")] if self.interval < 0.1 else []
        return found + _entity_problems(self.entity_id, self.entity_type)


class AuthConfig(Section, frozen=True):
    """``services.service-manager.config.auth``: bearer tokens on the HTTP API.

    ``type: "jwt"`` requires an HS256 token signed with ``jwt_secret`` (at least 32
    bytes), carrying ``exp``, when ``jwt_issuer`` is set that ``iss``, when
    ``jwt_audience`` is set that ``aud``, and in ``scope`` what the path needs: ``read``,
    ``write`` (``/ingest``) or ``admin`` (``/admin``, ``/devices``, ``/claim-tokens``). Paths under
    an ``open_paths`` prefix (whole segments: ``/health`` opens ``/health/x``, not
    ``/healthz``) need no token and are never rate limited, so a load balancer or
    Prometheus polling them is never refused.

    An API bound beyond loopback (``http_host`` other than 127.0.0.1, ::1, localhost)
    with ``type: "none"`` refuses to start unless ``allow_unauthenticated`` says that
    is meant; then every start logs a warning and ``/health`` shows it.
    """

    type: Literal["none", "jwt"] = "none"
    jwt_secret: str = ""
    jwt_issuer: str = ""
    jwt_audience: str = ""
    open_paths: tuple[str, ...] = ("/health", "/metrics", "/openapi.json")
    allow_unauthenticated: bool = False


class HttpTlsConfig(Section, frozen=True):
    """``services.service-manager.config.tls``: serve the API over HTTPS (both or neither)."""

    cert_file: str = ""
    key_file: str = ""


class ServiceManagerSettings(Section, frozen=True):
    """``services.service-manager.config``: the HTTP API listener."""

    http_port: Port = 8080
    http_host: str = "127.0.0.1"
    auth: AuthConfig = AuthConfig()
    tls: HttpTlsConfig | None = None


class ServiceManagerConfig(Section, frozen=True):
    """``services.service-manager``."""

    config: ServiceManagerSettings = ServiceManagerSettings()


class MetricsSettings(Section, frozen=True):
    """``services.metrics.config``: a separate Prometheus listener.

    ``/metrics`` is always served on the API port too.
    """

    port: Port = 9090
    path: str = "/metrics"
    include_go_metrics: bool = False


class MetricsConfig(Section, frozen=True):
    """``services.metrics``."""

    enabled: bool = False
    config: MetricsSettings = MetricsSettings()


class ServicesConfig(Section, frozen=True):
    """``services``."""

    service_manager: ServiceManagerConfig = msgspec.field(
        default_factory=ServiceManagerConfig, name="service-manager"
    )
    metrics: MetricsConfig = MetricsConfig()


class RateLimitConfig(Section, frozen=True):
    """``api-gateway.config.rate_limit``: a token bucket per client on the HTTP API.

    Each client (the token's ``sub`` when authenticated, else its IP address) may make
    ``burst`` requests at once, refilled at ``requests_per_minute``; beyond that the
    answer is 429 with ``Retry-After``.
    """

    enabled: bool = False
    requests_per_minute: Positive = 1000
    burst: Positive = 50


class ApiGatewaySettings(Section, frozen=True):
    """``api-gateway.config``."""

    rate_limit: RateLimitConfig = RateLimitConfig()


class ApiGatewayConfig(Section, frozen=True):
    """``api-gateway``."""

    config: ApiGatewaySettings = ApiGatewaySettings()


class LoggingConfig(Section, frozen=True):
    """``logging``: level, ``json`` or ``text``, ``stdout``/``stderr``/a file path, extra fields."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "debug", "info", "warning", "error"] = (
        "INFO"
    )
    format: Literal["json", "text"] = "json"
    output: str = "stdout"
    fields: dict[str, str] = msgspec.field(default_factory=dict)


class TelemetryConfig(Section, frozen=True):
    """``telemetry``: OpenTelemetry tracing."""

    enabled: bool = False
    exporter: Literal["otlp", "console"] = "otlp"
    endpoint: str = ""
    sample_rate: Fraction = 1.0


class ReconnectConfig(Section, frozen=True):
    """``websocket_output.config.reconnect``: exponential backoff with jitter, capped.

    The wait after the n-th failure in a row is ``initial * multiplier**(n-1)``, at most
    ``max``, each spread by ±``jitter`` (a fraction); a welcome resets it.
    """

    initial: Duration = Duration(0.5)
    max: Duration = Duration(30.0)
    multiplier: Annotated[float, msgspec.Meta(ge=1.0, le=10.0)] = 2.0
    jitter: Fraction = 0.2


class ProvisioningConfig(Section, frozen=True):
    """``provisioning``: zero-touch enrolment (edge) and the enrolment service (hub).

    Edge: with ``enabled`` and no ``websocket_output``, a device without a credential
    makes its key, finds the hub (``hub_url``, else mDNS for ``discovery_timeout``,
    retried with ``retry``), proves the hub against ``hub_key`` (a pinned fingerprint or
    key) or its claim token, enrols, and then syncs with what the hub returns. The
    per-device ``file`` (boot partition) may carry a claim token, hub URL and key.
    ``device_id`` defaults to ``platform.id`` (the hostname, suffixed with the key
    fingerprint's first 8 hex digits when it is the hostname, so cloned images differ).

    Hub: with ``enabled``, serves ``/enrol``, advertises itself by mDNS on
    ``interfaces`` (IPs; all when empty), and gives approved devices a credential valid
    for ``credential_ttl`` plus ``sync_url`` (default: the address they enrolled at),
    ``filters`` and ``max_bytes_per_second``. A device without a valid claim token waits
    as pending for at most ``pending_ttl`` (then it must ask again), at most
    ``max_pending`` wait at once, and each source address may make
    ``enrol_requests_per_minute`` enrolment requests.

    Edge, with an ``https://`` hub: ``ca_file`` is the CA (or the hub's own certificate)
    it trusts for enrolment and for the ``wss://`` sync link it is given (the system's
    CAs when empty).
    """

    enabled: bool = False
    advertise: bool = True
    interfaces: list[str] = msgspec.field(default_factory=list)
    device_id: str = ""
    hub_url: str = ""
    hub_key: str = ""
    ca_file: str = ""
    file: str = "/boot/firmware/semstreams-provision.json"
    discovery_timeout: Duration = Duration(5.0)
    retry: ReconnectConfig = ReconnectConfig(initial=Duration(1.0), max=Duration(60.0))
    credential_ttl: Duration = Duration(30 * 86400.0)
    sync_url: str = ""
    filters: dict[str, Any] = msgspec.field(default_factory=dict)
    max_bytes_per_second: ByteSize = ByteSize(0)
    pending_ttl: Duration = Duration(86400.0)
    max_pending: Positive = 1000
    enrol_requests_per_minute: Positive = 300


class Config(Section, frozen=True):
    """The whole agent (or hub) configuration file."""

    state_dir: str = "/var/lib/semstreams"
    platform: PlatformConfig = PlatformConfig()
    nats: NatsConfig = NatsConfig()
    graph: GraphConfig = GraphConfig()
    components: list[ComponentConfig] = msgspec.field(default_factory=list)
    services: ServicesConfig = ServicesConfig()
    api_gateway: ApiGatewayConfig = msgspec.field(
        default_factory=ApiGatewayConfig, name="api-gateway"
    )
    logging: LoggingConfig = LoggingConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    provisioning: ProvisioningConfig = ProvisioningConfig()


class SyncBatchConfig(Section, frozen=True):
    """``websocket_output.config.batch``: a batch goes when any limit is reached.

    ``max_bytes`` bounds the uncompressed batch; under a rate cap the link also keeps a
    compressed batch to about a quarter second of the cap, so urgent changes never wait
    long behind one.
    """

    max_count: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 500
    max_bytes: ByteSize = ByteSize(256 << 10)
    max_age: Duration = Duration(0.5)


class SyncTlsConfig(Section, frozen=True):
    """``websocket_output.config.tls``: the CA that signs the hub, and a client certificate."""

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""


class WebsocketOutputConfig(Section, frozen=True):
    """``components[].config`` of type ``websocket_output``: the edge's link to the hub.

    ``mode`` is ``"state"`` (the latest changed triples per entity; default) or
    ``"events"`` (every reading). ``max_bytes_per_second`` caps the wire bytes (0: no
    cap); with ``priority_lanes``, changes of higher priority overtake the backlog and a
    change of ``urgent_priority`` or more is sent without waiting for ``batch.max_age``.
    ``max_outbox_bytes`` bounds what waits on the device: past it the oldest,
    lowest-priority changes are dropped and counted. The credential is ``token`` or the
    contents of ``token_file``.
    """

    url: str
    filters: dict[str, Any] = msgspec.field(default_factory=dict)
    mode: Literal["state", "events"] = "state"
    max_bytes_per_second: ByteSize = ByteSize(0)
    priority_lanes: bool = True
    urgent_priority: Annotated[int, msgspec.Meta(ge=0, le=9)] = 7
    batch: SyncBatchConfig = SyncBatchConfig()
    window: Annotated[int, msgspec.Meta(ge=1, le=256)] = 4
    reconnect: ReconnectConfig = ReconnectConfig()
    ping_interval: Duration = Duration(10.0)
    ping_timeout: Duration = Duration(10.0)
    max_outbox_bytes: ByteSize = ByteSize(256 << 20)
    tls: SyncTlsConfig | None = None
    token: str = ""
    token_file: str = ""


#: Each component type the edge agent runs, with the struct its ``config`` decodes
#: into (the hub adds its own: ``cloud_hub.config``).
COMPONENT_TYPES: Mapping[str, type[Section]] = {
    "simulator": SimulatorConfig,
    "websocket_output": WebsocketOutputConfig,
    "gpio_input": GpioInputConfig,
    "system_telemetry": SystemTelemetryConfig,
}
