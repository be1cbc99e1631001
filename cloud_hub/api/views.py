"""The hub's own HTTP views: the fleet of edges and the cross-edge views of the graph."""

from __future__ import annotations

from typing import Any, Protocol

import msgspec
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from cloud_hub.graph import fleet
from edge_agent.api.views import ServiceCore, entity, error, json_response

__all__ = ["conflicts", "edges", "entity_with_provenance", "shared", "types"]

_MAX_LIMIT = 10_000


class HubServices(ServiceCore, Protocol):
    """What the hub's views need from the running hub."""

    def link_views(self) -> dict[str, dict[str, Any]]:
        """This instance's sync links, by edge id."""
        ...


def _hub(request: Request) -> HubServices:
    hub: HubServices = request.app.state.agent
    return hub


def _limit(request: Request, default: int = 100) -> int | Response:
    raw = request.query_params.get("limit", str(default))
    if not raw.isdigit() or not 0 < int(raw) <= _MAX_LIMIT:
        return error(400, f"limit must be a whole number from 1 to {_MAX_LIMIT}")
    return int(raw)


async def edges(request: Request) -> Response:
    """``GET /edges``: every edge, its link to this instance and its part of the graph.

    Per edge: connected, last_seen, hwm, lag_seconds, bytes_received, remote (the link
    to this instance), and applied_at, freshness, entities and types (from the graph,
    the same on every instance).
    """
    hub = _hub(request)
    states = await run_in_threadpool(hub.store.database.read, fleet.edge_states)
    links = hub.link_views()
    merged = []
    for edge_id in sorted(states.keys() | links.keys()):
        link = links.get(edge_id) or {"edge_id": edge_id, "connected": False, "hwm": 0}
        state = states.get(edge_id, {})
        merged.append({**state, **link, "hwm": max(link["hwm"], state.get("hwm", 0))})
    return json_response(merged)


async def types(request: Request) -> Response:
    """``GET /graph/types``: per entity type, the edges reporting it and how many each."""
    hub = _hub(request)
    return json_response(await run_in_threadpool(hub.store.database.read, fleet.type_reporters))


async def shared(request: Request) -> Response:
    """``GET /graph/shared?limit=``: entities reported by more than one edge."""
    limit = _limit(request)
    if isinstance(limit, Response):
        return limit
    hub = _hub(request)
    found = await run_in_threadpool(hub.store.database.read, fleet.shared_entities, limit)
    return json_response(found)


async def conflicts(request: Request) -> Response:
    """``GET /graph/conflicts?limit=&entity_id=``: the newest conflicts first."""
    limit = _limit(request)
    if isinstance(limit, Response):
        return limit
    entity_id = request.query_params.get("entity_id", "")
    hub = _hub(request)

    def read() -> list[dict[str, Any]]:
        with hub.store.reader() as db:
            return fleet.conflicts(db, limit=limit, entity_id=entity_id)

    return json_response(await run_in_threadpool(read))


async def entity_with_provenance(request: Request) -> Response:
    """``GET /graph/entities/{id}[?provenance=1]``: the merged entity; with
    ``provenance``, each edge's own contribution beside it."""
    answer = await entity(request)
    if request.query_params.get("provenance") not in ("1", "true") or answer.status_code != 200:
        return answer
    hub = _hub(request)
    entity_id = request.path_params["entity_id"]
    parts = await run_in_threadpool(hub.store.database.read, fleet.contributions, entity_id)
    body = msgspec.json.decode(answer.body)
    body["provenance"] = parts
    return json_response(body)
