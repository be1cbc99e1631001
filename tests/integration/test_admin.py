"""Admin API on a running agent: export/import round trips, run-time settings."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from edge_agent.app import Agent
from edge_agent.nats.subjects import ENTITY_STREAM
from tests.conftest import StartAgent
from tests.helpers import FIXTURES, ndjson, wait_for

INDEXED = {"indexer": {"indexes": {"alias": True, "spatial": True, "temporal": True}}}


def client_for(agent: Agent) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{agent.http_port}", timeout=30)


async def fill(agent: Agent, client: httpx.AsyncClient) -> int:
    events = [
        json.loads(line) for line in (FIXTURES / "events/good.ndjson").read_text().splitlines()
    ]
    for i in range(40):
        events.append(
            {
                "entity_id": f"D-{i:03d}",
                "entity_type": "drone",
                "timestamp": f"2024-01-15T10:{i:02d}:00Z",
                "properties": {
                    "battery": 50 + i,
                    "geo.location.latitude": 37 + i / 100,
                    "geo.location.longitude": -122.0,
                    "armed": i % 2 == 0,
                },
                "relationships": [
                    {"predicate": "member_of", "object": "fleet-west", "weight": 0.5}
                ],
                "aliases": [f"tail-{i}"],
            }
        )
        events.append(
            {
                "entity_id": f"D-{i:03d}",
                "entity_type": "drone",
                "properties": {"status": "flying"},
            }
        )
    assert (await client.post("/ingest", content=ndjson(events))).status_code == 202
    expected = len({e["entity_id"] for e in events})

    async def applied() -> bool:
        stats = await asyncio.to_thread(agent.store.stats)
        return stats["entities"] == expected and (await agent.stream_stats())["stream_pending"] == 0

    await wait_for(applied, what="all events applied")
    return expected


async def export(client: httpx.AsyncClient, **body: Any) -> bytes:
    reply = await client.post("/admin/export", json=body)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("application/x-ndjson")
    return reply.content


async def test_export_wipe_import_gives_an_identical_graph(start_agent: StartAgent) -> None:
    source = await start_agent(graph={"config": INDEXED})
    async with client_for(source) as client:
        entities = await fill(source, client)
        dump = await export(client)
    assert len(dump.splitlines()) == entities

    fresh = await start_agent(graph={"config": INDEXED})  # a wiped, empty graph
    async with client_for(fresh) as client:
        first = await client.post(
            "/admin/import", content=dump, headers={"content-type": "application/x-ndjson"}
        )
        assert first.json() == {"applied": entities, "unchanged": 0, "rejected": 0, "errors": []}
        assert await export(client) == dump
        second = await client.post("/admin/import", content=dump)
        assert second.json() == {"applied": 0, "unchanged": entities, "rejected": 0, "errors": []}
        assert await export(client) == dump
        # The indexes came back too.
        near = await client.post(
            "/graph/query/spatial", json={"lat": 37.0, "lon": -122.0, "radius_m": 2_000}
        )
        assert [e["entity_id"] for e in near.json()["entities"]] == ["D-000", "D-001"]
        alias = await client.post("/graph/query/alias", json={"alias": "tail-7"})
        assert alias.json()["entities"][0]["entity_id"] == "D-007"
        in_time = await client.post(
            "/graph/query/temporal",
            json={"start": "2024-01-15T10:00:00Z", "end": "2024-01-15T10:59:00Z"},
        )
        assert in_time.json()["count"] > 0
    assert await asyncio.to_thread(fresh.store.stats) == await asyncio.to_thread(source.store.stats)


async def test_export_filters_by_type_and_import_reports_bad_lines(agent: Agent) -> None:
    async with client_for(agent) as client:
        await fill(agent, client)
        drones = await export(client, entity_type="drone", format="jsonl")
        lines = [json.loads(line) for line in drones.splitlines()]
        assert len(lines) == 41
        assert {line["entity_type"] for line in lines} == {"drone"}
        uav = next(line for line in lines if line["entity_id"] == "D-003")
        assert uav["version"] == 2
        assert uav["triples"][-1][:2] == ["status", "flying"]

        broken = b"\n".join(
            [
                drones.splitlines()[0],
                b"not json",
                json.dumps({**lines[1], "entity_id": "bad id"}).encode(),
                json.dumps({**lines[2], "version": "two"}).encode(),
            ]
        )
        reply = await client.post("/admin/import", content=broken)
        body = reply.json()
        assert reply.status_code == 200
        assert (body["unchanged"], body["rejected"]) == (1, 3)
        assert [e["line"] for e in body["errors"]] == [2, 3, 4]
        assert "malformed" in body["errors"][0]["reason"]
        assert "bad id" in body["errors"][1]["reason"]
        assert "version" in body["errors"][2]["reason"]
        only_bad = await client.post("/admin/import", content=b"{}\n")
        assert only_bad.status_code == 400
        assert (await client.post("/admin/export", json={"format": "csv"})).status_code == 400


async def test_runtime_config_takes_effect_without_restart(agent: Agent) -> None:
    assert agent.js is not None
    async with client_for(agent) as client:
        reply = await client.post(
            "/admin/config",
            json={
                "graph.workers": 16,
                "graph.queue_size": 300,
                "graph.cache_size": 7,
                "graph.batch_size": 25,
            },
        )
        assert reply.status_code == 200, reply.text
        settings = reply.json()["settings"]
        assert settings["graph.workers"] == 16
        assert agent.processor.settings.workers == 16
        assert agent.processor.settings.indexer.batch_processing.size == 25
        assert agent.querier.cache.max_size == 7

        async def rebound() -> bool:
            info = await agent.js.consumer_info(ENTITY_STREAM, agent.processor.consumer)
            return bool(info.config.max_ack_pending == 300)

        await wait_for(rebound, what="the consumer rebound with the new queue size")
        # The pipeline still works with the new settings.
        assert (
            await client.post(
                "/ingest",
                content=ndjson([{"entity_id": "after", "entity_type": "t", "properties": {}}]),
            )
        ).status_code == 202

        async def applied() -> bool:
            return (await client.get("/graph/entities/after")).status_code == 200

        await wait_for(applied, what="an event applied after the change")
        assert (await client.get("/admin/config")).json()["graph.queue_size"] == 300

        unknown = await client.post("/admin/config", json={"graph.wrokers": 4})
        assert unknown.status_code == 400
        assert unknown.json()["error"].startswith("graph.wrokers: unknown key")
        invalid = await client.post("/admin/config", json={"graph.workers": 0})
        assert invalid.status_code == 400
        assert invalid.json()["error"] == "graph.workers: expected `int` >= 1"
        assert agent.processor.settings.workers == 16  # nothing applied from a bad request
