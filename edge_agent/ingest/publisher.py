"""Validate entity events and publish them to JetStream, waiting for its acks.

Every ingest path (HTTP, the CLI, the simulator, GPIO) goes through
:class:`EventPublisher`, so an event is checked one way and counts as accepted only
once JetStream has stored it. Refused events go to the dead-letter stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import msgspec
from nats.js import JetStreamContext
from nats.js.api import PubAck

from edge_agent.errors import EventError, SemStreamsError
from edge_agent.ingest.dead_letters import DeadLetters
from edge_agent.metrics import Metrics
from edge_agent.model import decode_event
from edge_agent.nats.subjects import ENTITY_STREAM, entity_subject

__all__ = ["EventPublisher", "IngestProblem", "IngestResult", "PublishError", "split_body"]

_ACK_TIMEOUT_S = 10.0
_MAX_REPORTED_PROBLEMS = 100


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
    """

    def __init__(
        self,
        js: JetStreamContext,
        dead_letters: DeadLetters,
        metrics: Metrics,
        *,
        max_event_bytes: int,
    ) -> None:
        self._js = js
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
            PublishError: JetStream refused or did not ack some events.
        """
        pending: list[asyncio.Future[PubAck]] = []
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
            subject = entity_subject(event.entity_type)
            pending.append(await self._js.publish_async(subject, data, stream=ENTITY_STREAM))
        accepted = await self._await_acks(pending)
        self._metrics.ingested.labels(path=path).inc(accepted)
        return IngestResult(accepted, rejected, problems)

    async def _await_acks(self, pending: list[asyncio.Future[PubAck]]) -> int:
        if not pending:
            return 0
        done, not_done = await asyncio.wait(pending, timeout=_ACK_TIMEOUT_S)
        for future in not_done:
            future.cancel()
        failures = [f.exception() for f in done if f.exception() is not None]
        accepted = len(done) - len(failures)
        if not_done or failures:
            cause = str(failures[0]) if failures else "no ack from JetStream in time"
            raise PublishError(accepted, len(pending) - accepted, cause or "refused")
        return accepted
