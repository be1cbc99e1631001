"""The sync link end to end: a real hub and a real edge (child processes, each with its
own nats-server), real WebSockets, and real faults on the link between them.

Every test ends with the invariant checker: the hub's graph equals the edge's
(filtered) graph entity by entity, the hub refused nothing as stale or conflicting
(what a change applied twice or out of order would be), and its JetStream stream holds
each batch once.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.certs import self_signed
from tests.helpers import AgentProcess, config_dict, free_port, http_json
from tests.integration.sync_harness import (
    EDGE_ID,
    SyncPair,
    drone_round,
    graph_query,
    graph_query_over_nats,
    hub_process,
    metric,
    post_events,
)

pytestmark = pytest.mark.slow

DRONES = 200


def test_edge_graph_reaches_the_hub_and_the_hub_reports_the_edge(pair: SyncPair) -> None:
    for round_ in range(3):
        post_events(pair.edge.api, drone_round(round_, DRONES))
    hub = pair.wait_synced(minimum=DRONES)
    assert hub["drone-0007"]["properties"]["round"] == 2
    assert hub["drone-0007"]["version"] == 3
    assert pair.check_hub_records() >= 1
    (edge,) = pair.edges()
    assert edge["edge_id"] == EDGE_ID
    assert edge["connected"] is True
    assert edge["hwm"] >= 1 and edge["bytes_received"] > 0 and edge["last_seen"]
    assert edge["lag_seconds"] >= 0
    status, stats = http_json(f"{pair.hub.api}/graph/stats")
    assert status == 200 and stats["by_type"]["drone"] == DRONES
    status, entity = http_json(f"{pair.hub.api}/graph/entities/drone-0007")
    assert status == 200 and entity["origin"] == EDGE_ID
    sent = metric(pair.edge.api, "semstreams_sync_bytes_sent_total", 'stage="wire"')
    raw = metric(pair.edge.api, "semstreams_sync_bytes_sent_total", 'stage="uncompressed"')
    received = metric(pair.hub.api, "semstreams_sync_bytes_received_total", 'stage="wire"')
    assert 0 < sent < raw, "batches are compressed on the wire"
    assert received > 0
    assert metric(pair.edge.api, "semstreams_sync_acks_total") >= 1
    assert metric(pair.hub.api, "semstreams_sync_deltas_total", 'outcome="applied"') >= DRONES


def _located(i: int) -> dict[str, Any]:
    """A drone at 52.0 + i/100 degrees north, 4.0 east (about 1.1 km apart)."""
    return {
        "entity_id": f"geo-{i}",
        "entity_type": "drone",
        "priority": 3,
        "properties": {"geo.location.latitude": 52.0 + i / 100, "geo.location.longitude": 4.0},
    }


def test_the_hub_answers_spatial_temporal_and_cross_edge_queries(pair: SyncPair) -> None:
    before_ms = int(time.time() * 1000) - 1000
    post_events(pair.edge.api, [_located(i) for i in range(5)])
    pair.wait_synced(minimum=5)
    queries = {
        "spatial": {"min_lat": 52.015, "max_lat": 52.035, "min_lon": 3.9, "max_lon": 4.1},
        "temporal": {
            "start": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(before_ms / 1000)),
            "end": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 60)),
        },
    }
    for name, request in queries.items():
        over_http = graph_query(pair.hub, name, request)
        assert asyncio.run(graph_query_over_nats(pair.hub.nats_url, name, request)) == over_http
    box = graph_query(pair.hub, "spatial", queries["spatial"])
    assert [e["entity_id"] for e in box["entities"]] == ["geo-2", "geo-3"]
    near = {"lat": 52.0, "lon": 4.0, "radius_m": 1500}
    circle = graph_query(pair.hub, "spatial", near)
    assert [(e["entity_id"], e["distance_m"] < 1500) for e in circle["entities"]] == [
        ("geo-0", True),
        ("geo-1", True),
    ]
    recent = graph_query(pair.hub, "temporal", queries["temporal"])
    assert {f"geo-{i}" for i in range(5)} <= {e["entity_id"] for e in recent["entities"]}

    status, types = http_json(f"{pair.hub.api}/graph/types")
    assert status == 200 and types["drone"] == {EDGE_ID: 5}
    (edge,) = pair.edges()
    assert edge["types"] == {"drone": 5} and edge["entities"] == 5
    assert edge["freshness"] and edge["applied_at"]


def test_ten_kill_9s_of_the_edge_mid_sync_lose_and_repeat_nothing(tmp_path: Path) -> None:
    pair = SyncPair(tmp_path, link={"max_bytes_per_second": 20_000, "mode": "events"})
    pair.start()
    try:
        rng = random.Random(4)
        resent = 0.0
        for round_ in range(10):
            stuck = round_ % 2 == 1
            if stuck:  # batches go out and stay unacked: in flight when the kill lands
                pair.proxy.blackhole()
            post_events(pair.edge.api, drone_round(round_, DRONES))
            time.sleep(rng.uniform(0.3, 0.8))
            pair.edge.kill()
            pair.proxy.restore()
            pair.edge.start()
            if stuck:
                resent += _wait_for_resend(pair)
        pair.wait_synced(timeout=120, minimum=DRONES)
        assert pair.check_hub_records() >= 10
        assert resent >= 5, "batches in flight at a kill were sent again after the restart"
    finally:
        pair.stop()


def _wait_for_resend(pair: SyncPair) -> float:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        resent = metric(pair.edge.api, "semstreams_sync_batches_total", 'direction="resent"')
        if resent:
            return resent
        time.sleep(0.1)
    return 0.0


def test_five_kills_of_the_hub_mid_batch_lose_and_repeat_nothing(tmp_path: Path) -> None:
    pair = SyncPair(tmp_path, link={"mode": "events", "batch": {"max_count": 50}})
    pair.start()
    try:
        for round_ in range(5):
            post_events(pair.edge.api, drone_round(round_, DRONES))
            time.sleep(0.15)
            pair.hub.kill()
            pair.hub.start()
        pair.wait_synced(timeout=120, minimum=DRONES)
        pair.check_hub_records()
        assert metric(pair.edge.api, "semstreams_sync_reconnects_total") >= 5
    finally:
        pair.stop()


def test_a_link_cut_for_30_s_holds_changes_and_delivers_them_after(pair: SyncPair) -> None:
    post_events(pair.edge.api, drone_round(0, DRONES))
    pair.wait_synced(minimum=DRONES)
    pair.proxy.cut()
    for round_ in range(1, 6):
        post_events(pair.edge.api, drone_round(round_, DRONES))
    time.sleep(30)
    assert pair.edges()[0]["connected"] is False
    assert metric(pair.edge.api, "semstreams_sync_backlog_entities") == DRONES, "coalesced"
    assert metric(pair.edge.api, "semstreams_sync_connected") == 0
    pair.proxy.restore()
    hub = pair.wait_synced(timeout=30, minimum=DRONES)
    assert hub["drone-0000"]["properties"]["round"] == 5
    pair.check_hub_records()


def test_a_half_open_link_is_detected_by_ping_timeout_and_replaced(pair: SyncPair) -> None:
    post_events(pair.edge.api, drone_round(0, DRONES))
    pair.wait_synced(minimum=DRONES)
    reconnects = metric(pair.edge.api, "semstreams_sync_reconnects_total")
    pair.proxy.blackhole()  # packets dropped, no FIN, no RST
    post_events(pair.edge.api, drone_round(1, DRONES))
    deadline = time.monotonic() + 10
    while metric(pair.edge.api, "semstreams_sync_connected") == 1:
        assert time.monotonic() < deadline, "half-open link not detected"
        time.sleep(0.2)
    pair.proxy.restore()
    hub = pair.wait_synced(timeout=30, minimum=DRONES)
    assert hub["drone-0001"]["properties"]["round"] == 1
    assert metric(pair.edge.api, "semstreams_sync_reconnects_total") > reconnects
    pair.check_hub_records()


def test_a_hub_that_cannot_make_batches_durable_nacks_and_nothing_is_lost(
    pair: SyncPair,
) -> None:
    post_events(pair.edge.api, drone_round(0, DRONES))
    pair.wait_synced(minimum=DRONES)
    nats_pid = int((Path(pair.hub.config["state_dir"]) / "nats-server.pid").read_text())
    os.kill(nats_pid, signal.SIGSTOP)  # the hub's JetStream stops answering
    try:
        post_events(pair.edge.api, drone_round(1, DRONES))
        deadline = time.monotonic() + 20
        while metric(pair.edge.api, "semstreams_sync_nacks_total", 'reason="not durable"') == 0:
            assert time.monotonic() < deadline, "no nack while JetStream was frozen"
            time.sleep(0.2)
    finally:
        os.kill(nats_pid, signal.SIGCONT)
    hub = pair.wait_synced(timeout=60, minimum=DRONES)
    assert hub["drone-0000"]["properties"]["round"] == 1
    pair.check_hub_records()


def test_filters_keep_unselected_entities_and_triples_on_the_edge(tmp_path: Path) -> None:
    link = {"filters": {"priority": {"gte": 3}, "predicate": {"ne": "status"}}}
    pair = SyncPair(tmp_path, link=link)
    pair.start()
    try:
        post_events(pair.edge.api, drone_round(0, 50, priority=5))
        low = drone_round(0, 50, priority=1)
        post_events(pair.edge.api, [{**e, "entity_id": f"low-{i}"} for i, e in enumerate(low)])

        def filtered(entity: dict[str, Any]) -> dict[str, Any] | None:
            if entity["priority"] < 3:
                return None
            kept = {k: v for k, v in entity["properties"].items() if k != "status"}
            return {**entity, "properties": kept}

        hub = pair.wait_synced(view=filtered, minimum=50)
        assert len(hub) == 50
        assert not [k for k in hub if k.startswith("low-")]
        assert metric(pair.edge.api, "semstreams_sync_dropped_total", 'reason="filtered"') >= 50
        pair.check_hub_records()
    finally:
        pair.stop()


def test_under_a_saturated_cap_a_priority_9_change_arrives_within_2_s(tmp_path: Path) -> None:
    pair = SyncPair(tmp_path, link={"max_bytes_per_second": 4000, "batch": {"max_age": "200ms"}})
    pair.start()
    try:
        rng = random.Random(9)
        # 5,000 entities with incompressible readings: ~150 kB, over 30 s at this cap.
        bulk = [
            {
                "entity_id": f"sensor-{i:05d}",
                "entity_type": "sensor",
                "priority": 1,
                "properties": {"value": rng.random(), "noise": rng.random()},
            }
            for i in range(5000)
        ]
        post_events(pair.edge.api, bulk)
        time.sleep(2)
        assert metric(pair.edge.api, "semstreams_sync_backlog_entities") > 2000, "saturated"
        alert = {"entity_id": "alert-1", "entity_type": "alert", "priority": 9}
        sent = time.monotonic()
        post_events(pair.edge.api, [{**alert, "properties": {"level": "fire"}}])
        while http_json(f"{pair.hub.api}/graph/entities/alert-1")[0] != 200:
            assert time.monotonic() - sent < 2.0, "alert not on the hub within 2 s"
            time.sleep(0.02)
        assert metric(pair.edge.api, "semstreams_sync_backlog_entities") > 1000, "still saturated"
    finally:
        pair.stop()


def test_the_link_runs_over_wss_on_a_listener_of_its_own(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    api_port, sync_port, token = free_port(), free_port(), "wss-token-0123456789"
    hub = hub_process(
        tmp_path,
        port=api_port,
        state_dir=tmp_path / "hub-state",
        sync_input={"port": sync_port, "devices": {EDGE_ID: {"token": token}}},
        tls=(cert, key),
    )
    output = {"url": f"wss://127.0.0.1:{sync_port}/edge-sync", "token": token}
    edge = AgentProcess(
        config_dict(
            tmp_path / "edge-state",
            platform={"id": EDGE_ID},
            components=[
                {
                    "id": "to-hub",
                    "type": "websocket_output",
                    "config": {**output, "tls": {"ca_file": str(cert)}},
                }
            ],
        ),
        tmp_path,
        name="edge",
    )
    hub.start()
    edge.start()
    try:
        post_events(edge.api, drone_round(0, 10))
        deadline = time.monotonic() + 30
        while http_json(f"{hub.api}/graph/entities/drone-0009", context=hub.context)[0] != 200:
            assert time.monotonic() < deadline, "nothing synced over wss"
            time.sleep(0.1)
        assert metric(edge.api, "semstreams_sync_connected") == 1
    finally:
        edge.stop()
        hub.stop()
