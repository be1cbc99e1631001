"""HTTP views of the communities: ``GET /graph/communities`` and
``GET /graph/communities/{community_id}``."""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from cloud_hub.graphrag.communities import store
from edge_agent.api.views import error, json_response

__all__ = ["community_detail", "community_list", "community_routes"]

_MAX_LIMIT = 1_000
_MAX_LEVEL = 100


def _read(request: Request) -> Any:
    return request.app.state.agent.store.database.read


def _number(request: Request, name: str, default: int, low: int, high: int) -> int | Response:
    raw = request.query_params.get(name, str(default))
    if not raw.isdigit() or not low <= int(raw) <= high:
        return error(400, f"{name} must be a whole number from {low} to {high}")
    return int(raw)


async def community_list(request: Request) -> Response:
    """``GET /graph/communities?level=0&limit=100&q=``: the communities of a level, the
    largest first; with ``q``, those matching its words, best first (bm25), each with
    its ``score``."""
    level = _number(request, "level", 0, 0, _MAX_LEVEL)
    if isinstance(level, Response):
        return level
    limit = _number(request, "limit", 100, 1, _MAX_LIMIT)
    if isinstance(limit, Response):
        return limit
    query = request.query_params.get("q", "")
    read = _read(request)
    if not query:
        return json_response(await run_in_threadpool(read, store.communities, level, limit))
    return json_response(await run_in_threadpool(read, _ranked, query, level, limit))


def _ranked(db: Any, query: str, level: int, limit: int) -> list[dict[str, Any]]:
    """The communities matching ``query``, each as :func:`store.community` gives it,
    with its score."""
    out = []
    for community_id, score in store.search_communities(db, query, level, limit):
        found = store.community(db, community_id)
        if found is not None:
            out.append({**found, "score": round(score, 6)})
    return out


async def community_detail(request: Request) -> Response:
    """``GET /graph/communities/{community_id}``: one community with its top entities and
    children; 404 when there is none by that id."""
    community_id = request.path_params["community_id"]
    found = await run_in_threadpool(_read(request), store.community, community_id)
    if found is None:
        return error(404, f"no community {community_id}")
    return json_response(found)


def community_routes() -> list[BaseRoute]:
    """The views' routes, for the hub's API to mount."""
    return [
        Route("/graph/communities", community_list, methods=["GET"]),
        Route("/graph/communities/{community_id}", community_detail, methods=["GET"]),
    ]
