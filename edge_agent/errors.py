"""The agent's exception tree.

Callers catch :class:`SemStreamsError`; library exceptions (sqlite3, nats, msgspec)
are converted at the edge of the capability that raised them, ``from`` the original::

    SemStreamsError
    ├── AuthError          an HTTP request's bearer token is refused; ``reason`` says why
    ├── ConfigError        a config file or value is wrong; the message names the key path
    ├── EventError         an entity event is malformed; ``reason`` is a metric label
    ├── GraphError         the SQLite store refused an operation
    ├── QueryError         a graph query cannot be answered; ``status`` is its HTTP status
    │   ├── NotFoundError      the entity asked for does not exist (404)
    │   └── BadQueryError      the request is invalid, or needs an index that is off (400)
    ├── NatsServerError    the embedded nats-server could not be started or reached
    └── ProtocolError      the sync link broke its protocol
        ├── LocalProtocolError   we tried something illegal (a bug)
        └── RemoteProtocolError  the peer did; close the link with this reason
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "BadQueryError",
    "ConfigError",
    "EventError",
    "GraphError",
    "LocalProtocolError",
    "NatsServerError",
    "NotFoundError",
    "ProtocolError",
    "QueryError",
    "RemoteProtocolError",
    "SemStreamsError",
]


class SemStreamsError(Exception):
    """Base class of every error the agent raises on purpose."""


class AuthError(SemStreamsError):
    """A request's credentials are refused; ``reason`` is the short cause sent to the client.

    The reason never quotes the token: it may be a valid credential for another service.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


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


class QueryError(SemStreamsError):
    """A query that cannot be answered; ``status`` is the HTTP status to answer with."""

    status = 400


class NotFoundError(QueryError):
    """The entity asked for does not exist."""

    status = 404


class BadQueryError(QueryError):
    """The request is invalid, or needs an index that config has switched off."""

    status = 400


class ProtocolError(SemStreamsError):
    """The sync protocol was broken."""


class LocalProtocolError(ProtocolError):
    """This side tried something the protocol forbids in its state (a bug here)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something malformed or out of protocol; close with this reason."""
