"""HTTP views: decode the request, call a capability, encode the reply. No logic of their own."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import msgspec
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from edge_agent.graph import GraphStore
from edge_agent.graph.querier import Querier
from edge_agent.ingest.publisher import EventPublisher, PublishError, StorageFull, split_body
from edge_agent.metrics import CONTENT_TYPE, Metrics

__all__ = [
    "MAX_REQUEST_BYTES",
    "AgentServices",
    "BodyTooLarge",
    "ServiceCore",
    "entity",
    "graph_stats",
    "health",
    "ingest",
    "json_response",
    "metrics",
    "query",
    "read_body",
    "relationships",
    "service_of",
    "too_large",
]

MAX_INGEST_BYTES = 8 << 20
#: The largest body of a request that is not bulk data (a query, settings, enrolment).
MAX_REQUEST_BYTES = 64 << 10
_encoder = msgspec.json.Encoder()
_T = TypeVar("_T")


class ServiceCore(Protocol):
    """What the views both programs serve need from the running program."""

    metrics: Metrics

    @property
    def store(self) -> GraphStore:
        """The graph store."""
        ...

    @property
    def querier(self) -> Querier:
        """The graph's querier."""
        ...

    async def health(self) -> dict[str, Any]:
        """``{"status": ..., "components": {...}}``."""
        ...

    async def stream_stats(self) -> dict[str, int]:
        """``{"dead_letters": n, "stream_pending": n}`` from JetStream."""
        ...

    async def write(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run ``fn(*args)`` on the graph's single writer thread."""
        ...


class AgentServices(ServiceCore, Protocol):
    """What the edge agent's own views (ingest, run-time settings) need besides."""

    publisher: EventPublisher

    def runtime_settings(self) -> dict[str, Any]:
        """The settings ``POST /admin/config`` can change, with their values."""
        ...

    async def change_settings(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Apply run-time settings; raises ConfigError naming a bad key."""
        ...


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response encoded with msgspec (Structs, dicts, lists)."""
    return Response(_encoder.encode(body), status, headers, media_type="application/json")


def error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """A JSON error: ``{"error": message}``."""
    return json_response({"error": message}, status, headers)


class BodyTooLarge(Exception):
    """A request body over its limit; the app answers 413 (:func:`too_large`)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body over {limit} bytes; send less per request")
        self.limit = limit


async def too_large(request: Request, exc: Exception) -> Response:
    """The app's answer to :class:`BodyTooLarge`."""
    return error(413, str(exc))


async def read_body(request: Request, limit: int = MAX_REQUEST_BYTES) -> bytes:
    """The request body, read as it arrives and never past ``limit`` bytes.

    Raises:
        BodyTooLarge: the declared or the received length is over ``limit``.
    """
    if int(request.headers.get("content-length") or 0) > limit:
        raise BodyTooLarge(limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(limit)
    return bytes(body)


def agent_of(request: Request) -> AgentServices:
    """The running agent behind this request's app (a view only the edge serves)."""
    agent: AgentServices = request.app.state.agent
    return agent


def service_of(request: Request) -> ServiceCore:
    """The running program (agent or hub) behind this request's app."""
    service: ServiceCore = request.app.state.agent
    return service


async def health(request: Request) -> Response:
    """``GET /health``: 200 when healthy or degraded, 503 when unhealthy."""
    report = await service_of(request).health()
    return json_response(report, 503 if report["status"] == "unhealthy" else 200)


async def metrics(request: Request) -> Response:
    """``GET /metrics``: Prometheus text format."""
    return Response(service_of(request).metrics.exposition(), media_type=CONTENT_TYPE)


async def graph_stats(request: Request) -> Response:
    """``GET /graph/stats``: graph counts plus JetStream backlog and dead letters."""
    service = service_of(request)
    counts = await run_in_threadpool(service.store.stats)
    return json_response({**counts, **await service.stream_stats()})


async def _query(request: Request, name: str, body: bytes) -> Response:
    status, answer = await run_in_threadpool(service_of(request).querier.handle, name, body)
    return Response(answer, status, media_type="application/json")


async def query(request: Request) -> Response:
    """``POST /graph/query/{name}``: any graph query, with the NATS service's JSON."""
    return await _query(request, request.path_params["name"], await read_body(request))


async def entity(request: Request) -> Response:
    """``GET /graph/entities/{entity_id}``: one entity's merged state, or 404."""
    body = _encoder.encode({"entity_id": request.path_params["entity_id"]})
    return await _query(request, "entity", body)


async def relationships(request: Request) -> Response:
    """``GET /graph/entities/{entity_id}/relationships?direction=&predicate=``."""
    fields = {"entity_id": request.path_params["entity_id"], **request.query_params}
    return await _query(request, "relationships", _encoder.encode(fields))


async def ingest(request: Request) -> Response:
    """``POST /ingest``: one JSON event or NDJSON; 202 once JetStream has acked them.

    Refused events are dead-lettered and listed with their reasons; a request whose
    events are all refused is a 400. When there is no room (the disk under
    ``nats.jetstream.min_free_bytes``, or the stream at its byte limit) the answer is 507
    with ``reason`` ``disk_full`` or ``stream_full``; when JetStream did not answer, 503.
    Both carry ``Retry-After`` and say how many events were stored (``accepted``) and
    not (``failed``): send the others again.
    """
    body = await read_body(request, MAX_INGEST_BYTES)
    ndjson = "ndjson" in request.headers.get("content-type", "")
    events = split_body(body, ndjson=ndjson)
    if not events:
        return error(400, "no events in the request body")
    try:
        result = await agent_of(request).publisher.publish(events, path="http")
    except PublishError as exc:
        answer = {
            "error": f"events not stored: {exc.cause}",
            "accepted": exc.accepted,
            "failed": exc.failed,
        }
        if isinstance(exc, StorageFull):
            return json_response({**answer, "reason": exc.reason}, 507, {"Retry-After": "30"})
        return json_response(answer, 503, {"Retry-After": "5"})
    return json_response(result, 400 if result.accepted == 0 else 202)
