"""The agent's exception tree.

Callers catch :class:`SemStreamsError`; library exceptions (sqlite3, nats, msgspec)
are converted at the edge of the capability that raised them, ``from`` the original::

    SemStreamsError
    ├── ConfigError        a config file or value is wrong; the message names the key path
    ├── EventError         an entity event is malformed; ``reason`` is a metric label
    ├── GraphError         the SQLite store refused an operation
    └── NatsServerError    the embedded nats-server could not be started or reached
"""

from __future__ import annotations

__all__ = ["ConfigError", "EventError", "GraphError", "NatsServerError", "SemStreamsError"]


class SemStreamsError(Exception):
    """Base class of every error the agent raises on purpose."""


class ConfigError(SemStreamsError):
    """A configuration error; ``problems`` lists each ``key.path: cause``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class EventError(SemStreamsError):
    """An entity event that cannot be applied.

    Attributes:
        reason: a short, stable label (``not_json``, ``bad_id`` …) used as the
            ``reason`` label of ``semstreams_errors_total`` and in dead letters.
        detail: a human-readable cause.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class GraphError(SemStreamsError):
    """The graph store could not complete an operation."""


class NatsServerError(SemStreamsError):
    """The embedded nats-server failed to start or to become ready."""
