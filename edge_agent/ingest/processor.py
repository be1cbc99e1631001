"""The graph processor: JetStream durable push consumer → SQLite, one transaction per batch.

Deliveries arrive on a connection of the processor's own
(:mod:`edge_agent.nats.delivery`): each socket read is one list of messages, and a
committed batch is acked with one write, where nats-py costs ~30 µs of Python per
message that the graph writer would wait for (they share the GIL).

Invariants:
- Batches are applied in the order they were received, by a single writer thread, and
  a batch's messages are acked only after its transaction commits and its refused
  events are stored as dead letters. A crash anywhere loses nothing.
- The store records the last applied stream sequence in the same transaction, so a
  batch redelivered after a crash is skipped: nothing is applied twice. At every bind
  the position is checked against the stream (:mod:`edge_agent.graph.position`): a
  stream that lost its tail to a power cut and reuses sequence numbers moves it back,
  and what was lost is logged, counted and shown in ``/health``. This needs
  delivery in stream order, so the consumer is recreated whenever the processor
  (re)binds — at start, after every NATS reconnect, and if the client ever dropped a
  message — and a recreated work-queue consumer starts again at the oldest unacked one.
- At most ``workers`` batches wait for the writer and ``queue_size`` events are
  unacked (the consumer's ``max_ack_pending``); when the writer falls behind, delivery
  waits. Nothing is dropped.
- Acks go out on the connection that delivered the batch. If it has closed meanwhile
  (a rebind), they are dropped: the recreated consumer delivers those messages again,
  and the position check skips them. An ack is never sent before the commit.
- A batch that cannot be committed (disk full, I/O error) is retried with backoff and
  never skipped, so later events of an entity never overtake earlier ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client

from edge_agent.config import GraphSettings
from edge_agent.errors import EventError, GraphError
from edge_agent.graph import ApplyResult, GraphStore
from edge_agent.graph.position import Reconciliation, StreamFacts, reconcile, timestamp_ns
from edge_agent.ingest.dead_letters import DeadLetters
from edge_agent.metrics import Metrics
from edge_agent.model import EntityEvent, clamp_future, decode_event
from edge_agent.nats.client import recreate_consumer, remove_stale_consumers
from edge_agent.nats.delivery import DeliveryConnection
from edge_agent.nats.subjects import ENTITY_STREAM, consumer_name
from edge_agent.nats.wire import Delivery, ack_metadata
from edge_agent.storage import is_disk_full
from edge_agent.tracing import span

__all__ = ["GraphProcessor", "OpenDelivery", "ProcessorStatus"]

#: Opens a delivery connection (named by its argument) to the client's server.
OpenDelivery = Callable[[str], Awaitable[DeliveryConnection]]

log = logging.getLogger(__name__)


class _StoredMessage(msgspec.Struct):
    time: str


class _ApiError(msgspec.Struct):
    err_code: int = 0
    description: str = ""


class _MsgGet(msgspec.Struct):
    """``$JS.API.STREAM.MSG.GET``'s answer: the message, or an error."""

    message: _StoredMessage | None = None
    error: _ApiError | None = None


#: JetStream's "no message found" (the sequence was removed or never written).
_NO_MESSAGE = 10037


_json = msgspec.json.Encoder()
_msg_get_decoder = msgspec.json.Decoder(_MsgGet)
#: Queued batches (of one delivery connection) applied in one transaction at most.
_BATCHES_PER_TRANSACTION = 4
_LINGER_S = 0.005
_RETRY_INITIAL_S = 0.2
_RETRY_MAX_S = 10.0


@dataclass
class ProcessorStatus:
    """What ``/health`` reports about the processor."""

    running: bool = False
    batches: int = 0
    last_error: str = ""
    last_batch_at: float = 0.0
    stream_created: str = ""
    #: The stream position checks of this run (edge_agent/graph/position.py): the
    #: first bind's, and the latest that was not intact.
    stream_check: dict[str, Any] = field(default_factory=dict)
    stream_problem: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Decoded:
    good: list[tuple[int, EntityEvent]] = field(default_factory=list)
    bad: list[tuple[Delivery, int, EventError]] = field(default_factory=list)
    #: The stream timestamp (ns) of the last good event, recorded with the position.
    last_ts: int = 0
    #: The highest sequence the stream was known to hold (a sequence plus its pending).
    seen: int = 0


class GraphProcessor:
    """Consumes ``GRAPH_ENTITIES`` into the graph store.

    Args:
        nc: the NATS connection (JetStream API: streams, consumers, dead letters).
        open_delivery: opens the connection deliveries arrive on (see
            :meth:`NatsConnection.open_delivery`).
        store: the graph store; only this processor writes to it.
        settings: ``graph.config``.
        dead_letters: where refused events go.
        metrics: the agent's metrics.
        instance: this agent's ``platform.id``; it names the durable consumer.
        owns_stream: the stream is this agent's alone (embedded server): stale graph
            consumers that would block this one are removed.
        on_commit: called on the writer thread right after each commit with the ids the
            batch touched (the query cache invalidates on it).
        set_aside: moves a damaged consumer's store out of the embedded server's way
            (:meth:`EmbeddedNatsServer.set_aside_consumer`); ``None`` leaves it.
    """

    def __init__(
        self,
        nc: Client,
        store: GraphStore,
        settings: GraphSettings,
        dead_letters: DeadLetters,
        metrics: Metrics,
        *,
        open_delivery: OpenDelivery,
        instance: str,
        owns_stream: bool = False,
        on_commit: Callable[[frozenset[str]], None] | None = None,
        set_aside: Callable[[str, str], list[Path]] | None = None,
    ) -> None:
        self._nc = nc
        self._set_aside = set_aside
        self._js = nc.jetstream()
        self._open_delivery = open_delivery
        self._store = store
        self.settings = settings
        self._dead_letters = dead_letters
        self._metrics = metrics
        self._on_commit = on_commit
        self._owns_stream = owns_stream
        self.consumer = consumer_name(settings.input_subject, instance)
        self.status = ProcessorStatus()
        # Unbounded by itself: _enqueue waits on _room for fewer than `workers`
        # batches queued, a bound that /admin/config can change at run time.
        self._queue: asyncio.Queue[tuple[DeliveryConnection, list[Delivery]]] = asyncio.Queue()
        self._room = asyncio.Condition()
        self._in_flight = 0
        #: Set once the durable consumer exists and the processor is receiving.
        self.bound = asyncio.Event()
        self._rebind = asyncio.Event()
        self._received: list[Delivery] = []
        self._enqueue_lock = asyncio.Lock()

    async def update_settings(self, settings: GraphSettings) -> None:
        """Take new ``graph.config`` values (workers, queue size, batch size) at run time.

        A new queue size rebinds the consumer, whose ``max_ack_pending`` enforces it.
        """
        if settings.input_subject != self.settings.input_subject:
            raise ValueError("input_subject cannot change at run time")
        if settings.queue_size != self.settings.queue_size:
            self.request_rebind()
        self.settings = settings
        async with self._room:
            self._room.notify_all()

    def request_rebind(self) -> None:
        """Recreate the consumer now (after a NATS reconnect or a dropped message).

        Messages delivered before an outage and not yet acked would otherwise come back
        only after ``ack_wait``, behind newer ones.
        """
        self._rebind.set()

    async def run(self) -> None:
        """Consume until cancelled; (re)binds the consumer after NATS outages."""
        self.status.running = True
        applier = asyncio.create_task(self._apply_loop(), name="graph-apply")
        try:
            await self._receive_loop()
        finally:
            applier.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await applier
            self.status.running = False

    # ---- receiving -----------------------------------------------------------------

    async def _receive_loop(self) -> None:
        backoff = _RETRY_INITIAL_S
        while True:
            try:
                await self._bind_and_receive()
                log.info("graph consumer rebinding")
            except (nats.errors.Error, OSError, TimeoutError) as exc:
                self.status.last_error = f"consumer: {exc}"
                log.warning("graph consumer interrupted (%s); retrying in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _RETRY_MAX_S)

    async def _bind_and_receive(self) -> None:
        position = await self._check_position()
        self._rebind.clear()
        if self._owns_stream:
            for stale in await remove_stale_consumers(
                self._js, keep=self.consumer, subject=self.settings.input_subject
            ):
                log.warning("removed stale consumer %s that overlapped %s", stale, self.consumer)
        self._received = []
        connection = await self._open_delivery(f"graph-delivery {self.consumer}")
        try:
            inbox = self._nc.new_inbox()
            await connection.subscribe(inbox)
            await self._recreate_consumer(inbox)
            log.info("graph consumer %s bound at stream position %d", self.consumer, position)
            self.bound.set()
            self.status.last_error = ""
            await self._receive_until_rebind(connection)
        finally:
            await connection.close()
            # What was received but not queued is unacked: the new consumer sends it again.
            self._received = []

    async def _recreate_consumer(self, inbox: str) -> None:
        """Recreate the durable consumer, with no state left from a damaged store.

        A consumer whose meta a crash damaged is not loaded at start, so deleting it
        leaves its directory behind, and a consumer made under the same name would take
        that directory's state: a corrupt state file makes nats-server refuse it at
        every attempt ("error creating store for consumer"), and a stale one (an ack
        floor past a stream that lost its tail) would hide the reused numbers. Anything
        left after the delete is set aside first.
        """
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await self._js.delete_consumer(ENTITY_STREAM, self.consumer)
        if self._set_aside is not None and (moved := self._set_aside(ENTITY_STREAM, self.consumer)):
            self._metrics.errors.labels(reason="nats_error").inc()
            log.warning(
                "graph consumer %s: its store was left behind unloaded (damaged); moved to %s",
                self.consumer,
                ", ".join(map(str, moved)),
            )
        await recreate_consumer(
            self._js,
            durable=self.consumer,
            subject=self.settings.input_subject,
            max_ack_pending=self.settings.queue_size,
            deliver_subject=inbox,
        )

    async def _check_position(self) -> int:
        """Reconcile the store's position with the stream (a power cut may have taken
        the stream's tail); report what was found; the position to bind at."""
        info = await self._js.stream_info(ENTITY_STREAM)
        created = self.status.stream_created = str(info.created)
        store = self._store
        mark = await store.write(store.position_mark, self.consumer)
        applied_ts = None
        if mark is not None and mark.stream_created == created and mark.applied_ts:
            applied_ts = await self._message_ts(mark.applied_seq)
        facts = StreamFacts(created, info.state.first_seq, info.state.last_seq, applied_ts)
        found = reconcile(mark, facts)
        if found.outcome == "new_stream":
            # nats-server drops a stream whose meta files a crash damaged, and the one
            # ensure_streams made in its place keeps the old files: an update writes
            # them afresh, or the stream would be dropped again at every start.
            await self._js.update_stream(info.config)
        if found.changed:
            await store.write(store.set_position, self.consumer, created, found.position)
        self._report(found)
        return found.position

    async def _message_ts(self, seq: int) -> int | None:
        """The stream timestamp (ns) of the message the stream holds at ``seq``; ``None``
        when it holds none there (acked and removed, or beyond its end)."""
        try:
            reply = await self._nc.request(
                f"$JS.API.STREAM.MSG.GET.{ENTITY_STREAM}", _json.encode({"seq": seq}), timeout=5
            )
            got = _msg_get_decoder.decode(reply.data)
            if got.message is not None:
                return timestamp_ns(got.message.time)
        except (msgspec.ValidationError, ValueError) as exc:  # a server's answer: checked
            raise nats.errors.Error(f"stream message {seq}: unreadable answer: {exc}") from exc
        if got.error is None or got.error.err_code == _NO_MESSAGE:
            return None
        raise nats.errors.Error(f"stream message {seq}: {got.error.description}")

    def _report(self, found: Reconciliation) -> None:
        """Log, count and keep (for ``/health``) what the position check found."""
        self._metrics.stream_checks.labels(outcome=found.outcome).inc()
        self._metrics.stream_lost.inc(found.lost)
        self._metrics.stream_reapplied.inc(found.reapplied)
        report = {**msgspec.structs.asdict(found), "message": found.describe()}
        if not self.status.stream_check:
            self.status.stream_check = report
        if found.outcome in ("intact", "first_bind"):
            log.info("graph consumer %s: %s", self.consumer, found.describe())
            return
        self.status.stream_problem = report
        log.warning("graph consumer %s: %s", self.consumer, found.describe())

    async def _receive_until_rebind(self, connection: DeliveryConnection) -> None:
        """Receive and batch until a rebind is asked for or the connection fails.

        Raises:
            ConnectionError: the delivery connection failed (the caller rebinds).
        """
        tasks = [
            asyncio.create_task(self._receive(connection), name="graph-receive"),
            asyncio.create_task(self._linger(connection), name="graph-linger"),
            asyncio.create_task(self._rebind.wait(), name="graph-rebind"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            if not task.cancelled() and (error := task.exception()) is not None:
                raise error

    async def _receive(self, connection: DeliveryConnection) -> None:
        """Collect deliveries into batches of ``batch_processing.size``."""
        while True:
            # Await first: _enqueue replaces the list meanwhile, so a bound
            # ``self._received.extend`` taken before the await would fill a dropped list.
            deliveries = await connection.receive()
            self._received.extend(deliveries)
            while len(self._received) >= self.settings.indexer.batch_processing.size:
                await self._enqueue(connection)

    async def _linger(self, connection: DeliveryConnection) -> None:
        """Queue a partial batch once messages stop arriving for a moment."""
        while True:
            await asyncio.sleep(_LINGER_S)
            if self._received:
                await self._enqueue(connection)

    async def _enqueue(self, connection: DeliveryConnection) -> None:
        # One enqueuer at a time, in arrival order (asyncio.Lock is FIFO); waiting for
        # room here stalls reading, and max_ack_pending stops the server sending more.
        async with self._enqueue_lock:
            async with self._room:
                await self._room.wait_for(lambda: self._queue.qsize() < self.settings.workers)
            size = self.settings.indexer.batch_processing.size
            messages, self._received = self._received[:size], self._received[size:]
            if not messages:
                return
            self._in_flight += len(messages)
            self._metrics.queue_depth.set(self._in_flight)
            self._queue.put_nowait((connection, messages))

    # ---- applying ------------------------------------------------------------------

    async def _apply_loop(self) -> None:
        carried: tuple[DeliveryConnection, list[Delivery]] | None = None
        while True:
            connection, messages = carried or await self._queue.get()
            # Under a backlog, the batches already queued from the same connection join
            # this one: one transaction, one commit (an fsync) for all of them.
            carried = None
            for _ in range(_BATCHES_PER_TRANSACTION - 1):
                if self._queue.empty():
                    break
                carried = self._queue.get_nowait()
                if carried[0] is not connection:
                    break
                messages, carried = messages + carried[1], None
            async with self._room:
                self._room.notify_all()
            await self._apply_until_done(connection, messages)
            self._in_flight -= len(messages)
            self._metrics.queue_depth.set(self._in_flight)

    async def _apply_until_done(
        self, connection: DeliveryConnection, messages: list[Delivery]
    ) -> None:
        backoff = _RETRY_INITIAL_S
        while True:
            try:
                await self._apply(connection, messages)
                return
            except (GraphError, nats.errors.Error, OSError, TimeoutError) as exc:
                reason = "store_error" if isinstance(exc, GraphError) else "nats_error"
                reason = "disk_full" if is_disk_full(exc) else reason
                self._metrics.errors.labels(reason=reason).inc()
                self.status.last_error = f"apply: {exc}"
                log.error("batch not applied (%s); retrying in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _RETRY_MAX_S)

    async def _apply(self, connection: DeliveryConnection, messages: list[Delivery]) -> None:
        started = time.perf_counter()
        decoded, result = await self._store.write(self._decode_and_apply, messages)
        for message, seq, error in decoded.bad:
            await self._dead_letters.put(
                message.data,
                error,
                subject=message.subject,
                msg_id=f"{self.status.stream_created}:{seq}",
            )
        if connection.ack([message.reply for message in messages]):
            await connection.drain()
        self._metrics.messages_processed.inc(result.applied)
        self._metrics.processing_duration.observe(time.perf_counter() - started)
        self.status.batches += 1
        self.status.last_batch_at = time.time()
        self.status.last_error = ""

    def _decode_and_apply(self, messages: list[Delivery]) -> tuple[_Decoded, ApplyResult]:
        """Decode and apply one batch; runs on the writer thread, off the event loop."""
        with span("graph.apply_batch", messages=len(messages)) as current:
            decoded = self._decode(messages)
            now_ms = int(time.time() * 1000)
            result = self._store.apply(
                decoded.good,
                consumer=self.consumer,
                now_ms=now_ms,
                stream_ts=decoded.last_ts,
                seen_seq=decoded.seen,
            )
            if current is not None:
                current.set_attribute("applied", result.applied)
                current.set_attribute("rejected", len(decoded.bad))
        if self._on_commit is not None:
            self._on_commit(result.touched)
        return decoded, result

    def _decode(self, messages: list[Delivery]) -> _Decoded:
        decoded = _Decoded()
        limit = self.settings.max_event_bytes
        latest = datetime.now(UTC) + timedelta(seconds=float(self.settings.max_clock_skew))
        for message in messages:
            seq, stamp, pending = ack_metadata(message.reply)
            decoded.seen = max(decoded.seen, seq + pending)
            try:
                event = decode_event(message.data, max_bytes=limit)
            except EventError as error:
                decoded.bad.append((message, seq, error))
                continue
            decoded.last_ts = stamp
            clamped = clamp_future(event, latest)
            if clamped is not None:
                self._metrics.clamped_timestamps.inc()
                event = clamped
            elif event.timestamp is None:
                # Stamped when JetStream took it, not when applied: an event replayed
                # (from a restored stream) keeps the stamp it had, and does not pass
                # for a newer reading than those that followed it.
                stored = datetime.fromtimestamp(stamp / 1e9, UTC)
                event = msgspec.structs.replace(event, timestamp=stored)
            decoded.good.append((seq, event))
        return decoded
