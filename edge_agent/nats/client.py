"""Connect to NATS (the embedded server or a cluster) and lay out the JetStream streams."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import nats
import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NotFoundError

from edge_agent.config import JetStreamConfig, NatsConfig
from edge_agent.errors import ConfigError, NatsServerError
from edge_agent.nats.delivery import DeliveryConnection, open_delivery
from edge_agent.nats.subjects import (
    DEAD_LETTER_STREAM,
    DEAD_LETTER_SUBJECTS,
    ENTITY_STREAM,
    ENTITY_SUBJECTS,
)
from edge_agent.private_files import check_private

__all__ = [
    "connect",
    "embedded_port",
    "ensure_stream_config",
    "ensure_streams",
    "is_local_url",
    "nkey_public_key",
    "open_delivery_connection",
    "port_answers",
    "recreate_consumer",
    "refuse_publishes",
    "remove_stale_consumers",
    "subjects_overlap",
]

log = logging.getLogger(__name__)
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0", ""}
_MAX_MESSAGE_BYTES = 1 << 20


def is_local_url(url: str) -> bool:
    """Whether a NATS URL names this host."""
    host = urlsplit(url).hostname or ""
    return host in _LOCAL_HOSTS or host == socket.gethostname() or host.startswith("127.")


def _port_of(url: str, default: int = 4222) -> int:
    return urlsplit(url).port or default


async def port_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def embedded_port(config: NatsConfig) -> int | None:
    """The port to run an embedded server on, or ``None`` to connect to ``urls`` instead.

    ``embedded: auto`` starts a server when ``urls`` is empty, or names only this host
    and nothing answers there (so ``nats://localhost:4222`` works as written).
    """
    urls = config.urls
    port = _port_of(urls[0], config.port) if urls else config.port
    if config.embedded is True:
        return port
    if config.embedded is False:
        return None
    if not urls:
        return port
    if not all(is_local_url(u) for u in urls):
        return None
    return None if await port_answers("127.0.0.1", port) else port


def _tls_context(config: NatsConfig, urls: list[str]) -> ssl.SSLContext | None:
    """The client's TLS: its certificate (``nats.tls``), and whom it trusts.

    It trusts ``nats.tls.ca_file``; else, connecting to this host with ``nats.server_tls``
    set (its own embedded server), exactly that server's certificate; else the system
    store.
    """
    tls = config.tls
    own = config.server_tls
    pinned = own is not None and not (tls and tls.ca_file) and all(map(is_local_url, urls))
    if tls is None and not pinned:
        return None
    if own is not None and pinned:
        context = ssl.create_default_context(cadata=_first_certificate(own.cert_file))
        # The very certificate is the trust anchor: no CA, and no name to check.
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        context.check_hostname = False
    else:
        context = ssl.create_default_context(cafile=(tls.ca_file if tls else "") or None)
    if tls and tls.cert_file:
        check_private(tls.key_file, "nats.tls.key_file")
        context.load_cert_chain(tls.cert_file, tls.key_file)
    return context


_PEM_CERTIFICATE = re.compile(
    r"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]+-----END CERTIFICATE-----"
)


def _first_certificate(path: str) -> str:
    """The first PEM certificate in ``path`` (the server's own, before any chain)."""
    where = "nats.server_tls.cert_file"
    try:
        found = _PEM_CERTIFICATE.search(Path(path).read_text(errors="replace"))
    except OSError as exc:
        raise ConfigError([f"{where}: cannot read {path}: {exc.strerror}"]) from exc
    if found is None:
        raise ConfigError([f"{where}: no PEM certificate in {path}"])
    return found[0]


def _nkeys() -> Any:
    """The nkeys module, imported on use: it loads libsodium (PyNaCl, ~2 MB resident),
    which only an agent with ``nats.nkey_seed`` needs."""
    import nkeys  # type: ignore[import-untyped]

    return nkeys


def nkey_public_key(seed_path: str) -> str:
    """The NKey user public key (``U...``) of the seed in ``seed_path``.

    Raises:
        ConfigError: naming ``nats.nkey_seed``: the file is open to others, unreadable,
            or holds no user seed.
    """
    where = "nats.nkey_seed"
    check_private(seed_path, where)
    try:
        seed = Path(seed_path).read_bytes().strip()
    except OSError as exc:
        raise ConfigError([f"{where}: cannot read {seed_path}: {exc.strerror}"]) from exc
    nkeys = _nkeys()
    try:
        pair = nkeys.from_seed(seed)
        public = str(pair.public_key.decode())
    except (nkeys.NkeysError, ValueError) as exc:
        raise ConfigError([f"{where}: {seed_path} holds no NKey seed ({exc})"]) from exc
    if not public.startswith("U"):
        raise ConfigError([f"{where}: {seed_path} is not a user's seed (SU...)"])
    return public


async def connect(
    config: NatsConfig,
    urls: list[str],
    *,
    name: str,
    on_resync: Callable[[], None] | None = None,
) -> Client:
    """Connect with the configured reconnect policy, TLS and NKey seed.

    Args:
        config: the ``nats`` section.
        urls: the servers to use (the embedded server's URL, or ``config.urls``).
        name: the client name shown by the server.
        on_resync: called after a reconnection, or when the client dropped messages
            (slow consumer): consumers must be rebound to get them again, in order.

    Raises:
        NatsServerError: no server could be reached (after ``max_reconnect`` tries).
    """

    connection: list[Client] = []

    async def disconnected() -> None:
        if connection and connection[0].is_closed:
            log.info("nats connection closed")  # our own close(): not news
            return
        log.warning("nats disconnected")

    async def reconnected() -> None:
        log.info("nats reconnected")
        if on_resync:
            on_resync()

    refused: asyncio.Future[Exception] = asyncio.get_running_loop().create_future()

    async def error(exc: Exception) -> None:
        log.warning("nats error: %s", exc)
        if not connection and _refusal(exc) and not refused.done():
            refused.set_result(exc)  # before the first connection: retrying won't help
        if isinstance(exc, nats.errors.SlowConsumerError) and on_resync:
            on_resync()

    if config.nkey_seed:
        check_private(config.nkey_seed, "nats.nkey_seed")
    connecting = asyncio.ensure_future(
        nats.connect(
            servers=urls,
            name=name,
            max_reconnect_attempts=config.max_reconnect,
            reconnect_time_wait=config.reconnect_wait,
            allow_reconnect=True,
            tls=_tls_context(config, urls),
            nkeys_seed=config.nkey_seed or None,
            disconnected_cb=disconnected,
            reconnected_cb=reconnected,
            error_cb=error,
        )
    )
    try:
        waiting: set[asyncio.Future[Any]] = {connecting, refused}
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if not connecting.done():
            raise NatsServerError(
                f"NATS at {', '.join(urls)} refused this client: {refused.result()}"
                " (check nats.nkey_seed and nats.tls)"
            )
        client = connecting.result()
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        raise NatsServerError(f"cannot connect to NATS at {', '.join(urls)}: {exc}") from exc
    finally:
        if not connecting.done():
            connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await connecting
    connection.append(client)
    return client


def _refusal(exc: Exception) -> bool:
    """A server's answer that no retry will change: bad credentials, or a certificate
    this client does not trust (or the server does not accept)."""
    return isinstance(exc, ssl.SSLError) or "authorization violation" in str(exc).lower()


async def ensure_stream(
    js: JetStreamContext,
    name: str,
    subjects: str,
    *,
    work_queue: bool,
    max_bytes: int,
    replicas: int = 1,
) -> None:
    """Create a file-backed stream, or update it when its limits or subjects changed.

    A work queue refuses new messages when full (nothing held is dropped); any other
    stream keeps the newest messages within its byte limit.
    """
    stream = StreamConfig(
        name=name,
        subjects=[subjects],
        retention=RetentionPolicy.WORK_QUEUE if work_queue else RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.NEW if work_queue else DiscardPolicy.OLD,
        max_bytes=max_bytes,
        max_msg_size=_MAX_MESSAGE_BYTES,
        duplicate_window=120.0,
        num_replicas=replicas,
    )
    await ensure_stream_config(js, stream)


async def ensure_stream_config(js: JetStreamContext, stream: StreamConfig) -> None:
    """Create ``stream``, or update it when its limits, subjects or replicas changed.

    Errors other than "no such stream" (e.g. too little storage for its replicas) are
    raised as they are, never mistaken for "it exists".
    """
    try:
        current = (await js.stream_info(stream.name or "")).config
    except NotFoundError:
        await js.add_stream(stream)
        return
    fields = ("max_bytes", "max_msg_size", "subjects", "discard", "num_replicas")
    if any(getattr(current, f) != getattr(stream, f) for f in fields):
        await js.update_stream(stream)


async def ensure_streams(js: JetStreamContext, limits: JetStreamConfig) -> None:
    """Create or update the entity stream and the dead-letter stream.

    The entity stream is a work queue: an event is either held until the graph has it
    or refused to its producer, never dropped. Dead letters keep the newest.
    """
    await ensure_stream(
        js,
        ENTITY_STREAM,
        ENTITY_SUBJECTS,
        work_queue=True,
        max_bytes=limits.max_bytes,
        replicas=limits.replicas,
    )
    await ensure_stream(
        js,
        DEAD_LETTER_STREAM,
        DEAD_LETTER_SUBJECTS,
        work_queue=False,
        max_bytes=limits.dead_letter_max_bytes,
        replicas=limits.replicas,
    )


async def refuse_publishes(js: JetStreamContext, name: str) -> None:
    """Make a discard-new stream refuse every publish, keeping all it holds.

    Its byte limit drops to one byte: JetStream then answers each publisher ``maximum
    bytes exceeded`` (err_code 10077) and, the policy being discard new, removes nothing
    (checked with nats-server 2.15.1). :func:`ensure_streams` puts the limit back.
    """
    config = (await js.stream_info(name)).config
    if config.discard != DiscardPolicy.NEW:
        raise ValueError(f"stream {name} discards old messages: a lower limit would drop them")
    config.max_bytes = 1
    await js.update_stream(config)


async def recreate_consumer(
    js: JetStreamContext,
    *,
    durable: str,
    subject: str,
    max_ack_pending: int,
    deliver_subject: str,
) -> None:
    """(Re)create the durable push consumer delivering to ``deliver_subject``.

    Recreating matters: on a work-queue stream the unacked messages stay when the
    consumer goes, and a new consumer delivers them first, in stream order. Messages
    left unacked by a crash or an outage are therefore never redelivered *after*
    newer ones, which keeps the processor's stream position exact. Subscribe to
    ``deliver_subject`` before calling this, so nothing is pushed to nobody.

    Push, not pull: ``max_ack_pending`` bounds what is in flight, so the subscriber
    never holds more than that. Acks are explicit, per message: a work-queue stream
    refuses ``AckAll`` (``workqueue stream requires explicit ack``, err 10098).
    """
    with contextlib.suppress(NotFoundError):
        await js.delete_consumer(ENTITY_STREAM, durable)
    await js.add_consumer(
        ENTITY_STREAM,
        ConsumerConfig(
            durable_name=durable,
            name=durable,
            filter_subject=subject,
            deliver_subject=deliver_subject,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=300.0,
            max_ack_pending=max_ack_pending,
        ),
    )


async def open_delivery_connection(
    config: NatsConfig, url: str, *, name: str
) -> DeliveryConnection:
    """A :class:`DeliveryConnection` to ``url`` with the client's TLS and NKey seed.

    ``url`` is the server the main client is connected to (``Client.connected_url``),
    so both connections see the same server of a cluster.

    Raises:
        ConnectionError: the connection or its handshake failed.
    """
    nkey = ""
    sign = None
    if config.nkey_seed:
        check_private(config.nkey_seed, "nats.nkey_seed")
        pair = _nkeys().from_seed(Path(config.nkey_seed).read_bytes().strip())
        nkey = str(pair.public_key.decode())
        sign = pair.sign
    return await open_delivery(
        url, name=name, tls=_tls_context(config, [url]), nkey=nkey, sign=sign
    )


async def remove_stale_consumers(js: JetStreamContext, *, keep: str, subject: str) -> list[str]:
    """Delete graph consumers other than ``keep`` whose subjects overlap ``subject``.

    For an agent that owns its stream (the embedded server): a consumer left under a
    former name (another ``platform.id``, an older version) would otherwise block the
    new one, since a work-queue stream refuses overlapping consumers.

    Returns:
        The names deleted.
    """
    removed = []
    for info in await js.consumers_info(ENTITY_STREAM):
        name = info.name or ""
        filtered = info.config.filter_subject or ENTITY_SUBJECTS
        if name.startswith("graph-") and name != keep and subjects_overlap(filtered, subject):
            await js.delete_consumer(ENTITY_STREAM, name)
            removed.append(name)
    return removed


def subjects_overlap(first: str, second: str) -> bool:
    """Whether two NATS subjects (with ``*`` and ``>`` wildcards) can match one subject."""
    left, right = first.split("."), second.split(".")
    for a, b in zip(left, right, strict=False):
        if ">" in (a, b):
            return True
        if a != b and "*" not in (a, b):
            return False
    return len(left) == len(right)
