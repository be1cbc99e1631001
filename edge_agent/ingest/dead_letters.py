"""The dead-letter sink: refused events are kept, with their reason, never dropped silently."""

from __future__ import annotations

import logging

from nats.js import JetStreamContext

from edge_agent.errors import EventError
from edge_agent.metrics import Metrics
from edge_agent.nats.subjects import DEAD_LETTER_STREAM, dead_letter_subject

__all__ = ["DeadLetters"]

log = logging.getLogger(__name__)
_DETAIL_LIMIT = 512


class DeadLetters:
    """Publishes refused events to the dead-letter stream, counts and logs them."""

    def __init__(self, js: JetStreamContext, metrics: Metrics) -> None:
        self._js = js
        self._metrics = metrics

    async def put(
        self, data: bytes, error: EventError, *, subject: str, msg_id: str | None = None
    ) -> None:
        """Keep one refused event.

        Args:
            data: the event exactly as received.
            error: why it was refused.
            subject: where it came from (a NATS subject, or ``http`` for the API).
            msg_id: a de-duplication id, so a redelivered event is kept once.

        Raises:
            nats errors: the dead letter could not be stored; the caller must not ack
                the original.
        """
        headers = {
            "Semstreams-Reason": error.reason,
            "Semstreams-Detail": error.detail[:_DETAIL_LIMIT].replace("\r", " ").replace("\n", " "),
            "Semstreams-Subject": subject,
        }
        if msg_id:
            headers["Nats-Msg-Id"] = msg_id
        await self._js.publish(
            dead_letter_subject(error.reason), data, stream=DEAD_LETTER_STREAM, headers=headers
        )
        self._metrics.errors.labels(reason=error.reason).inc()
        self._metrics.dead_letters.inc()
        log.warning("dead-lettered event from %s: %s: %s", subject, error.reason, error.detail)
