"""Active-active hubs on a real 3-node NATS cluster: several ``cloud-hub run`` processes
share the replicated ``SYNC_BATCHES`` log, and each materialises it into its own graph.

What is checked at the end of each test: every instance holds the same graph (export
and per-edge provenance), every edge's graph equals its share of the hub's, the log
holds each (edge, seq) once and contiguously, and nothing was recorded as a conflict.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import nats
import pytest

from tests.cluster import NatsCluster
from tests.helpers import AgentProcess, config_dict, free_port, http_json
from tests.integration.sync_harness import Entity, export, metric, post_events
from tests.linkproxy import LinkProxy

pytestmark = pytest.mark.slow

DRONES = 40
SHARED = "fleet-shared"
EDGES = [f"edge-{n}" for n in range(4)]
TOKENS = {edge: secrets.token_urlsafe(24) for edge in EDGES}
STREAM = "SYNC_BATCHES"


# -- processes ----------------------------------------------------------------


def hub_instance(workdir: Path, instance: str, urls: list[str], port: int) -> AgentProcess:
    """A ``cloud-hub run`` process ``instance`` on the cluster at ``urls``, not started."""
    config = config_dict(
        workdir / f"{instance}-state",
        platform={"id": instance, "type": "cloud-hub"},
        nats={"urls": urls, "embedded": False},
        services={"service-manager": {"config": {"http_port": port}}},
        components=[
            {
                "id": "from-edges",
                "type": "websocket_input",
                "config": {
                    "port": port,
                    "devices": {edge: {"token": TOKENS[edge]} for edge in EDGES},
                    "ping_interval": "1s",
                    "ping_timeout": "2s",
                    # under each node's file store limit (NatsCluster: 256MB), or no
                    # node can take a replica
                    "stream_max_bytes": "64MB",
                },
            }
        ],
    )
    return AgentProcess(config, workdir, program="cloud_hub.cli", name=instance)


def edge_process(workdir: Path, edge: str, url: str) -> AgentProcess:
    """An edge agent (its own embedded NATS) syncing to ``url``, not started."""
    output = {
        "url": url,
        "token": TOKENS[edge],
        "reconnect": {"initial": "100ms", "max": "500ms"},
        "ping_interval": "1s",
        "ping_timeout": "2s",
        "batch": {"max_age": "50ms"},
    }
    config = config_dict(
        workdir / f"{edge}-state",
        platform={"id": edge},
        components=[{"id": "to-hub", "type": "websocket_output", "config": output}],
    )
    return AgentProcess(config, workdir, name=edge)


def start_all(*processes: AgentProcess) -> None:
    """Start the processes side by side (each waits for its own ``/health``)."""
    with ThreadPoolExecutor(len(processes)) as pool:
        for future in [pool.submit(p.start) for p in processes]:
            future.result()


def kill_all(*processes: AgentProcess) -> None:
    for process in processes:
        if process.proc is not None and process.proc.poll() is None:
            process.proc.kill()
            process.proc.wait(10)


def readings(edge: str, round_: int) -> list[dict[str, Any]]:
    """One reading of the edge's own drones, and the fleet every edge reports alike."""
    drones = [
        {
            "entity_id": f"{edge}-drone-{i:03d}",
            "entity_type": "drone",
            "priority": 3,
            "properties": {"round": round_, "battery": 100 - round_, "status": "flying"},
            "relationships": [{"predicate": "member_of", "object": SHARED}],
        }
        for i in range(DRONES)
    ]
    shared = {
        "entity_id": SHARED,
        "entity_type": "fleet",
        "priority": 3,
        "properties": {"name": "shared fleet", "region": "north"},
    }
    return [*drones, shared]


def acks(edge: AgentProcess) -> float:
    return metric(edge.api, "semstreams_sync_acks_total")


def wait_acked_past(edges: list[AgentProcess], before: list[float], timeout: float) -> float:
    """Seconds until every edge has had an ack beyond ``before``."""
    start = time.monotonic()
    while True:
        if all(acks(e) > b for e, b in zip(edges, before, strict=True)):
            return time.monotonic() - start
        assert time.monotonic() - start < timeout, "no new ack in time"
        time.sleep(0.05)


# -- checks -------------------------------------------------------------------


def shares_match(edge_graphs: dict[str, dict[str, Entity]], hub: dict[str, Entity]) -> list[str]:
    """What differs between the edges' graphs and the hub's (empty: their shares match)."""
    problems: list[str] = []
    reported: set[str] = set()
    for name, graph in edge_graphs.items():
        reported |= graph.keys()
        for key, entity in graph.items():
            if key not in hub:
                problems.append(f"{name}: {key} missing on the hub")
            elif key == SHARED:
                if entity["properties"] != hub[key]["properties"]:
                    problems.append(f"{name}: {key} {entity['properties']} != {hub[key]}")
            elif entity != hub[key]:
                problems.append(f"{name}: {key} {entity} != {hub[key]}")
    problems += [f"{key} on the hub, reported by no edge" for key in hub.keys() - reported]
    return problems


async def _consumers(urls: list[str]) -> dict[str, Any]:
    client = await nats.connect(servers=urls)
    try:
        js = client.jetstream(timeout=5)
        last = (await js.stream_info(STREAM)).state.last_seq
        views: dict[str, Any] = {"stream_last_seq": last}
        for info in await js.consumers_info(STREAM):
            views[info.name] = {
                "delivered": info.delivered.stream_seq if info.delivered else None,
                "ack_floor": info.ack_floor.stream_seq if info.ack_floor else None,
                "num_pending": info.num_pending,
                "num_ack_pending": info.num_ack_pending,
                "num_redelivered": info.num_redelivered,
                "num_waiting": info.num_waiting,
            }
        return views
    finally:
        await client.close()


def consumers(urls: list[str]) -> dict[str, Any]:
    """The log's last sequence and each materialiser's consumer state (for failures)."""
    try:
        return asyncio.run(_consumers(urls))
    except Exception as exc:
        return {"error": repr(exc)}


def wait_converged(
    hubs: list[AgentProcess],
    edges: list[AgentProcess],
    minimum: int,
    urls: list[str],
    timeout: float = 45.0,
) -> dict[str, Entity]:
    """Wait until every edge has sent everything and every hub holds the edges' union."""
    deadline = time.monotonic() + timeout
    while True:
        pending = [e.stats()["stream_pending"] for e in edges]  # first: exports come after
        graphs = {e.config["platform"]["id"]: export(e.api) for e in edges}
        exports = [export(h.api) for h in hubs]
        problems = shares_match(graphs, exports[0])
        problems += [f"hub {i} != hub 0" for i, x in enumerate(exports) if x != exports[0]]
        if not problems and not any(pending) and len(exports[0]) >= minimum:
            return exports[0]
        if time.monotonic() > deadline:
            health = [http_json(f"{h.api}/health")[1] for h in hubs]
            raise AssertionError(
                f"not converged (edges pending {pending}): {len(problems)} problems,"
                f" e.g. {problems[:2]}; consumers {consumers(urls)}; hub health {health}"
            )
        time.sleep(0.25)


def same_provenance(hubs: list[AgentProcess], ids: list[str]) -> None:
    for entity_id in ids:
        answers = [http_json(f"{h.api}/graph/entities/{entity_id}?provenance=1") for h in hubs]
        for status, body in answers:
            assert status == 200, body
            assert body["provenance"], body
        assert all(a == answers[0] for a in answers), (entity_id, answers)


def no_conflicts(hubs: list[AgentProcess]) -> None:
    for hub in hubs:
        db_path = Path(hub.config["state_dir"]) / "graph.db"
        with contextlib.closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as db:
            rows = db.execute(
                "SELECT entity_id, edge_id, kind, detail FROM hub_conflicts"
            ).fetchall()
        assert rows == [], f"{hub.config['platform']['id']}: conflicts {rows[:5]}"


async def _log_batches(urls: list[str]) -> dict[str, list[int]]:
    client = await nats.connect(servers=urls)
    try:
        js = client.jetstream(timeout=5)
        info = await js.stream_info(STREAM)
        seqs: dict[str, list[int]] = {}
        for stream_seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg(STREAM, stream_seq)
            headers = msg.headers or {}
            seqs.setdefault(headers["Semstreams-Edge"], []).append(int(headers["Semstreams-Seq"]))
        assert sum(map(len, seqs.values())) == info.state.messages
        return seqs
    finally:
        await client.close()


def log_holds_each_batch_once(urls: list[str], hub: AgentProcess, edges: list[str]) -> None:
    """The log holds every edge's batches 1..hwm, each once, in order."""
    seqs = asyncio.run(_log_batches(urls))
    assert sorted(seqs) == sorted(edges)
    status, rows = http_json(f"{hub.api}/edges")
    assert status == 200, rows
    hwms = {row["edge_id"]: row["hwm"] for row in rows}
    for edge, got in seqs.items():
        assert got == list(range(1, len(got) + 1)), f"{edge}: {got}"
        assert hwms[edge] == len(got), f"{edge}: hwm {hwms[edge]}, {len(got)} in the log"


def final_checks(
    hubs: dict[str, AgentProcess], cluster: NatsCluster, hub: dict[str, Entity]
) -> None:
    """The converged graph's content, provenance, log and conflicts, on every instance."""
    assert hub[f"{EDGES[0]}-drone-007"]["properties"]["round"] == 3
    assert hub[SHARED]["properties"] == {"name": "shared fleet", "region": "north"}
    sample = [SHARED, *(f"{e}-drone-{i:03d}" for e in EDGES for i in (0, DRONES - 1))]
    same_provenance(list(hubs.values()), sample)
    status, shared = http_json(f"{hubs['hub-b'].api}/graph/entities/{SHARED}?provenance=1")
    assert status == 200 and len(shared["provenance"]) == len(EDGES), shared
    log_holds_each_batch_once(cluster.urls, hubs["hub-b"], EDGES)
    log_holds_each_batch_once(cluster.urls, hubs["hub-a"], EDGES)
    no_conflicts(list(hubs.values()))


# -- fixtures -----------------------------------------------------------------


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    nodes = NatsCluster(tmp_path / "cluster")
    nodes.start()  # from the test's thread (the nodes' parent-death signal follows it)
    try:
        asyncio.run(nodes.wait_ready())
        yield nodes
    finally:
        nodes.stop()


# -- tests --------------------------------------------------------------------


def test_two_hub_instances_on_a_cluster_hold_the_same_graph(
    tmp_path: Path, cluster: NatsCluster
) -> None:
    ports = {"hub-a": free_port(), "hub-b": free_port()}
    hubs = {name: hub_instance(tmp_path, name, cluster.urls, port) for name, port in ports.items()}
    home = {edge: "hub-a" if n < 2 else "hub-b" for n, edge in enumerate(EDGES)}
    proxies = {edge: LinkProxy("127.0.0.1", ports[home[edge]]) for edge in EDGES}
    for proxy in proxies.values():
        proxy.start()
    edges = {
        edge: edge_process(tmp_path, edge, f"ws://127.0.0.1:{proxies[edge].port}/edge-sync")
        for edge in EDGES
    }
    processes = [*hubs.values(), *edges.values()]
    measured: dict[str, float] = {}
    try:
        start_all(*hubs.values())
        start_all(*edges.values())
        everything = DRONES * len(EDGES) + 1
        for edge, process in edges.items():
            post_events(process.api, readings(edge, 0))
        wait_converged(list(hubs.values()), list(edges.values()), everything, cluster.urls)

        # kill -9 the node leading the log's replicas, then read on.
        leader = asyncio.run(cluster.stream_leader(STREAM))
        before = [acks(e) for e in edges.values()]
        killed_at = time.monotonic()
        cluster.kill9(leader)
        for edge, process in edges.items():
            post_events(process.api, readings(edge, 1))
        wait_acked_past(list(edges.values()), before, timeout=30)
        measured["nats_kill_to_all_acked_s"] = time.monotonic() - killed_at

        # kill -9 hub-a; its edges' links now lead to hub-b.
        moved = [e for e in EDGES if home[e] == "hub-a"]
        before = [acks(edges[e]) for e in moved]
        hubs["hub-a"].kill()
        killed_at = time.monotonic()
        for edge in moved:
            listen = proxies[edge].port
            proxies[edge].stop()
            proxies[edge] = LinkProxy("127.0.0.1", ports["hub-b"], listen_port=listen)
            proxies[edge].start()
        for edge, process in edges.items():
            post_events(process.api, readings(edge, 2))
        wait_acked_past([edges[e] for e in moved], before, timeout=30)
        measured["hub_kill_to_edges_acked_on_other_s"] = time.monotonic() - killed_at

        cluster.restart(leader)
        asyncio.run(cluster.wait_ready())
        # hub-a comes back on its own state and catches up from the log.
        restarted_at = time.monotonic()
        hubs["hub-a"].start()
        for edge, process in edges.items():
            post_events(process.api, readings(edge, 3))
        hub = wait_converged(list(hubs.values()), list(edges.values()), everything, cluster.urls)
        measured["hub_restart_to_converged_s"] = time.monotonic() - restarted_at
        print(f"measured: {measured}")

        assert len(hub) == everything
        final_checks(hubs, cluster, hub)
    finally:
        kill_all(*processes)
        for proxy in proxies.values():
            proxy.stop()


def test_a_new_instance_started_empty_builds_the_same_graph_from_the_log(
    tmp_path: Path, cluster: NatsCluster
) -> None:
    port = free_port()
    first = hub_instance(tmp_path, "hub-a", cluster.urls, port)
    edge = edge_process(tmp_path, EDGES[0], f"ws://127.0.0.1:{port}/edge-sync")
    fresh = hub_instance(tmp_path, "hub-new", cluster.urls, free_port())
    try:
        first.start()
        edge.start()
        for round_ in range(3):
            post_events(edge.api, readings(EDGES[0], round_))
        before = wait_converged([first], [edge], DRONES + 1, cluster.urls)

        started_at = time.monotonic()
        fresh.start()
        hub = wait_converged([first, fresh], [edge], DRONES + 1, cluster.urls)
        print(f"measured: fresh instance converged in {time.monotonic() - started_at:.2f}s")
        assert hub == before
        same_provenance([first, fresh], [SHARED, f"{EDGES[0]}-drone-000"])
        log_holds_each_batch_once(cluster.urls, fresh, [EDGES[0]])
        no_conflicts([first, fresh])
    finally:
        kill_all(edge, first, fresh)
