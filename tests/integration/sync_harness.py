"""A hub and an edge as real processes, joined through a loopback proxy the test controls.

The invariant checker compares what the edge holds (after its link's filter) with what
the hub holds, entity by entity, and reads the hub's own records of what it refused:
no stale or conflicting delta (which is what a change applied twice or out of order
would be), and each batch stored once in the hub's JetStream stream.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import sqlite3
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import nats

from tests.helpers import AgentProcess, config_dict, free_port, http_json, ndjson
from tests.linkproxy import LinkProxy

EDGE_ID = "edge-1"
Entity = dict[str, Any]


def metric(api: str, name: str, labels: str = "") -> float:
    """One sample of ``name{labels}`` from ``/metrics`` (0 when absent)."""
    with urllib.request.urlopen(f"{api}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    selector = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "")
    match = re.search(rf"^{selector} (\S+)$", text, re.M)
    return float(match[1]) if match else 0.0


def export(api: str) -> dict[str, dict[str, Any]]:
    """Every entity of an agent or hub, as comparable state, keyed by id."""
    request = urllib.request.Request(f"{api}/admin/export", data=b"{}", method="POST")
    with urllib.request.urlopen(request, timeout=30) as reply:
        lines = reply.read().splitlines()
    entities = {}
    for line in lines:
        record = json.loads(line)
        entities[record["entity_id"]] = {
            "entity_type": record["entity_type"],
            "version": record["version"],
            "priority": record["priority"],
            "properties": {t[0]: t[1] for t in record["triples"] if t[0] != "rdf:type"},
            "edges": sorted((e[0], e[1], e[2]) for e in record["edges"]),
            "aliases": sorted(record["aliases"]),
        }
    return entities


def _viewed(
    entities: dict[str, Entity], view: Callable[[Entity], Entity | None] | None
) -> dict[str, Entity]:
    if view is None:
        return entities
    seen = {key: view(entity) for key, entity in entities.items()}
    return {key: entity for key, entity in seen.items() if entity is not None}


def graph_query(hub: AgentProcess, name: str, request: dict[str, Any]) -> dict[str, Any]:
    """``POST /graph/query/<name>`` on ``hub``; the answer, which must be a 200."""
    status, answer = http_json(f"{hub.api}/graph/query/{name}", json.dumps(request).encode())
    assert status == 200, answer
    result: dict[str, Any] = answer
    return result


async def graph_query_over_nats(url: str, name: str, request: dict[str, Any]) -> dict[str, Any]:
    """The same query as NATS request/reply ``graph.query.<name>``; its 200 answer."""
    client = await nats.connect(url)
    try:
        reply = await client.request(f"graph.query.{name}", json.dumps(request).encode(), 5)
    finally:
        await client.close()
    assert reply.headers is not None and reply.headers["Status"] == "200", reply.data
    answer: dict[str, Any] = json.loads(reply.data)
    return answer


def post_events(api: str, events: list[dict[str, Any]], timeout: float = 60.0) -> None:
    """POST events to an edge's ``/ingest``, retrying while it is down; all must be taken."""
    body = ndjson(events)
    deadline = time.monotonic() + timeout
    while True:
        request = urllib.request.Request(
            f"{api}/ingest", data=body, headers={"content-type": "application/x-ndjson"}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                assert reply.status == 202
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def drone_round(round_: int, count: int, *, priority: int = 3) -> list[dict[str, Any]]:
    """One reading of ``count`` drones; ``round`` says which reading it is."""
    return [
        {
            "entity_id": f"drone-{i:04d}",
            "entity_type": "drone",
            "priority": priority,
            "properties": {"round": round_, "battery": 100 - round_ % 100, "status": "flying"},
            "relationships": [{"predicate": "member_of", "object": f"fleet-{i % 5}"}],
        }
        for i in range(count)
    ]


def hub_process(
    workdir: Path,
    *,
    port: int | None = None,
    state_dir: Path | None = None,
    sync_input: dict[str, Any] | None = None,
    components: Sequence[dict[str, Any]] = (),
    tls: tuple[Path, Path] | None = None,
    **sections: Any,
) -> AgentProcess:
    """A ``cloud-hub run`` process, not started, whose ``websocket_input`` (``from-edges``)
    listens on the API's port.

    Args:
        workdir: where its config (``hub.json``) and log (``hub.log``) go.
        port: the API's and the sync input's port (default: a free one).
        state_dir: its ``state_dir`` (default: ``<workdir>/state``).
        sync_input: more keys of the ``websocket_input``'s config (``devices``, ...).
        components: more components after it (``communities``, ``dashboard``, ...).
        tls: the API's (cert, key): https, and wss for the sync path.
        sections: more sections of the hub's config (``provisioning``, ...).
    """
    port = free_port() if port is None else port
    config = config_dict(
        state_dir or workdir / "state",
        platform={"id": "hub", "type": "cloud-hub"},
        services={"service-manager": {"config": {"http_port": port, **_tls(tls)}}},
        components=[
            {
                "id": "from-edges",
                "type": "websocket_input",
                "config": {"port": port, **(sync_input or {})},
            },
            *components,
        ],
        **sections,
    )
    return AgentProcess(config, workdir, program="cloud_hub.cli", name="hub")


def _tls(files: tuple[Path, Path] | None) -> dict[str, Any]:
    if files is None:
        return {}
    return {"tls": {"cert_file": str(files[0]), "key_file": str(files[1])}}


class SyncPair:
    """A hub and an edge (child processes) with the edge's link through a :class:`LinkProxy`."""

    def __init__(
        self,
        workdir: Path,
        *,
        link: dict[str, Any] | None = None,
        hub_sections: dict[str, Any] | None = None,
        edge_sections: dict[str, Any] | None = None,
    ) -> None:
        self.token = secrets.token_urlsafe(24)
        hub_port = free_port()
        self.hub = hub_process(
            workdir,
            port=hub_port,
            state_dir=workdir / "hub-state",
            sync_input={
                "devices": {EDGE_ID: {"token": self.token}},
                "ping_interval": "1s",
                "ping_timeout": "2s",
                # A fresh edge asks for a resync at its first link; tests that then lose
                # its store ask again at once (the interval has a test of its own).
                "resync_min_interval": "1s",
            },
            **(hub_sections or {}),
        )
        self.proxy = LinkProxy("127.0.0.1", hub_port)
        self.proxy.start()
        output = {
            "url": f"ws://127.0.0.1:{self.proxy.port}/edge-sync",
            "token": self.token,
            "reconnect": {"initial": "100ms", "max": "1s"},
            "ping_interval": "1s",
            "ping_timeout": "2s",
            "batch": {"max_age": "50ms"},
            **(link or {}),
        }
        edge = config_dict(
            workdir / "edge-state",
            platform={"id": EDGE_ID},
            components=[{"id": "to-hub", "type": "websocket_output", "config": output}],
            **(edge_sections or {}),
        )
        self.edge = AgentProcess(edge, workdir, name="edge")
        self.hub_db = workdir / "hub-state" / "graph.db"

    def start(self) -> None:
        """Start the hub, then the edge."""
        self.hub.start()
        self.edge.start()

    def stop(self) -> None:
        """Stop both processes and the proxy (safe after a failure)."""
        for process in (self.edge, self.hub):
            if process.proc is not None and process.proc.poll() is None:
                process.proc.kill()
                process.proc.wait(10)
        self.proxy.stop()

    def edges(self) -> list[dict[str, Any]]:
        """The hub's ``GET /edges``."""
        status, body = http_json(f"{self.hub.api}/edges")
        assert status == 200, body
        result: list[dict[str, Any]] = body
        return result

    def wait_synced(
        self,
        timeout: float = 60.0,
        view: Callable[[Entity], Entity | None] | None = None,
        minimum: int = 1,
    ) -> dict[str, Entity]:
        """Wait until the hub holds exactly the edge's entities (``minimum`` at least);
        return them.

        ``view`` is what the link's filter makes of an edge entity (``None``: not sent).
        ``minimum`` guards the start, when both sides are still empty.
        """
        deadline = time.monotonic() + timeout
        while True:
            pending = self.edge.stats()["stream_pending"]  # first: the exports come after
            edge = _viewed(export(self.edge.api), view)
            hub = export(self.hub.api)
            if hub == edge and pending == 0 and len(hub) >= minimum:
                return hub
            if time.monotonic() > deadline:
                differing = sorted(k for k in edge.keys() | hub.keys() if edge.get(k) != hub.get(k))
                example = differing[0] if differing else None
                raise AssertionError(
                    f"hub != edge after {timeout}s: {len(differing)} entities differ"
                    f" (pending {pending}); e.g. {example}: edge {edge.get(example)}"
                    f" hub {hub.get(example)}"
                )
            time.sleep(0.25)

    def check_hub_records(self) -> int:
        """No stale or conflicting delta, and each batch stored once; the hub's hwm."""
        with sqlite3.connect(f"file:{self.hub_db}?mode=ro", uri=True) as db:
            refused = db.execute("SELECT count(*) FROM hub_conflicts").fetchone()[0]
            row = db.execute(
                "SELECT seq FROM hub_edge_state WHERE edge_id = ?", (EDGE_ID,)
            ).fetchone()
        assert refused == 0, f"{refused} conflicts recorded for a single edge"
        hwm = int(row[0])
        stored = asyncio.run(_stream_messages(self.hub.nats_url))
        assert stored == hwm, f"SYNC_BATCHES holds {stored} batches for hwm {hwm}"
        return hwm


async def _stream_messages(url: str) -> int:
    client = await nats.connect(url)
    try:
        info = await client.jetstream().stream_info("SYNC_BATCHES")
        return int(info.state.messages)
    finally:
        await client.close()
