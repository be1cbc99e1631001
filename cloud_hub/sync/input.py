"""The ``websocket_input`` component: the hub's end of the sync link, as an ASGI endpoint.

Per connection: authenticate the Hello, welcome with the edge's high-water mark, then
for each batch in order: decode it, publish it to the ``SYNC_BATCHES`` stream with
``<edge>:<seq>`` as the message id, apply it to the graph (the high-water mark moves in
the same transaction), and only then ack. A batch that cannot be made durable is
nacked, and so is every later one until the edge sends it again: batches are applied in
``seq`` order, never around a gap. A bad frame closes that connection only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from starlette.websockets import WebSocket, WebSocketDisconnect

from edge_agent.config.schema import WebsocketInputConfig
from edge_agent.errors import AuthError, GraphError, RemoteProtocolError
from edge_agent.graph import GraphStore
from edge_agent.metrics import Metrics
from edge_agent.sync.codec import available_encodings, decode_deltas
from edge_agent.sync.frames import Batch, EntityDelta, Frame, Hello, encode_frame
from edge_agent.sync.protocol import HubProtocol, State

__all__ = ["SYNC_STREAM", "EdgeLink", "SyncInput"]

log = logging.getLogger(__name__)
SYNC_STREAM = "SYNC_BATCHES"
_SYNC_SUBJECT = "sync.batches"
_RETRY_AFTER_S = 2.0
# Batches decoded ahead of the one being made durable, per connection.
_PIPELINE_DEPTH = 4
# Room for the JetStream message's headers next to a batch frame.
_HEADER_ROOM = 4096
# WebSocket close codes (RFC 6455): policy violation, protocol error, too big.
_CLOSE_POLICY, _CLOSE_PROTOCOL = 1008, 1002
Writer = Callable[..., Awaitable[Any]]


@dataclass
class EdgeLink:
    """What ``GET /edges`` shows about one edge."""

    edge_id: str
    connected: bool = False
    last_seen: float = 0.0
    hwm: int = 0
    lag_seconds: float = 0.0
    bytes_received: int = 0
    batches: int = 0
    remote: str = ""

    def view(self) -> dict[str, Any]:
        """The JSON object of this edge."""
        return {
            "edge_id": self.edge_id,
            "connected": self.connected,
            "last_seen": _iso(self.last_seen),
            "hwm": self.hwm,
            "lag_seconds": round(self.lag_seconds, 3),
            "bytes_received": self.bytes_received,
            "batches": self.batches,
            "remote": self.remote,
        }


class _Session:
    """One edge's connection: its protocol state and its pipeline of batches.

    The receiving side decodes batch N+1 while the worker makes batch N durable, so the
    hub's decoding and its SQLite writes overlap; the worker takes batches strictly in
    ``seq`` order and acks only ``hwm + 1``.
    """

    def __init__(self, websocket: WebSocket, proto: HubProtocol) -> None:
        self.websocket = websocket
        self.proto = proto
        self.expected = 0  # the next seq the receiving side takes into the pipeline
        self.pipeline: asyncio.Queue[tuple[Batch, list[EntityDelta]]] = asyncio.Queue(
            _PIPELINE_DEPTH
        )
        self.worker: asyncio.Task[None] | None = None
        self._send_lock = asyncio.Lock()

    async def flush(self) -> None:
        """Send every frame the protocol has queued, from either side, in order."""
        async with self._send_lock:
            for out in self.proto.data_to_send():
                await self.websocket.send_bytes(out)


def _iso(epoch: float) -> str | None:
    if not epoch:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


class SyncInput:
    """Accepts edges' sync links and makes their batches durable in JetStream and the graph.

    Args:
        settings: the component's config.
        store: the hub's graph store.
        write: runs a function on the store's writer thread.
        js: JetStream on the hub's NATS.
        metrics: the hub's metrics.
        on_commit: called with the entities a batch touched (cache invalidation).
        authenticate: checks an enrolled device's credential (raises AuthError) for
            edges not in ``settings.devices``.
        max_payload: the NATS server's largest message (0: unknown).
    """

    def __init__(
        self,
        settings: WebsocketInputConfig,
        *,
        store: GraphStore,
        write: Writer,
        js: JetStreamContext,
        metrics: Metrics,
        on_commit: Callable[[frozenset[str]], None],
        authenticate: Callable[[str, str, float], None] | None = None,
        max_payload: int = 0,
    ) -> None:
        self.settings = settings
        self._store = store
        self._write = write
        self._js = js
        self._metrics = metrics
        self._on_commit = on_commit
        self._authenticate = authenticate
        self._max_payload = max_payload
        self._encodings = available_encodings()
        self._waiting = 0
        self._sockets: dict[str, WebSocket] = {}
        self.links: dict[str, EdgeLink] = {edge: EdgeLink(edge) for edge in settings.devices}

    async def ensure_stream(self, replicas: int = 1) -> None:
        """Create or update ``SYNC_BATCHES``: every batch the hub took, deduplicated by id."""
        config = StreamConfig(
            name=SYNC_STREAM,
            subjects=[f"{_SYNC_SUBJECT}.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            max_bytes=self.settings.stream_max_bytes,
            max_msg_size=self.settings.max_frame_bytes,
            duplicate_window=120.0,
            num_replicas=replicas,
        )
        try:
            await self._js.add_stream(config)
        except nats.js.errors.BadRequestError:
            await self._js.update_stream(config)

    def edges(self) -> list[dict[str, Any]]:
        """Every edge configured or heard from, with its link's state."""
        for edge_id, (seq, at_ms) in self._store.sync_edges().items():
            link = self.links.setdefault(edge_id, EdgeLink(edge_id))
            link.hwm = max(link.hwm, seq)
            link.last_seen = max(link.last_seen, at_ms / 1000)
        return [self.links[e].view() for e in sorted(self.links)]

    # ---- one connection -------------------------------------------------------------

    async def endpoint(self, websocket: WebSocket) -> None:
        """The ASGI WebSocket endpoint at ``settings.path``."""
        await websocket.accept()
        proto = HubProtocol(
            encodings=self._encodings, max_frame_bytes=int(self.settings.max_frame_bytes)
        )
        session = _Session(websocket, proto)
        try:
            await self._serve(session)
        except RemoteProtocolError as exc:
            self._metrics.sync_refused.labels("protocol").inc()
            log.warning("sync: edge %s: %s; closing its link", proto.edge_id or "?", exc)
            await _close(websocket, _CLOSE_PROTOCOL, str(exc))
        except WebSocketDisconnect:
            pass
        finally:
            if session.worker is not None:
                session.worker.cancel()
            self._waiting -= session.pipeline.qsize()  # never to be made durable here
            self._disconnected(proto.edge_id, websocket)

    async def _serve(self, session: _Session) -> None:
        websocket, proto = session.websocket, session.proto
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            if data is None:
                raise RemoteProtocolError("text frame; the sync link speaks binary frames")
            self._metrics.sync_bytes_received.labels("wire").inc(len(data))
            proto.receive_data(data)
            for frame in proto.events_received():
                await self._handle(session, frame, len(data))
            await session.flush()
            if proto.state == State.CLOSED:
                await _close(websocket, _CLOSE_POLICY, "refused")
                return

    async def _handle(self, session: _Session, frame: Frame, size: int) -> None:
        if isinstance(frame, Hello):
            await self._hello(session, frame)
        elif isinstance(frame, Batch):
            link = self.links[session.proto.edge_id]
            link.bytes_received += size
            link.last_seen = time.time()
            await self._take(session, frame)

    async def _hello(self, session: _Session, hello: Hello) -> None:
        websocket, proto = session.websocket, session.proto
        reason = self._refusal(hello)
        if reason:
            self._metrics.sync_refused.labels("credentials").inc()
            log.warning(
                "sync: refused edge %r from %s: %s", hello.edge_id, _peer(websocket), reason
            )
            proto.refuse(reason)
            return
        edge_id = hello.edge_id
        stored = await asyncio.to_thread(self._store.sync_hwm, edge_id)
        # An edge the hub never heard from resumes where it says it is; so does one the
        # hub has forgotten part of (its graph restored from a backup): what the edge
        # says the hub acked is gone either way, and waiting for it would stall forever.
        known = max(stored or 0, hello.acked_seq)
        if stored is not None and known > stored:
            log.warning(
                "sync: edge %s had batches up to %d acked, this hub remembers %d:"
                " resuming after %d (the hub's graph was restored from an older copy?)",
                edge_id,
                known,
                stored,
                known,
            )
        previous = self._sockets.get(edge_id)
        if previous is not None:
            # The newer link wins: the old one is most likely half-open.
            await _close(previous, _CLOSE_POLICY, "replaced by a newer link")
        self._sockets[edge_id] = websocket
        link = self.links.setdefault(edge_id, EdgeLink(edge_id))
        link.connected, link.last_seen, link.hwm = True, time.time(), known
        link.remote = _peer(websocket)
        self._count_connected()
        log.info(
            "sync: edge %s linked from %s, resuming after batch %d", edge_id, link.remote, known
        )
        proto.accept(known, max_batch_bytes=self._max_batch_bytes())
        session.expected = known + 1
        session.worker = asyncio.create_task(self._work(session, link), name=f"sync {edge_id}")

    def _max_batch_bytes(self) -> int:
        """The largest batch frame this hub can store: its frame limit, and JetStream's
        message limit (the NATS server's ``max_payload``, 1 MiB by default)."""
        if not self._max_payload:
            return int(self.settings.max_frame_bytes)
        return min(int(self.settings.max_frame_bytes), self._max_payload - _HEADER_ROOM)

    def _refusal(self, hello: Hello) -> str:
        device = self.settings.devices.get(hello.edge_id)
        if device is not None:
            matches = hmac.compare_digest(device.token.encode(), hello.token.encode())
            return "" if matches else "bad credential"
        if self._authenticate is None:
            return f"unknown device {hello.edge_id!r}"
        try:
            self._authenticate(hello.edge_id, hello.token, time.time())
        except AuthError as exc:
            return exc.reason
        return ""

    async def kick(self, edge_id: str, reason: str) -> None:
        """Close ``edge_id``'s live link, if any (it was revoked or rejected)."""
        websocket = self._sockets.get(edge_id)
        if websocket is not None:
            log.warning("sync: closing the link of %s: %s", edge_id, reason)
            await _close(websocket, _CLOSE_POLICY, reason)

    async def _take(self, session: _Session, batch: Batch) -> None:
        """The receiving side: ack a re-send, nack a gap, else decode into the pipeline."""
        proto, seq = session.proto, batch.seq
        if proto.is_duplicate(batch):
            self._metrics.sync_batches.labels("duplicate").inc()
            proto.ack(seq)
            return
        if seq != session.expected:
            self._nack(proto, seq, f"out of order: expected batch {session.expected}")
            return
        deltas = decode_deltas(
            batch.payload, batch.encoding, max_bytes=self.settings.max_batch_bytes
        )
        self._metrics.sync_batches.labels("received").inc()
        session.expected += 1
        await session.pipeline.put((batch, deltas))
        self._waiting += 1  # counted once queued: a put cut short by a close leaks nothing
        if self._waiting > self.settings.slow_threshold:
            proto.slow(window=1)

    async def _work(self, session: _Session, link: EdgeLink) -> None:
        """The worker: make each batch durable in order, then ack it; after a failure,
        nack what follows until the edge sends from the failed one again."""
        proto = session.proto
        while True:
            batch, deltas = await session.pipeline.get()
            try:
                if batch.seq != proto.hwm + 1:  # behind a batch that just failed
                    self._nack(proto, batch.seq, f"out of order: expected batch {proto.hwm + 1}")
                elif not await self._make_durable(proto, batch, deltas, link):
                    session.expected = batch.seq
            finally:
                self._waiting -= 1
            await session.flush()

    async def _make_durable(
        self, proto: HubProtocol, batch: Batch, deltas: list[EntityDelta], link: EdgeLink
    ) -> bool:
        """Publish to SYNC_BATCHES, apply to the graph, ack; or nack. Whether it took."""
        edge_id, seq = proto.edge_id, batch.seq
        try:
            await self._js.publish(
                f"{_SYNC_SUBJECT}.{edge_id}",
                encode_frame(batch),
                stream=SYNC_STREAM,
                headers={"Nats-Msg-Id": f"{edge_id}:{seq}"},
            )
            now = time.time()
            result = await self._write(
                self._store.apply_deltas, edge_id, seq, deltas, int(now * 1000)
            )
        except (nats.errors.Error, TimeoutError, GraphError) as exc:
            self._nack(proto, seq, f"not durable: {exc or type(exc).__name__}")
            return False
        proto.ack(seq)
        self._on_commit(result.touched)
        self._metrics.sync_acks.inc()
        for outcome, count in (
            ("applied", result.applied),
            ("stale", result.stale),
            ("conflict", result.conflicts),
        ):
            if count:
                self._metrics.sync_deltas.labels(outcome).inc(count)
        link.hwm, link.batches = seq, link.batches + 1
        if result.newest_ms:
            link.lag_seconds = max(0.0, now - result.newest_ms / 1000)
            self._metrics.sync_lag.labels(edge_id).set(link.lag_seconds)
        return True

    def _nack(self, proto: HubProtocol, seq: int, reason: str) -> None:
        self._metrics.sync_nacks.labels(reason.split(":", maxsplit=1)[0]).inc()
        log.info("sync: nack batch %d of %s: %s", seq, proto.edge_id, reason)
        proto.nack(seq, reason, retry_after=_RETRY_AFTER_S)

    def _count_connected(self) -> None:
        self._metrics.sync_connected.set(sum(1 for link in self.links.values() if link.connected))

    def _disconnected(self, edge_id: str, websocket: WebSocket) -> None:
        if not edge_id or self._sockets.get(edge_id) is not websocket:
            return
        del self._sockets[edge_id]
        self.links[edge_id].connected = False
        self._count_connected()
        log.info("sync: edge %s unlinked", edge_id)


def _peer(websocket: WebSocket) -> str:
    client = websocket.client
    return f"{client.host}:{client.port}" if client else "?"


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    with contextlib.suppress(RuntimeError, OSError):  # already closed
        await websocket.close(code, reason[:120])
