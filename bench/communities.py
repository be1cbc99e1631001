"""Communities benchmark: a full and an incremental community update of a 100k-entity
hub graph, through the hub's own write path and the community service.

Run it with ``make bench`` or ``.venv/bin/python bench/communities.py`` (``--help``
lists the knobs; the defaults are the benchmark's contract). It keeps its state in a
temp directory and needs no network. The last line it prints is one JSON object with
flat keys; :func:`measure` returns the same figures to another script.

One run:

1. **Graph**: seeded, with community structure and skew: planted groups of Pareto
   sizes (most small, a few of thousands), 85 % of relationships inside a group, the
   rest to entities picked by preferential attachment (hubs of high degree); five
   entity types, a few string properties each, reported by one of ten edges.
2. **Load**: every entity through ``apply_batch`` into a real hub SQLite file (the
   hub's migrations, triggers and the communities' change feed), 1,000 per batch.
3. **Full**: the community service's first step (read the whole graph, Leiden
   hierarchy, summaries, write): ``communities_full_s``.
4. **Change 1 %** among 1,000 entities, through ``apply_batch`` again: 50 deleted, 50
   new (3 relationships each), 300 lose a relationship, 500 relationships added
   between them.
5. **Incremental**: the service's next step (read the change feed and what it names,
   incremental update, write): ``communities_incremental_s``; then a full update of
   the changed graph for comparison (``modularity_full``, ``full_after_s``).
   ``kept_fraction``: the entities the change did not touch that kept their level-0
   community id.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cloud_hub.graph.provenance import BatchStamp, apply_batch
from cloud_hub.graph.schema import HUB_MIGRATIONS
from cloud_hub.graphrag.communities import store
from cloud_hub.graphrag.communities.config import CommunitiesConfig
from cloud_hub.graphrag.communities.engine import full_update
from cloud_hub.graphrag.communities.leiden import seed_hierarchy
from cloud_hub.graphrag.communities.service import CommunityService
from edge_agent.config import IndexesConfig
from edge_agent.graph import GraphStore
from edge_agent.sync.frames import EntityDelta

TYPES = ("sensor", "drone", "vehicle", "zone", "fleet")
STATUSES = ("ok", "idle", "charging", "fault")
PREDICATES = ("observes", "near", "member_of", "depends_on")
EDGES = 10
INSIDE = 0.85
BATCH = 1_000
NOW = 1_800_000_000_000
INDEXES = IndexesConfig(predicate=True, incoming=True)

#: One generated entity: (id, type, properties, relationships as (predicate, object, weight)).
Entity = tuple[str, str, dict[str, str], list[tuple[str, str, float]]]


def generate(entities: int, edges: int, rng: random.Random) -> dict[str, Entity]:
    """A graph with planted groups of Pareto sizes and preferential-attachment hubs."""
    sizes: list[int] = []
    while sum(sizes) < entities:
        sizes.append(min(entities - sum(sizes), max(5, int(rng.paretovariate(1.3) * 15))))
    group = [g for g, n in enumerate(sizes) for _ in range(n)]
    starts = [sum(sizes[:g]) for g in range(len(sizes))]
    kinds = [TYPES[(g + (i % 7 == 0)) % len(TYPES)] for i, g in enumerate(group)]
    ids = [f"{kind}-{i:06d}" for i, kind in enumerate(kinds)]
    links: dict[tuple[int, int], tuple[str, float]] = {}
    targets: list[int] = []
    while len(links) < edges:
        a = rng.randrange(entities)
        g = group[a]
        if rng.random() < INSIDE:
            b = starts[g] + rng.randrange(sizes[g])
        else:
            b = targets[rng.randrange(len(targets))] if targets else rng.randrange(entities)
        if a == b or (a, b) in links:
            continue
        targets.append(b)
        links[(a, b)] = (PREDICATES[rng.randrange(len(PREDICATES))], round(rng.uniform(0.1, 1), 3))
    out: dict[str, Entity] = {}
    for i, entity_id in enumerate(ids):
        properties = {"status": STATUSES[rng.randrange(4)], "site": f"site {group[i] % 211}"}
        out[entity_id] = (entity_id, kinds[i], properties, [])
    for (a, b), (predicate, weight) in links.items():
        out[ids[a]][3].append((predicate, ids[b], weight))
    return out


def _delta(entity: Entity, version: int, *, replace: bool = False) -> EntityDelta:
    entity_id, kind, properties, links = entity
    return EntityDelta(
        entity_id,
        kind,
        version,
        NOW + version,
        1,
        [(key, value, NOW + version, "bench") for key, value in properties.items()],
        [(p, o, w, NOW + version, "bench") for p, o, w in links],
        replace=replace,
    )


def _edge_of(entity_id: str) -> str:
    return f"edge-{int(entity_id.rsplit('-', 1)[1]) % EDGES}"


class Loader:
    """Sends deltas to a hub store, each from its entity's edge, in batches."""

    def __init__(self, graph_store: GraphStore) -> None:
        self.store = graph_store
        self.seqs: dict[str, int] = {}

    def send(self, deltas: list[EntityDelta]) -> None:
        by_edge: dict[str, list[EntityDelta]] = {}
        for delta in deltas:
            by_edge.setdefault(_edge_of(delta.entity_id), []).append(delta)
        for edge, batch in sorted(by_edge.items()):
            for start in range(0, len(batch), BATCH):
                seq = self.seqs[edge] = self.seqs.get(edge, 0) + 1
                stamp = BatchStamp(edge, seq, seq, NOW, NOW + 10**9)
                part = batch[start : start + BATCH]
                self.store.database.transaction(apply_batch, stamp, part, indexes=INDEXES)


def change(graph: dict[str, Entity], rng: random.Random) -> list[EntityDelta]:
    """1 % of the entities changed among 1,000 of them (see the module): deletes, whole
    entities without one relationship (``replace``), upserts of added relationships and
    new entities."""
    chosen = rng.sample(sorted(graph), 1_000)
    gone, alive = chosen[:50], chosen[50:]
    deltas = [EntityDelta(e, graph.pop(e)[1], 3, NOW + 3, 1, deleted=True) for e in gone]
    dead = set(gone)
    for e in alive[:300]:
        links = [link for link in graph[e][3] if link[1] not in dead]
        if links:
            links.pop(rng.randrange(len(links)))
        graph[e][3][:] = links
        deltas.append(_delta(graph[e], 3, replace=True))
    for _ in range(500):
        a, b = rng.sample(alive, 2)
        entity_id, kind, properties, _links = graph[a]
        deltas.append(_delta((entity_id, kind, properties, [("near", b, 0.5)]), 4))
    for i in range(50):
        links = [("observes", other, 0.7) for other in rng.sample(alive, 3)]
        deltas.append(_delta((f"probe-{900000 + i}", "probe", {"status": "ok"}, links), 3))
    return deltas


async def _run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    rng = random.Random(args.seed)
    started = time.perf_counter()
    graph = generate(args.entities, args.edges, rng)
    generate_s = time.perf_counter() - started
    graph_store = GraphStore(
        workdir / "hub.db",
        origin="bench",
        indexes=INDEXES,
        migrations=[*HUB_MIGRATIONS, *store.COMMUNITY_MIGRATIONS],
    )
    try:
        loader = Loader(graph_store)
        started = time.perf_counter()
        loader.send([_delta(entity, 1) for entity in graph.values()])
        load_s = time.perf_counter() - started
        config = CommunitiesConfig()
        database = graph_store.database
        service = CommunityService(database.read, database.write_transaction, config)

        started = time.perf_counter()
        await service.step()
        full_s = time.perf_counter() - started
        full_status = service.status()
        before = database.read(store.stored_memberships)

        loader.send(change(graph, rng))
        dirty = {e for _r, e in database.read(store.read_changed).dirty}
        started = time.perf_counter()
        await service.step()
        incremental_s = time.perf_counter() - started
        status = service.status()
        after = database.read(store.stored_memberships)

        rows = database.read(store.read_all)
        started = time.perf_counter()
        full_state, _update = full_update(rows, config, seed_hierarchy(after))
        full_after_s = time.perf_counter() - started
    finally:
        graph_store.close()
    untouched = [e for e in before if e not in dirty]
    kept = sum(after.get(e, [""])[0] == before[e][0] for e in untouched) / len(untouched)
    modularity_full = full_state.hierarchy.modularity
    return {
        "communities_full_s": round(full_s, 3),
        "communities_incremental_s": round(incremental_s, 3),
        "incremental_share_of_full": round(incremental_s / full_s, 4),
        "modularity_full": round(modularity_full, 4),
        "modularity_incremental": round(status["modularity"], 4),
        "modularity_ratio": round(status["modularity"] / modularity_full, 4),
        "modularity_first_full": full_status["modularity"],
        "kept_fraction": round(kept, 4),
        "incremental_mode": status["mode"],
        "levels": len(status["communities"]),
        "communities_per_level": status["communities"],
        **{f"full_{k}": full_status[k] for k in ("read_s", "compute_s", "write_s")},
        **{f"incremental_{k}": status[k] for k in ("read_s", "compute_s", "write_s")},
        "full_after_compute_s": round(full_after_s, 3),
        "dirty_entities": len(dirty),
        "entities": args.entities,
        "edges": args.edges,
        "generate_s": round(generate_s, 3),
        "load_s": round(load_s, 3),
    }


def measure(entities: int = 100_000, edges: int = 300_000, seed: int = 20261204) -> dict[str, Any]:
    """One run (see the module) on a graph of ``entities`` and ``edges``; its figures."""
    args = argparse.Namespace(entities=entities, edges=edges, seed=seed)
    with tempfile.TemporaryDirectory(prefix="bench-communities-") as workdir:
        return asyncio.run(_run(args, Path(workdir)))


def main() -> int:
    """Run :func:`measure` with the command line's knobs; print its figures."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--edges", type=int, default=300_000)
    parser.add_argument("--seed", type=int, default=20261204)
    args = parser.parse_args()
    figures = measure(args.entities, args.edges, args.seed)
    for key, value in figures.items():
        print(f"{key:>28}: {value}")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
