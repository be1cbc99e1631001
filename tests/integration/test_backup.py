"""Online backup and restore, and disaster recovery, with real processes.

An edge (and a hub) run as child processes with their own nats-servers; ``edge-agent
backup`` / ``cloud-hub backup`` run beside them as the operator would, while events
flow; the state directory is deleted, ``restore`` brings it back, and the services
start from it. What the backup held (its SQLite copy, its manifest) is the reference.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
from nats.js import JetStreamContext

from edge_agent.app import Agent
from edge_agent.backup.commands import restore_command
from edge_agent.backup.files import measure
from edge_agent.backup.manifest import FileEntry, Manifest, encode_manifest
from edge_agent.backup.plan import edge_plan
from edge_agent.backup.restore import read_backup, restore_backup
from edge_agent.backup.take import take_backup
from edge_agent.config import Config
from edge_agent.graph.recovery import RESYNC_MARKER
from edge_agent.nats.server import EmbeddedNatsServer
from edge_agent.nats.subjects import entity_subject
from tests.conftest import StartAgent
from tests.helpers import (
    AgentProcess,
    config_dict,
    event,
    http_json,
    make_config,
    wait_for,
    wait_until,
)
from tests.integration.sync_harness import (
    EDGE_ID,
    SyncPair,
    drone_round,
    export,
    metric,
    post_events,
)

pytestmark = pytest.mark.slow

DRONES = 100
BUSY = 20


def run_cli(program: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``edge-agent ARGS`` (``program`` = edge_agent.cli) or ``cloud-hub ARGS``."""
    return subprocess.run(
        [sys.executable, "-m", program, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def busy_round(round_: int) -> list[dict[str, Any]]:
    """One reading of the BUSY entities that change while the backup runs."""
    return [
        {
            "entity_id": f"busy-{i:02d}",
            "entity_type": "sensor",
            "priority": 3,
            "properties": {"n": round_},
        }
        for i in range(BUSY)
    ]


class Ingest:
    """Posts rounds of :func:`busy_round` to an edge from a thread until stopped."""

    def __init__(self, api: str) -> None:
        self.api = api
        self.rounds = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            post_events(self.api, busy_round(self.rounds))
            self.rounds += 1
            time.sleep(0.02)

    def __enter__(self) -> Ingest:
        self._thread.start()
        wait_until(lambda: self.rounds >= 3, "ingest under way")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def rows(db_path: Path, sql: str) -> list[tuple[Any, ...]]:
    """The rows of a read-only query on a SQLite file."""
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
        return db.execute(sql).fetchall()


def versions(db_path: Path) -> dict[str, int]:
    """Each entity's version in a graph file."""
    return dict(rows(db_path, "SELECT id, version FROM entities"))  # type: ignore[arg-type]


def hub_edge_state(pair: SyncPair) -> tuple[int, int, int]:
    """(last batch seq, batches, deltas) the hub has applied of the edge."""
    ((seq, batches, deltas),) = rows(
        pair.hub_db, f"SELECT seq, batches, deltas FROM hub_edge_state WHERE edge_id = '{EDGE_ID}'"
    )
    return int(seq), int(batches), int(deltas)


def edge_drained(pair: SyncPair) -> bool:
    """The edge has applied its stream and the hub has acked its whole outbox."""
    db = Path(pair.edge.config["state_dir"]) / "graph.db"
    (waiting,) = rows(
        db, "SELECT (SELECT count(*) FROM sync_outbox) + (SELECT count(*) FROM sync_inflight)"
    )[0]
    return pair.edge.stats()["stream_pending"] == 0 and waiting == 0


def test_edge_disaster_recovery_restores_graph_stream_and_sync_positions(
    pair: SyncPair, tmp_path: Path
) -> None:
    post_events(pair.edge.api, drone_round(0, DRONES))
    pair.wait_synced(minimum=DRONES)
    # The link goes half-open: batches go out and stay unacked, changes queue up. The
    # backup (taken while events keep coming) holds batches in flight and changes
    # waiting: the sync position a restore must get right.
    pair.proxy.blackhole()
    backup = tmp_path / "backups" / "edge-1"
    with Ingest(pair.edge.api):
        time.sleep(1.0)
        done = run_cli("edge_agent.cli", "backup", str(backup), "-c", str(pair.edge.config_path))
    assert done.returncode == 0, done.stderr
    manifest = json.loads((backup / "manifest.json").read_text())
    copy = backup / "sqlite" / "graph.db"
    in_backup = versions(copy)
    assert len(in_backup) == DRONES + BUSY
    sync_state = dict(rows(copy, "SELECT name, value FROM sync_state"))
    in_flight = rows(copy, "SELECT seq, payload FROM sync_inflight ORDER BY seq")
    (waiting,) = rows(copy, "SELECT count(*) FROM sync_outbox")[0]
    assert in_flight, "a batch was in flight when the backup was taken"

    # After the backup: the link heals and more changes reach the hub before disaster.
    pair.proxy.restore()
    post_events(pair.edge.api, drone_round(1, DRONES))
    post_events(pair.edge.api, busy_round(10_000))
    hub_before = pair.wait_synced(timeout=60, minimum=DRONES + BUSY)
    wait_until(lambda: edge_drained(pair), "the edge's outbox acked")
    state_before = hub_edge_state(pair)
    assert state_before[0] >= in_flight[-1][0], "the hub has the batches in flight at backup"

    pair.edge.kill()
    state_dir = Path(pair.edge.config["state_dir"])
    shutil.rmtree(state_dir)
    done = run_cli("edge_agent.cli", "restore", str(backup), "-c", str(pair.edge.config_path))
    assert done.returncode == 0, done.stderr
    restored = state_dir / "graph.db"
    assert versions(restored) == in_backup
    assert dict(rows(restored, "SELECT name, value FROM sync_state")) == sync_state
    assert rows(restored, "SELECT seq, payload FROM sync_inflight ORDER BY seq") == in_flight
    (applied,) = rows(restored, "SELECT applied_seq FROM consumer_state")[0]
    assert applied == manifest["positions"][f"consumer:graph-{EDGE_ID}-all"]

    assert "asks the hub for this edge's share" in done.stdout
    assert (state_dir / RESYNC_MARKER).exists()

    pair.edge.start()
    wait_until(
        lambda: (
            pair.edges()[0]["connected"]
            and edge_drained(pair)
            and not (state_dir / RESYNC_MARKER).exists()
        ),
        "edge back, resynced, drained",
    )
    # The batches in flight at the backup are the hub's already: not sent again.
    assert metric(pair.edge.api, "semstreams_sync_batches_total", 'direction="resent"') == 0
    # The changes the backup held waiting had been sent by the edge's lost self: the
    # hub's share showed it holds them, so none goes again, and neither does the
    # stream's replayed tail. The hub received no batch at all.
    assert hub_edge_state(pair) == state_before
    held = metric(pair.edge.api, "semstreams_sync_dropped_total", 'reason="held_by_hub"')
    assert held >= waiting
    assert export(pair.hub.api) == hub_before
    pair.check_hub_records()
    # The edge has back what its lost self did after the backup, from the hub.
    edge_after = export(pair.edge.api)
    assert {k: v["version"] for k, v in edge_after.items()} == {
        k: v["version"] for k, v in hub_before.items()
    }
    assert {k: v["properties"] for k, v in edge_after.items()} == {
        k: v["properties"] for k, v in hub_before.items()
    }

    # New events after the restore are applied (their stream sequences are new) and
    # reach the hub.
    post_events(pair.edge.api, drone_round(2, DRONES))
    wait_until(
        lambda: export(pair.hub.api)["drone-0099"]["properties"]["round"] == 2,
        "round 2 at the hub",
    )
    assert export(pair.edge.api)["drone-0099"]["version"] == hub_before["drone-0099"]["version"] + 1


# ---- refused backups change nothing ---------------------------------------------------


@pytest.fixture(scope="module")
def edge_backup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AgentProcess, Path]]:
    """A running edge (id ``test-edge``) with some graph and a dead letter, and a backup
    of it taken while it runs."""
    work = tmp_path_factory.mktemp("refusals")
    edge = AgentProcess(config_dict(work / "state"), work, name="edge")
    edge.start()
    try:
        post_events(edge.api, [event(f"d-{i}", battery=i) for i in range(50)])
        wait_until(lambda: edge.stats()["entities"] == 50, "events applied")
        done = run_cli("edge_agent.cli", "backup", str(work / "good"), "-c", str(edge.config_path))
        assert done.returncode == 0, done.stderr
        yield edge, work / "good"
    finally:
        edge.stop()


def _edit_manifest(backup: Path, **changes: Any) -> None:
    path = backup / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))


def _escape(backup: Path) -> None:
    manifest = json.loads((backup / "manifest.json").read_text())
    manifest["files"][0]["path"] = "sqlite/../../../etc/passwd"
    (backup / "manifest.json").write_text(json.dumps(manifest))


def _unknown_file(backup: Path) -> None:
    (backup / "sqlite" / "extra.db").write_bytes(b"x")
    manifest = json.loads((backup / "manifest.json").read_text())
    sha = "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"
    manifest["files"].append({"path": "sqlite/extra.db", "size": 1, "sha256": sha})
    (backup / "manifest.json").write_text(json.dumps(manifest))


def _symlink(backup: Path) -> None:
    target = backup.parent / f"{backup.name}-elsewhere.db"
    (backup / "sqlite" / "graph.db").rename(target)
    (backup / "sqlite" / "graph.db").symlink_to(target)


DAMAGE = {
    "bit flip": (lambda b: _flip_byte(b / "sqlite" / "graph.db"), "sqlite/graph.db is damaged"),
    "truncated": (
        lambda b: (b / "streams" / "GRAPH_ENTITIES.snapshot").write_bytes(
            (b / "streams" / "GRAPH_ENTITIES.snapshot").read_bytes()[:-10]
        ),
        "streams/GRAPH_ENTITIES.snapshot is truncated",
    ),
    "missing file": (
        lambda b: (b / "streams" / "GRAPH_DEAD_LETTERS.snapshot").unlink(),
        "streams/GRAPH_DEAD_LETTERS.snapshot is missing",
    ),
    "symlink": (_symlink, "sqlite/graph.db is missing"),
    "other device": (
        lambda b: _edit_manifest(b, id="edge-2"),
        "this backup is of edge 'edge-2', not of 'test-edge'",
    ),
    "hub backup": (
        lambda b: _edit_manifest(b, kind="hub"),
        "this is a hub backup; it cannot restore an edge",
    ),
    "newer format": (lambda b: _edit_manifest(b, format=99), "backup format 99 is newer"),
    "path escape": (_escape, "manifest.json is damaged"),
    "unknown file": (_unknown_file, "sqlite/extra.db is not part of an edge's state"),
    "no manifest": (lambda b: (b / "manifest.json").unlink(), "it has no manifest.json"),
    "huge manifest": (
        lambda b: (b / "manifest.json").write_bytes(b" " * (2 << 20)),
        "manifest.json is over",
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_or_mismatched_backup_is_refused_and_nothing_changes(
    edge_backup: tuple[AgentProcess, Path], tmp_path: Path, damage: str
) -> None:
    edge, good = edge_backup
    backup = tmp_path / "backup"
    shutil.copytree(good, backup, symlinks=True)
    harm, reason = DAMAGE[damage]
    harm(backup)
    config = {**edge.config, "state_dir": str(tmp_path / "fresh")}
    config_path = tmp_path / "fresh.json"
    config_path.write_text(json.dumps(config))
    done = run_cli("edge_agent.cli", "restore", str(backup), "-c", str(config_path))
    assert done.returncode == 1
    assert "edge-agent restore: refused: " in done.stderr and reason in done.stderr, done.stderr
    assert not (tmp_path / "fresh").exists(), "a refused restore wrote nothing"


def test_restore_refuses_a_running_edge_and_a_state_directory_in_use(
    edge_backup: tuple[AgentProcess, Path],
) -> None:
    edge, good = edge_backup
    state = Path(edge.config["state_dir"])
    done = run_cli("edge_agent.cli", "restore", str(good), "-c", str(edge.config_path))
    assert done.returncode == 1
    port = edge.config["services"]["service-manager"]["config"]["http_port"]
    assert f"refused: something answers on port {port}: stop the edge" in done.stderr
    edge.stop()
    before = {p: p.stat().st_mtime_ns for p in state.rglob("*") if p.is_file()}
    done = run_cli("edge_agent.cli", "restore", str(good), "-c", str(edge.config_path))
    assert done.returncode == 1
    assert f"refused: {state / 'graph.db'} exists" in done.stderr, done.stderr
    after = {p: p.stat().st_mtime_ns for p in state.rglob("*") if p.is_file()}
    assert after == before
    edge.start()  # the module's fixture stops it


def test_backup_refuses_a_destination_that_holds_something(
    edge_backup: tuple[AgentProcess, Path],
) -> None:
    edge, good = edge_backup
    listing = sorted(good.rglob("*"))
    done = run_cli("edge_agent.cli", "backup", str(good), "-c", str(edge.config_path))
    assert done.returncode == 1
    assert f"{good} exists and is not an empty directory" in done.stderr
    assert sorted(good.rglob("*")) == listing
    assert not list(good.parent.glob(".good.partial-*")), "no work directory left behind"


def test_secrets_stay_out_unless_asked_and_are_kept_private(
    edge_backup: tuple[AgentProcess, Path], tmp_path: Path
) -> None:
    edge, good = edge_backup
    state = Path(edge.config["state_dir"])
    key = b"-----BEGIN PRIVATE KEY-----\nnot-a-real-key\n-----END PRIVATE KEY-----\n"
    (state / "device_key.pem").write_bytes(key)
    (state / "device_key.pem").chmod(0o600)
    try:
        # The backup taken without --include-secrets holds no secret, by name or by content.
        assert not list((good / "secrets").iterdir())
        assert all(key not in p.read_bytes() for p in good.rglob("*") if p.is_file())
        backup = tmp_path / "with-secrets"
        done = run_cli(
            "edge_agent.cli", "backup", str(backup), "-c", str(edge.config_path),
            "--include-secrets",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    finally:
        (state / "device_key.pem").unlink()
    assert (backup / "secrets" / "device_key.pem").read_bytes() == key
    assert json.loads((backup / "manifest.json").read_text())["secrets"] is True
    for path in [backup, *backup.rglob("*")]:
        mode = path.stat().st_mode & 0o777
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))
    config = {**edge.config, "state_dir": str(tmp_path / "fresh")}
    (tmp_path / "fresh.json").write_text(json.dumps(config))
    edge.stop()  # restore checks the ports: the module's edge must not answer
    try:
        done = run_cli("edge_agent.cli", "restore", str(backup), "-c", str(tmp_path / "fresh.json"))
    finally:
        edge.start()
    assert done.returncode == 0, done.stderr
    restored = tmp_path / "fresh" / "device_key.pem"
    assert restored.read_bytes() == key and restored.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "fresh" / "graph.db").stat().st_mode & 0o777 == 0o600


# ---- the hub ------------------------------------------------------------------------


def test_hub_backup_while_an_edge_syncs_restores_a_graph_that_agrees_with_its_log(
    pair: SyncPair, tmp_path: Path
) -> None:
    post_events(pair.edge.api, drone_round(0, DRONES))
    pair.wait_synced(minimum=DRONES)
    backup = tmp_path / "backups" / "hub"
    with Ingest(pair.edge.api):
        time.sleep(0.5)
        done = run_cli("cloud_hub.cli", "backup", str(backup), "-c", str(pair.hub.config_path))
    assert done.returncode == 0, done.stderr
    manifest = json.loads((backup / "manifest.json").read_text())
    (log,) = manifest["streams"]
    assert log["name"] == "SYNC_BATCHES" and log["last_seq"] > 0
    # The graph was copied first: the log snapshot holds everything it had applied.
    assert manifest["positions"]["consumer:materialiser-hub"] <= log["last_seq"]
    assert manifest["positions"][f"edge:{EDGE_ID}"] >= 1
    pair.wait_synced(minimum=DRONES + BUSY)

    pair.proxy.cut()  # the edge stays away while the hub is rebuilt
    pair.hub.kill()
    state_dir = Path(pair.hub.config["state_dir"])
    shutil.rmtree(state_dir)
    done = run_cli("cloud_hub.cli", "restore", str(backup), "-c", str(pair.hub.config_path))
    assert done.returncode == 0, done.stderr
    pair.hub.start()
    # The materialiser applies the log's tail the graph copy lacked, to the snapshot's end.
    wait_until(
        lambda: rows(pair.hub_db, "SELECT stream_seq FROM hub_edge_state")[0][0] == log["last_seq"],
        "the restored log applied",
    )
    restored = export(pair.hub.api)
    assert len(restored) == DRONES + BUSY
    # Graph and log agree: the graph a hub builds from the restored log alone is the same.
    pair.hub.stop()
    for path in state_dir.glob("graph.db*"):
        path.unlink()
    pair.hub.start()
    wait_until(
        lambda: (
            pair.hub_db.exists()
            and rows(pair.hub_db, "SELECT count(*) FROM hub_edge_state")[0][0] == 1
            and rows(pair.hub_db, "SELECT stream_seq FROM hub_edge_state")[0][0] == log["last_seq"]
        ),
        "the graph rebuilt from the log",
    )
    assert export(pair.hub.api) == restored

    # The edge links again: it had batches acked after the backup that the restored
    # hub lacks, so the hub asks it for everything it wrote, and misses nothing.
    pair.proxy.restore()
    post_events(pair.edge.api, drone_round(1, DRONES))
    wait_until(
        lambda: export(pair.hub.api)["drone-0099"]["properties"]["round"] == 1,
        "round 1 at the restored hub",
    )
    pair.wait_synced(minimum=DRONES + BUSY)
    assert metric(pair.hub.api, "semstreams_hub_full_resends_total") == 1
    assert metric(pair.edge.api, "semstreams_sync_full_resends_total") == 1


# ---- the edge's stream position across a restore ---------------------------------------


async def _publish(js: JetStreamContext, ids: range) -> None:
    for i in ids:
        await js.publish(entity_subject("drone"), json.dumps(event(f"p-{i}", n=i)).encode())


async def _applied(agent: Agent, count: int) -> None:
    async def done() -> bool:
        return bool(agent.store.stats()["entities"] == count)

    await wait_for(done, what=f"{count} entities applied")


def _splice(early: Manifest, late: Manifest, tmp_path: Path) -> Path:
    """The late backup with the early backup's stream snapshots: what a backup holds when
    the edge applied (and acked) events between the streams' snapshot and the graph's
    copy."""
    spliced = tmp_path / "spliced"
    shutil.copytree(tmp_path / "late", spliced)
    shutil.copytree(tmp_path / "early" / "streams", spliced / "streams", dirs_exist_ok=True)
    files = []
    for entry in late.files:
        size, digest = measure(spliced / entry.path)
        assert size is not None
        files.append(FileEntry(entry.path, size, digest))
    manifest = msgspec.structs.replace(late, streams=early.streams, files=files)
    (spliced / "manifest.json").write_bytes(encode_manifest(manifest))
    return spliced


async def _restore_and_run(backup: Path, config: Config, new: range) -> tuple[list[str], Agent]:
    """Restore ``backup`` into ``config``'s state directory, start an agent there, and
    check events ``new`` published then are applied; (restore's lines, the agent)."""
    plan = edge_plan(config)
    lines = await restore_backup(backup, read_backup(backup, plan), plan, ports=[])
    agent = Agent(config)
    await agent.start()
    await _publish(agent.nc.jetstream(), new)
    await _applied(agent, new[-1] + 1)
    return lines, agent


async def test_restore_moves_the_stream_past_events_applied_after_its_snapshot(
    start_agent: StartAgent, tmp_path: Path
) -> None:
    agent = await start_agent()
    plan = edge_plan(agent.config)
    await _publish(agent.js, range(50))
    await _applied(agent, 50)
    early = await take_backup(plan, agent.nc, tmp_path / "early")
    await _publish(agent.js, range(50, 100))
    await _applied(agent, 100)
    late = await take_backup(plan, agent.nc, tmp_path / "late")
    assert early.streams[0].last_seq == 50
    assert late.positions[f"consumer:{agent.processor.consumer}"] == 100

    # Without the move, new events would get sequences 51.. and be skipped as applied.
    lines, restored = await _restore_and_run(
        _splice(early, late, tmp_path), make_config(tmp_path / "restored"), range(100, 110)
    )
    await restored.stop()
    assert any("next sequence 101 (moved past the graph's position 100)" in line for line in lines)


async def test_restore_keeps_the_graph_position_in_the_restored_stream(tmp_path: Path) -> None:
    config = make_config(tmp_path / "state")
    agent = Agent(config)
    await agent.start()
    await _publish(agent.js, range(50))
    await _applied(agent, 50)
    await agent.stop()
    # Events 50..99 wait in the stream, unapplied, when its snapshot is taken.
    server = EmbeddedNatsServer(
        Path(config.state_dir), port=config.nats.port, max_file_store=1 << 30, name="x"
    )
    await server.start()
    nc = await nats.connect(server.url)
    await _publish(nc.jetstream(), range(50, 100))
    early = await take_backup(edge_plan(config), nc, tmp_path / "early")
    await nc.close()
    await server.stop()
    assert early.streams[0].messages == 50
    agent = Agent(config)
    await agent.start()
    await _applied(agent, 100)
    late = await take_backup(edge_plan(config), agent.nc, tmp_path / "late")
    stamps = {i: agent.store.entity(f"p-{i}")["updated_at"] for i in range(50, 100)}  # type: ignore[index]
    await agent.stop()

    # The early backup alone: its graph lacks 50..99, which its stream replays on start,
    # stamped as when they were first taken (not as now: the hub would take them for
    # newer readings than those that followed).
    _, replayed = await _restore_and_run(
        tmp_path / "early", make_config(tmp_path / "replayed"), range(100, 110)
    )
    try:
        again = {i: replayed.store.entity(f"p-{i}")["updated_at"] for i in range(50, 100)}  # type: ignore[index]
        assert again == stamps
    finally:
        await replayed.stop()

    # The restored stream holds 50..99 again; the graph has them: none applied twice.
    _, restored = await _restore_and_run(
        _splice(early, late, tmp_path), make_config(tmp_path / "restored"), range(100, 110)
    )
    try:
        versions = {restored.store.entity(f"p-{i}")["version"] for i in range(110)}  # type: ignore[index]
        assert versions == {1}
    finally:
        await restored.stop()


async def test_with_an_external_nats_restore_leaves_the_streams_to_it(
    agent: Agent, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await _publish(agent.js, range(20))
    await _applied(agent, 20)
    await take_backup(edge_plan(agent.config), agent.nc, tmp_path / "backup")
    assert agent.nats_server is not None
    # Another agent of the same id on the same (now external) NATS, e.g. a cluster.
    config = make_config(
        tmp_path / "restored", nats={"embedded": False, "urls": [agent.nats_server.url]}
    )
    code = await asyncio.to_thread(
        restore_command,
        config,
        lambda: edge_plan(config),
        str(tmp_path / "backup"),
        prog="edge-agent restore",
        ports=[config.services.service_manager.config.http_port],
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "stream GRAPH_ENTITIES: left to the external NATS" in out
    assert (tmp_path / "restored" / "graph.db").exists()
    assert not (tmp_path / "restored" / "jetstream").exists()


def test_a_clean_stop_leaves_the_whole_graph_in_the_database_file(tmp_path: Path) -> None:
    """The seed's runbook stops the service and copies files: graph.db alone must do."""
    agent = AgentProcess(config_dict(tmp_path / "state"), tmp_path)
    agent.start()
    body = "\n".join(json.dumps(event(f"wal-{i}")) for i in range(2000)).encode()
    assert http_json(f"{agent.api}/ingest", body, timeout=30)[0] == 202
    wait_until(lambda: http_json(f"{agent.api}/graph/stats")[1]["entities"] == 2000, "all applied")
    wal = tmp_path / "state" / "graph.db-wal"
    assert wal.stat().st_size > 0  # the writes are in the WAL while it runs
    assert agent.stop() == 0
    assert not wal.exists() or wal.stat().st_size == 0
    alone = tmp_path / "copy" / "graph.db"
    alone.parent.mkdir()
    shutil.copy(tmp_path / "state" / "graph.db", alone)
    with sqlite3.connect(alone) as db:
        assert db.execute("SELECT count(*) FROM entities").fetchone() == (2000,)
