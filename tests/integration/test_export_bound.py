"""``POST /admin/export`` cannot hold its snapshot (and with it the WAL) for as long as
its client likes: a real agent process, a client on a raw socket that stops reading, and
the graph's WAL watched from outside through SQLite's own checkpoint.

While a read transaction is open, SQLite cannot checkpoint the WAL past it: ``PRAGMA
wal_checkpoint(PASSIVE)`` on another connection reports fewer frames checkpointed than
the WAL holds as soon as anything is written after the snapshot began. Once the snapshot
is released, it checkpoints them all. The last two tests, in process, hold the store's
rule for snapshots taken back to back and the deadline inside one statement.
"""

from __future__ import annotations

import json
import re
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge_agent.config import IndexesConfig
from edge_agent.graph import GraphStore
from edge_agent.graph.database import SnapshotBusy
from edge_agent.graph.records import export_jsonl
from edge_agent.model import EntityEvent
from tests.helpers import JWT_SECRET, AgentProcess, bearer, config_dict, ndjson, wait_until

ENTITIES = 2000
#: Each entity's export line weighs about this: ~20 MB in all, far more than the
#: socket buffers between the agent and a client that stopped reading can hold.
PAYLOAD = 10_000


def start(tmp_path: Path, export_timeout: str) -> AgentProcess:
    """An agent (JWT auth on) with ``graph.config.export_timeout``, holding
    :data:`ENTITIES` fat entities."""
    config = config_dict(tmp_path / "state", graph={"config": {"export_timeout": export_timeout}})
    config["services"]["service-manager"]["config"]["auth"] = {
        "type": "jwt",
        "jwt_secret": JWT_SECRET,
        "jwt_issuer": "semstreams",
    }
    agent = AgentProcess(config, tmp_path)
    agent.start()
    with api(agent) as client:
        for first in range(0, ENTITIES, 500):
            events = [
                {
                    "entity_id": f"D-{i:05d}",
                    "entity_type": "drone",
                    "properties": {"battery": i % 100, "note": "x" * PAYLOAD},
                }
                for i in range(first, first + 500)
            ]
            assert client.post("/ingest", content=ndjson(events)).status_code == 202

        def applied() -> bool:
            stats = client.get("/graph/stats").json()
            return bool(stats["entities"] == ENTITIES and stats["stream_pending"] == 0)

        wait_until(applied, "the entities applied")
    return agent


def api(agent: AgentProcess) -> httpx.Client:
    return httpx.Client(base_url=agent.api, headers=bearer(), timeout=10)


def checkpoint(agent: AgentProcess) -> tuple[int, int, int]:
    """``PRAGMA wal_checkpoint(PASSIVE)`` on the agent's graph: (busy, WAL frames,
    frames checkpointed). It waits for nobody."""
    db = sqlite3.connect(Path(agent.config["state_dir"]) / "graph.db", isolation_level=None)
    try:
        busy, frames, done = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return busy, frames, done
    finally:
        db.close()


def wal_held(agent: AgentProcess) -> bool:
    """Whether frames stay in the WAL that a checkpoint could not copy (``busy``: the
    agent was checkpointing at that moment; poll again)."""
    busy, frames, done = checkpoint(agent)
    return busy == 0 and done < frames


def wal_free(agent: AgentProcess) -> bool:
    """Whether a checkpoint copied every frame of the WAL: no snapshot holds it back."""
    busy, frames, done = checkpoint(agent)
    return busy == 0 and done == frames


def write_one(client: httpx.Client, n: int) -> None:
    """Ingest one change and wait until the graph has it (a commit, frames in the WAL)."""
    body = ndjson([{"entity_id": "ticker", "entity_type": "t", "properties": {"n": n}}])
    assert client.post("/ingest", content=body).status_code == 202

    def applied() -> bool:
        reply = client.get("/graph/entities/ticker")
        return reply.status_code == 200 and reply.json()["properties"]["n"] == n

    wait_until(applied, f"change {n} applied", timeout=10, interval=0.02)


@contextmanager
def writing(agent: AgentProcess) -> Iterator[None]:
    """Keep ingesting (a change every 50 ms) in the background while the block runs."""
    stop = threading.Event()

    def run() -> None:
        with api(agent) as client:
            n = 1000
            while not stop.wait(0.05):
                n += 1
                body = ndjson(
                    [{"entity_id": f"W-{n % 50}", "entity_type": "t", "properties": {"n": n}}]
                )
                client.post("/ingest", content=body)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)


def stalled_export(agent: AgentProcess) -> tuple[socket.socket, bytes]:
    """``POST /admin/export`` from a client that reads 64 KiB and then stops reading
    (its receive buffer small, so that little of the stream fits in flight)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", agent.config["services"]["service-manager"]["config"]["http_port"]))
    token = bearer()["authorization"]
    # HTTP/1.0: the body ends where the connection does (no chunked framing to undo).
    sock.sendall(
        b"POST /admin/export HTTP/1.0\r\nHost: agent\r\nContent-Type: application/json\r\n"
        + f"Authorization: {token}\r\nContent-Length: 2\r\n\r\n{{}}".encode()
    )
    received = b""
    while len(received) < 64 << 10:
        chunk = sock.recv(4096)
        assert chunk, f"the export ended early: {received[:300]!r}"
        received += chunk
    assert received.startswith(b"HTTP/1.1 200"), received[:300]
    return sock, received


def read_to_end(sock: socket.socket, received: bytes) -> list[dict[str, Any]]:
    """Resume reading until the agent closes; the body's lines, decoded."""
    sock.settimeout(20)
    while chunk := sock.recv(1 << 20):
        received += chunk
    sock.close()
    _, body = received.split(b"\r\n\r\n", 1)
    assert body.endswith(b"\n")
    return [json.loads(line) for line in body.splitlines()]


def metric(agent: AgentProcess, outcome: str) -> float:
    with api(agent) as client:
        text = client.get("/metrics").text
    found = re.search(rf'^semstreams_exports_total{{outcome="{outcome}"}} (\S+)$', text, re.M)
    return float(found[1]) if found else 0.0


def test_a_stalled_export_lets_go_of_its_snapshot_at_the_deadline(tmp_path: Path) -> None:
    agent = start(tmp_path, export_timeout="3s")
    try:
        with api(agent) as client, writing(agent):
            began = time.monotonic()
            sock, received = stalled_export(agent)
            # The client reads no more. The export's snapshot holds the WAL: what is
            # written now cannot be checkpointed.
            write_one(client, 1)
            wait_until(lambda: wal_held(agent), "the WAL held back", timeout=2)
            # One export at a time (back-to-back or overlapping snapshots would keep the
            # WAL from ever being reset, each held however briefly).
            second = client.post("/admin/export", json={})
            assert second.status_code == 429, second.text[:200]
            assert second.headers["retry-after"] == "1"
            assert time.monotonic() - began < 3, "the checks above took past the deadline"

            # At the deadline the snapshot is released, although the client still reads
            # nothing, and writes go on: the WAL is checkpointed whole again.
            wait_until(lambda: wal_free(agent), "the WAL checkpointed whole", timeout=8)
            released = time.monotonic() - began
            write_one(client, 2)
            wait_until(lambda: wal_free(agent), "the WAL checkpointed whole again", timeout=5)
        assert 3 <= released < 5, released

        # The client comes back: it gets the lines read before the deadline, whole
        # records all, then one saying the export is not complete.
        lines = read_to_end(sock, received)
        *records, last = lines
        assert last["complete"] is False
        assert "graph.config.export_timeout" in last["error"], last
        assert 0 < len(records) < ENTITIES
        assert all(r["entity_type"] == "drone" for r in records)
        assert [r["entity_id"] for r in records] == [f"D-{i:05d}" for i in range(len(records))]
        assert metric(agent, "timed_out") == 1
        assert "admin export cut off after 3s" in agent.log_path.read_text()

        # A client that reads at once gets the whole graph, as before: no extra line.
        with api(agent) as client:
            whole = client.post("/admin/export", json={"entity_type": "drone"})
        assert whole.status_code == 200
        records = [json.loads(line) for line in whole.content.splitlines()]
        assert [r["entity_id"] for r in records] == [f"D-{i:05d}" for i in range(ENTITIES)]
        assert metric(agent, "complete") == 1
    finally:
        assert agent.stop() == 0


def test_a_client_that_hangs_up_mid_export_releases_the_snapshot_at_once(
    tmp_path: Path,
) -> None:
    agent = start(tmp_path, export_timeout="60s")
    try:
        with api(agent) as client, writing(agent):
            sock, _ = stalled_export(agent)
            write_one(client, 1)
            wait_until(lambda: wal_held(agent), "the WAL held back", timeout=2)
            sock.close()  # long before the deadline
            waited = wait_until(lambda: wal_free(agent), "the WAL checkpointed whole", timeout=10)
            write_one(client, 2)
            wait_until(lambda: wal_free(agent), "the WAL checkpointed whole again", timeout=5)
        assert waited < 1.5, waited
        assert metric(agent, "client_gone") == 1
        with api(agent) as client:  # and the next export may start
            assert client.post("/admin/export", json={"entity_type": "t"}).status_code == 200
    finally:
        assert agent.stop() == 0


def test_snapshots_back_to_back_cannot_keep_the_wal_from_being_reset(tmp_path: Path) -> None:
    """A deadline per export is not enough by itself: a client starting one export as
    the last ends would keep a snapshot open at every instant, and SQLite could never
    start the WAL over. The store takes one snapshot at a time and checkpoints as each
    closes: the WAL stays at its first round's 0.4 MB (on the previous code it grew by
    each round's writes, to 3.9 MB after 20)."""
    store = GraphStore(tmp_path / "graph.db", origin="e", indexes=IndexesConfig())
    store.position("c", "s")
    wal = tmp_path / "graph.db-wal"
    sizes = []
    seq = 0
    for _ in range(20):
        with store.snapshot() as db:
            db.execute("SELECT count(*) FROM entities").fetchone()
            with pytest.raises(SnapshotBusy), store.snapshot():
                pass
            for _ in range(5):  # writes while the snapshot holds the WAL
                batch = []
                for n in range(200):
                    seq += 1
                    event = EntityEvent(entity_id=f"E-{n}", entity_type="t", properties={"n": seq})
                    batch.append((seq, event))
                store.apply(batch, consumer="c", now_ms=0)
        sizes.append(wal.stat().st_size)
    store.close()
    assert max(sizes) <= 2 * sizes[0], sizes


def test_the_deadline_cuts_a_statement_that_runs_past_it(tmp_path: Path) -> None:
    """Checking the deadline between records is not enough: one page query (here one
    scanning 10,000 entities for a type none has) can run long by itself. SQLite's
    progress handler sees the deadline pass in the middle of it."""
    store = GraphStore(tmp_path / "graph.db", origin="e", indexes=IndexesConfig())
    store.position("c", "s")
    events = [EntityEvent(entity_id=f"E-{i:05d}", entity_type="t") for i in range(10_000)]
    store.apply(list(enumerate(events, 1)), consumer="c", now_ms=0)
    ticks = iter([0.0])  # the clock passes the deadline once the statement has begun
    with store.snapshot() as db:
        assert list(export_jsonl(db, "none", chunk_bytes=1 << 16, deadline=float("inf"))) == []
        cut = export_jsonl(
            db, "none", chunk_bytes=1 << 16, deadline=1.0, clock=lambda: next(ticks, 2.0)
        )
        with pytest.raises(TimeoutError) as raised:
            list(cut)
    assert isinstance(raised.value.__cause__, sqlite3.OperationalError)
    store.close()
