"""The edge-agent CLI against a running agent: publish from a file and stdin, stats."""

from __future__ import annotations

import asyncio
import json

from edge_agent.app import Agent
from tests.helpers import FIXTURES, cli, wait_for


async def test_publish_file_then_stats(agent: Agent) -> None:
    assert agent.nats_server is not None
    events = str(FIXTURES / "events/good.ndjson")
    code, out, err = await cli("publish", events, "--nats-url", agent.nats_server.url)
    assert code == 0, err
    assert json.loads(out) == {"accepted": 3, "rejected": 0, "errors": []}

    async def applied() -> bool:
        return (await asyncio.to_thread(agent.store.stats))["entities"] == 3

    await wait_for(applied, what="published events applied")
    code, out, err = await cli("stats", "--url", f"http://127.0.0.1:{agent.http_port}")
    assert code == 0, err
    stats = json.loads(out)
    assert stats["entities"] == 3
    assert stats["by_type"]["sensor"] == 1


async def test_publish_from_stdin_reports_refused_lines(agent: Agent) -> None:
    assert agent.nats_server is not None
    lines = b'{"entity_id": "ok-1", "entity_type": "t", "properties": {}}\nnot json\n'
    code, out, _ = await cli("publish", "-", "--nats-url", agent.nats_server.url, stdin=lines)
    assert code == 1
    result = json.loads(out)
    assert (result["accepted"], result["rejected"]) == (1, 1)
    assert result["errors"][0]["reason"] == "not_json"
    assert result["errors"][0]["line"] == 2


async def test_publish_without_a_server_fails_clearly() -> None:
    code, _, err = await cli("publish", "-", "--nats-url", "nats://127.0.0.1:1", stdin=b"{}")
    assert code == 1
    assert "cannot connect to NATS at nats://127.0.0.1:1" in err


async def test_stats_without_an_agent_fails_clearly() -> None:
    code, _, err = await cli("stats", "--url", "http://127.0.0.1:1")
    assert code == 1
    assert "cannot reach" in err
