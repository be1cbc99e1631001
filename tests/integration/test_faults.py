"""Fault tests: kill -9 the agent mid-batch, kill -9 its nats-server under load.

Both run real processes: the agent as ``edge-agent run`` (a child process) and the
real nats-server from the wheel.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
import urllib.request
from pathlib import Path

import nats
import psutil
import pytest

from edge_agent.app import Agent
from tests.conftest import StartAgent
from tests.helpers import AgentProcess, config_dict, http_json, wait_for

pytestmark = pytest.mark.slow

ENTITIES = 5_000
ROUNDS = 10


def processed(agent: AgentProcess) -> float:
    with urllib.request.urlopen(f"{agent.api}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    match = re.search(r"^semstreams_messages_processed_total (\S+)$", text, re.M)
    return float(match[1]) if match else 0.0


async def publish_rounds(url: str) -> None:
    """50,000 events: ROUNDS updates of each of ENTITIES entities, round by round."""
    client = await nats.connect(url)
    js = client.jetstream()
    for round_ in range(ROUNDS):
        acks = []
        for i in range(ENTITIES):
            body = {"entity_id": f"E-{i}", "entity_type": "crash", "properties": {"round": round_}}
            acks.append(
                await js.publish_async("events.graph.entity.crash", json.dumps(body).encode())
            )
        await asyncio.gather(*acks)
    await client.close()


async def restart_and_check_every_round_applied_once(agent: AgentProcess, db_path: Path) -> None:
    """Restart the agent, let it drain, and check exactly-once, in-order application."""
    agent.start()

    async def all_applied() -> bool:
        stats = agent.stats()
        return stats["stream_pending"] == 0 and stats["entities"] == ENTITIES

    await wait_for(all_applied, timeout=120, what="every event applied after restart")
    assert agent.stop() == 0
    with sqlite3.connect(db_path) as db:
        versions = db.execute("SELECT version, count(*) FROM entities GROUP BY version").fetchall()
        rounds = db.execute(
            "SELECT object, count(*) FROM triples WHERE predicate = 'round' GROUP BY object"
        ).fetchall()
    assert versions == [(ROUNDS, ENTITIES)]  # every event applied exactly once
    assert rounds == [(str(ROUNDS - 1), ENTITIES)]  # and in order: the last round wins


async def test_kill_9_mid_apply_loses_nothing_and_applies_nothing_twice(tmp_path: Path) -> None:
    # Small batches keep the agent well behind the publisher, so the kill lands mid-apply.
    small = {"workers": 1, "indexer": {"batch_processing": {"size": 20}}}
    config = config_dict(tmp_path / "state", graph={"config": small})
    agent = AgentProcess(config, tmp_path)
    agent.start()
    await publish_rounds(agent.nats_url)
    total = ENTITIES * ROUNDS

    async def partly_applied() -> bool:
        return processed(agent) >= 5_000

    await wait_for(partly_applied, what="5,000 events applied")
    before_kill = processed(agent)
    nats_pid = int((tmp_path / "state/nats-server.pid").read_text())
    agent.kill()
    assert before_kill < total, "the agent finished before the kill; the test proves nothing"

    async def nats_gone() -> bool:
        return not psutil.pid_exists(nats_pid) or psutil.Process(nats_pid).status() == "zombie"

    await wait_for(nats_gone, timeout=15, what="the orphaned nats-server to exit")

    await restart_and_check_every_round_applied_once(agent, tmp_path / "state/graph.db")


async def test_embedded_nats_server_killed_under_load_recovers(start_agent: StartAgent) -> None:
    agent: Agent = await start_agent()
    assert agent.nats_server is not None
    url = agent.nats_server.url
    total = 3_000
    acked: set[int] = set()

    async def produce() -> None:
        client = await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
        js = client.jetstream()
        for i in range(total):
            body = json.dumps({"entity_id": f"R-{i}", "entity_type": "r", "properties": {"i": i}})
            while i not in acked:
                try:
                    # The id makes a retry after a lost ack a no-op in the stream.
                    await js.publish(
                        "events.graph.entity.r",
                        body.encode(),
                        timeout=2,
                        headers={"Nats-Msg-Id": f"R-{i}"},
                    )
                    acked.add(i)
                except Exception:
                    await asyncio.sleep(0.1)
        await client.close()

    producer = asyncio.create_task(produce())
    await wait_for(lambda: _acked_at_least(acked, 1_000), what="load running")
    old_pid = agent.nats_server.pid
    assert old_pid is not None
    os.kill(old_pid, 9)

    async def restarted() -> bool:
        server = agent.nats_server
        return server is not None and server.restarts >= 1 and server.pid not in (None, old_pid)

    await wait_for(restarted, timeout=30, what="the supervisor to restart nats-server")
    await asyncio.wait_for(producer, 120)

    async def all_applied() -> bool:
        return (await asyncio.to_thread(agent.store.stats))["entities"] == total

    await wait_for(all_applied, timeout=60, what="all events applied after the restart")
    port = agent.http_port
    status, health = await asyncio.to_thread(http_json, f"http://127.0.0.1:{port}/health")
    assert status == 200
    assert health["components"]["nats"]["server_restarts"] >= 1
    text = agent.metrics.exposition().decode()
    assert "semstreams_nats_server_restarts_total 1.0" in text


async def _acked_at_least(acked: set[int], n: int) -> bool:
    return len(acked) >= n


async def test_sigterm_under_load_stops_promptly_and_loses_nothing(tmp_path: Path) -> None:
    small = {"workers": 1, "indexer": {"batch_processing": {"size": 20}}}
    agent = AgentProcess(config_dict(tmp_path / "state", graph={"config": small}), tmp_path)
    agent.start()
    await publish_rounds(agent.nats_url)

    async def busy() -> bool:
        return processed(agent) >= 2_000

    await wait_for(busy, what="the agent busy applying")
    assert agent.proc is not None
    started = asyncio.get_running_loop().time()
    agent.proc.terminate()
    code = await asyncio.to_thread(agent.proc.wait, 30)
    assert code == 0
    assert asyncio.get_running_loop().time() - started < 10
    await restart_and_check_every_round_applied_once(agent, tmp_path / "state/graph.db")
