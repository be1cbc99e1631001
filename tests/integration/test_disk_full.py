"""Disk full: a real agent process whose state directory is a size-limited tmpfs.

The disk is filled by a filler file, as another program (logs, a core dump) would. The
agent must refuse ingest clearly (HTTP 507, JetStream's "maximum bytes exceeded" to NATS
publishers), lose nothing it acked, keep answering queries, say why in ``/health`` and
the metrics, and resume by itself once the filler is deleted.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js.errors import APIError

from edge_agent.nats.subjects import ENTITY_STREAM
from tests.helpers import AgentProcess, config_dict, http_json, ndjson, wait_for, wait_until
from tests.integration.sync_harness import SyncPair, metric, post_events
from tests.tmpfs import fill, tmpfs


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB tmpfs for the agent's state directory, unmounted at the end."""
    with tmpfs(tmp_path / "state", "64m") as mounted:
        yield mounted


@pytest.fixture
async def agent(tmp_path: Path, state: Path) -> AsyncIterator[AgentProcess]:
    """An agent process on the tmpfs, keeping a 16 MiB reserve."""
    jetstream = {"max_bytes": "16MB", "dead_letter_max_bytes": "4MB", "min_free_bytes": "16MB"}
    config = config_dict(state / "agent", nats={"jetstream": jetstream})
    process = AgentProcess(config, tmp_path)
    await asyncio.to_thread(process.start)
    yield process
    await asyncio.to_thread(process.stop)


def drone(entity_id: str) -> dict[str, Any]:
    """A drone in fleet-1 (so PathRAG has somewhere to walk)."""
    return {
        "entity_id": entity_id,
        "entity_type": "drone",
        "properties": {"battery": 50},
        "relationships": [{"predicate": "member_of", "object": "fleet-1"}],
    }


def events(prefix: str, count: int) -> list[dict[str, Any]]:
    """``count`` drones named ``prefix-0``, ``prefix-1``, ..."""
    return [drone(f"{prefix}-{i}") for i in range(count)]


async def ingest(agent: AgentProcess, batch: list[dict[str, Any]]) -> tuple[int, Any]:
    """POST the events as NDJSON."""
    return await asyncio.to_thread(http_json, f"{agent.api}/ingest", ndjson(batch))


async def health(agent: AgentProcess) -> dict[str, Any]:
    """``GET /health``'s body."""
    _, body = await asyncio.to_thread(http_json, f"{agent.api}/health")
    result: dict[str, Any] = body
    return result


async def storage_status(agent: AgentProcess) -> str:
    """``ok`` or ``low``: the storage component of ``/health``."""
    return str((await health(agent))["components"]["storage"]["status"])


async def all_applied(agent: AgentProcess, ids: set[str]) -> bool:
    """Every id in the graph (checked one by one) and nothing pending in the stream."""
    stats = await asyncio.to_thread(agent.stats)
    if stats["stream_pending"] or stats["by_type"].get("drone", 0) < len(ids):
        return False
    for entity_id in ids:
        status, _ = await asyncio.to_thread(http_json, f"{agent.api}/graph/entities/{entity_id}")
        if status != 200:
            return False
    return True


async def test_disk_under_reserve_refuses_ingest_keeps_queries_and_resumes(
    agent: AgentProcess, state: Path
) -> None:
    status, body = await ingest(agent, events("before", 300))
    assert status == 202, body
    acked = {f"before-{i}" for i in range(300)}
    client = await nats.connect(agent.nats_url)
    js = client.jetstream()
    try:
        await js.publish("events.graph.entity.drone", json.dumps(drone("nats-0")).encode())
        acked.add("nats-0")
        await wait_for(lambda: all_applied(agent, acked), what="the first events applied")

        # Another program fills the disk to 8 MiB free: under the 16 MiB reserve.
        filler = fill(state / "filler", leave=8 << 20)

        async def low() -> bool:
            return await storage_status(agent) == "low"

        await wait_for(low, timeout=10, what="/health to report the storage low")
        report = await health(agent)
        assert report["status"] == "degraded"
        assert "min_free_bytes" in report["components"]["storage"]["reason"]

        status, body = await ingest(agent, events("refused", 50))
        assert status == 507, body
        assert body["reason"] == "disk_full"
        assert "insufficient storage" in body["error"]
        assert (body["accepted"], body["failed"]) == (0, 50)
        assert metric(agent.api, "semstreams_errors_total", 'reason="disk_full"') == 50
        assert metric(agent.api, "semstreams_storage_low", 'store="jetstream"') == 1

        async def clamped() -> bool:
            return (await js.stream_info(ENTITY_STREAM)).config.max_bytes == 1

        await wait_for(clamped, timeout=10, what="the stream to refuse publishes")
        with pytest.raises(APIError) as refused:
            await js.publish("events.graph.entity.drone", b'{"entity_id": "x"}', timeout=5)
        assert refused.value.err_code == 10077  # "maximum bytes exceeded"

        # Queries go on: an entity, and PathRAG over the fleet.
        status, entity = await asyncio.to_thread(http_json, f"{agent.api}/graph/entities/before-7")
        assert status == 200, entity
        query = json.dumps({"start_entity": "before-7", "max_depth": 2}).encode()
        status, paths = await asyncio.to_thread(http_json, f"{agent.api}/graph/query/path", query)
        assert status == 200, paths
        assert "fleet-1" in json.dumps(paths)

        # Space returns: ingest resumes by itself, on both paths.
        filler.unlink()
        await wait_for(
            lambda: low_cleared(agent), timeout=10, what="/health to report the storage ok"
        )
        assert (await health(agent))["status"] == "healthy"
        await wait_for(lambda: accepted_again(agent), timeout=10, what="ingest accepted again")
        acked |= {f"after-{i}" for i in range(100)}
        await js.publish("events.graph.entity.drone", json.dumps(drone("nats-1")).encode())
        acked.add("nats-1")
        assert (await js.stream_info(ENTITY_STREAM)).config.max_bytes == 16_000_000  # "16MB"
        await wait_for(lambda: all_applied(agent, acked), what="every acked event applied")
        refused_ids = {f"refused-{i}" for i in range(50)}
        for entity_id in refused_ids:  # refused, so the producer still holds them
            status, _ = await asyncio.to_thread(
                http_json, f"{agent.api}/graph/entities/{entity_id}"
            )
            assert status == 404
        assert metric(agent.api, "semstreams_storage_low", 'store="jetstream"') == 0
    finally:
        await client.close()


async def low_cleared(agent: AgentProcess) -> bool:
    """The storage component is ``ok`` again."""
    return await storage_status(agent) == "ok"


async def accepted_again(agent: AgentProcess) -> bool:
    """An ingest of ``after-0..99`` was accepted: a 507 (still refused), a 503 or no
    answer within the client's 10 s (NATS reconnecting to a restarted server, the
    publishes waiting for their acks) mean not yet, as a client retrying would see."""
    try:
        status, body = await ingest(agent, events("after", 100))
    except TimeoutError:
        return False
    if status in (503, 507):
        return False
    assert status == 202, body
    return True


async def test_disk_filled_to_the_last_byte_recovers_when_space_returns(
    agent: AgentProcess, state: Path
) -> None:
    """Filled completely while a producer publishes: JetStream and SQLite both hit
    ENOSPC. Nothing acked is lost; the agent restarts its nats-server once space is back
    (nats-server keeps a stream that failed a write refusing until it restarts)."""
    acked: set[str] = set()
    stop = asyncio.Event()

    async def produce() -> None:
        client = await nats.connect(agent.nats_url, max_reconnect_attempts=-1)
        js = client.jetstream()
        i = 0
        while not stop.is_set():
            body = json.dumps(drone(f"load-{i}")).encode()
            try:
                await js.publish(
                    "events.graph.entity.drone", body, timeout=1, headers={"Nats-Msg-Id": str(i)}
                )
                acked.add(f"load-{i}")
                i += 1
            except Exception:
                await asyncio.sleep(0.05)  # refused or no answer: the same event again
        await client.close()

    producer = asyncio.create_task(produce())
    try:
        await wait_for(lambda: _at_least(acked, 200), what="load running")
        filler = fill(state / "filler")  # to the last byte
        await wait_for(
            lambda: _storage_low(agent), timeout=10, what="/health to report the storage low"
        )
        count = len(acked)
        await asyncio.sleep(2)  # the producer keeps trying against the full disk
        assert len(acked) - count < 50  # at most what was buffered when the disk filled
        status, body = await ingest(agent, events("refused", 10))
        assert status == 507, body
        filler.unlink()
        await wait_for(lambda: _restarted(agent), timeout=20, what="nats-server restarted")
        await wait_for(lambda: low_cleared(agent), timeout=20, what="storage ok again")
        count = len(acked)
        await wait_for(lambda: _at_least(acked, count + 200), timeout=30, what="load resumed")
    finally:
        stop.set()
        await asyncio.wait_for(producer, 30)
    await wait_for(lambda: all_applied(agent, acked), timeout=60, what="every acked event")
    assert (await health(agent))["status"] == "healthy"


async def _at_least(acked: set[str], count: int) -> bool:
    return len(acked) >= count


async def _storage_low(agent: AgentProcess) -> bool:
    return await storage_status(agent) == "low"


async def _restarted(agent: AgentProcess) -> bool:
    return await asyncio.to_thread(metric, agent.api, "semstreams_nats_server_restarts_total") >= 1


async def test_an_agent_started_on_a_full_disk_comes_up_degraded_and_resumes(
    agent: AgentProcess, state: Path
) -> None:
    """A restart (a reboot, systemd) on a disk already full: no crash loop."""
    status, body = await ingest(agent, events("before", 10))
    assert status == 202, body
    await wait_for(lambda: all_applied(agent, set(_ids("before", 10))), what="applied")
    await asyncio.to_thread(agent.stop)
    filler = fill(state / "filler")  # to the last byte, while the agent is down
    await asyncio.to_thread(agent.start)
    report = await health(agent)
    assert report["status"] == "degraded", report
    assert report["components"]["storage"]["status"] == "low"
    status, body = await ingest(agent, events("refused", 5))
    assert (status, body["reason"]) == (507, "disk_full"), body
    status, _ = await asyncio.to_thread(http_json, f"{agent.api}/graph/entities/before-3")
    assert status == 200
    filler.unlink()
    await wait_for(lambda: low_cleared(agent), timeout=20, what="storage ok again")
    await wait_for(lambda: accepted_again(agent), timeout=60, what="ingest accepted again")
    expected = set(_ids("before", 10)) | set(_ids("after", 100))
    await wait_for(lambda: all_applied(agent, expected), what="every acked event applied")


def _ids(prefix: str, count: int) -> list[str]:
    return [f"{prefix}-{i}" for i in range(count)]


def test_an_edge_disk_filled_mid_sync_loses_nothing_and_sends_nothing_twice(
    tmp_path: Path,
) -> None:
    """The edge's disk runs out while changes are being applied, queued and sent: its
    outbox writes fail too. Once space is back, the hub holds exactly the edge's graph,
    with no conflict and each batch stored once."""
    jetstream = {"max_bytes": "16MB", "dead_letter_max_bytes": "4MB", "min_free_bytes": "16MB"}
    with tmpfs(tmp_path / "edge-state", "64m") as edge_state:
        pair = SyncPair(tmp_path, edge_sections={"nats": {"jetstream": jetstream}})
        try:
            pair.start()
            post_events(pair.edge.api, events("first", 200))
            pair.wait_synced(minimum=200)
            post_events(pair.edge.api, events("second", 2_000))
            filler = fill(edge_state / "filler")  # while the second lot is under way
            wait_until(
                lambda: (
                    http_json(f"{pair.edge.api}/health")[1]["components"]["storage"]["status"]
                    == "low"
                ),
                "the edge's storage low",
                10,
            )
            status, body = http_json(f"{pair.edge.api}/ingest", ndjson(events("refused", 5)))
            assert (status, body["reason"]) == (507, "disk_full"), body
            filler.unlink()
            synced = pair.wait_synced(timeout=90, minimum=2_200)
            assert {f"second-{i}" for i in range(2_000)} <= synced.keys()
            assert not {f"refused-{i}" for i in range(5)} & synced.keys()
            pair.check_hub_records()
        finally:
            pair.stop()
