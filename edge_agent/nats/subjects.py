"""Every NATS subject, stream and consumer name the agent uses, in one place."""

from __future__ import annotations

import re
from typing import Final

__all__ = [
    "DEAD_LETTER_STREAM",
    "DEAD_LETTER_SUBJECTS",
    "ENTITY_STREAM",
    "ENTITY_SUBJECTS",
    "QUERY_QUEUE_GROUP",
    "QUERY_SUBJECTS",
    "consumer_name",
    "dead_letter_subject",
    "entity_subject",
]

ENTITY_STREAM: Final = "GRAPH_ENTITIES"
ENTITY_SUBJECTS: Final = "events.graph.entity.>"
DEAD_LETTER_STREAM: Final = "GRAPH_DEAD_LETTERS"
DEAD_LETTER_SUBJECTS: Final = "deadletter.graph.entity.>"
QUERY_SUBJECTS: Final = "graph.query.*"
QUERY_QUEUE_GROUP: Final = "graph-query"


def entity_subject(entity_type: str) -> str:
    """The subject producers publish an entity event of ``entity_type`` on."""
    return f"events.graph.entity.{entity_type}"


def dead_letter_subject(reason: str) -> str:
    """The subject a refused event is kept on, by reason."""
    return f"deadletter.graph.entity.{reason}"


def consumer_name(input_subject: str, instance: str) -> str:
    """The durable consumer of the processor of ``instance`` reading ``input_subject``.

    Each instance owns its consumer: the processor's stream position lives in its own
    SQLite file, so two instances must never split one consumer's messages. Two
    instances asking for overlapping subjects of the work-queue stream are refused
    by the server (each entity type has its own processor when scaling out).
    """
    tail = input_subject.removeprefix("events.graph.entity.")
    subject = "all" if tail == ">" else tail
    return _token(f"graph-{instance}-{subject}")


def _token(name: str) -> str:
    """A valid consumer name: no dots, wildcards or spaces."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)
