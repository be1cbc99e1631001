"""Tracing: spans around batch apply and queries, sampled per ``telemetry.sample_rate``."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterator

import httpx
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from edge_agent import tracing
from edge_agent.app import Agent
from edge_agent.config import TelemetryConfig
from tests.conftest import StartAgent
from tests.helpers import event, ndjson, wait_for


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """Spans of the agent (and of this test) land in memory."""
    exporter = InMemorySpanExporter()
    setup = functools.partial(tracing.setup_tracing, exporter=exporter)
    monkeypatch.setattr("edge_agent.app.setup_tracing", setup)
    yield exporter
    tracing.shutdown_tracing()


async def test_spans_around_batches_and_queries(
    start_agent: StartAgent, spans: InMemorySpanExporter
) -> None:
    agent: Agent = await start_agent(telemetry={"enabled": True, "sample_rate": 1.0})
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{agent.http_port}") as client:
        await client.post("/ingest", content=ndjson([event("T-1"), event("T-2")]))

        async def applied() -> bool:
            return (await asyncio.to_thread(agent.store.stats))["entities"] == 2

        await wait_for(applied, what="events applied")
        await client.post("/graph/query/path", json={"start_entity": "T-1"})
        await client.post("/graph/query/path", json={"start_entity": "ghost"})
    finished = spans.get_finished_spans()
    batches = [s for s in finished if s.name == "graph.apply_batch"]
    assert sum(s.attributes["applied"] for s in batches) == 2
    queries = [s for s in finished if s.name == "graph.query"]
    assert [(s.attributes["query"], s.attributes["status"]) for s in queries] == [
        ("path", 200),
        ("path", 404),
    ]
    assert finished[0].resource.attributes["service.name"] == "semstreams-edge test-edge"


def test_sample_rate_zero_records_nothing(spans: InMemorySpanExporter) -> None:
    config = TelemetryConfig(enabled=True, sample_rate=0.0)
    assert tracing.setup_tracing(config, service="s", exporter=spans)
    for _ in range(50):
        with tracing.span("graph.query"):
            pass
    assert spans.get_finished_spans() == ()


def test_disabled_tracing_is_a_no_op() -> None:
    assert tracing.setup_tracing(TelemetryConfig(enabled=False), service="s") is False
    with tracing.span("graph.query") as current:
        assert current is None
