"""The ``websocket_input`` component: the hub's end of the sync link, as an ASGI endpoint.

A thin shell around :class:`~edge_agent.sync.protocol.HubProtocol` (which decides what
is next, what is a re-send, what lies past a gap, when to ask for slow) and the
replicated log (:class:`~cloud_hub.sync.log.SyncLog`). Per connection: authenticate the
Hello (an enrolled edge also answers a Challenge with a Proof of its device key),
welcome the edge with its resume point read from the log, then for each batch
the protocol hands over: validate it, append it to ``SYNC_BATCHES`` with
compare-and-set on the edge's subject, and ack once JetStream stored it (on every
replica of an R3 stream). The graph is written by the materialiser, from the log, on
every instance alike. A bad frame closes that connection only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import nats.errors
from starlette.websockets import WebSocket, WebSocketDisconnect

from cloud_hub.config import WebsocketInputConfig
from cloud_hub.metrics import HubMetrics
from cloud_hub.provision.service import check_possession
from cloud_hub.sync.log import SyncLog, WrongLastSequence
from edge_agent.errors import AuthError, RemoteProtocolError
from edge_agent.metrics import Metrics
from edge_agent.provision.messages import DEVICE_ID_PATTERN
from edge_agent.sync.codec import available_encodings, decode_deltas, encode_deltas
from edge_agent.sync.frames import MAX_SHARE_ENTITIES, Batch, EntityDelta, Hello, Proof
from edge_agent.sync.protocol import HubProtocol, State

__all__ = ["EdgeLink", "ReadShare", "SyncInput"]

#: Reads a page of an edge's share: (edge id, after this entity id, at most this many).
ReadShare = Callable[[str, str, int], Awaitable[list[EntityDelta]]]

log = logging.getLogger(__name__)
_RETRY_AFTER_S = 2.0
# Room for the JetStream message's headers next to a batch frame.
_HEADER_ROOM = 4096
# WebSocket close codes (RFC 6455): policy violation, protocol error, internal error,
# try again later.
_CLOSE_POLICY, _CLOSE_PROTOCOL, _CLOSE_INTERNAL, _CLOSE_TRY_LATER = 1008, 1002, 1011, 1013
#: A Share frame's compressed payload at most: an edge reads messages of up to 1 MiB.
_SHARE_FRAME_BYTES = 512 << 10
#: How long a resync waits for this instance's graph to hold the edge's last batch.
_SHARE_CATCH_UP_S = 30.0


@dataclass
class EdgeLink:
    """What this instance knows of one edge's link (``GET /edges`` adds the graph's view)."""

    edge_id: str
    connected: bool = False
    last_seen: float = 0.0
    hwm: int = 0
    lag_seconds: float = 0.0
    bytes_received: int = 0
    batches: int = 0
    remote: str = ""

    def view(self) -> dict[str, Any]:
        """The JSON object of this link."""
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


@dataclass
class _Session:
    websocket: WebSocket
    proto: HubProtocol
    #: The stream sequence of the edge's newest batch in the log, as far as this link knows.
    after: int = 0
    #: Closed by this side (another instance took the edge): stop reading.
    closed: bool = False
    hello: Hello | None = None
    #: The device key the edge's credential is bound to, and the nonce it must sign.
    device_key: bytes = b""
    nonce: bytes = b""
    #: A resync: the last entity id sent, whether every page was read, the figures.
    share_after: str = ""
    share_read: bool = False
    share_entities: int = 0
    share_skipped: int = 0


def resync_wait(last_started: float | None, now: float, interval: float) -> float:
    """Seconds until an edge whose last resync started at ``last_started`` may start
    another (0: now)."""
    if last_started is None:
        return 0.0
    return max(0.0, last_started + interval - now)


def _iso(epoch: float) -> str | None:
    if not epoch:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


class SyncInput:
    """Accepts edges' sync links and appends their batches to the replicated log.

    Args:
        settings: the component's config.
        sync_log: the ``SYNC_BATCHES`` stream.
        metrics, hub_metrics: where to count.
        backlog: given a stream sequence this link appended, how many batches up to it
            this instance has not applied yet (for Slow).
        authenticate: checks an enrolled device's credential (raises AuthError) for
            edges not in ``settings.devices``; returns the device key it is bound to,
            which the edge then proves it holds.
        max_payload: the NATS server's largest message (0: unknown).
        hub_id: this hub's own id, which no edge may use.
        read_share: reads pages of an edge's share from this instance's graph, for a
            resync the edge asks for (``None``: this hub offers none).
        applied_seq: the last batch seq of an edge this instance's graph has applied.
        on_linked: called (in a worker thread) with the edge id, its link's User-Agent
            and peer host once a link is accepted: the registry records them.
    """

    def __init__(
        self,
        settings: WebsocketInputConfig,
        *,
        sync_log: SyncLog,
        metrics: Metrics,
        hub_metrics: HubMetrics,
        backlog: Callable[[int], int],
        authenticate: Callable[[str, str, float], bytes] | None = None,
        max_payload: int = 0,
        hub_id: str = "",
        read_share: ReadShare | None = None,
        applied_seq: Callable[[str], Awaitable[int]] | None = None,
        on_linked: Callable[[str, str, str], object] | None = None,
    ) -> None:
        self.settings = settings
        self._on_linked = on_linked
        self._read_share = read_share
        self._applied_seq = applied_seq
        self._log = sync_log
        self._metrics = metrics
        self._hub = hub_metrics
        self._backlog = backlog
        self._authenticate = authenticate
        self._max_payload = max_payload
        self._hub_id = hub_id
        self._encodings = available_encodings()
        self._sockets: dict[str, WebSocket] = {}
        self._open = 0
        slots = int(settings.decode_budget) // max(1, int(settings.max_batch_bytes))
        self._decoding = asyncio.Semaphore(max(1, slots))
        self.links: dict[str, EdgeLink] = {edge: EdgeLink(edge) for edge in settings.devices}
        #: When each edge's last resync started (monotonic), and the least time between.
        self._resyncs: dict[str, float] = {}
        self._resync_interval = float(settings.resync_min_interval)

    def link_views(self) -> dict[str, dict[str, Any]]:
        """Every edge configured or linked to this instance, by id."""
        return {edge: link.view() for edge, link in self.links.items()}

    # ---- one connection -------------------------------------------------------------

    async def endpoint(self, websocket: WebSocket) -> None:
        """The ASGI WebSocket endpoint at ``settings.path``."""
        if self._open >= self.settings.max_connections:
            self._metrics.sync_refused.labels("capacity").inc()
            log.warning("sync: %d links open; refusing %s", self._open, _peer(websocket))
            await websocket.close(_CLOSE_TRY_LATER)  # before accept: an HTTP 403
            return
        self._open += 1
        try:
            await websocket.accept()
            await self._link(websocket)
        finally:
            self._open -= 1

    async def _link(self, websocket: WebSocket) -> None:
        proto = HubProtocol(
            encodings=self._encodings,
            max_frame_bytes=int(self.settings.max_frame_bytes),
            retry_after=_RETRY_AFTER_S,
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
        except Exception:  # anything else: a link never dies silently
            await self._failed(session)
        finally:
            self._disconnected(proto.edge_id, websocket)

    async def _failed(self, session: _Session) -> None:
        """The link's worker failed in a way nothing above handles (e.g. the log is
        unreachable at hello): count it, log it with its traceback, nack what the link
        held so the edge sends it again, and close (1011); the edge reconnects to a new
        worker."""
        proto = session.proto
        self._hub.link_failures.inc()
        log.exception("sync: the link of edge %s failed; closing it", proto.edge_id or "?")
        held = proto.nack_all("not durable: hub error, send again")
        if held:
            log.warning("sync: nacking batches %s of %s", held, proto.edge_id)
        with contextlib.suppress(Exception):  # the socket may be the thing that failed
            for out in proto.data_to_send():
                await session.websocket.send_bytes(out)
            await _close(session.websocket, _CLOSE_INTERNAL, "hub error")

    async def _serve(self, session: _Session) -> None:
        websocket, proto = session.websocket, session.proto
        while proto.state != State.CLOSED:
            message = await self._next_message(session)
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            if data is None:
                raise RemoteProtocolError("text frame; the sync link speaks binary frames")
            self._metrics.sync_bytes_received.labels("wire").inc(len(data))
            proto.receive_data(data)
            for frame in proto.events_received():
                if isinstance(frame, Hello):
                    await self._hello(session, frame)
                elif isinstance(frame, Proof):
                    await self._proof(session, frame)
                elif isinstance(frame, Batch):
                    await self._take(session, frame, data)
            if proto.sharing:
                await self._send_share(session)
            self._count_answers(proto)
            if session.closed:
                return
            for out in proto.data_to_send():
                await websocket.send_bytes(out)
        if session.hello is None:  # refused by the protocol itself: another version
            self._metrics.sync_refused.labels("protocol").inc()
            log.warning("sync: refused edge %r: %s", proto.edge_id[:80], proto.refusal)
        await _close(websocket, _CLOSE_POLICY, "refused")

    async def _next_message(self, session: _Session) -> dict[str, Any]:
        """The next message; before the hello, within ``hello_timeout`` only (then the
        link is closed, and this is its disconnect)."""
        receiving = session.websocket.receive()
        if session.proto.state != State.HANDSHAKE:
            return dict(await receiving)
        timeout = float(self.settings.hello_timeout)
        try:
            return dict(await asyncio.wait_for(receiving, timeout))
        except TimeoutError:
            self._metrics.sync_refused.labels("hello_timeout").inc()
            await _close(session.websocket, _CLOSE_POLICY, f"no hello within {timeout:g} s")
            return {"type": "websocket.disconnect"}

    def _count_answers(self, proto: HubProtocol) -> None:
        if proto.duplicates:
            self._metrics.sync_batches.labels("duplicate").inc(proto.duplicates)
            proto.duplicates = 0
        if proto.gaps:
            self._metrics.sync_nacks.labels("out of order").inc(proto.gaps)
            proto.gaps = 0

    async def _hello(self, session: _Session, hello: Hello) -> None:
        session.hello = hello
        try:
            session.device_key = self._credential_key(hello)
        except AuthError as exc:
            self._refuse(session, exc.reason)
            return
        if not session.device_key:
            await self._welcome(session, hello)
            return
        session.nonce = os.urandom(32)
        session.proto.challenge(session.nonce)

    async def _proof(self, session: _Session, proof: Proof) -> None:
        """The edge signed the Challenge: welcome it if the signature is its device key's."""
        assert session.hello is not None
        edge_id = session.hello.edge_id
        try:
            check_possession(session.device_key, "hello", session.nonce, edge_id, proof.signature)
        except AuthError as exc:
            self._refuse(session, exc.reason)
            return
        await self._welcome(session, session.hello)

    def _refuse(self, session: _Session, reason: str) -> None:
        edge_id = session.hello.edge_id if session.hello else "?"
        self._metrics.sync_refused.labels("credentials").inc()
        log.warning(
            "sync: refused edge %r from %s: %s", edge_id[:80], _peer(session.websocket), reason
        )
        session.proto.refuse(reason)

    async def _welcome(self, session: _Session, hello: Hello) -> None:
        websocket, proto = session.websocket, session.proto
        edge_id = hello.edge_id
        last = await self._log.last(edge_id)
        session.after = last.stream_seq
        # An edge the log never heard from resumes where it says it is; so does one the
        # log has forgotten part of (aged out by its byte limit): what the edge says the
        # hub acked is gone either way, and waiting for it would stall forever. Never
        # below what the graph applied: a reflashed edge whose batches aged out of the
        # log would otherwise number its new batches from 1, and the materialiser would
        # drop them as applied already.
        applied = await self._applied_seq(edge_id) if self._applied_seq else 0
        held = max(last.seq, applied)
        known = max(held, hello.acked_seq)
        # Batches acked and lost since (a restored or wiped hub, a log aged out before
        # this instance's graph applied them): the edge sends everything it wrote again.
        full_resend = known > held
        if full_resend:
            self._hub.full_resends.inc()
            log.warning(
                "sync: edge %s had batches up to %d acked, this hub holds up to %d:"
                " resuming after %d, and asking the edge for everything it wrote",
                edge_id,
                known,
                held,
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
        resync = hello.resync and self._read_share is not None
        if resync:
            log.info("sync: edge %s asks for a resync of its share", edge_id)
        proto.accept(
            known, max_batch_bytes=self._max_batch_bytes(), resync=resync, full_resend=full_resend
        )
        await self._record_link(edge_id, websocket)

    async def _record_link(self, edge_id: str, websocket: WebSocket) -> None:
        """Tell ``on_linked`` about an accepted link; a failure there costs no link."""
        if self._on_linked is None:
            return
        agent = websocket.headers.get("user-agent", "")[:200]
        host = websocket.client.host if websocket.client else ""
        try:
            await asyncio.to_thread(self._on_linked, edge_id, agent, host)
        except Exception:  # the registry is a record, not the link's business
            log.exception("sync: could not record edge %s's link in the registry", edge_id)

    async def _send_share(self, session: _Session) -> None:
        """Send the next chunks of the edge's share while the window has room; end it
        when every page is read and acked. Only the authenticated edge's own share."""
        proto = session.proto
        if not session.share_after and not session.share_read:
            await self._resync_turn(session)
            if session.closed:
                return
            await self._caught_up(session)
        while proto.can_share() and not session.share_read:
            assert self._read_share is not None
            page = await self._read_share(proto.edge_id, session.share_after, MAX_SHARE_ENTITIES)
            if not page:
                session.share_read = True
                break
            payload, deltas = await asyncio.to_thread(_share_chunk, page, proto.encoding)
            if not deltas:  # its first entity alone is larger than a frame: counted, not sent
                session.share_skipped += 1
                session.share_after = page[0].entity_id
                log.warning(
                    "sync: %s's entity %s is too large to resync", proto.edge_id, page[0].entity_id
                )
                continue
            session.share_after = deltas[-1].entity_id
            proto.send_share(len(deltas), payload, proto.encoding)
            session.share_entities += len(deltas)
            self._metrics.sync_deltas.labels("shared").inc(len(deltas))
        if session.share_read and not proto.share_unacked:
            proto.end_share(session.share_entities, session.share_skipped)
            log.info(
                "sync: resync of %s done: %d entities in %d chunks, %d too large",
                proto.edge_id,
                session.share_entities,
                proto.share_chunks,
                session.share_skipped,
            )

    async def _resync_turn(self, session: _Session) -> None:
        """Wait until this edge may start a resync: reading a whole share costs the hub,
        so an edge (or a stolen credential) asking on every connect gets one per
        ``resync_min_interval``. The Welcome goes out first, so the link stays live."""
        edge_id = session.proto.edge_id
        wait = resync_wait(self._resyncs.get(edge_id), time.monotonic(), self._resync_interval)
        if wait > 0:
            self._hub.resyncs.labels("deferred").inc()
            log.warning(
                "sync: edge %s asked for another resync within %.0f s; it starts in %.1f s",
                edge_id,
                self._resync_interval,
                wait,
            )
            for out in session.proto.data_to_send():
                await session.websocket.send_bytes(out)
        while wait > 0:
            await asyncio.sleep(wait)
            if self._sockets.get(edge_id) is not session.websocket:
                session.closed = True  # a newer link of the edge took over meanwhile
                return
            wait = resync_wait(self._resyncs.get(edge_id), time.monotonic(), self._resync_interval)
        self._resyncs[edge_id] = time.monotonic()
        self._hub.resyncs.labels("started").inc()

    async def _caught_up(self, session: _Session) -> None:
        """Wait (a while) until this instance's graph holds the edge's last batch, so the
        share it reads is the whole of what the log holds."""
        deadline = time.monotonic() + _SHARE_CATCH_UP_S
        while self._backlog(session.after) > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)

    def _max_batch_bytes(self) -> int:
        """The largest batch frame this hub can store: its frame limit, and JetStream's
        message limit (the NATS server's ``max_payload``, 1 MiB by default)."""
        if not self._max_payload:
            return int(self.settings.max_frame_bytes)
        return min(int(self.settings.max_frame_bytes), self._max_payload - _HEADER_ROOM)

    def _credential_key(self, hello: Hello) -> bytes:
        """Check the Hello's id and credential; the device key the edge must then prove
        it holds (empty for a device of ``settings.devices``, whose token is all).

        Raises:
            AuthError: the reason for refusing the edge.
        """
        if hello.edge_id == self._hub_id or not re.fullmatch(DEVICE_ID_PATTERN, hello.edge_id):
            raise AuthError(f"edge id {hello.edge_id[:80]!r} is not allowed")
        device = self.settings.devices.get(hello.edge_id)
        if device is not None:
            if not hmac.compare_digest(device.token.encode(), hello.token.encode()):
                raise AuthError("bad credential")
            return b""
        if self._authenticate is None:
            raise AuthError(f"unknown device {hello.edge_id!r}")
        return self._authenticate(hello.edge_id, hello.token, time.time())

    async def kick(self, edge_id: str, reason: str) -> None:
        """Close ``edge_id``'s live link, if any (it was revoked or rejected)."""
        websocket = self._sockets.get(edge_id)
        if websocket is not None:
            log.warning("sync: closing the link of %s: %s", edge_id, reason)
            await _close(websocket, _CLOSE_POLICY, reason)

    async def _take(self, session: _Session, batch: Batch, frame: bytes) -> None:
        """Validate the next batch, append it to the log, ack it; or nack it."""
        proto, seq = session.proto, batch.seq
        if not proto.ready(seq):
            return
        link = self.links[proto.edge_id]
        link.bytes_received += len(frame)
        link.last_seen = now = time.time()
        async with self._decoding:  # off the loop, and only so many at once
            deltas = await asyncio.to_thread(
                decode_deltas,
                batch.payload,
                batch.encoding,
                max_bytes=self.settings.max_batch_bytes,
            )
        self._metrics.sync_batches.labels("received").inc()
        if not await self._append(session, batch, frame, now):
            return
        proto.ack(seq)
        self._metrics.sync_acks.inc()
        link.hwm, link.batches = seq, link.batches + 1
        newest = max((d.updated_at for d in deltas), default=0)
        if newest:
            link.lag_seconds = max(0.0, now - newest / 1000)
            self._metrics.sync_lag.labels(proto.edge_id).set(link.lag_seconds)
        proto.backlog(self._backlog(session.after), self.settings.slow_threshold)

    async def _append(self, session: _Session, batch: Batch, frame: bytes, now: float) -> bool:
        """Append to the log; whether it is there (stored now, or already, by anyone)."""
        proto, edge_id = session.proto, session.proto.edge_id
        received_ms = int(now * 1000)
        try:
            session.after = await self._log.append(
                edge_id,
                batch.seq,
                frame,
                after=session.after,
                received_ms=received_ms,
                ceiling_ms=received_ms + int(self.settings.max_clock_skew * 1000),
            )
            self._hub.log_appends.labels("stored").inc()
            return True
        except WrongLastSequence:
            return await self._raced(session, batch.seq)
        except (nats.errors.Error, TimeoutError) as exc:
            self._hub.log_appends.labels("failed").inc()
            self._nack(proto, batch.seq, f"not durable: {exc or type(exc).__name__}")
            return False

    async def _raced(self, session: _Session, seq: int) -> bool:
        """The log moved since this link looked: stored by an earlier try of ours (its
        ack lost), or another instance now holds this edge's link."""
        self._hub.log_appends.labels("raced").inc()
        last = await self._log.last(session.proto.edge_id)
        session.after = last.stream_seq
        if last.seq >= seq:
            return True
        self._nack(session.proto, seq, "not durable: another hub instance took this edge")
        session.closed = True
        await _close(session.websocket, _CLOSE_POLICY, "another hub instance took this edge")
        return False

    def _nack(self, proto: HubProtocol, seq: int, reason: str) -> None:
        self._metrics.sync_nacks.labels(reason.split(":", maxsplit=1)[0]).inc()
        log.info("sync: nack batch %d of %s: %s", seq, proto.edge_id, reason)
        proto.nack(seq, reason)

    def _count_connected(self) -> None:
        self._metrics.sync_connected.set(sum(1 for link in self.links.values() if link.connected))

    def _disconnected(self, edge_id: str, websocket: WebSocket) -> None:
        if not edge_id or self._sockets.get(edge_id) is not websocket:
            return
        del self._sockets[edge_id]
        self.links[edge_id].connected = False
        self._count_connected()
        log.info("sync: edge %s unlinked", edge_id)


def _share_chunk(deltas: list[EntityDelta], encoding: str) -> tuple[bytes, list[EntityDelta]]:
    """The longest prefix of ``deltas`` whose payload fits a Share frame, halving until
    it does; (payload, the deltas in it). A single delta too large gives no deltas."""
    while True:
        payload, _ = encode_deltas(deltas, encoding)
        if len(payload) <= _SHARE_FRAME_BYTES:
            return payload, deltas
        if len(deltas) == 1:
            return b"", []
        deltas = deltas[: len(deltas) // 2]


def _peer(websocket: WebSocket) -> str:
    client = websocket.client
    return f"{client.host}:{client.port}" if client else "?"


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    with contextlib.suppress(RuntimeError, OSError):  # already closed
        await websocket.close(code, reason[:120])
