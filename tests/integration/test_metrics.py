"""Every metric the seed guide names moves under load, as its PromQL queries expect."""

from __future__ import annotations

import asyncio
import re

import httpx

from edge_agent.app import Agent
from edge_agent.metrics import ERROR_REASONS
from tests.conftest import StartAgent
from tests.helpers import event, ndjson, wait_for


def sample(text: str, name: str) -> float:
    """Sum of a metric's samples (all label sets) in Prometheus text."""
    values = re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M)
    return sum(float(v) for v in values)


async def test_seed_metrics_move(start_agent: StartAgent) -> None:
    agent: Agent = await start_agent(graph={"config": {"workers": 1}})
    base = f"http://127.0.0.1:{agent.http_port}"
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        before = (await client.get("/metrics")).text
        depth_seen = 0.0

        async def watch_queue() -> None:
            nonlocal depth_seen
            while True:
                depth_seen = max(
                    depth_seen,
                    sample((await client.get("/metrics")).text, "semstreams_queue_depth"),
                )
                await asyncio.sleep(0.005)

        watcher = asyncio.create_task(watch_queue())
        body = ndjson([event(f"M-{i}", battery=i) for i in range(5_000)]) + b"not json\n"
        assert (await client.post("/ingest", content=body)).status_code == 202

        async def applied() -> bool:
            return (await asyncio.to_thread(agent.store.stats))["entities"] == 5_000

        await wait_for(applied, what="5,000 events applied")
        watcher.cancel()
        for _ in range(3):
            await client.post("/graph/query/path", json={"start_entity": "M-1"})
        after = (await client.get("/metrics")).text

    moved = {
        name: sample(after, name) - sample(before, name)
        for name in (
            "semstreams_messages_processed_total",
            "semstreams_errors_total",
            "semstreams_processing_duration_seconds_count",
            "semstreams_processing_duration_seconds_bucket",
            "semstreams_cache_requests_total",
            "semstreams_cache_hits_total",
        )
    }
    assert moved["semstreams_messages_processed_total"] == 5_000
    assert moved["semstreams_errors_total"] == 1
    assert moved["semstreams_processing_duration_seconds_count"] > 0
    assert moved["semstreams_processing_duration_seconds_bucket"] > 0
    assert moved["semstreams_cache_requests_total"] == 3
    assert moved["semstreams_cache_hits_total"] == 2
    assert depth_seen > 0, "the queue depth gauge never showed the backlog"
    assert sample(after, "semstreams_queue_depth") == 0


async def test_the_seed_queries_have_series_from_the_start(start_agent: StartAgent) -> None:
    """On a fresh, healthy agent every counter the seed's PromQL reads exists (at zero),
    so rate(semstreams_errors_total[5m]) is 0, not "no data"."""
    agent: Agent = await start_agent()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{agent.http_port}") as client:
        text = (await client.get("/metrics")).text
    for reason in ERROR_REASONS:
        assert f'semstreams_errors_total{{reason="{reason}"}} 0.0' in text
    for name in (
        "semstreams_messages_processed_total",
        "semstreams_queue_depth",
        "semstreams_processing_duration_seconds_count",
        "semstreams_cache_hits_total",
        "semstreams_cache_requests_total",
    ):
        assert re.search(rf"^{name}(?:{{[^}}]*}})? \S+$", text, re.M), name
