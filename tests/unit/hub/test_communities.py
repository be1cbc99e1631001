"""GraphRAG communities: Leiden hierarchy, summaries, store, change feed, service, views.

Graphs with planted communities go through the real leidenalg/igraph; the store tests
use a real hub SQLite file (the hub's migrations and the communities' own), filled
through the hub's own write path (``apply_batch``).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import igraph
import msgspec
import pytest
from starlette.applications import Starlette

from cloud_hub.graph.provenance import BatchStamp, apply_batch
from cloud_hub.graph.schema import HUB_MIGRATIONS
from cloud_hub.graphrag.communities import store
from cloud_hub.graphrag.communities.api import community_routes
from cloud_hub.graphrag.communities.config import CommunitiesConfig
from cloud_hub.graphrag.communities.engine import full_update, incremental_update
from cloud_hub.graphrag.communities.leiden import seed_hierarchy
from cloud_hub.graphrag.communities.model import EdgeRow, EntityRow, GraphRows
from cloud_hub.graphrag.communities.service import CommunityService, plan
from cloud_hub.metrics import HubMetrics
from edge_agent.config import IndexesConfig
from edge_agent.graph import GraphStore
from edge_agent.metrics import Metrics
from edge_agent.sync.frames import EntityDelta
from tests.helpers import wait_for

CONFIG = CommunitiesConfig()
TYPES = ("drone", "sensor", "zone", "vehicle")
NOW = 1_800_000_000_000


# ---- generated graphs -------------------------------------------------------------------


class Planted:
    """A graph with planted groups: rows to cluster and each entity's true group."""

    def __init__(self, rows: GraphRows, truth: dict[str, int]) -> None:
        self.rows = rows
        self.truth = truth


def planted(
    groups: int = 20,
    size: int = 50,
    *,
    inside: int = 8,
    across: float = 0.1,
    seed: int = 7,
) -> Planted:
    """``groups`` dense groups of ``size``, in super-groups of 5 (a second level).

    Each entity links to ``inside`` others of its group, and with probability
    ``across`` per link to one of another group of its super-group (``across / 4`` to
    any other group). Group ``g``'s entities are mostly of type ``TYPES[g % 4]``,
    carry the word ``areaG`` and are reported by edge ``edge-G``.
    """
    rng = random.Random(seed)
    truth: dict[str, int] = {}
    entities: list[EntityRow] = []
    for g in range(groups):
        for i in range(size):
            kind = TYPES[g % 4] if i % 10 else TYPES[(g + 1) % 4]
            entity_id = f"{kind}-{g:02d}-{i:03d}"
            truth[entity_id] = g
            entities.append(EntityRow(entity_id, kind, (f"area{g} status ok",), (f"edge-{g}",)))
    ids = [e.entity_id for e in entities]
    edges: dict[tuple[str, str], EdgeRow] = {}
    for index, entity_id in enumerate(ids):
        g = index // size
        for _ in range(inside):
            other = ids[g * size + rng.randrange(size)]
            if rng.random() < across:
                team = g // 5 * 5
                other_group = (
                    team + rng.randrange(5) if rng.random() < 0.8 else rng.randrange(groups)
                )
                other = ids[other_group * size + rng.randrange(size)]
            if other != entity_id:
                edges[(entity_id, other)] = (
                    entity_id,
                    "near",
                    other,
                    round(rng.uniform(0.5, 1), 3),
                )
    return Planted(GraphRows(entities, list(edges.values())), truth)


def ari(truth: dict[str, int], found: dict[str, str]) -> float:
    """Adjusted Rand index of ``found`` (entity -> community id) against ``truth``."""
    ids = sorted(truth)
    labels = {c: i for i, c in enumerate(sorted(set(found.values())))}
    return float(
        igraph.compare_communities(
            [truth[e] for e in ids], [labels[found[e]] for e in ids], method="ari"
        )
    )


# ---- clustering and summaries -----------------------------------------------------------


def test_level0_finds_the_planted_groups_and_level1_groups_them() -> None:
    graph = planted()
    state, update = full_update(graph.rows, CONFIG)
    hierarchy = state.hierarchy
    assert ari(graph.truth, hierarchy.membership) >= 0.8
    assert hierarchy.levels >= 2
    assert update.communities[0] > update.communities[1] >= 1
    # Level 1 merges whole level-0 communities: super-groups of 5 planted groups.
    teams = {e: g // 5 for e, g in graph.truth.items()}
    level1 = {e: hierarchy.chain(e)[1] for e in graph.truth}
    assert ari(teams, level1) >= 0.8
    assert update.memberships == {e: hierarchy.chain(e) for e in graph.truth}


def test_the_same_graph_gives_the_same_communities() -> None:
    graph = planted(groups=10)
    first = full_update(graph.rows, CONFIG)[0].hierarchy
    second = full_update(graph.rows, CONFIG)[0].hierarchy
    assert first.membership == second.membership
    assert first.parents == second.parents


def test_summaries_count_sizes_types_words_and_edges() -> None:
    graph = planted()
    state, update = full_update(graph.rows, CONFIG)
    by_id = {s.id: s for s in update.summaries}
    level0 = [s for s in update.summaries if s.level == 0]
    assert sum(s.size for s in level0) == len(graph.truth)
    for summary in level0:
        members = [e for e, c in state.hierarchy.membership.items() if c == summary.id]
        assert summary.size == len(members)
        group = Counter(graph.truth[e] for e in members).most_common(1)[0][0]
        assert summary.types[0] == (
            TYPES[group % 4],
            Counter(e.split("-")[0] for e in members)[TYPES[group % 4]],
        )
        assert summary.keywords[0][0] == f"area{group}"
        assert summary.edges[0] == (f"edge-{group}", sum(graph.truth[e] == group for e in members))
        assert summary.predicates == [("near", summary.predicates[0][1])]
        assert {e for e, _s in summary.representatives} <= set(members)
        assert len(summary.representatives) == 5
        parent = by_id[summary.parent or ""]
        assert summary.id in parent.children
        assert parent.size == sum(by_id[c].size for c in parent.children)
    top = [s for s in update.summaries if s.level == state.hierarchy.levels - 1]
    assert all(s.parent is None for s in top)
    assert sum(s.size for s in top) == len(graph.truth)


def _changed(rows: GraphRows, drop: set[str], add: list[EdgeRow]) -> GraphRows:
    """``rows`` without the entities ``drop`` (and their edges), with the edges ``add``."""
    return GraphRows(
        [e for e in rows.entities if e.entity_id not in drop],
        [e for e in rows.edges if e[0] not in drop and e[2] not in drop] + add,
    )


def _delta(before: GraphRows, after: GraphRows) -> GraphRows:
    """What a read of the change feed gives after ``before`` became ``after``."""
    old = set(before.edges)
    new = set(after.edges)
    dirty = {e.entity_id for e in before.entities} ^ {e.entity_id for e in after.entities}
    for subject, _p, obj, _w in old ^ new:
        dirty.update((subject, obj))
    return GraphRows(
        [e for e in after.entities if e.entity_id in dirty],
        [e for e in after.edges if e[0] in dirty or e[2] in dirty],
        [(i, e) for i, e in enumerate(sorted(dirty), 1)],
    )


def test_incremental_update_keeps_ids_and_matches_a_full_run() -> None:
    graph = planted()
    state, first = full_update(graph.rows, CONFIG)
    before = dict(state.hierarchy.membership)
    gone = {"drone-00-001", "drone-00-002"}
    # A new entity joins group 3 densely; two entities of group 7 move to group 8.
    newcomer = EntityRow("probe-1", "probe", ("area3",), ("edge-9",))
    group3 = [e for e, g in graph.truth.items() if g == 3][:10]
    group8 = [e for e, g in graph.truth.items() if g == 8][:20]
    movers = [e for e, g in graph.truth.items() if g == 7][:2]
    after = _changed(graph.rows, gone | set(movers), [])
    after = GraphRows(
        [*after.entities, newcomer, *(e for e in graph.rows.entities if e.entity_id in movers)],
        [
            *after.edges,
            *(("probe-1", "near", other, 1.0) for other in group3),
            *((m, "near", other, 1.0) for m in movers for other in group8),
        ],
    )
    change = _delta(graph.rows, after)
    update = incremental_update(state, change, CONFIG)
    membership = state.hierarchy.membership
    assert update.mode == "incremental"
    assert update.consumed == change.dirty
    assert membership["probe-1"] == before[group3[0]]
    assert all(membership[m] == before[group8[0]] for m in movers)
    assert not gone & membership.keys()
    untouched = [e for e in before if e not in {r for _i, r in change.dirty}]
    kept = sum(membership.get(e) == before[e] for e in untouched) / len(untouched)
    assert kept >= 0.95
    assert update.memberships["probe-1"] == state.hierarchy.chain("probe-1")
    assert update.memberships["drone-00-001"] == []
    full_state, _ = full_update(after, CONFIG, seed_hierarchy(first.memberships))
    assert update.modularity >= full_state.hierarchy.modularity * 0.98
    # The summaries moved with the members.
    sizes = Counter(membership.values())
    for summary in update.summaries:
        if summary.level == 0:
            assert summary.size == sizes[summary.id]
    assert state.summaries.summaries[membership["probe-1"]].size == sizes[membership["probe-1"]]


def test_entities_leaving_and_coming_back_empty_and_refill_the_hierarchy() -> None:
    graph = planted(groups=10)
    state, first = full_update(graph.rows, CONFIG)
    everyone = [(i, e.entity_id) for i, e in enumerate(graph.rows.entities, 1)]
    gone = incremental_update(state, GraphRows([], [], everyone), CONFIG)
    assert gone.communities == []
    assert sorted(gone.removed) == sorted(s.id for s in first.summaries)
    assert all(chain == [] for chain in gone.memberships.values())
    back = incremental_update(
        state, GraphRows(graph.rows.entities, graph.rows.edges, everyone), CONFIG
    )
    assert back.communities[0] >= 10
    assert {e: c[0] for e, c in back.memberships.items()} == state.hierarchy.membership


def test_a_full_run_after_a_restart_keeps_the_stored_ids() -> None:
    graph = planted()
    _state, update = full_update(graph.rows, CONFIG)
    again, _update = full_update(graph.rows, CONFIG, seed_hierarchy(update.memberships))
    assert {e: again.hierarchy.chain(e) for e in graph.truth} == update.memberships
    assert again.hierarchy.next_ids == _state.hierarchy.next_ids


def skewed(entities: int, edges: int, seed: int) -> tuple[GraphRows, random.Random]:
    """A graph with planted communities of Pareto sizes, 85 % of links inside."""
    rng = random.Random(seed)
    sizes: list[int] = []
    while sum(sizes) < entities:
        sizes.append(min(entities - sum(sizes), max(5, int(rng.paretovariate(1.5) * 20))))
    group = [g for g, n in enumerate(sizes) for _ in range(n)]
    starts = [sum(sizes[:g]) for g in range(len(sizes))]
    ids = [f"{TYPES[g % 4]}-{i:06d}" for i, g in enumerate(group)]
    pairs: dict[tuple[int, int], float] = {}
    while len(pairs) < edges:
        a = rng.randrange(entities)
        g = group[a]
        b = starts[g] + rng.randrange(sizes[g]) if rng.random() < 0.85 else rng.randrange(entities)
        if a != b:
            pairs[(a, b)] = round(rng.uniform(0.1, 1.0), 3)
    rows = GraphRows(
        [EntityRow(e, e.split("-")[0], (f"area{group[i] % 97}",)) for i, e in enumerate(ids)],
        [(ids[a], "near", ids[b], w) for (a, b), w in pairs.items()],
    )
    return rows, rng


def one_percent(rows: GraphRows, rng: random.Random) -> GraphRows:
    """Change 1 % of ``rows`` among 1,000 entities: 50 removed, 50 added (3 links each),
    one link removed at 300 of them, 500 links added between them."""
    chosen = rng.sample([e.entity_id for e in rows.entities], len(rows.entities) // 100)
    gone = set(chosen[:50])
    alive = chosen[50:]
    dropped = set()
    by_subject: dict[str, list[EdgeRow]] = {}
    for edge in rows.edges:
        by_subject.setdefault(edge[0], []).append(edge)
    for entity_id in alive[:300]:
        if by_subject.get(entity_id):
            dropped.add(rng.choice(by_subject[entity_id]))
    added: list[EdgeRow] = []
    for _ in range(500):
        a, b = rng.sample(alive, 2)
        added.append((a, "near", b, 0.5))
    new = [EntityRow(f"probe-{i:03d}", "probe") for i in range(50)]
    added += [(n.entity_id, "near", other, 0.7) for n in new for other in rng.sample(alive, 3)]
    after = _changed(rows, gone, added)
    return GraphRows([*after.entities, *new], [e for e in after.edges if e not in dropped])


@pytest.mark.slow
def test_incremental_on_100k_entities_keeps_quality_at_a_tenth_of_the_time() -> None:
    rows, rng = skewed(100_000, 300_000, seed=3)
    state, first = full_update(rows, CONFIG)
    after = one_percent(rows, rng)
    change = _delta(rows, after)
    before = dict(state.hierarchy.membership)
    # CPU seconds of this process (the clustering runs in it, single-threaded), so that
    # other processes on a shared machine do not decide the ratio.
    started = time.process_time()
    update = incremental_update(state, change, CONFIG)
    incremental_s = time.process_time() - started
    started = time.process_time()
    full_state, _ = full_update(after, CONFIG, seed_hierarchy(first.memberships))
    full_s = time.process_time() - started
    dirty = {e for _i, e in change.dirty}
    untouched = [e for e in before if e not in dirty]
    kept = sum(state.hierarchy.membership.get(e) == before[e] for e in untouched) / len(untouched)
    ratio = update.modularity / full_state.hierarchy.modularity
    print(
        f"dirty={len(dirty)} kept={kept:.4f} modularity={update.modularity:.4f}"
        f" full={full_state.hierarchy.modularity:.4f} incremental_s={incremental_s:.3f}"
        f" full_s={full_s:.3f}"
    )
    assert kept >= 0.95
    assert ratio >= 0.98
    assert incremental_s <= 0.1 * full_s


# ---- store, change feed, service, views -------------------------------------------------


ALL = IndexesConfig(predicate=True, incoming=True, alias=True, spatial=True, temporal=True)


class Hub:
    """A real hub graph file with the communities' migrations, fed per edge."""

    def __init__(self, path: Path) -> None:
        self.store = GraphStore(
            path,
            origin="hub",
            indexes=ALL,
            migrations=[*HUB_MIGRATIONS, *store.COMMUNITY_MIGRATIONS],
        )
        self.seq = 0

    def send(self, *deltas: EntityDelta, edge: str = "edge-a") -> None:
        self.seq += 1
        stamp = BatchStamp(edge, self.seq, self.seq, NOW, NOW + 1_000)
        self.store.database.transaction(apply_batch, stamp, list(deltas), indexes=ALL)

    def read(self, fn: Any, *args: Any) -> Any:
        return self.store.database.read(fn, *args)

    def dirty(self) -> list[str]:
        rows = self.read(lambda db: db.execute("SELECT entity_id FROM graphrag_community_dirty"))
        return sorted(e for (e,) in rows)

    def clear(self) -> None:
        self.store.database.transaction(
            lambda db: db.execute("DELETE FROM graphrag_community_dirty")
        )


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    found = Hub(tmp_path / "hub.db")
    yield found
    found.store.close()


def entity(
    entity_id: str,
    kind: str,
    links: list[tuple[str, float]],
    version: int = 1,
    *,
    replace: bool = False,
    **text: str,
) -> EntityDelta:
    return EntityDelta(
        entity_id,
        kind,
        version,
        NOW,
        1,
        [(k, v, NOW, "t") for k, v in text.items()],
        [("near", other, w, NOW, "t") for other, w in links],
        replace=replace,
    )


def load(hub: Hub, graph: Planted) -> None:
    """Send ``graph`` to the hub, each group from its own edge."""
    links: dict[str, list[tuple[str, float]]] = {}
    for subject, _p, obj, weight in graph.rows.edges:
        links.setdefault(subject, []).append((obj, weight))
    for row in graph.rows.entities:
        hub.send(
            entity(row.entity_id, row.entity_type, links.get(row.entity_id, []), area=row.text[0]),
            edge=row.devices[0],
        )


def test_the_change_feed_marks_both_ends_of_an_edge_insert_update_and_delete(hub: Hub) -> None:
    hub.send(entity("a", "drone", []), entity("b", "drone", []), entity("c", "zone", []))
    assert hub.dirty() == ["a", "b", "c"]
    hub.clear()
    hub.send(entity("a", "drone", [("b", 0.5)], version=2))
    assert hub.dirty() == ["a", "b"]
    hub.clear()
    hub.send(entity("a", "drone", [("b", 0.5)], version=3, colour="red"))
    assert hub.dirty() == []  # same weight: the clustering has nothing to do
    hub.send(entity("a", "drone", [("b", 0.9)], version=4))
    assert hub.dirty() == ["a", "b"]
    hub.clear()
    hub.send(entity("a", "drone", [("c", 0.5)], version=5, replace=True))  # a-b goes, a-c comes
    assert hub.dirty() == ["a", "b", "c"]
    hub.clear()
    hub.send(EntityDelta("c", "zone", 2, NOW, 1, deleted=True))
    assert hub.dirty() == ["a", "c"]


def test_a_run_consumes_only_the_feed_rows_it_read(hub: Hub) -> None:
    hub.send(entity("a", "drone", [("b", 0.5)]), entity("b", "drone", []))
    read = hub.read(store.read_changed)
    assert sorted(e for _r, e in read.dirty) == ["a", "b"]
    assert [e.entity_id for e in read.entities] == ["a", "b"]
    assert read.edges == [("a", "near", "b", 0.5)]
    hub.send(entity("b", "zone", [], version=2))  # b changes again meanwhile
    update = full_update(read, CONFIG)[1]
    hub.store.database.transaction(store.write_update, update, 1.0)
    assert hub.dirty() == ["b"]  # its new mark waits for the next run
    assert hub.read(store.dirty_count) == 1


def test_store_round_trip_queries_and_search(hub: Hub) -> None:
    graph = planted(groups=10)
    load(hub, graph)
    rows = hub.read(store.read_all)
    assert len(rows.entities) == len(graph.truth)
    assert len(rows.edges) == len(graph.rows.edges)
    state, update = full_update(rows, CONFIG)
    hub.store.database.transaction(store.write_update, update, 123.0)
    assert hub.read(store.dirty_count) == 0
    level0 = hub.read(store.communities, 0)
    assert sorted(c["id"] for c in level0) == sorted(state.hierarchy.communities(0))
    assert [c["size"] for c in level0] == sorted((c["size"] for c in level0), reverse=True)
    first = level0[0]
    assert first["updated_at"] == 123.0
    assert first["keywords"][0].startswith("area")
    found = hub.read(store.community, first["id"])
    assert found["size"] == first["size"]
    assert [t["entity_id"] for t in found["top_entities"]] == [
        e for e, _s in first["representatives"]
    ]
    assert all(t["entity_type"] in TYPES for t in found["top_entities"])
    parent = hub.read(store.community, first["parent"])
    assert first["id"] in [c["id"] for c in parent["children"]]
    assert hub.read(store.community, "L0-999999") is None
    some = sorted(graph.truth)[:3]
    assert hub.read(store.memberships, [*some, "nobody"]) == {
        e: state.hierarchy.chain(e) for e in some
    }
    area = first["keywords"][0]
    hits = hub.read(store.search_communities, f'{area} "unbalanced AND (', 0, 5)
    assert hits[0][0] == first["id"]
    assert hits[0][1] > 0
    assert hub.read(store.search_communities, "  ", 0, 5) == []


async def test_the_service_runs_full_then_incremental_and_reports(hub: Hub) -> None:
    load(hub, planted(groups=10))
    metrics = Metrics(include_runtime=False)
    hub_metrics = HubMetrics(metrics)
    service = CommunityService(
        hub.store.database.read, hub.store.database.write_transaction, CONFIG, hub_metrics
    )
    assert service.health()["status"] == "degraded"
    first = await service.step()
    assert (first.mode, first.reason) == ("full", "start")
    assert hub.read(store.dirty_count) == 0
    assert (await service.step()).mode == "none"
    hub.send(entity("newcomer", "drone", [("vehicle-03-001", 1.0), ("vehicle-03-002", 1.0)]))
    second = await service.step()
    assert second.mode == "incremental"
    chain = hub.read(store.memberships, ["newcomer", "vehicle-03-001"])
    assert chain["newcomer"] == chain["vehicle-03-001"]
    status = service.health()
    assert status["status"] == "ok"
    assert status["mode"] == "incremental"
    assert status["communities"][0] == len(hub.read(store.communities, 0))
    assert status["modularity"] > 0.5
    assert (
        metrics.registry.get_sample_value(
            "semstreams_community_update_seconds_count", {"mode": "full"}
        )
        == 1
    )
    assert (
        metrics.registry.get_sample_value("semstreams_communities", {"level": "0"})
        == (status["communities"][0])
    )
    assert metrics.registry.get_sample_value("semstreams_community_modularity") == pytest.approx(
        status["modularity"], abs=1e-3
    )


async def test_a_failed_run_consumes_nothing_and_the_next_one_is_full(hub: Hub) -> None:
    load(hub, planted(groups=10))
    quick = msgspec.structs.replace(CONFIG, interval=0.01)
    service = CommunityService(hub.store.database.read, hub.store.database.write_transaction, quick)
    assert (await service.step()).reason == "start"
    hub.send(entity("newcomer", "drone", [("vehicle-03-001", 1.0)]))
    rename = "ALTER TABLE {} RENAME TO {}"
    hub.store.database.transaction(lambda db: db.execute(rename.format(TABLE, "held")))
    runner = asyncio.create_task(service.run())
    try:
        await wait_for(check(lambda: service.status()["failures"] >= 2), what="failed runs")
        assert service.health()["status"] == "degraded"
        assert "no such table" in service.status()["last_error"]
        assert hub.read(store.dirty_count) == 2  # nothing consumed
        hub.store.database.transaction(lambda db: db.execute(rename.format("held", TABLE)))
        await wait_for(check(lambda: hub.read(store.dirty_count) == 0), what="the feed consumed")
    finally:
        runner.cancel()
    status = service.health()
    assert (status["status"], status["mode"], status["reason"]) == ("ok", "full", "start")
    assert "newcomer" in hub.read(store.memberships, ["newcomer"])


TABLE = "graphrag_communities"


def check(predicate: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    """``predicate`` as the awaitable check ``wait_for`` polls."""

    async def checked() -> bool:
        return predicate()

    return checked


def test_plan_runs_full_at_start_on_schedule_on_drift_and_on_a_backlog() -> None:
    base: dict[str, Any] = {
        "has_state": True,
        "dirty": 0,
        "entities": 1000,
        "since_full": 10.0,
        "changed_since_full": False,
        "drifted": False,
        "config": CONFIG,
    }
    assert plan(**base).mode == "none"
    assert plan(**{**base, "dirty": 5}).mode == "incremental"
    assert plan(**{**base, "has_state": False}).reason == "start"
    assert plan(**{**base, "drifted": True}).reason == "drift"
    assert plan(**{**base, "dirty": 101}).reason == "backlog"
    late = {**base, "since_full": CONFIG.full_every}
    assert plan(**late).mode == "none"  # nothing changed since: nothing to redo
    assert plan(**{**late, "changed_since_full": True}).reason == "schedule"


class _Agent:
    """What the views read from ``app.state.agent``: the hub's graph store."""

    def __init__(self, graph_store: GraphStore) -> None:
        self.store = graph_store


async def test_views_list_rank_and_show_communities(hub: Hub) -> None:
    load(hub, planted(groups=10))
    update = full_update(hub.read(store.read_all), CONFIG)[1]
    hub.store.database.transaction(store.write_update, update, 1.0)
    app = Starlette(routes=community_routes())
    app.state.agent = _Agent(hub.store)
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://hub") as client:
        level0 = (await client.get("/graph/communities")).json()
        assert len(level0) == update.communities[0]
        assert len((await client.get("/graph/communities?level=1&limit=2")).json()) <= 2
        assert (await client.get("/graph/communities?level=x")).status_code == 400
        assert (await client.get("/graph/communities?limit=0")).status_code == 400
        query = {"q": level0[0]["keywords"][0]}
        ranked = (await client.get("/graph/communities", params=query)).json()
        assert ranked[0]["id"] == level0[0]["id"]
        assert ranked[0]["score"] > 0
        one = await client.get(f"/graph/communities/{level0[0]['id']}")
        assert one.status_code == 200
        assert one.json()["top_entities"]
        missing = await client.get("/graph/communities/L0-999999")
        assert missing.status_code == 404
        assert missing.json() == {"error": "no community L0-999999"}
