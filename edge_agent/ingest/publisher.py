"""Validate entity events and publish them to JetStream, waiting for its acks.

Every ingest path (HTTP, the CLI, the simulator, GPIO) goes through
:class:`EventPublisher`, so an event is checked one way and counts as accepted only
once JetStream has stored it. Refused events go to the dead-letter stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import APIError

from edge_agent.errors import EventError, SemStreamsError
from edge_agent.ingest.dead_letters import DeadLetters
from edge_agent.metrics import Metrics
from edge_agent.model import decode_event
from edge_agent.nats.subjects import ENTITY_STREAM, entity_subject

__all__ = [
    "EventPublisher",
    "IngestProblem",
    "IngestResult",
    "PublishError",
    "StorageFull",
    "split_body",
    "storage_refusal",
]

_ACK_TIMEOUT_S = 10.0
_MAX_REPORTED_PROBLEMS = 100
_WINDOW = 256
#: JetStream's answers that mean "no room": maximum bytes exceeded (the stream's limit,
#: or the agent's clamp under the disk reserve), insufficient resources, storage
#: resources exceeded.
_NO_ROOM_CODES = frozenset({10077, 10023, 10047})


class IngestProblem(msgspec.Struct, frozen=True):
    """One refused event: its 1-based position in the request, and why."""

    line: int
    reason: str
    detail: str


class IngestResult(msgspec.Struct, frozen=True):
    """What happened to a request's events (at most 100 problems are listed)."""

    accepted: int
    rejected: int
    errors: list[IngestProblem]


class PublishError(SemStreamsError):
    """JetStream did not store some events (full, or unreachable); ``accepted`` were stored."""

    def __init__(self, accepted: int, failed: int, cause: str) -> None:
        super().__init__(f"{failed} events not stored ({cause}); {accepted} were")
        self.accepted = accepted
        self.failed = failed
        self.cause = cause


class StorageFull(PublishError):
    """Nothing or not all was stored for want of room; ``reason`` is ``disk_full`` (the
    agent's disk reserve) or ``stream_full`` (JetStream refused at its byte limit)."""

    def __init__(self, accepted: int, failed: int, cause: str, *, reason: str) -> None:
        super().__init__(accepted, failed, cause)
        self.reason = reason


def storage_refusal(exc: BaseException) -> bool:
    """Whether a JetStream publish error means the stream or its store has no room."""
    return isinstance(exc, APIError) and exc.err_code in _NO_ROOM_CODES


def split_body(body: bytes, *, ndjson: bool) -> list[bytes]:
    """Split a request body into events: NDJSON lines, or the whole body as one event.

    A body that is not declared NDJSON but holds several lines of JSON objects is read
    as NDJSON too, since ``curl --data-binary @file.jsonl`` sends no content type.
    """
    stripped = body.strip()
    if not stripped:
        return []
    if not ndjson and b"\n" in stripped:
        try:
            msgspec.json.decode(stripped)
        except msgspec.DecodeError:
            ndjson = True
    if not ndjson:
        return [stripped]
    return [line for line in (raw.strip() for raw in stripped.split(b"\n")) if line]


class EventPublisher:
    """Validates events and publishes the good ones to ``GRAPH_ENTITIES``.

    Args:
        js: the JetStream context.
        dead_letters: where refused events go.
        metrics: counts accepted events per ingest path.
        max_event_bytes: the size limit of one event.
        refused: says why ingest is refused now ("" when it is not): the agent's disk
            reserve (:class:`edge_agent.storage.StorageWatch`).
    """

    def __init__(
        self,
        js: JetStreamContext,
        dead_letters: DeadLetters,
        metrics: Metrics,
        *,
        max_event_bytes: int,
        refused: Callable[[], str] = lambda: "",
    ) -> None:
        self._js = js
        self._refused = refused
        self._dead_letters = dead_letters
        self._metrics = metrics
        self.max_event_bytes = max_event_bytes

    async def publish(self, events: Iterable[bytes], *, path: str) -> IngestResult:
        """Validate and publish events; return once JetStream has acked every good one.

        Args:
            events: raw JSON events.
            path: the ingest path (``http``, ``cli``, ``simulator`` …) for metrics and
                dead letters.

        Raises:
            StorageFull: the disk is under its reserve (nothing is looked at, nothing
                stored), or JetStream had no room for some events.
            PublishError: JetStream refused or did not ack some events.
        """
        events = list(events)
        if cause := self._refused():
            self._metrics.errors.labels(reason="disk_full").inc(len(events))
            raise StorageFull(0, len(events), cause, reason="disk_full")
        good: list[tuple[str, bytes]] = []
        problems: list[IngestProblem] = []
        rejected = 0
        for line, data in enumerate(events, start=1):
            try:
                event = decode_event(data, max_bytes=self.max_event_bytes)
            except EventError as error:
                await self._dead_letters.put(data, error, subject=path)
                rejected += 1
                if len(problems) < _MAX_REPORTED_PROBLEMS:
                    problems.append(IngestProblem(line, error.reason, error.detail))
                continue
            good.append((entity_subject(event.entity_type), data))
        accepted = await self._publish_all(good)
        self._metrics.ingested.labels(path=path).inc(accepted)
        return IngestResult(accepted, rejected, problems)

    async def _publish_all(self, messages: list[tuple[str, bytes]]) -> int:
        # Requests in windows rather than publish_async: nats-py leaves a publish_async
        # future unresolved when JetStream answers with an error (e.g. stream full).
        accepted = 0
        failures: list[BaseException] = []
        for start in range(0, len(messages), _WINDOW):
            window = messages[start : start + _WINDOW]
            results = await asyncio.gather(
                *(
                    self._js.publish(subject, data, stream=ENTITY_STREAM, timeout=_ACK_TIMEOUT_S)
                    for subject, data in window
                ),
                return_exceptions=True,
            )
            failures += [r for r in results if isinstance(r, BaseException)]
            accepted += sum(1 for r in results if not isinstance(r, BaseException))
        if failures:
            no_room = [f for f in failures if storage_refusal(f)]
            if no_room:
                self._metrics.errors.labels(reason="stream_full").inc(len(no_room))
                cause = f"stream {ENTITY_STREAM} full: {no_room[0]}"
                raise StorageFull(accepted, len(failures), cause, reason="stream_full")
            raise PublishError(accepted, len(failures), str(failures[0]) or repr(failures[0]))
        return accepted
