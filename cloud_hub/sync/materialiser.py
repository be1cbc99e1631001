"""The materialiser: every edge's batches, from the log into this instance's graph.

Each hub instance runs one, on a durable consumer of its own, over the whole
``SYNC_BATCHES`` stream (not only the batches its own links took). It applies messages
in stream order, several per SQLite transaction, records its stream position in the
same transaction, and acks after the commit; so instances hold the same graph, and a
new instance builds its graph from the log. A crash anywhere re-applies nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sqlite3
from collections.abc import Callable

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from cloud_hub.graph.provenance import BatchResult, BatchStamp, apply_batch
from cloud_hub.metrics import HubMetrics
from cloud_hub.sync.log import SYNC_STREAM, SYNC_SUBJECTS, stamp_of
from edge_agent.errors import GraphError, ProtocolError
from edge_agent.graph import GraphStore
from edge_agent.metrics import Metrics
from edge_agent.sync.codec import decode_payload
from edge_agent.sync.frames import Batch, decode_frame
from edge_agent.tasks import stop_task

__all__ = ["Materialiser"]

log = logging.getLogger(__name__)
_FETCH = 64
_DATA_ERRORS = (OverflowError, TypeError, ValueError, sqlite3.IntegrityError, sqlite3.DataError)
_RETRY_S = 1.0


def consumer_for(instance: str) -> str:
    """The durable consumer name of hub instance ``instance``."""
    return "materialiser-" + re.sub(r"[^A-Za-z0-9_-]", "_", instance)


class Materialiser:
    """Applies the log to the graph, as this instance's durable consumer.

    Args:
        js: JetStream on the hub's NATS.
        store: this instance's graph store.
        instance: this instance's id (names its consumer).
        metrics, hub_metrics: where to count.
        on_commit: called with what a commit touched (cache invalidation).
        after_apply: runs at the end of each write transaction, on its connection
            (the text index follows the graph in the same transaction).
        max_frame_bytes, max_batch_bytes: bounds on a log message and its payload.
    """

    name = "materialiser"

    def __init__(
        self,
        js: JetStreamContext,
        store: GraphStore,
        *,
        instance: str,
        metrics: Metrics,
        hub_metrics: HubMetrics,
        on_commit: Callable[[frozenset[str]], None],
        max_frame_bytes: int,
        max_batch_bytes: int,
        after_apply: Callable[[sqlite3.Connection], object] | None = None,
    ) -> None:
        self._js = js
        self._after_apply = after_apply
        self._store = store
        self.consumer = consumer_for(instance)
        self._metrics = metrics
        self._hub = hub_metrics
        self._on_commit = on_commit
        self._max_frame = max_frame_bytes
        self._max_batch = max_batch_bytes
        self._task: asyncio.Task[None] | None = None
        self.pending = 0
        self.applied = 0
        #: The last stream sequence applied to the graph.
        self.position = 0
        self.last_error = ""
        self.caught_up = asyncio.Event()
        self._stream_created = ""

    async def start(self) -> None:
        """Bind the durable consumer and apply the log in the background."""
        info = await self._js.stream_info(SYNC_STREAM)
        self._stream_created = str(info.created)
        self._task = asyncio.create_task(self._run(), name="materialiser")

    async def stop(self) -> None:
        """Stop applying (the position is safe in the graph)."""
        if self._task is not None:
            await stop_task(self._task)

    def health(self) -> dict[str, object]:
        """Running, how far behind the log, and the last error."""
        running = self._task is not None and not self._task.done()
        status = "ok" if running and not self.last_error else ("retrying" if running else "down")
        return {
            "status": status,
            "pending_batches": self.pending,
            "applied_batches": self.applied,
            "last_error": self.last_error,
        }

    async def _run(self) -> None:
        while True:
            try:
                await self._consume()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS away, a cluster electing: bind again
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("materialiser: %s; retrying in %.1fs", self.last_error, _RETRY_S)
                await asyncio.sleep(_RETRY_S)

    async def _consume(self) -> None:
        position = await self._store.write(
            self._store.position, self.consumer, self._stream_created
        )
        # The position lives in the graph, so the consumer is disposable: made again from
        # it on every bind (after a failover its old state may be gone or stuck), on one
        # replica only.
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await self._js.delete_consumer(SYNC_STREAM, self.consumer)
        await self._js.add_consumer(
            SYNC_STREAM,
            ConsumerConfig(
                durable_name=self.consumer,
                filter_subject=SYNC_SUBJECTS,
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=position + 1,
                max_ack_pending=4 * _FETCH,
                ack_wait=60,
                num_replicas=1,
            ),
        )
        subscription = await self._js.pull_subscribe_bind(self.consumer, stream=SYNC_STREAM)
        self.position = max(self.position, position)
        self.last_error = ""
        while True:
            try:
                messages = await subscription.fetch(_FETCH, timeout=1)
            except (nats.errors.TimeoutError, TimeoutError):
                await self._note_backlog(subscription)
                continue
            await self._apply(messages)
            await self._note_backlog(subscription)

    async def _note_backlog(self, subscription: JetStreamContext.PullSubscription) -> None:
        info = await subscription.consumer_info()
        self.pending = int(info.num_pending or 0)
        self._hub.log_pending.set(self.pending)
        if self.pending == 0 and not info.num_ack_pending:
            self.caught_up.set()

    async def _apply(self, messages: list[Msg]) -> None:
        while True:
            try:
                results = await self._store.write(self._apply_all, messages)
                break
            except GraphError as exc:  # disk full, I/O: never skip, retry
                self.last_error = str(exc)
                log.error("materialiser: %s; retrying in %.1fs", exc, _RETRY_S)
                await asyncio.sleep(_RETRY_S)
        for message in messages:
            await message.ack()
        self.last_error = ""
        self.applied += len(messages)
        self.position = max(self.position, messages[-1].metadata.sequence.stream)
        self._count(results)

    def _apply_all(self, messages: list[Msg]) -> list[BatchResult]:
        """On the writer thread: decode and apply ``messages`` in one transaction."""
        store = self._store
        return store.database.transaction(self._apply_in, messages)

    def _apply_in(self, db: sqlite3.Connection, messages: list[Msg]) -> list[BatchResult]:
        (position,) = db.execute(
            "SELECT applied_seq FROM consumer_state WHERE consumer = ?", (self.consumer,)
        ).fetchone() or (0,)
        results = []
        for message in messages:
            stream_seq = message.metadata.sequence.stream
            if stream_seq <= position:
                continue
            db.execute("SAVEPOINT message")
            try:
                results.append(self._apply_one(db, message, stream_seq))
            except _DATA_ERRORS as exc:
                # What this message holds cannot be stored (a number past SQLite's range,
                # from a hub that did not check it): undo it alone, name it, go on. Disk
                # and I/O errors (sqlite3.OperationalError) are not here: they are retried.
                db.execute("ROLLBACK TO message")
                log.error("materialiser: log message %d unusable: %r", stream_seq, exc)
                results.append(BatchResult(duplicate=True, conflicts={"unusable_log_message": 1}))
            db.execute("RELEASE message")
        if self._after_apply is not None:
            self._after_apply(db)
        db.execute(
            "UPDATE consumer_state SET applied_seq = max(applied_seq, ?) WHERE consumer = ?",
            (messages[-1].metadata.sequence.stream, self.consumer),
        )
        return results

    def _apply_one(self, db: sqlite3.Connection, message: Msg, stream_seq: int) -> BatchResult:
        try:
            edge, seq, received, ceiling = stamp_of(message.headers or {})
            frame = decode_frame(message.data, max_bytes=self._max_frame)
            if not isinstance(frame, Batch) or frame.seq != seq:
                raise ProtocolError("not the batch its headers name")
            deltas, raw_bytes = decode_payload(
                frame.payload, frame.encoding, max_bytes=self._max_batch
            )
        except (KeyError, ValueError, ProtocolError) as exc:
            # Only a hub instance writes the log, after validating; a message that does
            # not decode is named and skipped, never allowed to stop the materialiser.
            log.error("materialiser: log message %d unusable: %s", stream_seq, exc)
            return BatchResult(duplicate=True, conflicts={"unusable_log_message": 1})
        stamp = BatchStamp(edge, seq, stream_seq, received, ceiling, len(message.data), raw_bytes)
        return apply_batch(db, stamp, deltas, indexes=self._store.indexes)

    def _count(self, results: list[BatchResult]) -> None:
        touched: set[str] = set()
        for result in results:
            self._hub.materialised.labels("duplicate" if result.duplicate else "applied").inc()
            if result.applied:
                self._metrics.sync_deltas.labels("applied").inc(result.applied)
            for kind, count in result.conflicts.items():
                self._hub.conflicts.labels(kind).inc(count)
            touched |= result.touched
        if touched:
            self._on_commit(frozenset(touched))
