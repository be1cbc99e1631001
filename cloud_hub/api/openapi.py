"""The OpenAPI paths of the hub's own routes (the fleet and cross-edge views).

``/openapi.json`` on the hub lists these beside the shared routes it serves
(:func:`edge_agent.api.openapi.openapi_document`).
"""

from __future__ import annotations

from typing import Any

import msgspec

from cloud_hub.graphrag.search import GlobalQuery, LocalQuery, SearchQuery
from edge_agent.api.openapi import ERROR_RESPONSE, OBJECT, ok_response

__all__ = ["HUB_PATHS"]

_LIST = {"type": "array", "items": OBJECT}
_LIMIT = {
    "name": "limit",
    "in": "query",
    "schema": {"type": "integer", "minimum": 1, "maximum": 10_000, "default": 100},
}


def _get(summary: str, schema: dict[str, Any], *parameters: dict[str, Any]) -> dict[str, Any]:
    responses = {"200": ok_response(schema), "400": ERROR_RESPONSE}
    return {"get": {"summary": summary, "parameters": list(parameters), "responses": responses}}


def _query(name: str, kind: type[msgspec.Struct], summary: str) -> dict[str, Any]:
    """``POST /graph/query/<name>``; the request's schema inline (these Structs hold no
    other Struct, so it needs no shared component)."""
    schema = msgspec.json.schema(kind)["$defs"][kind.__name__]
    body = {"required": True, "content": {"application/json": {"schema": schema}}}
    responses = {"200": ok_response(OBJECT), "400": ERROR_RESPONSE}
    return {
        f"/graph/query/{name}": {
            "post": {
                "summary": f"{summary} (also NATS graph.query.{name})",
                "requestBody": body,
                "responses": responses,
            }
        }
    }


HUB_PATHS: dict[str, Any] = {
    **_query(
        "search",
        SearchQuery,
        "GraphRAG search: entities by text (FTS5 bm25), vector or both (RRF);"
        " degraded when vectors are wanted and unavailable",
    ),
    **_query(
        "local",
        LocalQuery,
        "GraphRAG local search: the best entities, their communities and neighbourhoods,"
        " and the PathRAG paths between them",
    ),
    **_query(
        "global",
        GlobalQuery,
        "GraphRAG global search: communities of a level ranked for the text, then their"
        " best members",
    ),
    "/edges": _get(
        "Every edge: its link to this instance, its part of the graph (types, freshness)",
        _LIST,
    ),
    "/graph/types": _get("Per entity type, the edges reporting it and how many each", OBJECT),
    "/graph/shared": _get("Entities reported by more than one edge", _LIST, _LIMIT),
    "/graph/conflicts": _get(
        "Conflicts between edges' contributions, newest first",
        _LIST,
        _LIMIT,
        {"name": "entity_id", "in": "query", "schema": {"type": "string"}},
    ),
    "/graph/communities": _get(
        "GraphRAG communities of a level, the largest first; with q, those matching its"
        " words (bm25)",
        _LIST,
        {"name": "level", "in": "query", "schema": {"type": "integer", "minimum": 0}},
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1}},
        {"name": "q", "in": "query", "schema": {"type": "string"}},
    ),
    "/graph/communities/{community_id}": {
        "get": {
            "summary": "One community: its summary, top entities and children",
            "parameters": [
                {
                    "name": "community_id",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string"},
                }
            ],
            "responses": {"200": ok_response(OBJECT), "404": ERROR_RESPONSE},
        }
    },
    "/dashboard/fleet": _get("The dashboard's fleet: one row per edge, status counts", OBJECT),
    "/dashboard/edges/{edge_id}": _get(
        "One edge's row, last-hour history, conflicts and graph state",
        OBJECT,
        {"name": "edge_id", "in": "path", "required": True, "schema": {"type": "string"}},
    ),
    "/dashboard/hub": _get("NATS, the SYNC_BATCHES stream and the materialiser", OBJECT),
    "/graph/entities/{entity_id}": _get(
        "The merged entity; with provenance=1 each edge's contribution too",
        OBJECT,
        {
            "name": "entity_id",
            "in": "path",
            "required": True,
            "schema": {"type": "string", "minLength": 1, "maxLength": 255},
        },
        {"name": "provenance", "in": "query", "schema": {"enum": ["0", "1", "true", "false"]}},
    ),
}
