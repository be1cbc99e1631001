"""Storage bounds: the entity stream's ``max_bytes`` and the sync outbox's
``max_outbox_bytes``, filled past their limits by a real agent process.

The stream is a work queue that discards *new* messages: at its limit JetStream refuses
the publisher, so nothing the graph has not applied is ever dropped. The outbox drops
its oldest, lowest-priority changes, and counts each one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js.errors import APIError

from edge_agent.nats.subjects import ENTITY_STREAM
from tests.helpers import (
    AgentProcess,
    config_dict,
    free_port,
    http_json,
    ndjson,
    wait_for,
    wait_until,
)
from tests.integration.sync_harness import metric
from tests.integration.test_disk_full import all_applied, drone, health
from tests.tmpfs import fill, tmpfs

STREAM_MAX = 2_000_000  # "2MB"
OUTBOX_MAX = 64_000  # "64KB"


@pytest.fixture
def split_state(tmp_path: Path) -> Iterator[Path]:
    """A state directory whose graph (16 MiB) and JetStream store (64 MiB) are on two
    filesystems, so the graph's can be full while the stream still has room."""
    with (
        tmpfs(tmp_path / "state", "16m") as state,
        tmpfs(state / "jetstream", "64m"),
    ):
        yield state


async def test_stream_at_max_bytes_refuses_publishers_and_drops_nothing_unapplied(
    tmp_path: Path, split_state: Path
) -> None:
    """SQLite full (its filesystem), so the processor cannot commit: the stream fills to
    its limit and no further; publishers are refused; nothing acked is lost."""
    jetstream = {"max_bytes": "2MB", "dead_letter_max_bytes": "1MB", "min_free_bytes": "4MB"}
    agent = AgentProcess(config_dict(split_state, nats={"jetstream": jetstream}), tmp_path)
    await asyncio.to_thread(agent.start)
    client = await nats.connect(agent.nats_url)
    js = client.jetstream()
    try:
        acked = {f"first-{i}" for i in range(20)}
        status, body = await asyncio.to_thread(
            http_json, f"{agent.api}/ingest", ndjson([drone(i) for i in sorted(acked)])
        )
        assert status == 202, body
        await wait_for(lambda: all_applied(agent, acked), what="the first events applied")
        filler = fill(split_state / "filler")  # the graph's filesystem, to the last byte

        padding = "x" * 900
        refusals = 0
        for i in range(4_000):  # 4 MB offered to a 2 MB stream
            event = {**drone(f"fill-{i}"), "properties": {"pad": padding}}
            try:
                await js.publish("events.graph.entity.drone", json.dumps(event).encode())
                acked.add(f"fill-{i}")
            except APIError as exc:
                assert exc.err_code == 10077, exc  # "maximum bytes exceeded"
                refusals += 1
            if i % 100 == 0:
                held = (await js.stream_info(ENTITY_STREAM)).state.bytes
                assert held <= STREAM_MAX * 1.01
        assert refusals > 1_000
        assert (await js.stream_info(ENTITY_STREAM)).state.bytes <= STREAM_MAX * 1.01

        status, body = await asyncio.to_thread(
            http_json, f"{agent.api}/ingest", ndjson([{**drone("http-0"), "properties": {}}])
        )
        assert status == 507, body
        assert body["reason"] == "stream_full"
        assert "maximum bytes exceeded" in body["error"]
        assert metric(agent.api, "semstreams_errors_total", 'reason="stream_full"') == 1

        # The processor could not commit: it retries, says why, and queries go on.
        report = await health(agent)
        assert report["status"] == "degraded"
        assert "disk is full" in report["components"]["processor"]["last_error"]
        assert report["components"]["storage"]["free_bytes"]["graph"] < 1 << 20
        assert metric(agent.api, "semstreams_errors_total", 'reason="disk_full"') >= 1
        status, _ = await asyncio.to_thread(http_json, f"{agent.api}/graph/entities/first-3")
        assert status == 200

        filler.unlink()
        await wait_for(
            lambda: all_applied(agent, acked), timeout=90, what="every acked event applied"
        )
        assert (await health(agent))["status"] == "healthy"
    finally:
        await client.close()
        await asyncio.to_thread(agent.stop)


def _outbox_bytes(db_path: Path) -> int:
    """The outbox's bytes as the agent counts them (``outbox.backlog``), read beside it."""
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5) as db:
        (size,) = db.execute(
            "SELECT (SELECT coalesce(sum(size), 0) FROM sync_outbox)"
            " + (SELECT coalesce(sum(length(payload)), 0) FROM sync_inflight)"
        ).fetchone()
    return int(size)


def _dropped(db_path: Path) -> int:
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5) as db:
        row = db.execute(
            "SELECT value FROM sync_state WHERE name = 'dropped_outbox_full'"
        ).fetchone()
    return int(row[0]) if row else 0


def test_outbox_stays_within_max_outbox_bytes_and_counts_every_drop(tmp_path: Path) -> None:
    """An edge whose hub is unreachable takes 6,005 new entities (~14 times the limit):
    the outbox, read beside the agent all along, never passes the limit by 1 %."""
    output = {
        "url": f"ws://127.0.0.1:{free_port()}/edge-sync",  # nothing listens there
        "token": "outbox-token-0123456789",
        "max_outbox_bytes": "64KB",
    }
    config = config_dict(
        tmp_path / "state",
        components=[{"id": "to-hub", "type": "websocket_output", "config": output}],
    )
    agent = AgentProcess(config, tmp_path)
    agent.start()
    db_path = tmp_path / "state" / "graph.db"
    peak = [0]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            # a table not made yet, or a busy moment: the next read
            with contextlib.suppress(sqlite3.Error):
                peak[0] = max(peak[0], _outbox_bytes(db_path))
            done.wait(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        urgent = {f"urgent-{i}" for i in range(5)}
        batch: list[dict[str, Any]] = [{**drone(e), "priority": 9} for e in sorted(urgent)]
        for start in range(0, 6_000, 500):
            batch += [drone(f"bulk-{i}") for i in range(start, start + 500)]
            status, body = http_json(f"{agent.api}/ingest", ndjson(batch))
            assert status == 202, body
            batch = []
        wait_until(lambda: agent.stats()["by_type"].get("drone") == 6_005, "all applied", 60)
    finally:
        done.set()
        watcher.join()
    kept = _rows(db_path, "SELECT entity_id FROM sync_outbox")
    try:
        assert 0 < peak[0] <= OUTBOX_MAX * 1.01, peak[0]
        dropped = _dropped(db_path)
        # every entity entered the outbox once: each is kept or counted as dropped
        assert dropped + len(kept) == 6_005  # 6,000 bulk and 5 urgent
        assert urgent <= kept  # the oldest, lowest-priority changes go first

        wait_until(
            lambda: (
                metric(agent.api, "semstreams_sync_dropped_total", 'reason="outbox_full"')
                == dropped
            ),
            "the drops in the metric",
            10,
        )
    finally:
        agent.stop()


def _rows(db_path: Path, sql: str) -> set[str]:
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5) as db:
        return {row[0] for row in db.execute(sql)}
