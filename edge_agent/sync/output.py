"""The ``websocket_output`` component: the asyncio shell that runs the edge's sync link.

The protocol (:mod:`protocol`), the outbox (``graph/outbox.py``) and the pacing
(:mod:`pacing`) hold the logic; this module only moves bytes between them and a
WebSocket, and decides when to wait. Every store call runs on the graph's single
writer thread (``write``), so taking a batch never races an apply.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
import urllib.parse
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection, connect

from edge_agent import __version__
from edge_agent.config.loader import is_loopback
from edge_agent.config.schema import WebsocketOutputConfig
from edge_agent.errors import ConfigError, GraphError, ProtocolError
from edge_agent.graph import GraphStore
from edge_agent.graph.outbox import BatchLimits, OutboxBatch
from edge_agent.graph.share import merge_share
from edge_agent.metrics import Metrics
from edge_agent.private_files import check_private
from edge_agent.sync.codec import available_encodings, decode_deltas
from edge_agent.sync.filters import compile_filter
from edge_agent.sync.frames import Ack, Nack, Share, ShareEnd, Slow
from edge_agent.sync.pacing import Backoff, TokenBucket, wire_size
from edge_agent.sync.protocol import EdgeProtocol, State

__all__ = ["SyncOutput", "SyncRefusedError", "plain_link_warning", "read_token"]

log = logging.getLogger(__name__)
Writer = Callable[..., Awaitable[Any]]
_HANDSHAKE_TIMEOUT_S = 10.0
_HOUSEKEEPING_S = 1.0
#: A hub's ``full_resend`` is honoured at most this often: a hostile or broken hub
#: asking at every link would have the edge resend its whole graph each time. A hub
#: that still lacks batches asks again at a later link and is served then.
FULL_RESEND_MIN_INTERVAL_S = 600.0
# Under a cap, a compressed batch is kept to this many seconds of the rate, so an urgent
# change never waits long behind the one on the wire.
_BATCH_SECONDS_UNDER_CAP = 0.25
_MIN_BATCH_BYTES = 1024
_FRAME_OVERHEAD = 1024
#: The most a Share chunk may expand to (a chunk is at most 1 MiB on the wire).
_SHARE_RAW_MAX = 16 << 20
#: What a resync counts: share entities received, merged, and waiting changes dropped.
_SHARE_FIGURES = ("entities", "applied", "held_by_hub")


class SyncRefusedError(ProtocolError):
    """The hub refused this edge in its welcome (the reason is the message)."""


def read_token(settings: WebsocketOutputConfig, where: str) -> str:
    """The link's credential: ``token``, or the first line of ``token_file``.

    Raises:
        ConfigError: the token file cannot be read (the message names the key).
    """
    if not settings.token_file:
        return settings.token
    check_private(settings.token_file, f"{where}.token_file")
    try:
        return Path(settings.token_file).read_text().strip()
    except OSError as exc:
        raise ConfigError([f"{where}.token_file: cannot read: {exc.strerror}"]) from exc


def _client_ssl(settings: WebsocketOutputConfig) -> ssl.SSLContext | None:
    if not settings.url.startswith("wss://"):
        return None
    tls = settings.tls
    context = ssl.create_default_context(cafile=tls.ca_file or None if tls else None)
    if tls and tls.cert_file:
        check_private(tls.key_file, "websocket_output.tls.key_file")
        context.load_cert_chain(tls.cert_file, tls.key_file)
    return context


class SyncOutput:
    """The edge's link to the hub: connect, resume, send batches, count everything.

    Args:
        settings: the component's config.
        edge_id: this edge's id (``platform.id``).
        token: its credential.
        store: the graph store that keeps the outbox.
        write: runs a function on the store's writer thread.
        metrics: the agent's metrics.
        prove: signs the hub's Challenge nonce with the device key (an enrolled device:
            its credential is bound to that key, and each hello proves it holds it).
        resync_marker: while this file exists, each Hello asks the hub for this edge's
            whole share (see :mod:`edge_agent.graph.recovery`); it is removed when the
            share has arrived whole.
        on_share: called with what each merged share chunk touched (cache invalidation).
        on_share_end: called with the figures of a completed resync.
    """

    def __init__(
        self,
        settings: WebsocketOutputConfig,
        *,
        edge_id: str,
        token: str,
        store: GraphStore,
        write: Writer,
        metrics: Metrics,
        prove: Callable[[bytes], bytes] | None = None,
        resync_marker: Path | None = None,
        on_share: Callable[[frozenset[str]], None] | None = None,
        on_share_end: Callable[[dict[str, int]], Awaitable[None]] | None = None,
    ) -> None:
        self.settings = settings
        self._resync_marker = resync_marker
        self._on_share = on_share
        self._on_share_end = on_share_end
        self._share = dict.fromkeys(_SHARE_FIGURES, 0)
        self._no_resync_told = False
        #: When the last full resend was queued (monotonic); None: never.
        self._full_resend_at: float | None = None
        self.edge_id = edge_id
        self._token = token
        self._prove = prove
        self._store = store
        self._dropped_seen = store.sync_dropped_at_open
        self._write = write
        self._metrics = metrics
        self._filter = compile_filter(settings.filters)
        self._ssl = _client_ssl(settings)
        self._encodings = available_encodings()
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._bucket = TokenBucket(0, 0, time.monotonic())
        self._compression = 3.0  # raw / wire bytes, learnt as batches go
        self._nacked_until = 0.0
        self._hub_max_batch = 0
        self.connected = False
        self.hwm = 0
        self.last_error = ""

    # ---- the component ------------------------------------------------------------

    def set_token(self, token: str) -> None:
        """Use ``token`` from the next connection on (a renewed credential)."""
        self._token = token

    def notify(self) -> None:
        """New changes are in the outbox; callable from any thread."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def run(self) -> None:
        """Keep the link up until cancelled: connect, sync, back off, again."""
        self._loop = asyncio.get_running_loop()
        if warning := plain_link_warning(self.settings.url):
            log.warning("sync: %s", warning)
        reconnect = self.settings.reconnect
        backoff = Backoff(reconnect.initial, reconnect.max, reconnect.multiplier, reconnect.jitter)
        housekeeping = asyncio.create_task(self._housekeeping(), name="sync-housekeeping")
        try:
            while True:
                try:
                    await self._session(backoff)
                except (OSError, TimeoutError, websockets.WebSocketException) as exc:
                    self._failed(f"link to {self.settings.url} lost: {exc or type(exc).__name__}")
                except (ProtocolError, GraphError) as exc:
                    self._failed(str(exc))
                finally:
                    self.connected = False
                    self._metrics.sync_connected.set(0)
                await asyncio.sleep(backoff.next())
                self._metrics.sync_reconnects.inc()
        finally:
            housekeeping.cancel()

    def _failed(self, message: str) -> None:
        if message != self.last_error:
            log.warning("sync: %s", message)
        self.last_error = message

    # ---- one connection ---------------------------------------------------------------

    async def _session(self, backoff: Backoff) -> None:
        settings = self.settings
        async with connect(
            settings.url,
            compression=None,  # payloads are compressed already; deflate would cost ~30x
            proxy=None,
            ssl=self._ssl,
            open_timeout=_HANDSHAKE_TIMEOUT_S,
            ping_interval=settings.ping_interval or None,
            ping_timeout=settings.ping_timeout or None,
            close_timeout=2,
            max_size=1 << 20,
            user_agent_header=f"semstreams-edge/{__version__}",
        ) as ws:
            acked = await asyncio.to_thread(self._store.sync_acked_seq)
            resync = self._resync_marker is not None and self._resync_marker.exists()
            proto = EdgeProtocol(
                self.edge_id,
                self._token,
                acked_seq=acked,
                window=settings.window,
                encodings=self._encodings,
                prove=self._prove,
                resync=resync,
            )
            await self._flush(ws, proto)
            await self._handshake(ws, proto)
            if resync:
                self._share = dict.fromkeys(_SHARE_FIGURES, 0)
                if not proto.resyncing and not self._no_resync_told:
                    self._no_resync_told = True  # once: the marker stays for a newer hub
                    log.warning("sync: asked the hub for a resync; it offers none (older hub)")
            backoff.reset()
            self.connected, self.last_error = True, ""
            self._metrics.sync_connected.set(1)
            log.info(
                "sync: linked to %s as %s, hub has up to batch %d",
                settings.url,
                self.edge_id,
                proto.hwm,
            )
            if proto.full_resend:
                await self._requeue_all()
            resend = deque(await self._write(self._store.sync_resume, proto.hwm))
            tasks = {
                asyncio.create_task(self._receive(ws, proto)),
                asyncio.create_task(self._send(ws, proto, resend)),
            }
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:  # also when this session is cancelled (the agent stops)
                for task in tasks:
                    task.cancel()
                for task in tasks:
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
            for task in done:
                task.result()

    async def _handshake(self, ws: ClientConnection, proto: EdgeProtocol) -> None:
        """Until the Welcome: answer a Challenge (the protocol does), then read it."""
        welcome: Any = None
        while welcome is None:
            message = await asyncio.wait_for(ws.recv(), _HANDSHAKE_TIMEOUT_S)
            proto.receive_data(_as_bytes(message))
            await self._flush(ws, proto)
            welcome = next(iter(proto.events_received()), None)
        if proto.state == State.CLOSED:
            self._metrics.sync_refused.labels("welcome").inc()
            raise SyncRefusedError(f"hub refused {self.edge_id}: {proto.refusal}")
        self.hwm = proto.hwm
        hub_rate = getattr(welcome, "max_bytes_per_second", 0)
        # The hub's own limit on a batch (its frame and JetStream message limits).
        self._hub_max_batch = int(getattr(welcome, "max_batch_bytes", 0))
        self._bucket = _bucket(_lowest(self.settings.max_bytes_per_second, hub_rate))

    async def _requeue_all(self) -> None:
        """The hub lost batches it had acked: queue everything this edge wrote again
        (at most every ``FULL_RESEND_MIN_INTERVAL_S``)."""
        now = time.monotonic()
        last = self._full_resend_at
        if last is not None and now - last < FULL_RESEND_MIN_INTERVAL_S:
            self._metrics.sync_full_resends_deferred.inc()
            log.warning(
                "sync: the hub asks for a full resend again %.0f s after the last one;"
                " deferred (at most one every %.0f s)",
                now - last,
                FULL_RESEND_MIN_INTERVAL_S,
            )
            return
        self._full_resend_at = now
        queued = await self._write(self._store.sync_requeue_all, int(time.time() * 1000))
        self._metrics.sync_full_resends.inc()
        log.warning(
            "sync: the hub lacks batches it had acked (restored or rebuilt): sending all"
            " %d entities this edge wrote again",
            queued,
        )
        self.notify()

    async def _flush(self, ws: ClientConnection, proto: EdgeProtocol) -> None:
        for data in proto.data_to_send():
            await ws.send(data)
            size = wire_size(len(data))
            self._bucket.spend(size, time.monotonic())
            self._metrics.sync_bytes_sent.labels("wire").inc(size)

    async def _receive(self, ws: ClientConnection, proto: EdgeProtocol) -> None:
        async for message in ws:
            proto.receive_data(_as_bytes(message))
            for frame in proto.events_received():
                if isinstance(frame, Share | ShareEnd):
                    await self._take_share(frame, proto)
                else:
                    await self._answer(frame)
            await self._flush(ws, proto)
            self.hwm = proto.hwm
            self._wake.set()
        raise ConnectionError(f"hub closed the link ({ws.close_code} {ws.close_reason})")

    async def _take_share(self, frame: Share | ShareEnd, proto: EdgeProtocol) -> None:
        """Merge a share chunk into the graph and ack it; at the end, stop asking."""
        if isinstance(frame, ShareEnd):
            await self._share_ended(frame)
            return
        deltas = decode_deltas(frame.payload, frame.encoding, max_bytes=_SHARE_RAW_MAX)
        if len(deltas) != frame.count:
            raise ProtocolError(f"share chunk {frame.chunk}: {len(deltas)} of {frame.count}")
        store = self._store
        merged = await self._write(
            store.database.transaction, merge_share, deltas, self.edge_id, store.indexes
        )
        self._share["entities"] += len(deltas)
        self._share["applied"] += merged.changed
        self._share["held_by_hub"] += merged.held_by_hub
        self._metrics.share_entities.labels("applied").inc(merged.changed)
        self._metrics.share_entities.labels("unchanged").inc(len(deltas) - merged.changed)
        self._metrics.sync_dropped.labels("held_by_hub").inc(merged.held_by_hub)
        if merged.touched and self._on_share is not None:
            self._on_share(merged.touched)
        proto.ack_share(frame.chunk)

    async def _share_ended(self, end: ShareEnd) -> None:
        figures = {**self._share, "hub_entities": end.entities, "skipped": end.skipped}
        if figures["entities"] != end.entities:
            raise ProtocolError(f"share ended at {end.entities} entities, {figures} came")
        if self._resync_marker is not None:
            await asyncio.to_thread(self._resync_marker.unlink, missing_ok=True)
        log.info(
            "sync: resync done: %d entities of this edge's share came back, %d merged"
            " (%d too large to send)",
            end.entities,
            figures["applied"],
            end.skipped,
        )
        if self._on_share_end is not None:
            await self._on_share_end(figures)

    async def _answer(self, frame: Any) -> None:
        if isinstance(frame, Ack):
            await self._write(self._store.sync_ack, frame.seq)
            self._metrics.sync_acks.inc()
        elif isinstance(frame, Nack):
            self._metrics.sync_nacks.labels(frame.reason.split(":")[0]).inc()
            log.info("sync: hub nacked batch %d: %s", frame.seq, frame.reason)
            self._nacked_until = max(self._nacked_until, time.monotonic() + frame.retry_after)
        elif isinstance(frame, Slow):
            log.info("sync: hub asks to slow down to %d batches in flight", frame.window)
            if frame.max_bytes_per_second:
                rate = _lowest(self._bucket.rate, frame.max_bytes_per_second)
                self._bucket.set_rate(rate, time.monotonic())

    async def _send(
        self, ws: ClientConnection, proto: EdgeProtocol, resend: deque[OutboxBatch]
    ) -> None:
        while True:
            self._wake.clear()
            if self._nacked_until:
                resend = await self._after_nack(proto)
                continue
            # During a resync, changes wait until the share is merged: a change taken
            # from a store that lost part of itself must not overwrite the hub's newer
            # copy; taken after the merge it carries the newer values.
            if not proto.can_send() or proto.resyncing:
                await self._wake.wait()
                continue
            delay = self._bucket.delay(time.monotonic())
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            again = bool(resend)
            batch = resend.popleft() if again else await self._take(proto)
            if batch is None:
                await _wait(self._wake, self.settings.batch.max_age or None)
                continue
            proto.send_batch(batch.seq, batch.count, batch.payload, batch.encoding)
            await self._flush(ws, proto)
            self._sent(batch, again)

    async def _after_nack(self, proto: EdgeProtocol) -> deque[OutboxBatch]:
        """Wait out the hub's retry-after and every answer due, then send again from hwm."""
        await asyncio.sleep(max(0.0, self._nacked_until - time.monotonic()))
        while proto.in_flight:
            self._wake.clear()
            await self._wake.wait()
        self._nacked_until = 0.0
        return deque(await self._write(self._store.sync_resume, proto.hwm))

    async def _take(self, proto: EdgeProtocol) -> OutboxBatch | None:
        batch: OutboxBatch | None
        batch, filtered = await self._write(
            self._store.sync_take,
            self._limits(),
            self._filter,
            proto.encoding,
            int(time.time() * 1000),
        )
        if filtered:
            self._metrics.sync_dropped.labels("filtered").inc(filtered)
        if batch is not None:
            self._compression = 0.8 * self._compression + 0.2 * batch.raw_bytes / max(
                1, len(batch.payload)
            )
            self._metrics.sync_deltas.labels("sent").inc(batch.count)
        return batch

    def _limits(self) -> BatchLimits:
        settings = self.settings
        max_bytes = int(settings.batch.max_bytes)
        if self._hub_max_batch:
            # The limit is on the frame; a payload compresses to no more than it was,
            # and a frame adds well under 1 KiB to it.
            max_bytes = min(max_bytes, self._hub_max_batch - _FRAME_OVERHEAD)
        if self._bucket.rate:
            wire = self._bucket.rate * _BATCH_SECONDS_UNDER_CAP
            max_bytes = min(max_bytes, max(_MIN_BATCH_BYTES, int(wire * self._compression)))
        return BatchLimits(
            max_count=settings.batch.max_count,
            max_bytes=max_bytes,
            max_age_ms=int(settings.batch.max_age * 1000),
            urgent_priority=settings.urgent_priority,
            lanes=settings.priority_lanes,
        )

    def _sent(self, batch: OutboxBatch, again: bool) -> None:
        self._metrics.sync_batches.labels("resent" if again else "sent").inc()
        self._metrics.sync_bytes_sent.labels("uncompressed").inc(batch.raw_bytes)

    # ---- bounds and gauges -------------------------------------------------------------

    async def _housekeeping(self) -> None:
        limit = self.settings.max_outbox_bytes
        while True:
            with contextlib.suppress(GraphError):
                # Measured on a reader; the writer is asked to trim only when over.
                backlog = await asyncio.to_thread(self._store.sync_backlog)
                if backlog.bytes > limit:  # in flight, or recorded before the limit fell
                    await self._write(self._store.sync_trim, limit)
                    backlog = await asyncio.to_thread(self._store.sync_backlog)
                self._count_dropped(await asyncio.to_thread(self._store.sync_dropped), limit)
                self._metrics.sync_backlog_entities.set(backlog.entities)
                self._metrics.sync_backlog_bytes.set(backlog.bytes)
                lag = time.time() - backlog.oldest_ms / 1000 if backlog.oldest_ms else 0.0
                self._metrics.sync_lag.labels(self.edge_id).set(max(0.0, lag))
            await asyncio.sleep(_HOUSEKEEPING_S)

    def _count_dropped(self, total: int, limit: int) -> None:
        """Export the drops the store counted (in the transactions that made them)."""
        if total <= self._dropped_seen:
            return
        log.warning(
            "sync: outbox over %d bytes, dropped %d oldest lowest-priority changes",
            limit,
            total - self._dropped_seen,
        )
        self._metrics.sync_dropped.labels("outbox_full").inc(total - self._dropped_seen)
        self._dropped_seen = total

    def status(self) -> dict[str, Any]:
        """What ``/health`` reports about the link."""
        return {
            "status": "ok" if self.connected else "connecting",
            "url": self.settings.url,
            "hwm": self.hwm,
            "last_error": self.last_error,
            # Until the hub's whole share has arrived (see graph/recovery.py).
            "resync_requested": bool(self._resync_marker and self._resync_marker.exists()),
        }


def plain_link_warning(url: str) -> str:
    """Why a link to ``url`` is a risk ("" when it is not): plain ``ws://`` beyond this
    host carries the device's credential and its graph unencrypted."""
    host = urllib.parse.urlsplit(url).hostname or ""
    if not url.startswith("ws://") or is_loopback(host):
        return ""
    return (
        f"{url} is plain ws://: the credential and the graph cross the network"
        " unencrypted (give the hub TLS and use wss://)"
    )


def _as_bytes(message: str | bytes) -> bytes:
    if isinstance(message, str):
        raise ProtocolError("text frame received; the sync link speaks binary frames")
    return message


def _lowest(*rates: int) -> int:
    """The lowest non-zero rate (0 = no cap)."""
    return min((r for r in rates if r), default=0)


def _bucket(rate: int) -> TokenBucket:
    # A burst of a quarter second: enough for one batch, too little to flood the link.
    return TokenBucket(rate, max(_MIN_BATCH_BYTES, rate // 4), time.monotonic())


async def _wait(event: asyncio.Event, timeout: float | None) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout)
