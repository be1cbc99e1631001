"""The OpenAPI document of the edge agent's HTTP API, built from the request Structs.

Request and record schemas come from the same msgspec Structs that decode requests,
so the document cannot drift from what the server accepts.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from edge_agent import __version__
from edge_agent.api.admin import ExportRequest
from edge_agent.api.views import json_response
from edge_agent.graph.querier import QUERY_REQUESTS
from edge_agent.graph.records import EntityRecord
from edge_agent.model import EntityEvent

__all__ = ["ERROR_RESPONSE", "OBJECT", "ok_response", "openapi", "openapi_document"]

OBJECT = {"type": "object"}
ERROR_RESPONSE = {
    "description": "error",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {"error": {"type": "string"}},
                "required": ["error"],
            }
        }
    },
}


def ok_response(schema: dict[str, Any], description: str = "ok") -> dict[str, Any]:
    """A JSON response of ``schema``, for a path's ``responses``."""
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _body(schema: dict[str, Any], media: str = "application/json") -> dict[str, Any]:
    return {"required": True, "content": {media: {"schema": schema}}}


def _query_paths() -> dict[str, Any]:
    paths = {}
    for name, kind in QUERY_REQUESTS.items():
        summary = (kind.__doc__ or name).split(":", 1)[-1].strip().rstrip(".")
        paths[f"/graph/query/{name}"] = {
            "post": {
                "summary": f"{summary} (also NATS graph.query.{name})",
                "requestBody": _body(_ref(kind.__name__)),
                "responses": {
                    "200": ok_response(OBJECT),
                    "400": ERROR_RESPONSE,
                    "404": ERROR_RESPONSE,
                },
            }
        }
    return paths


def _entity_paths() -> dict[str, Any]:
    entity_id = {
        "name": "entity_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "minLength": 1, "maxLength": 255},
    }
    return {
        "/graph/entities/{entity_id}": {
            "get": {
                "summary": "One entity's merged state",
                "parameters": [entity_id],
                "responses": {
                    "200": ok_response(OBJECT),
                    "400": ERROR_RESPONSE,
                    "404": ERROR_RESPONSE,
                },
            }
        },
        "/graph/entities/{entity_id}/relationships": {
            "get": {
                "summary": "An entity's edges",
                "parameters": [
                    entity_id,
                    {
                        "name": "direction",
                        "in": "query",
                        "schema": {"enum": ["outgoing", "incoming", "both"]},
                    },
                    {"name": "predicate", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": {"200": ok_response(OBJECT), "400": ERROR_RESPONSE},
            }
        },
    }


def _service_paths() -> dict[str, Any]:
    ndjson = {"type": "string"}
    return {
        "/health": {
            "get": {
                "summary": "Per-component status: healthy or degraded (200), unhealthy (503)",
                "responses": {"200": ok_response(OBJECT), "503": ok_response(OBJECT, "unhealthy")},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {
                        "description": "ok",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/graph/stats": {
            "get": {"summary": "Graph and stream counts", "responses": {"200": ok_response(OBJECT)}}
        },
        "/ingest": {
            "post": {
                "summary": "One JSON event, or NDJSON; 202 once JetStream has stored them",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": _ref("EntityEvent")},
                        "application/x-ndjson": {"schema": ndjson},
                    },
                },
                "responses": {
                    "202": ok_response(OBJECT, "accepted"),
                    "400": ERROR_RESPONSE,
                    "413": ERROR_RESPONSE,
                    "503": ERROR_RESPONSE,
                    "507": ERROR_RESPONSE,
                },
            }
        },
        "/admin/export": {
            "post": {
                "summary": "Stream the graph (or one entity type) as JSONL records",
                "requestBody": _body(_ref("ExportRequest")),
                "responses": {
                    "200": {
                        "description": "JSONL of EntityRecord",
                        "content": {"application/x-ndjson": {"schema": ndjson}},
                    },
                    "400": ERROR_RESPONSE,
                    "429": ERROR_RESPONSE,
                    "503": ERROR_RESPONSE,
                },
            }
        },
        "/admin/import": {
            "post": {
                "summary": "Import JSONL records; idempotent",
                "requestBody": _body(ndjson, "application/x-ndjson"),
                "responses": {
                    "200": ok_response(OBJECT),
                    "400": ERROR_RESPONSE,
                    "413": ERROR_RESPONSE,
                },
            }
        },
        "/admin/config": {
            "get": {"summary": "Run-time settings", "responses": {"200": ok_response(OBJECT)}},
            "post": {
                "summary": 'Change run-time settings, e.g. {"graph.workers": 16}',
                "requestBody": _body(OBJECT),
                "responses": {"200": ok_response(OBJECT), "400": ERROR_RESPONSE},
            },
        },
    }


def openapi_document(
    served: Collection[str] | None = None,
    extra_paths: Mapping[str, Any] | None = None,
    title: str = "SemStreams edge agent",
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the HTTP API.

    Args:
        served: the route paths the app serves (``None``: every path documented here);
            a path it does not serve is left out, so the document never promises one.
        extra_paths: paths of the assembly's own routes (the hub's fleet views), added.
        title: the document's title.
    """
    kinds = [*QUERY_REQUESTS.values(), EntityEvent, EntityRecord, ExportRequest]
    _, components = msgspec.json.schema_components(
        kinds, ref_template="#/components/schemas/{name}"
    )
    paths = {**_service_paths(), **_entity_paths(), **_query_paths()}
    for path, operations in (extra_paths or {}).items():
        paths[path] = {**paths.get(path, {}), **operations}
    if served is not None:
        paths = {path: ops for path, ops in paths.items() if _template(path) in served}
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": __version__},
        "paths": paths,
        "components": {"schemas": components},
    }


def _template(path: str) -> str:
    """``/graph/query/path`` is served by the route ``/graph/query/{name}``."""
    return "/graph/query/{name}" if path.startswith("/graph/query/") else path


async def openapi(request: Request) -> Response:
    """``GET /openapi.json``: the OpenAPI document of the routes this app serves."""
    served = {route.path for route in request.app.routes if isinstance(route, Route)}
    state = request.app.state
    document = openapi_document(served, state.openapi_paths, state.openapi_title)
    return json_response(document)
