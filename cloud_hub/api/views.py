"""The hub's own HTTP views."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from edge_agent.api.views import json_response

__all__ = ["edges"]


async def edges(request: Request) -> Response:
    """``GET /edges``: each edge with connected, last_seen, hwm, lag_seconds, bytes_received."""
    sync_input = getattr(request.app.state.agent, "sync_input", None)
    if sync_input is None:
        return json_response([])
    return json_response(await run_in_threadpool(sync_input.edges))
