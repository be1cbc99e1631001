"""Queries on a running agent: HTTP and NATS request/reply answer with the same JSON."""

from __future__ import annotations

import asyncio
import json

import httpx
from nats.aio.client import Client

from edge_agent.app import Agent
from tests.helpers import FIXTURES, wait_for


async def loaded(agent: Agent) -> httpx.AsyncClient:
    client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{agent.http_port}", timeout=10)
    body = (FIXTURES / "events/good.ndjson").read_bytes()
    assert (await client.post("/ingest", content=body)).status_code == 202

    async def applied() -> bool:
        return (await asyncio.to_thread(agent.store.stats))["entities"] == 3

    await wait_for(applied, what="fixture events applied")
    return client


async def test_same_json_over_http_and_nats(agent: Agent, nats_client: Client) -> None:
    client = await loaded(agent)
    requests = {
        "path": {"start_entity": "sensor.plant1.line2.temp.probe.007", "max_depth": 3},
        "entity": {"entity_id": "UAV-001"},
        "relationships": {"entity_id": "UAV-001", "direction": "both"},
        "predicate": {"predicate": "member_of"},
        "stats": {},
    }
    for name, request in requests.items():
        over_http = await client.post(f"/graph/query/{name}", json=request)
        assert over_http.status_code == 200, over_http.text
        reply = await nats_client.request(f"graph.query.{name}", json.dumps(request).encode(), 5)
        assert reply.headers is not None and reply.headers["Status"] == "200"
        assert json.loads(reply.data) == over_http.json(), name
    path = (await client.post("/graph/query/path", json=requests["path"])).json()
    assert path["paths"][:2] == [
        ["sensor.plant1.line2.temp.probe.007", "UAV-001"],
        ["sensor.plant1.line2.temp.probe.007", "UAV-001", "fleet-west"],
    ]
    assert path["scores"]["UAV-001"] == 0.4  # decay 0.8 x weight 0.5
    await client.aclose()


async def test_errors_match_too(agent: Agent, nats_client: Client) -> None:
    client = await loaded(agent)
    cases = [
        ("path", {"start_entity": "ghost"}, 404),
        ("spatial", {"lat": 1, "lon": 2, "radius_m": 5}, 400),  # spatial index is off
        ("path", {"start_entity": "UAV-001", "max_depth": "deep"}, 400),
    ]
    for name, request, status in cases:
        over_http = await client.post(f"/graph/query/{name}", json=request)
        assert over_http.status_code == status
        reply = await nats_client.request(f"graph.query.{name}", json.dumps(request).encode(), 5)
        assert reply.headers is not None and reply.headers["Status"] == str(status)
        assert json.loads(reply.data) == over_http.json()
    spatial = await client.post("/graph/query/spatial", json={"lat": 1, "lon": 2, "radius_m": 5})
    assert "the spatial index is off" in spatial.json()["error"]
    await client.aclose()


async def test_entity_routes(agent: Agent) -> None:
    client = await loaded(agent)
    relationships = await client.get("/graph/entities/UAV-001/relationships?direction=incoming")
    assert relationships.json() == {
        "entity_id": "UAV-001",
        "incoming": [
            {
                "predicate": "mounted_on",
                "subject": "sensor.plant1.line2.temp.probe.007",
                "weight": 0.5,
            }
        ],
    }
    assert (
        await client.get("/graph/entities/UAV-001/relationships?direction=up")
    ).status_code == 400
    await client.aclose()
