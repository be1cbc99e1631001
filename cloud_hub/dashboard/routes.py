"""The dashboard's routes: the page at ``/``, its static files, and its JSON and live feed.

The page itself holds no data: everything it shows comes from the JSON routes below and
the hub's API (``/devices``, ``/claim-tokens``, ``/graph/...``), behind the same auth.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Protocol

import msgspec
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from cloud_hub.dashboard.history import read_history
from cloud_hub.dashboard.service import MAX_STREAMS, Dashboard
from cloud_hub.graph import fleet
from edge_agent.api.views import ServiceCore, error, json_response
from edge_agent.config import Config

__all__ = ["STATIC", "dashboard_routes"]

STATIC = Path(__file__).parent / "static"
_CONFLICTS_SHOWN = 20
# The page and its modules change with the package; a reload should see the new ones.
_NO_CACHE = {"Cache-Control": "no-cache"}
# Only the hub's own scripts run in the page (styles may be inline: cytoscape sets a
# style attribute on its canvas), it cannot be framed (no clickjacking of the approve
# and revoke buttons), and forms post only back to the hub.
_PAGE_HEADERS = {
    **_NO_CACHE,
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline';"
        " object-src 'none';"
        " base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class DashboardHost(ServiceCore, Protocol):
    """What the dashboard's routes need from the running hub."""

    dashboard: Dashboard
    config: Config

    async def hub_state(self) -> dict[str, Any]:
        """The hub's own health: NATS, the log, the materialiser."""
        ...


def _host(request: Request) -> DashboardHost:
    host: DashboardHost = request.app.state.agent
    return host


async def page(request: Request) -> Response:
    """``GET /``: the dashboard (one page; its views are ``#/...`` fragments)."""
    return FileResponse(STATIC / "index.html", headers=_PAGE_HEADERS)


async def fleet_view(request: Request) -> Response:
    """``GET /dashboard/fleet``: every edge's row and the count of each status."""
    body = await _host(request).dashboard.snapshot()
    return Response(body, media_type="application/json", headers=_NO_CACHE)


async def events(request: Request) -> Response:
    """``GET /dashboard/events``: the fleet as server-sent events (``event: fleet``)."""
    dashboard = _host(request).dashboard
    if dashboard.streams >= MAX_STREAMS:
        return error(503, f"{MAX_STREAMS} live streams are open; try again later")
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    stream = dashboard.events(request.is_disconnected)
    return StreamingResponse(stream, media_type="text/event-stream", headers=headers)


async def edge_detail(request: Request) -> Response:
    """``GET /dashboard/edges/{edge_id}``: the edge's row, its last-hour history, the
    conflicts it caused, and its registry record."""
    host = _host(request)
    edge_id = request.path_params["edge_id"]
    snapshot = msgspec.json.decode(await host.dashboard.snapshot())
    row = next((r for r in snapshot["edges"] if r["edge_id"] == edge_id), None)
    if row is None:
        return error(404, f"no edge {edge_id!r}")
    since_ms = int((time.time() - float(host.dashboard.settings.history)) * 1000)

    def read() -> dict[str, Any]:
        with host.store.reader() as db:
            return {
                "history": read_history(db, edge_id, since_ms),
                "conflicts": fleet.conflicts(db, limit=_CONFLICTS_SHOWN, edge_id=edge_id),
                "state": fleet.edge_states(db).get(edge_id, {}),
            }

    device = await run_in_threadpool(host.dashboard.device, edge_id)
    return json_response(
        {"edge": row, "config": _config_summary(host, device), **await run_in_threadpool(read)}
    )


def _config_summary(host: DashboardHost, device: dict[str, Any] | None) -> dict[str, Any]:
    """What the hub knows of the edge's setup: its enrolment (key, hardware, group) and
    the sync settings enrolled devices are given; or that it links with a static token."""
    if device is None:
        return {"enrolled": False, "credential": "static token (websocket_input.devices)"}
    given = host.config.provisioning
    return {
        "enrolled": True,
        "key_fingerprint": device.get("fingerprint"),
        "group": device.get("group"),
        "hostname": device.get("hostname"),
        "hardware": device.get("hardware"),
        "enrolled_at": device.get("enrolled_at"),
        "credentials_after": device.get("credentials_after"),
        "credential_ttl_s": float(given.credential_ttl),
        "sync_filters": given.filters,
        "max_bytes_per_second": int(given.max_bytes_per_second),
    }


async def hub_state(request: Request) -> Response:
    """``GET /dashboard/hub``: NATS, the ``SYNC_BATCHES`` stream and the materialiser."""
    return json_response(await _host(request).hub_state())


def dashboard_routes() -> list[BaseRoute]:
    """The page, its static files, and its JSON routes."""
    return [
        Route("/", page, methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
        Route("/dashboard/fleet", fleet_view, methods=["GET"]),
        Route("/dashboard/events", events, methods=["GET"]),
        Route("/dashboard/edges/{edge_id}", edge_detail, methods=["GET"]),
        Route("/dashboard/hub", hub_state, methods=["GET"]),
    ]
