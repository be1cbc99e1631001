"""GraphRAG on a real hub fed by a real edge: text search over HTTP and NATS, local search.

Most tests run the hub with embeddings off, so a query that wants vectors is answered
from text and says ``"degraded": true``; the last runs it with ``cloud-hub
embed-server`` (the shipped model) as a child process and kills it mid-run.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.embed_server import EmbedServer
from tests.helpers import http_json, wait_until
from tests.integration.sync_harness import (
    SyncPair,
    graph_query,
    graph_query_over_nats,
    metric,
    post_events,
)

pytestmark = pytest.mark.slow

NOTES = {
    "note-1": "Battery swelling found on UAV-001 after a hard landing at the north depot",
    "note-2": "Rotor blade cracked on UAV-002 during the morning inspection",
    "note-3": "GPS signal lost twice near the river crossing; UAV-003 returned home",
}


def _note(entity_id: str, text: str, drone: str) -> dict[str, Any]:
    return {
        "entity_id": entity_id,
        "entity_type": "maintenance_note",
        "properties": {"text": text},
        "relationships": [{"predicate": "about", "object": drone}],
    }


def _drone(number: int) -> dict[str, Any]:
    return {
        "entity_id": f"UAV-00{number}",
        "entity_type": "drone",
        "properties": {"model": "quadcopter"},
        "relationships": [{"predicate": "based_at", "object": "depot-north"}],
    }


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[SyncPair]:
    made = SyncPair(tmp_path)
    made.start()
    events = [_drone(n) for n in (1, 2, 3)]
    events += [_note(key, text, f"UAV-00{key[-1]}") for key, text in NOTES.items()]
    post_events(made.edge.api, events)
    made.wait_synced(minimum=len(events))
    yield made
    made.stop()


def test_text_search_finds_synced_entities_over_http_and_nats(pair: SyncPair) -> None:
    request = {"query": "swollen battery after landing", "mode": "text", "limit": 3}
    answer = graph_query(pair.hub, "search", request)
    assert answer["mode"] == "text" and answer["degraded"] is False
    assert answer["results"][0]["entity_id"] == "note-1"
    assert answer["results"][0]["entity_type"] == "maintenance_note"
    assert "[Battery]" in answer["results"][0]["snippet"]  # the matched words marked
    assert set(answer["timings_ms"]) >= {"text"}
    over_nats = asyncio.run(graph_query_over_nats(pair.hub.nats_url, "search", request))
    assert over_nats["results"] == answer["results"]
    # Filters: by type, and by the edge that reports the entity.
    drones = graph_query(
        pair.hub, "search", {"query": "UAV 001", "mode": "text", "entity_types": ["drone"]}
    )
    assert drones["results"][0]["entity_id"] == "UAV-001"
    assert {hit["entity_type"] for hit in drones["results"]} == {"drone"}
    nobody = graph_query(
        pair.hub, "search", {"query": "battery", "mode": "text", "edges": ["other-edge"]}
    )
    assert nobody["results"] == []


def test_without_vectors_a_hybrid_query_is_answered_from_text_and_says_so(
    pair: SyncPair,
) -> None:
    answer = graph_query(pair.hub, "search", {"query": "rotor blade crack", "mode": "hybrid"})
    assert answer["degraded"] is True
    assert answer["results"][0]["entity_id"] == "note-2"


def test_local_search_gives_neighbourhoods_and_paths_between_hits(pair: SyncPair) -> None:
    answer = graph_query(pair.hub, "local", {"query": "north depot battery UAV-001", "limit": 5})
    hits = {hit["entity_id"]: hit for hit in answer["results"]}
    assert {"note-1", "UAV-001"} <= hits.keys()
    about = {(n["predicate"], n["entity_id"]) for n in hits["note-1"]["neighbours"]}
    assert ("about", "UAV-001") in about
    joined = {(p["from"], p["to"]) for p in answer["paths"]}
    assert ("UAV-001", "note-1") in joined or ("UAV-001", "depot-north") in joined


def test_bad_search_requests_get_a_400_naming_the_field(pair: SyncPair) -> None:
    for body, field in (
        ({"query": ""}, "query"),
        ({"query": "x", "mode": "telepathy"}, "mode"),
        ({"query": "x", "limit": 10_000}, "limit"),
        ({"query": "x", "surprise": 1}, "surprise"),
    ):
        status, answer = http_json(f"{pair.hub.api}/graph/query/search", json.dumps(body).encode())
        assert status == 400 and field in answer["error"], (body, answer)


def test_a_new_entity_is_findable_by_text_within_seconds(pair: SyncPair) -> None:
    post_events(pair.edge.api, [_note("note-9", "Propeller guard missing on UAV-002", "UAV-002")])
    started = time.monotonic()
    while True:
        answer = graph_query(pair.hub, "search", {"query": "propeller guard", "mode": "text"})
        if answer["results"] and answer["results"][0]["entity_id"] == "note-9":
            break
        assert time.monotonic() - started < 10, "not findable after 10 s"
        time.sleep(0.1)


@pytest.fixture
def embedding_pair(tmp_path: Path) -> Iterator[tuple[SyncPair, EmbedServer]]:
    server = EmbedServer(tmp_path)
    server.start(timeout=60)
    embedding = {"enabled": True, "service_url": server.url, "breaker_reset": "2s"}
    made = SyncPair(
        tmp_path, hub_sections={"graph": {"config": {"indexer": {"embedding": embedding}}}}
    )
    made.start()
    yield made, server
    made.stop()
    server.stop()


def _backlog(pair: SyncPair) -> float:
    return metric(pair.hub.api, "semstreams_embedding_backlog")


def _embedding(pair: SyncPair) -> dict[str, Any]:
    health: dict[str, Any] = http_json(f"{pair.hub.api}/health")[1]
    return dict(health["components"]["graphrag"]["embedding"])


def test_the_embedding_service_killed_degrades_answers_and_its_backlog_drains_after(
    embedding_pair: tuple[SyncPair, EmbedServer],
) -> None:
    pair, server = embedding_pair
    post_events(pair.edge.api, [_note(key, words, "UAV-001") for key, words in NOTES.items()])
    pair.wait_synced(minimum=len(NOTES))
    wait_until(lambda: _embedding(pair)["vectors"] >= len(NOTES), "the notes to be embedded", 60)
    # By meaning alone: no word of the query is in the note.
    answer = graph_query(pair.hub, "search", {"query": "propeller fracture", "mode": "vector"})
    assert answer["degraded"] is False and answer["results"][0]["entity_id"] == "note-2"

    server.kill()
    post_events(pair.edge.api, [_note("note-8", "Camera gimbal shaking in gusts", "UAV-003")])
    pair.wait_synced(minimum=len(NOTES) + 1)
    answer = graph_query(pair.hub, "search", {"query": "rotor blade crack", "mode": "hybrid"})
    assert answer["degraded"] is True and answer["results"][0]["entity_id"] == "note-2"
    wait_until(lambda: _backlog(pair) >= 1, "the new note to wait in the queue", 60)
    assert _embedding(pair)["status"] == "degraded" and _embedding(pair)["backlog"] >= 1

    server.start(timeout=60)
    wait_until(lambda: _embedding(pair)["vectors"] > len(NOTES), "the new note's vector", 90)
    wait_until(lambda: _backlog(pair) == 0, "the backlog to drain", 60)
    answer = graph_query(
        pair.hub, "search", {"query": "imaging mount wobbling in wind", "mode": "vector"}
    )
    assert answer["degraded"] is False and answer["results"][0]["entity_id"] == "note-8"


def _cluster(name: str, topic: str, size: int) -> list[dict[str, Any]]:
    """A fleet of drones around a depot, each with a note on the fleet's topic."""
    events = []
    for n in range(size):
        drone = f"{name}-uav-{n}"
        events.append(
            {
                "entity_id": drone,
                "entity_type": "drone",
                "properties": {"status": "flying"},
                "relationships": [
                    {"predicate": "based_at", "object": f"{name}-depot"},
                    {"predicate": "flies_with", "object": f"{name}-uav-{(n + 1) % size}"},
                ],
            }
        )
        events.append(_note(f"{name}-note-{n}", f"{topic} reported by the crew", drone))
    events.append({"entity_id": f"{name}-depot", "entity_type": "place", "properties": {}})
    return events


@pytest.fixture
def clustered(tmp_path: Path) -> Iterator[SyncPair]:
    communities = {"id": "communities", "type": "communities", "config": {"interval": "500ms"}}
    made = SyncPair(tmp_path, hub_sections={"components": [communities]})
    made.start()
    events = _cluster("harbour", "salt corrosion on the motor housings", 6)
    events += _cluster("quarry", "dust clogging the air filters", 6)
    post_events(made.edge.api, events)
    made.wait_synced(minimum=len(events))
    yield made
    made.stop()


def test_communities_follow_the_graph_and_answer_global_and_local_search(
    clustered: SyncPair,
) -> None:
    pair = clustered
    deadline = time.monotonic() + 60
    while True:
        status, level0 = http_json(f"{pair.hub.api}/graph/communities?level=0")
        if status == 200 and len(level0) >= 2:
            break
        assert time.monotonic() < deadline, f"no communities: {level0}"
        time.sleep(0.5)
    # The two fleets are two communities: each fleet's members together, apart from the other.
    detail = http_json(f"{pair.hub.api}/graph/communities/{level0[0]['id']}")[1]
    members = {e["entity_id"] for e in detail["top_entities"]}
    assert len({m.split("-")[0] for m in members}) == 1, members
    assert http_json(f"{pair.hub.api}/graph/communities/L0-nope")[0] == 404

    answer = graph_query(
        pair.hub, "global", {"query": "salt corrosion motors", "level": 0, "limit": 2}
    )
    best = answer["communities"][0]
    assert best["members"] and all(m["entity_id"].startswith("harbour") for m in best["members"])
    local = graph_query(pair.hub, "local", {"query": "dust clogging air filters", "limit": 3})
    hit = local["results"][0]
    assert hit["entity_id"].startswith("quarry-note") and hit["communities"]
