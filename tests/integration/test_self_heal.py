"""Self-healing storage end to end: a real edge (child process, own nats-server) whose
SQLite files are damaged on disk after a ``kill -9``, a real hub it resyncs from, and
a compromised edge that tries to get another edge's share.

The damage is random but seeded (``SELF_HEAL_SEED``, else a fresh seed; the seed and
each round's damage are in every failure message).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest
from websockets.sync.client import connect

from edge_agent.nats.server import nats_server_binary
from edge_agent.sync.codec import decode_deltas, encode_deltas
from edge_agent.sync.frames import (
    Ack,
    Batch,
    EntityDelta,
    Hello,
    Share,
    ShareAck,
    ShareEnd,
    Welcome,
    decode_frame,
    encode_frame,
)
from tests.helpers import http_json, wait_until
from tests.integration.sync_harness import (
    EDGE_ID,
    SyncPair,
    drone_round,
    metric,
    post_events,
)

pytestmark = pytest.mark.slow

DRONES = 60
ROUNDS = 20
PAGE = 4096
#: Ways a file is damaged; each either makes the store unreadable (and it is rebuilt)
#: or leaves what SQLite reads intact (then nothing is lost). Flips inside stored
#: values are not among them: SQLite keeps no checksum of page contents (see
#: docs/operations.md, "Self-healing storage").
DAMAGES = (
    "truncate",
    "zero_page",
    "random_page",
    "flip_page_type",
    "garbage",
    "reflash",
    "wal_frame",
)


def damage_wal_frame(wal_path: Path, rng: random.Random) -> str:
    """Flip a byte inside a WAL frame that has frames of the same WAL after it (what
    SQLite would silently cut off there); "" when the WAL has no two such frames."""
    wal = bytearray(wal_path.read_bytes()) if wal_path.exists() else bytearray()
    if len(wal) < 32:
        return ""
    page_size = int.from_bytes(wal[8:12], "big")
    frame = 24 + page_size
    salts = wal[16:24]
    current = [
        start
        for start in range(32, len(wal) - frame + 1, frame)
        if wal[start + 8 : start + 16] == salts
    ]
    if len(current) < 2:
        return ""
    index = rng.randrange(len(current) - 1)
    wal[current[index] + 24 + rng.randrange(page_size)] ^= 0x40
    wal_path.write_bytes(bytes(wal))
    return f"flipped a byte in WAL frame {index} of {len(current)}"


def damage(state: Path, kind: str, rng: random.Random) -> str:
    """Damage the edge's graph store in ``state`` as ``kind`` says; what was done."""
    db = state / "graph.db"
    if kind == "wal_frame":
        done = damage_wal_frame(state / "graph.db-wal", rng)
        if done:
            return done
        kind = "zero_page"
    data = bytearray(db.read_bytes())
    pages = len(data) // PAGE
    page = rng.randrange(1, max(2, pages))
    if kind == "truncate":
        cut = rng.randrange(0, len(data))
        db.write_bytes(bytes(data[:cut]))
        return f"truncated {len(data)} -> {cut} bytes"
    if kind == "zero_page":
        data[page * PAGE : (page + 1) * PAGE] = bytes(PAGE)
    elif kind == "random_page":
        data[page * PAGE : (page + 1) * PAGE] = rng.randbytes(PAGE)
    elif kind == "flip_page_type":
        data[page * PAGE] ^= 1 << rng.randrange(8)
    elif kind == "garbage":
        db.write_bytes(rng.randbytes(len(data)))
        return f"overwrote {len(data)} bytes with garbage"
    elif kind == "reflash":
        shutil.rmtree(state)
        return "state directory removed (a reflashed edge with the same id)"
    db.write_bytes(bytes(data))
    return f"{kind} on page {page + 1} of {pages}"


def without_versions(entities: dict[str, Any]) -> dict[str, Any]:
    """The comparable state without ``version``: a rebuilt entity's count of updates
    is the hub's, not a replay of every reading."""
    return {key: {**value, "version": None} for key, value in entities.items()}


def store_health(api: str) -> dict[str, Any]:
    status, body = http_json(f"{api}/health")
    assert status == 200, body
    store: dict[str, Any] = body["components"]["store"]
    return store


def wait_recovered(api: str, timeout: float = 60.0) -> dict[str, Any]:
    """Wait until the edge's recovery (if any) has the hub's share; its health view."""
    deadline = time.monotonic() + timeout
    while True:
        store = store_health(api)
        recovery = store.get("recovery")
        if recovery is None or recovery["hub_resync"] == "done":
            return store
        if time.monotonic() > deadline:
            raise AssertionError(f"no resync within {timeout}s: {store}")
        time.sleep(0.2)


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (not gone, not a zombie waiting to be reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def at_round(truth: dict[str, Any], round_: int) -> dict[str, Any]:
    """What the graph should be after ``drone_round(round_)``: every drone's reading."""
    reading = drone_round(round_, 1)[0]["properties"]
    return {
        key: {**value, "properties": reading} if key.startswith("drone-") else value
        for key, value in truth.items()
    }


def test_a_damaged_store_is_rebuilt_twenty_times_out_of_twenty(pair: SyncPair) -> None:
    seed = int(os.environ.get("SELF_HEAL_SEED") or random.randrange(1 << 32))
    rng = random.Random(seed)
    state = Path(pair.edge.config["state_dir"])
    post_events(pair.edge.api, drone_round(0, DRONES))
    truth = without_versions(pair.wait_synced(minimum=DRONES))
    rebuilt = 0
    for round_ in range(1, ROUNDS + 1):
        post_events(pair.edge.api, drone_round(round_, DRONES))
        pair.wait_synced(minimum=DRONES)  # what the hub has is what comes back
        pair.edge.kill()
        done = damage(state, rng.choice(DAMAGES), rng)
        where = f"seed {seed}, round {round_}: {done}"
        try:
            pair.edge.start()
            store = wait_recovered(pair.edge.api)
            synced = pair.wait_synced(minimum=DRONES)
        except AssertionError as exc:
            raise AssertionError(f"{where}: {exc}") from exc
        got = without_versions(synced)
        assert got == at_round(truth, round_), f"{where}: the graph is not what it should be"
        recovery = store.get("recovery")
        if recovery is not None:
            rebuilt += 1
            assert recovery["unrecovered_entities"] in (0, None), f"{where}: {recovery}"
            assert Path(recovery["moved_to"]).is_dir(), f"{where}: {recovery}"
        assert not (state / "resync-requested").exists(), where
    assert rebuilt >= ROUNDS // 2, f"seed {seed}: only {rebuilt} of {ROUNDS} rounds were damage"
    assert metric(pair.edge.api, "semstreams_storage_unrecovered_entities") == 0
    pair.check_hub_records()


def test_an_asked_resync_of_a_whole_store_changes_nothing(pair: SyncPair) -> None:
    post_events(pair.edge.api, drone_round(0, DRONES))
    before = pair.wait_synced(minimum=DRONES)
    hwm = pair.check_hub_records()
    pair.edge.kill()
    command = [sys.executable, "-m", "edge_agent.cli", "request-resync"]
    done = subprocess.run(
        [*command, "-c", str(pair.edge.config_path)], capture_output=True, text=True, check=True
    )
    marker = Path(pair.edge.config["state_dir"]) / "resync-requested"
    assert str(marker) in done.stdout and marker.exists()
    pair.edge.start()
    _, health = http_json(f"{pair.edge.api}/health")
    assert "resync_requested" in health["components"]["sync"], health
    deadline = time.monotonic() + 30
    while marker.exists():
        assert time.monotonic() < deadline, "the resync did not end"
        time.sleep(0.1)
    unchanged = 'outcome="unchanged"'
    assert metric(pair.edge.api, "semstreams_sync_share_entities_total", unchanged) == DRONES
    assert metric(pair.edge.api, "semstreams_sync_share_entities_total", 'outcome="applied"') == 0
    assert pair.wait_synced(minimum=DRONES) == before
    assert pair.check_hub_records() == hwm  # nothing of the share was sent back
    _, health = http_json(f"{pair.edge.api}/health")
    assert health["components"]["sync"]["resync_requested"] is False, health


async def _forget_edge_in_log(url: str) -> None:
    """Purge the edge's batches from the hub's log, as its byte limit ages them out."""
    client = await nats.connect(url)
    try:
        await client.jetstream().purge_stream("SYNC_BATCHES", subject=f"sync.batches.{EDGE_ID}")
    finally:
        await client.close()


def test_a_reflashed_edge_whose_batches_left_the_log_is_not_taken_for_a_duplicate(
    pair: SyncPair,
) -> None:
    post_events(pair.edge.api, drone_round(0, DRONES))
    pair.wait_synced(minimum=DRONES)
    applied = pair.check_hub_records()
    pair.edge.kill()
    asyncio.run(_forget_edge_in_log(pair.hub.nats_url))
    shutil.rmtree(pair.edge.config["state_dir"])  # reflashed: same id, nothing kept
    pair.edge.start()
    post_events(pair.edge.api, drone_round(1, DRONES))
    # The new changes reach the hub's graph: the hub welcomed the edge after the batch
    # its graph had applied, not after the log's (empty) record of it, so the edge's
    # new batches were not numbered from 1 and dropped by the materialiser as applied.
    synced = pair.wait_synced(minimum=DRONES)
    assert {entity["properties"]["round"] for entity in synced.values()} == {1}
    duplicates = 'outcome="duplicate"'
    assert metric(pair.hub.api, "semstreams_hub_materialised_batches_total", duplicates) == 0
    with contextlib.closing(sqlite3.connect(f"file:{pair.hub_db}?mode=ro", uri=True)) as db:
        ((seq,),) = db.execute("SELECT seq FROM hub_edge_state").fetchall()
    assert seq > applied


async def _publish(url: str, events: list[dict[str, Any]]) -> None:
    """Publish ``events`` to a nats-server just started: its port and JetStream come up a
    moment after the process does."""
    deadline = time.monotonic() + 30
    while True:
        try:
            client = await nats.connect(url, allow_reconnect=False)
        except (OSError, nats.errors.Error):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
            continue
        try:
            await client.jetstream().stream_info("GRAPH_ENTITIES")
            break
        except nats.errors.Error:
            await client.close()
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
    try:
        js = client.jetstream()
        for item in events:
            await js.publish(
                f"events.graph.entity.{item['entity_type']}", json.dumps(item).encode()
            )
    finally:
        await client.close()


def test_a_rebuild_takes_the_streams_tail_over_the_hubs_older_copy(pair: SyncPair) -> None:
    """Events in JetStream not applied yet when the store is lost: the fresh store
    replays them, and the hub's (older) share does not roll them back."""
    post_events(pair.edge.api, drone_round(0, DRONES))
    truth = without_versions(pair.wait_synced(minimum=DRONES))
    state = Path(pair.edge.config["state_dir"])
    embedded = int((state / "nats-server.pid").read_text())
    pair.edge.kill()
    # Its embedded server dies with it (PR_SET_PDEATHSIG), a moment later: until then
    # it holds the port and the store.
    wait_until(lambda: not running(embedded), "the embedded server gone", 10)
    # The edge's own nats-server alone, on its store: round 1 goes into the stream.
    server = subprocess.Popen(
        [str(nats_server_binary()), "-c", str(state / "nats-server.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        asyncio.run(_publish(pair.edge.nats_url, drone_round(1, DRONES)))
    finally:
        server.terminate()
        server.wait(10)
    (state / "graph.db").write_bytes(b"\0" * 8192)
    pair.edge.start()
    store = wait_recovered(pair.edge.api)
    assert store["recovery"]["verdict"] == "damaged", store
    assert without_versions(pair.wait_synced(minimum=DRONES)) == at_round(truth, 1)


def test_a_damaged_hub_store_is_rebuilt_from_its_log(pair: SyncPair) -> None:
    post_events(pair.edge.api, drone_round(0, DRONES))
    before = pair.wait_synced(minimum=DRONES)
    assert pair.hub.stop() == 0
    with contextlib.closing(sqlite3.connect(pair.hub_db)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the WAL into the file, then damage it
    data = pair.hub_db.read_bytes()
    pair.hub_db.write_bytes(data[:-100])  # a torn last page: the rest still readable
    pair.hub.start()
    assert pair.wait_synced(minimum=DRONES) == before
    deadline = time.monotonic() + 30
    while True:  # the count is refreshed every 2 s at most
        recovery = store_health(pair.hub.api)["recovery"]
        if recovery["unrecovered_entities"] == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert recovery["verdict"] == "damaged" and recovery["hub_resync"] == "none", recovery
    assert recovery["unrecovered_entities"] == 0 and recovery["damaged_entities"] > 0, recovery
    assert len(list((pair.hub_db.parent / "damaged").iterdir())) == 1


def ask_share(url: str, edge_id: str, token: str) -> tuple[Welcome, list[Any]]:
    """Say Hello asking for a resync as ``edge_id``; the Welcome and every entity of the
    share the hub sends (acking each chunk), until its ShareEnd."""
    entities: list[Any] = []
    with connect(url, proxy=None, max_size=1 << 20) as ws:
        ws.send(encode_frame(Hello(edge_id=edge_id, token=token, resync=True)))
        welcome = decode_frame(ws.recv(timeout=10), max_bytes=1 << 20)  # type: ignore[arg-type]
        assert isinstance(welcome, Welcome), welcome
        while welcome.accepted and welcome.resync:
            frame = decode_frame(ws.recv(timeout=10), max_bytes=1 << 20)  # type: ignore[arg-type]
            if isinstance(frame, ShareEnd):
                assert frame.entities == len(entities)
                break
            assert isinstance(frame, Share), frame
            entities += decode_deltas(frame.payload, frame.encoding, max_bytes=16 << 20)
            ws.send(encode_frame(ShareAck(chunk=frame.chunk)))
    return welcome, entities


def contribute(url: str, edge_id: str, token: str, deltas: list[EntityDelta]) -> None:
    """Send ``deltas`` as batch 1 of ``edge_id``, as an edge would; wait for its ack."""
    with connect(url, proxy=None, max_size=1 << 20) as ws:
        ws.send(encode_frame(Hello(edge_id=edge_id, token=token, encodings=("none",))))
        welcome = decode_frame(ws.recv(timeout=10), max_bytes=1 << 20)  # type: ignore[arg-type]
        assert isinstance(welcome, Welcome) and welcome.accepted, welcome
        payload, _ = encode_deltas(deltas, "none")
        ws.send(encode_frame(Batch(seq=1, encoding="none", count=len(deltas), payload=payload)))
        assert decode_frame(ws.recv(timeout=10), max_bytes=1 << 20) == Ack(seq=1)  # type: ignore[arg-type]


def pair_with_edge_2(tmp_path: Path, token: str, resync_min_interval: str) -> SyncPair:
    """A started :class:`SyncPair` whose hub also takes ``edge-2`` (no process: the
    test speaks for it) with ``token``."""
    pair = SyncPair(tmp_path)
    sync_input = pair.hub.config["components"][0]["config"]
    sync_input["devices"]["edge-2"] = {"token": token}
    sync_input["resync_min_interval"] = resync_min_interval
    pair.hub.config_path.write_text(json.dumps(pair.hub.config))
    pair.start()
    return pair


def test_a_compromised_edge_gets_its_own_share_and_never_another(tmp_path: Path) -> None:
    other_token = "other-edge-token-0123456789"
    # The real edge-1 resynced when it started: a second one at once (this test's) must
    # not wait, or edge-1's reconnect would take the link over meanwhile.
    pair = pair_with_edge_2(tmp_path, other_token, resync_min_interval="0s")
    try:
        post_events(pair.edge.api, drone_round(0, DRONES))
        hub_view = pair.wait_synced(minimum=DRONES)
        url = f"ws://127.0.0.1:{pair.proxy.port}/edge-sync"
        # edge-2 reports an entity edge-1 reports too, with a property of its own.
        now = int(time.time() * 1000)
        mine = EntityDelta("drone-0000", "drone", 1, now, 1, [("callsign", "two", now, "e2")])
        contribute(url, "edge-2", other_token, [mine])
        welcome, theirs = ask_share(url, "edge-2", other_token)
        assert welcome.accepted and welcome.resync
        assert [(d.entity_id, d.triples) for d in theirs] == [("drone-0000", mine.triples)]
        welcome, own = ask_share(url, EDGE_ID, pair.token)
        assert welcome.resync and sorted(d.entity_id for d in own) == sorted(hub_view)
        assert all(src != "e2" for d in own for *_, src in d.triples)
        first = next(d for d in own if d.entity_id == "drone-0000")
        assert {p for p, *_ in first.triples} == {"round", "battery", "status"}
        welcome, stolen = ask_share(url, EDGE_ID, other_token)  # edge-2 posing as edge-1
        assert not welcome.accepted and stolen == [], welcome
        assert "credential" in welcome.reason
    finally:
        pair.stop()


def test_an_edge_asking_for_resync_after_resync_gets_one_per_interval(tmp_path: Path) -> None:
    """A compromised edge (or a stolen credential) reconnecting with resync=True over and
    over would have the hub read its whole share each time: the second within
    ``resync_min_interval`` waits for it, with the link open."""
    token = "other-edge-token-0123456789"
    pair = pair_with_edge_2(tmp_path, token, resync_min_interval="3s")
    try:
        url = f"ws://127.0.0.1:{pair.proxy.port}/edge-sync"
        now = int(time.time() * 1000)
        mine = EntityDelta("drone-0000", "drone", 1, now, 1, [("callsign", "two", now, "e2")])
        contribute(url, "edge-2", token, [mine])
        started = time.monotonic()
        _, first = ask_share(url, "edge-2", token)
        second_asked = time.monotonic()
        welcome, second = ask_share(url, "edge-2", token)
        answered = time.monotonic()
        assert welcome.resync
        assert [(d.entity_id, d.triples) for d in first + second] == [
            (mine.entity_id, mine.triples)
        ] * 2
        assert answered - started >= 3.0, (second_asked - started, answered - started)
        deferred = 'outcome="deferred"'
        assert metric(pair.hub.api, "semstreams_hub_resyncs_total", deferred) == 1
    finally:
        pair.stop()
