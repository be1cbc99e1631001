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


def consumer_name(input_subject: str) -> str:
    """The durable consumer name for a processor reading ``input_subject``.

    Instances that share an input subject share the consumer (and split its work);
    instances scaled per entity type get one each.
    """
    tail = input_subject.removeprefix("events.graph.entity.")
    return "graph-processor-" + (re.sub(r"[^A-Za-z0-9_-]", "_", tail) if tail != ">" else "all")
