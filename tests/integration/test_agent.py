"""The agent end to end on a real nats-server and a real SQLite file, in-process."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest
from nats.aio.client import Client

from edge_agent.app import Agent
from edge_agent.errors import ConfigError
from edge_agent.model import REASONS
from edge_agent.nats.server import EmbeddedNatsServer
from edge_agent.nats.subjects import DEAD_LETTER_STREAM, ENTITY_STREAM
from tests.conftest import StartAgent
from tests.helpers import (
    FIXTURES,
    JWT_SECRET,
    bearer,
    event,
    free_port,
    make_config,
    ndjson,
    wait_for,
)


def api(agent: Agent) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{agent.http_port}", timeout=10)


async def entity_count(agent: Agent) -> int:
    return int((await asyncio.to_thread(agent.store.stats))["entities"])


async def test_ingest_ndjson_then_query(agent: Agent) -> None:
    body = (FIXTURES / "events/good.ndjson").read_bytes()
    async with api(agent) as client:
        reply = await client.post(
            "/ingest", content=body, headers={"content-type": "application/x-ndjson"}
        )
        assert reply.status_code == 202, reply.text
        assert reply.json() == {"accepted": 3, "rejected": 0, "errors": []}

        async def applied() -> bool:
            return (await client.get("/graph/entities/UAV-001")).status_code == 200

        await wait_for(applied, what="UAV-001 applied")
        drone = (await client.get("/graph/entities/UAV-001")).json()
        assert drone["properties"]["battery"] == 85.2
        assert drone["aliases"] == ["tail-N123"]
        assert drone["relationships"] == [
            {"predicate": "member_of", "object": "fleet-west", "weight": 1.0}
        ]
        stats = (await client.get("/graph/stats")).json()
        assert stats["entities"] == 3
        assert stats["by_type"] == {"drone": 1, "fleet": 1, "sensor": 1}
        assert stats["edges"] == 2
        assert stats["dead_letters"] == 0
        assert stats["stream_pending"] == 0
        missing = await client.get("/graph/entities/nobody")
        assert missing.status_code == 404
        assert "nobody" in missing.json()["error"]


async def test_ingest_single_json_event(agent: Agent) -> None:
    async with api(agent) as client:
        one = json.dumps({**event("solo"), "timestamp": "2024-01-15T10:30:00Z"}, indent=2)
        reply = await client.post("/ingest", content=one)
        assert reply.status_code == 202
        assert reply.json()["accepted"] == 1


async def test_ingest_refuses_bad_requests(agent: Agent) -> None:
    async with api(agent) as client:
        empty = await client.post("/ingest", content=b"")
        assert empty.status_code == 400
        all_bad = await client.post("/ingest", content=b"not json\n{also not}\n")
        assert all_bad.status_code == 400
        assert [e["reason"] for e in all_bad.json()["errors"]] == ["not_json", "not_json"]
        huge = await client.post("/ingest", content=b"x" * (9 << 20))
        assert huge.status_code == 413


async def test_health_and_metrics(agent: Agent) -> None:
    async with api(agent) as client:
        health = (await client.get("/health")).json()
        assert health["status"] == "healthy"
        assert set(health["components"]) == {"nats", "store", "processor", "storage"}
        assert health["components"]["nats"]["embedded"] is True
        assert health["components"]["storage"]["status"] == "ok"
        await client.post("/ingest", content=ndjson([event("m1"), event("m2")]))
        await wait_for(lambda: _has(agent, 2), what="2 entities")
        text = (await client.get("/metrics")).text
        assert "semstreams_messages_processed_total 2.0" in text
        assert "semstreams_processing_duration_seconds_bucket" in text
        assert "semstreams_queue_depth" in text
        assert 'semstreams_ingested_total{path="http"} 2.0' in text


async def _has(agent: Agent, n: int) -> bool:
    return await entity_count(agent) >= n


def bad_events() -> list[tuple[str, bytes]]:
    good = event("x")
    too_big = {**good, "properties": {"blob": "x" * 70_000}}
    return [
        ("not_json", b"{{{ not json"),
        ("not_object", b"[1, 2]"),
        ("missing_field", json.dumps({"entity_type": "drone", "properties": {}}).encode()),
        ("missing_field", json.dumps({"entity_id": "a", "properties": {}}).encode()),
        ("bad_id", json.dumps({**good, "entity_id": "bad id!"}).encode()),
        ("id_too_long", json.dumps({**good, "entity_id": "a" * 300}).encode()),
        ("bad_property_type", json.dumps({**good, "properties": {"p": {"q": 1}}}).encode()),
        ("too_large", json.dumps(too_big).encode()),
        ("unknown_op", json.dumps({**good, "op": "merge"}).encode()),
    ]


async def test_bad_input_on_nats_is_dead_lettered_and_good_events_around_it_applied(
    agent: Agent, nats_client: Client
) -> None:
    js = nats_client.jetstream()
    cases = bad_events()
    for index, (_, data) in enumerate(cases):
        await js.publish("events.graph.entity.drone", json.dumps(event(f"before-{index}")).encode())
        await js.publish("events.graph.entity.drone", data)
        await js.publish("events.graph.entity.drone", json.dumps(event(f"after-{index}")).encode())
    await wait_for(lambda: _has(agent, 2 * len(cases)), what="good events applied")
    dead = await js.pull_subscribe("deadletter.graph.entity.>", stream=DEAD_LETTER_STREAM)
    letters = await dead.fetch(len(cases), timeout=5)
    assert [m.headers["Semstreams-Reason"] for m in letters] == [r for r, _ in cases]
    assert [m.data for m in letters] == [d for _, d in cases]
    for message in letters:
        assert message.headers["Semstreams-Detail"]
        assert message.headers["Semstreams-Subject"] == "events.graph.entity.drone"
        assert message.subject == f"deadletter.graph.entity.{message.headers['Semstreams-Reason']}"
    async with api(agent) as client:
        text = (await client.get("/metrics")).text
        assert 'semstreams_errors_total{reason="missing_field"} 2.0' in text
        assert 'semstreams_errors_total{reason="too_large"} 1.0' in text
        stats = (await client.get("/graph/stats")).json()
        assert stats["dead_letters"] == len(cases)
        health = (await client.get("/health")).json()
        assert health["status"] == "healthy"
    assert {r for r, _ in cases} <= set(REASONS)


async def test_a_backlog_is_applied_in_fewer_transactions_than_batches(
    agent: Agent, nats_client: Client
) -> None:
    """Batches queued while the writer is busy share one transaction (one commit):
    every event applied once, every message acked, a bad one still dead-lettered."""
    js = nats_client.jetstream()
    busy = asyncio.ensure_future(agent.store.write(time.sleep, 1.0))  # the writer, held
    total = 5 * 500  # five batches of the default size
    publishes = [
        js.publish("events.graph.entity.drone", json.dumps(event(f"b{i}")).encode())
        for i in range(total - 1)
    ]
    await asyncio.gather(*publishes)
    await js.publish("events.graph.entity.drone", b"{{{ not json")
    await busy
    await wait_for(lambda: _has(agent, total - 1), what="the backlog applied")
    assert agent.processor.status.batches < 5  # transactions: batches were merged
    assert agent.js is not None
    await wait_for(lambda: _stream_empty(agent), what="every message acked (work queue emptied)")
    assert await entity_count(agent) == total - 1
    dead = await js.pull_subscribe("deadletter.graph.entity.>", stream=DEAD_LETTER_STREAM)
    (letter,) = await dead.fetch(1, timeout=5)
    assert letter.data == b"{{{ not json"


async def _stream_empty(agent: Agent) -> bool:
    assert agent.js is not None
    return (await agent.js.stream_info(ENTITY_STREAM)).state.messages == 0


async def test_input_subject_narrows_the_consumer(start_agent: StartAgent) -> None:
    agent = await start_agent(graph={"config": {"input_subject": "events.graph.entity.drone"}})
    assert agent.processor.consumer == "graph-test-edge-drone"
    async with api(agent) as client:
        body = ndjson([event("d1", "drone"), event("s1", "sensor"), event("d2", "drone")])
        assert (await client.post("/ingest", content=body)).status_code == 202
        await wait_for(lambda: _has(agent, 2), what="drones applied")
        await asyncio.sleep(0.5)
        stats = (await client.get("/graph/stats")).json()
        assert stats["by_type"] == {"drone": 2}
    assert agent.js is not None
    info = await agent.js.stream_info(ENTITY_STREAM)
    assert info.state.messages == 1  # the sensor event waits for its own processor


async def test_queue_size_bounds_events_in_flight(start_agent: StartAgent) -> None:
    agent = await start_agent(graph={"config": {"queue_size": 50, "workers": 1}})
    assert agent.js is not None
    info = await agent.js.consumer_info(ENTITY_STREAM, agent.processor.consumer)
    assert info.config.max_ack_pending == 50
    async with api(agent) as client:
        body = ndjson([event(f"q{i}") for i in range(600)])
        assert (await client.post("/ingest", content=body)).status_code == 202
        await wait_for(lambda: _has(agent, 600), what="600 applied")


async def test_full_stream_refuses_with_507_and_loses_nothing_accepted(
    start_agent: StartAgent,
) -> None:
    agent = await start_agent(
        nats={"jetstream": {"max_bytes": "64KB"}},
        graph={"config": {"input_subject": "events.graph.entity.nobody"}},
    )
    async with api(agent) as client:
        body = ndjson([event(f"f{i}", blob="y" * 500) for i in range(300)])
        reply = await client.post("/ingest", content=body)
        assert reply.status_code == 507
        assert reply.headers["retry-after"]
        assert reply.json()["reason"] == "stream_full"
        assert 0 < reply.json()["accepted"] < 300
        assert reply.json()["failed"] == 300 - reply.json()["accepted"]
    assert agent.js is not None
    info = await agent.js.stream_info(ENTITY_STREAM)
    assert info.state.messages == reply.json()["accepted"]


async def test_external_nats_starts_no_server(start_agent: StartAgent, tmp_path: Any) -> None:
    server = EmbeddedNatsServer(
        tmp_path / "ext", port=free_port(), max_file_store=1 << 30, name="x"
    )
    await server.start()
    try:
        agent = await start_agent(nats={"urls": [server.url], "embedded": False})
        assert agent.nats_server is None
        async with api(agent) as client:
            assert (await client.post("/ingest", content=ndjson([event("ext")]))).status_code == 202
            await wait_for(lambda: _has(agent, 1), what="applied via external NATS")
            health = (await client.get("/health")).json()
            assert health["components"]["nats"]["embedded"] is False
    finally:
        await server.stop()


async def test_auto_mode_connects_when_a_local_server_answers(
    start_agent: StartAgent, tmp_path: Any
) -> None:
    server = EmbeddedNatsServer(
        tmp_path / "ext", port=free_port(), max_file_store=1 << 30, name="y"
    )
    await server.start()
    try:
        agent = await start_agent(nats={"urls": [f"nats://localhost:{server.port}"]})
        assert agent.nats_server is None
    finally:
        await server.stop()


async def test_jwt_auth_is_enforced(start_agent: StartAgent) -> None:
    auth = {"type": "jwt", "jwt_secret": JWT_SECRET, "jwt_issuer": "semstreams"}
    agent = await start_agent(
        services={"service-manager": {"config": {"http_port": free_port(), "auth": auth}}}
    )
    async with api(agent) as client:
        refused = await client.get("/graph/stats")
        assert refused.status_code == 401
        assert refused.json() == {"error": "missing bearer token"}
        assert (await client.get("/graph/stats", headers=bearer())).status_code == 200


async def test_short_jwt_secret_is_refused(start_agent: StartAgent) -> None:
    auth = {"type": "jwt", "jwt_secret": "s", "jwt_issuer": "semstreams"}
    with pytest.raises(ConfigError, match="jwt_secret"):
        await start_agent(services={"service-manager": {"config": {"auth": auth}}})


async def test_metrics_listener_from_services_metrics(start_agent: StartAgent) -> None:
    port = free_port()
    await start_agent(
        services={
            "service-manager": {"config": {"http_port": free_port()}},
            "metrics": {"enabled": True, "config": {"port": port, "path": "/metrics"}},
        }
    )
    async with httpx.AsyncClient() as client:
        reply = await client.get(f"http://127.0.0.1:{port}/metrics")
        assert reply.status_code == 200
        assert "semstreams_queue_depth" in reply.text


async def test_simulator_component_feeds_the_graph(start_agent: StartAgent) -> None:
    agent = await start_agent(
        components=[
            {"id": "sim", "type": "simulator", "config": {"entities": 5, "interval": "100ms"}}
        ]
    )
    await wait_for(lambda: _has(agent, 8), what="5 drones and 3 fleets")
    drone = await asyncio.to_thread(agent.store.entity, "UAV-000")
    assert drone is not None and drone["entity_type"] == "drone"


async def test_a_stale_consumer_of_a_former_name_is_removed(tmp_path: Any) -> None:
    state = tmp_path / "shared-state"
    first = Agent(make_config(state, platform={"id": "old-name"}))
    await first.start()
    await first.stop()
    second = Agent(make_config(state, platform={"id": "new-name"}))
    await second.start()
    try:
        assert second.js is not None
        names = [c.name for c in await second.js.consumers_info(ENTITY_STREAM)]
        assert names == ["graph-new-name-all"]
        async with api(second) as client:
            assert (await client.post("/ingest", content=ndjson([event("n1")]))).status_code == 202
            await wait_for(lambda: _has(second, 1), what="applied by the renamed agent")
    finally:
        await second.stop()


async def test_an_event_stamped_far_ahead_cannot_freeze_a_property(
    start_agent: StartAgent,
) -> None:
    # The graph keeps a property's newest stamp: one reading stamped in 2999 would hide
    # every later one for good. Clamped to now + max_clock_skew, it hides them that long.
    agent = await start_agent(graph={"config": {"max_clock_skew": "1s"}})
    future = {
        "entity_id": "F-1",
        "entity_type": "drone",
        "timestamp": "2999-01-01T00:00:00Z",
        "properties": {"battery": 1},
    }
    async with api(agent) as client:
        assert (await client.post("/ingest", json=future)).status_code == 202

        async def shown(battery: int) -> bool:
            answer = await client.get("/graph/entities/F-1")
            return answer.status_code == 200 and answer.json()["properties"]["battery"] == battery

        await wait_for(lambda: shown(1), what="the clamped reading")
        await asyncio.sleep(1.5)  # past the clamped stamp
        now = {"entity_id": "F-1", "entity_type": "drone", "properties": {"battery": 2}}
        assert (await client.post("/ingest", json=now)).status_code == 202
        await wait_for(lambda: shown(2), what="the later reading")
        metrics = (await client.get("/metrics")).text
        assert "semstreams_clamped_timestamps_total 1.0" in metrics
