"""The querier: one JSON contract for every query, index checks, and a cache never stale."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config import IndexesConfig
from edge_agent.graph import GraphStore
from edge_agent.graph.cache import QueryCache
from edge_agent.graph.querier import Querier
from edge_agent.metrics import Metrics
from edge_agent.model import decode_event

ALL = IndexesConfig(predicate=True, incoming=True, alias=True, spatial=True, temporal=True)


class Graph:
    """A store, a querier over it, and a feed that applies events like the processor."""

    def __init__(self, path: Path, indexes: IndexesConfig = ALL, cache: bool = True) -> None:
        self.store = GraphStore(path, origin="e", indexes=indexes)
        self.store.position("c", "s")
        self.metrics = Metrics()
        self.querier = Querier(
            self.store, indexes=indexes, metrics=self.metrics, cache_enabled=cache
        )
        self.seq = 0

    def feed(self, *events: dict[str, Any]) -> None:
        batch = []
        for raw in events:
            self.seq += 1
            body = {"properties": {}, "entity_type": "drone", **raw}
            batch.append((self.seq, decode_event(json.dumps(body).encode(), max_bytes=65536)))
        result = self.store.apply(batch, consumer="c", now_ms=1_700_000_000_000)
        self.querier.invalidate(result.touched)

    def ask(self, name: str, **request: Any) -> tuple[int, Any]:
        status, body = self.querier.handle(name, json.dumps(request).encode())
        return status, json.loads(body)

    def counter(self, name: str) -> float:
        value = self.metrics.registry.get_sample_value(name)
        return value or 0.0


def link(target: str, predicate: str = "link", weight: float = 1.0) -> dict[str, Any]:
    return {"predicate": predicate, "object": target, "weight": weight}


@pytest.fixture
def graph(tmp_path: Path) -> Graph:
    g = Graph(tmp_path / "g.db")
    g.feed(
        {"entity_id": "A", "relationships": [link("B")], "aliases": ["alpha"]},
        {"entity_id": "B", "entity_type": "relay", "relationships": [link("C")]},
        {
            "entity_id": "C",
            "properties": {
                "geo.location.latitude": 37.7749,
                "geo.location.longitude": -122.4194,
                "mode": "idle",
            },
        },
        {
            "entity_id": "D",
            "properties": {"geo.location.latitude": 37.8044, "geo.location.longitude": -122.2712},
            "timestamp": "2024-01-15T10:30:00Z",
        },
    )
    return g


def test_cached_path_is_never_stale_after_an_update(graph: Graph) -> None:
    status, first = graph.ask("path", start_entity="A", max_depth=3)
    assert status == 200
    assert set(first["scores"]) == {"A", "B", "C"}
    assert graph.ask("path", start_entity="A", max_depth=3)[1] == first
    assert graph.counter("semstreams_cache_hits_total") == 1
    # A new edge out of C, a node the cached result reached: the result must change.
    graph.feed({"entity_id": "C", "relationships": [link("Z")]})
    _, second = graph.ask("path", start_entity="A", max_depth=3)
    assert set(second["scores"]) == {"A", "B", "C", "Z"}
    # An incoming edge written by an entity the result never saw also changes an
    # incoming query's answer: the write touches both ends.
    _, before = graph.ask("path", start_entity="C", direction="incoming", max_depth=1)
    graph.feed({"entity_id": "Q", "relationships": [link("C")]})
    _, after = graph.ask("path", start_entity="C", direction="incoming", max_depth=1)
    assert set(after["scores"]) - set(before["scores"]) == {"Q"}
    assert graph.counter("semstreams_cache_requests_total") == 5


def test_cached_entity_follows_a_delete(graph: Graph) -> None:
    assert graph.ask("entity", entity_id="A")[0] == 200
    graph.feed({"entity_id": "A", "op": "delete"})
    status, body = graph.ask("entity", entity_id="A")
    assert status == 404
    assert "'A' not found" in body["error"]


def test_unknown_start_entity_is_404(graph: Graph) -> None:
    status, body = graph.ask("path", start_entity="nobody")
    assert status == 404
    assert body == {"error": "start entity 'nobody' not found"}


@pytest.mark.parametrize(
    ("name", "request_", "message"),
    [
        ("path", {"start_entity": "A", "max_depth": 99}, "max_depth"),
        ("path", {"start_entity": "A", "speed": 1}, "unknown field `speed`"),
        ("spatial", {"lat": 1.0}, "give min_lat"),
        ("temporal", {"start": "yesterday", "end": "2024-01-01T00:00:00Z"}, "start"),
        ("temporal", {"start": "2024-02-01T00:00:00Z", "end": "2024-01-01T00:00:00Z"}, "before"),
    ],
)
def test_bad_requests_are_400_with_a_message(
    graph: Graph, name: str, request_: dict[str, Any], message: str
) -> None:
    status, body = graph.ask(name, **request_)
    assert status == 400
    assert message in body["error"]


def test_unknown_query_name(graph: Graph) -> None:
    assert graph.querier.handle("teleport", b"{}")[0] == 404


def test_relationships_predicate_and_alias(graph: Graph) -> None:
    _, rel = graph.ask("relationships", entity_id="B")
    assert rel["outgoing"] == [{"predicate": "link", "object": "C", "weight": 1.0}]
    assert rel["incoming"] == [{"predicate": "link", "subject": "A", "weight": 1.0}]
    _, idle = graph.ask("predicate", predicate="mode", value="idle")
    assert [e["entity_id"] for e in idle["entities"]] == ["C"]
    _, linked = graph.ask("predicate", predicate="link")
    assert [e["entity_id"] for e in linked["entities"]] == ["A", "B"]
    _, alias = graph.ask("alias", alias="alpha")
    assert [e["entity_id"] for e in alias["entities"]] == ["A"]
    assert graph.ask("alias", alias="omega")[0] == 404


def test_spatial_box_and_radius(graph: Graph) -> None:
    _, box = graph.ask("spatial", min_lat=37.7, max_lat=37.8, min_lon=-122.5, max_lon=-122.3)
    assert [e["entity_id"] for e in box["entities"]] == ["C"]
    # San Francisco to Oakland is about 13 km.
    _, near = graph.ask("spatial", lat=37.7749, lon=-122.4194, radius_m=5_000)
    assert [e["entity_id"] for e in near["entities"]] == ["C"]
    _, wide = graph.ask("spatial", lat=37.7749, lon=-122.4194, radius_m=20_000)
    assert [e["entity_id"] for e in wide["entities"]] == ["C", "D"]
    assert 12_000 < wide["entities"][1]["distance_m"] < 14_000


def test_temporal_range(graph: Graph) -> None:
    _, hits = graph.ask("temporal", start="2024-01-15T10:00:00Z", end="2024-01-15T11:00:00Z")
    assert [e["entity_id"] for e in hits["entities"]] == ["D"]
    _, none = graph.ask("temporal", start="2020-01-01T00:00:00Z", end="2020-01-02T00:00:00Z")
    assert none["entities"] == []


@pytest.mark.parametrize(
    ("index", "name", "request_"),
    [
        ("spatial", "spatial", {"lat": 1.0, "lon": 2.0, "radius_m": 10}),
        ("temporal", "temporal", {"start": "2024-01-01T00:00:00Z", "end": "2024-01-02T00:00:00Z"}),
        ("alias", "alias", {"alias": "alpha"}),
        ("predicate", "predicate", {"predicate": "mode"}),
        ("incoming", "path", {"start_entity": "A", "direction": "both"}),
        ("incoming", "relationships", {"entity_id": "A"}),
    ],
)
def test_query_on_a_disabled_index_says_which(
    tmp_path: Path, index: str, name: str, request_: dict[str, Any]
) -> None:
    off = IndexesConfig(**{**dict.fromkeys(ALL.__struct_fields__, True), index: False})
    g = Graph(tmp_path / "g.db", indexes=off)
    g.feed({"entity_id": "A"})
    status, body = g.ask(name, **request_)
    assert status == 400
    assert f"the {index} index is off" in body["error"]


def test_cache_off_counts_nothing(tmp_path: Path) -> None:
    g = Graph(tmp_path / "g.db", cache=False)
    g.feed({"entity_id": "A"})
    g.ask("path", start_entity="A")
    g.ask("path", start_entity="A")
    assert g.counter("semstreams_cache_requests_total") == 0
    assert len(g.querier.cache) == 0


def test_cache_lru_eviction_and_write_race() -> None:
    cache = QueryCache(2)
    for key in ("a", "b", "c"):
        assert cache.put(key, key.upper(), frozenset([key]), cache.token())
    assert cache.get("a") is None
    assert cache.get("c") == "C"
    token = cache.token()
    cache.invalidate(["x"])  # a write between query start and put, on an unrelated entity
    assert cache.put("d", "D", frozenset(["d"]), token)
    token = cache.token()
    cache.invalidate(["e"])  # a write that touched what the result depends on
    assert not cache.put("e", "E", frozenset(["e"]), token)
    cache.resize(1)
    assert len(cache) == 1


def test_the_cache_keeps_within_its_byte_bound_and_skips_outsized_results() -> None:
    cache = QueryCache(max_size=1000, max_bytes=1000)
    for n in range(10):
        assert cache.put(("q", n), {"n": n}, frozenset({f"e{n}"}), cache.token(), size=200)
    assert cache.bytes <= 1000 and len(cache) == 5
    assert cache.get(("q", 0)) is None and cache.get(("q", 9)) == {"n": 9}  # LRU went first
    assert not cache.put(("big",), "x", frozenset(), cache.token(), size=251)  # > a quarter
    cache.invalidate({"e9"})
    assert cache.bytes == 800 and cache.get(("q", 9)) is None
