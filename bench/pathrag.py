"""PathRAG benchmark: traversal latency on a 100k-entity / 300k-edge graph, with peers.

Run it with ``make bench`` or ``.venv/bin/python bench/pathrag.py`` (``--help`` lists the
knobs; the defaults are the benchmark's contract). It keeps its state in a temp
directory, needs no network, and takes 2-3 minutes on a 2-core machine. The last
line it prints is one JSON object with flat keys; the lines before it are the figures in
readable form and the query plans SQLite chose.

One run:

1. **Graph**: a seeded random graph (entity types, several predicates with skewed
   frequencies, edge weights; out-degrees a uniform/Pareto-hub mix, in-degrees from
   preferential attachment) is applied through ``GraphStore.apply`` (the agent's own
   write path, real schema, predicate + incoming indexes) in large batches of
   ``EntityEvent`` Structs.
2. **PathRAG, no cache**: ``Querier.run(PathQuery)`` with ``cache_enabled=False`` for
   depth 2, 3 and 4, directions outgoing and both, ``max_nodes`` 500, one query per
   random start entity.
3. **PathRAG, cached**: ``Querier`` with the cache on; a fixed small set of start
   entities is queried once to fill the cache (those misses are reported apart), then
   queried again and again in random order (the hits).
4. **Peers** on the same file and the same start entities: a recursive CTE in SQLite
   (BFS order, stops at 500 distinct nodes) and ``networkx`` BFS on an in-memory
   ``DiGraph`` of the same edges (``depth_limit``, stops at 500 nodes).
5. **ANALYZE**: the depth-3 sets (and predicate-filtered ones) before and after
   ``ANALYZE``, with the query plans SQLite chose for the statements PathRAG issued.
6. **Ratios**: PathRAG's p50 and p99 over each peer's for every setting both ran
   (``ratio_vs_cte_p99_depth3_both``, ``ratio_vs_networkx_p99_depth3_both``, ...).
7. **Memory**: a fresh process that holds only the store and a cache-less ``Querier``
   answers every depth-3 query once; its RSS (``querier_rss_mb_*``).

"No cache" means no query-result cache: the SQLite file sits in the OS page cache after
loading, as it would on a running edge, and a short warm-up runs before measuring.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import math
import os
import platform
import random
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import networkx as nx

from edge_agent.config import IndexesConfig
from edge_agent.graph import GraphStore
from edge_agent.graph.pathrag import PathQuery, run_path_query
from edge_agent.graph.querier import Querier
from edge_agent.graph.queries import summaries
from edge_agent.metrics import Metrics
from edge_agent.model import EntityEvent, Relationship

#: Entity types and their shares of the entities.
ENTITY_TYPES = {"sensor": 0.45, "drone": 0.25, "vehicle": 0.15, "zone": 0.1, "fleet": 0.05}
#: Predicates and their shares of the edges (skewed on purpose).
PREDICATES = {
    "observes": 0.35,
    "near": 0.25,
    "member_of": 0.2,
    "depends_on": 0.12,
    "located_in": 0.08,
}
#: The predicate of the predicate-filtered query sets.
FILTER_PREDICATE = "member_of"
STATUSES = ("ok", "idle", "charging", "fault")
CONSUMER = "bench"
#: Share of edges whose subject is a hub (Pareto-ranked) rather than a uniform pick.
HUB_SHARE = 0.25
#: Share of edges whose object copies the object of an earlier edge (preferential).
PREFERENTIAL_SHARE = 0.5
WARMUP_QUERIES = 30
T = TypeVar("T")


@dataclass(frozen=True)
class Graph:
    """The generated graph: entity ids with their types, and (subject, predicate, object, w)."""

    ids: list[str]
    types: list[str]
    edges: list[tuple[int, str, int, float]]


# ---- graph generation and loading --------------------------------------------------------


def generate_graph(entities: int, edges: int, rng: random.Random) -> Graph:
    """A random graph with skewed degrees and exactly ``edges`` distinct edges."""
    types = rng.choices(list(ENTITY_TYPES), weights=list(ENTITY_TYPES.values()), k=entities)
    ids = [f"{kind}-{index:06d}" for index, kind in enumerate(types)]
    hubs = list(range(entities))
    rng.shuffle(hubs)  # hub ranks land on random ids, not on the first ones
    predicates = rng.choices(list(PREDICATES), weights=list(PREDICATES.values()), k=edges * 2)
    seen: set[tuple[int, str, int]] = set()
    objects: list[int] = []
    out: list[tuple[int, str, int, float]] = []
    for predicate in predicates:
        if len(out) == edges:
            break
        subject = _pick_subject(entities, hubs, rng)
        if objects and rng.random() < PREFERENTIAL_SHARE:
            obj = objects[rng.randrange(len(objects))]
        else:
            obj = rng.randrange(entities)
        if obj == subject or (subject, predicate, obj) in seen:
            continue
        seen.add((subject, predicate, obj))
        objects.append(obj)
        out.append((subject, predicate, obj, round(rng.uniform(0.1, 1.0), 3)))
    if len(out) < edges:
        raise RuntimeError(f"generated only {len(out)} distinct edges of {edges}")
    return Graph(ids=ids, types=types, edges=out)


def _pick_subject(entities: int, hubs: Sequence[int], rng: random.Random) -> int:
    """A uniform entity, or (``HUB_SHARE`` of the time) a Pareto-ranked hub."""
    if rng.random() >= HUB_SHARE:
        return rng.randrange(entities)
    rank = int(10 * (rng.paretovariate(1.2) - 1))
    return hubs[min(rank, entities - 1)]


def degree_stats(graph: Graph) -> dict[str, int]:
    """Largest out- and in-degree, and how many entities have no outgoing edge."""
    out_degree = Counter(subject for subject, _, _, _ in graph.edges)
    in_degree = Counter(obj for _, _, obj, _ in graph.edges)
    return {
        "max_out_degree": max(out_degree.values()),
        "max_in_degree": max(in_degree.values()),
        "entities_without_outgoing": len(graph.ids) - len(out_degree),
    }


def build_events(graph: Graph, rng: random.Random) -> list[EntityEvent]:
    """One upsert event per entity carrying its outgoing relationships and two properties."""
    relationships: list[list[Relationship]] = [[] for _ in graph.ids]
    for subject, predicate, obj, weight in graph.edges:
        relationships[subject].append(Relationship(predicate, graph.ids[obj], weight))
    return [
        EntityEvent(
            entity_id=entity_id,
            entity_type=kind,
            properties={"status": rng.choice(STATUSES), "battery": round(rng.random() * 100, 1)},
            relationships=rels,
            source="bench",
        )
        for entity_id, kind, rels in zip(graph.ids, graph.types, relationships, strict=True)
    ]


def open_store(path: Path) -> GraphStore:
    """The graph store with the edge's default indexes (predicate + incoming)."""
    return GraphStore(path, origin="bench-edge", indexes=IndexesConfig())


def load(store: GraphStore, events: Sequence[EntityEvent], batch_size: int) -> float:
    """Apply the events in batches through ``GraphStore.apply``; returns seconds taken."""
    now_ms = int(time.time() * 1000)
    started = time.perf_counter()
    for start in range(0, len(events), batch_size):
        batch = [
            (start + i + 1, event) for i, event in enumerate(events[start : start + batch_size])
        ]
        store.apply(batch, consumer=CONSUMER, now_ms=now_ms)
    return time.perf_counter() - started


def networkx_graph(graph: Graph) -> nx.DiGraph:
    """The same edges as an in-memory DiGraph (parallel predicates collapse to one edge)."""
    digraph = nx.DiGraph()
    digraph.add_nodes_from(graph.ids)
    ids = graph.ids
    digraph.add_weighted_edges_from((ids[s], ids[o], w) for s, _, o, w in graph.edges)
    return digraph


# ---- the measured operations -------------------------------------------------------------


def path_query(
    start: str, depth: int, direction: str, max_nodes: int, predicates: Sequence[str] = ()
) -> PathQuery:
    """A PathRAG request with every field spelled out."""
    return PathQuery(
        start_entity=start,
        direction=direction,  # type: ignore[arg-type]
        max_depth=depth,
        max_nodes=max_nodes,
        max_paths=100,
        timeout=1.0,
        decay_factor=0.8,
        predicates=list(predicates),
        entity_types=[],
    )


def _cte_sql(direction: str, with_predicate: bool) -> str:
    """A recursive CTE walking breadth-first (FIFO queue) up to ``:depth`` hops.

    ``UNION`` drops repeated (node, depth) rows; the outer ``DISTINCT ... LIMIT`` stops
    the walk once ``:limit`` distinct nodes (the start included) came out.
    """
    predicate = " AND e.predicate = :predicate" if with_predicate else ""
    steps = [
        "SELECT e.object, w.depth + 1 FROM walk AS w JOIN edges AS e ON e.subject = w.node"
        f" WHERE w.depth < :depth{predicate}"
    ]
    if direction == "both":
        steps.append(
            "SELECT e.subject, w.depth + 1 FROM walk AS w JOIN edges AS e ON e.object = w.node"
            f" WHERE w.depth < :depth{predicate}"
        )
    recursive = " UNION ".join(steps)
    return (
        f"WITH RECURSIVE walk(node, depth) AS (SELECT :start, 0 UNION {recursive})"
        " SELECT DISTINCT node FROM walk LIMIT :limit"
    )


def cte_walk(
    db: sqlite3.Connection,
    start: str,
    *,
    depth: int,
    direction: str,
    limit: int,
    predicate: str | None = None,
) -> list[str]:
    """The ids reached by the recursive CTE (at most ``limit``)."""
    params = {"start": start, "depth": depth, "limit": limit, "predicate": predicate}
    sql = _cte_sql(direction, predicate is not None)
    if predicate is None:
        del params["predicate"]
    return [node for (node,) in db.execute(sql, params)]


def networkx_walk(graph: nx.DiGraph, start: str, *, depth: int, direction: str, limit: int) -> int:
    """How many nodes a BFS of ``depth`` hops reaches, stopping at ``limit`` (start included)."""
    if direction == "both":

        def neighbours(node: str) -> Iterator[str]:
            return itertools.chain(graph.successors(node), graph.predecessors(node))

        walk = nx.generic_bfs_edges(graph, start, neighbours, depth_limit=depth)
    else:
        walk = nx.bfs_edges(graph, start, depth_limit=depth)
    reached = 1
    for _ in walk:
        reached += 1
        if reached >= limit:
            break
    return reached


# ---- timing ------------------------------------------------------------------------------


def percentile(sorted_ms: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, math.ceil(q / 100 * len(sorted_ms)))
    return sorted_ms[rank - 1]


def time_each(
    fn: Callable[[Any], T], items: Iterable[Any], keep: Callable[[T], Any] = lambda out: out
) -> tuple[list[float], list[Any]]:
    """Milliseconds each ``fn(item)`` took (ascending), and ``keep`` of what each returned.

    Keep only what is needed of big answers: hundreds of them held at once make the
    collector's full passes long enough to land in the timed calls (they took the
    depth-3 ``both`` p99 from 12 ms to 59 ms), which the agent, answering one query at a
    time, never sees.
    """
    latencies = []
    outputs = []
    for item in items:
        started = time.perf_counter()
        output = fn(item)
        latencies.append((time.perf_counter() - started) * 1000)
        outputs.append(keep(output))
    return sorted(latencies), outputs


def digest(answer: dict[str, Any]) -> tuple[bool, int]:
    """What the benchmark reports of a PathRAG answer: truncated, and how many entities."""
    return answer["truncated"], len(answer["entities"])


def median(values: Iterable[int]) -> int:
    """The (upper) median of some counts."""
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else 0


def suffix_for(depth: int, direction: str, extra: str = "") -> str:
    """Key suffix: ``depth3`` for outgoing, ``depth3_both`` for both, then ``extra``."""
    parts = [f"depth{depth}"]
    if direction == "both":
        parts.append("both")
    if extra:
        parts.append(extra)
    return "_".join(parts)


class Results:
    """Collects latency summaries as flat keys and prints a readable line for each."""

    def __init__(self) -> None:
        self.flat: dict[str, Any] = {}

    def add(self, prefix: str, suffix: str, latencies: Sequence[float], note: str = "") -> None:
        """Record p50/p95/p99 of ``latencies`` as ``{prefix}p50_ms_{suffix}`` and so on."""
        figures = {q: round(percentile(latencies, q), 3) for q in (50, 95, 99)}
        for q, value in figures.items():
            self.flat[f"{prefix}p{q}_ms_{suffix}"] = value
        label = f"{prefix}{suffix}"
        print(
            f"{label:<36} n={len(latencies):<4} p50={figures[50]:8.3f}  p95={figures[95]:8.3f}"
            f"  p99={figures[99]:8.3f}  max={latencies[-1]:8.3f} ms"
            f"  ({sum(latencies) / 1000:.1f} s)  {note}",
            flush=True,
        )


@dataclass
class Run:
    """What every phase shares: the store, the start entities, the limits, the results."""

    store: GraphStore
    starts: list[str]
    cached_starts: list[str]
    max_nodes: int
    rng: random.Random
    results: Results


# ---- benchmark phases ----------------------------------------------------------------------


def run_pathrag_cold(
    run: Run, settings: Iterable[tuple[int, str]], *, predicate: str | None = None, extra: str = ""
) -> None:
    """PathRAG through a cache-less Querier, one query per start entity per setting."""
    querier, _ = make_querier(run.store, cache=False)
    predicates = [predicate] if predicate else []
    for depth, direction in settings:
        queries = [path_query(s, depth, direction, run.max_nodes, predicates) for s in run.starts]
        latencies, answers = time_each(querier.run, queries, keep=digest)
        truncated = sum(1 for cut, _ in answers if cut)
        nodes = median(count for _, count in answers)
        suffix = suffix_for(depth, direction, extra)
        run.results.add("", suffix, latencies, f"truncated {truncated}, median nodes {nodes}")
        run.results.flat[f"truncated_share_{suffix}"] = round(truncated / len(answers), 3)
        run.results.flat[f"median_nodes_{suffix}"] = nodes


def run_pathrag_cached(run: Run, settings: Iterable[tuple[int, str]]) -> None:
    """PathRAG through a caching Querier: fill with each start once, then repeat at random."""
    querier, metrics = make_querier(run.store, cache=True)
    repeats = len(run.starts)
    for depth, direction in settings:
        queries = [path_query(s, depth, direction, run.max_nodes) for s in run.cached_starts]
        misses, _ = time_each(querier.run, queries, keep=digest)
        hits_before = cache_hits(metrics)
        again = [run.rng.choice(queries) for _ in range(repeats)]
        latencies, _ = time_each(querier.run, again, keep=digest)
        hits = cache_hits(metrics) - hits_before
        suffix = suffix_for(depth, direction)
        run.results.add("", f"{suffix}_cached", latencies, f"hits {hits}/{repeats}")
        run.results.add("", f"{suffix}_cache_fill", misses, "first query of each start (misses)")
        run.results.flat[f"cache_hit_ratio_{suffix}"] = round(hits / repeats, 3)


def run_cte(
    run: Run, settings: Iterable[tuple[int, str]], *, predicate: str | None = None, extra: str = ""
) -> None:
    """The recursive-CTE peer on the store's own read connection."""
    with run.store.reader() as db:
        for depth, direction in settings:

            def walk(start: str, depth: int = depth, direction: str = direction) -> int:
                nodes = cte_walk(
                    db,
                    start,
                    depth=depth,
                    direction=direction,
                    limit=run.max_nodes,
                    predicate=predicate,
                )
                return len(nodes)

            latencies, reached = time_each(walk, run.starts)
            suffix = suffix_for(depth, direction, extra)
            run.results.add("cte_", suffix, latencies, f"median nodes {median(reached)}")


def run_networkx(run: Run, graph: Graph, settings: Iterable[tuple[int, str]]) -> None:
    """The networkx BFS peer on an in-memory DiGraph of the same edges."""
    started = time.perf_counter()
    digraph = networkx_graph(graph)
    run.results.flat["networkx_load_s"] = round(time.perf_counter() - started, 2)
    gc.collect()
    gc.freeze()  # as for the benchmark's own data: no collector pauses over the graph
    for depth, direction in settings:

        def walk(start: str, depth: int = depth, direction: str = direction) -> int:
            return networkx_walk(
                digraph, start, depth=depth, direction=direction, limit=run.max_nodes
            )

        latencies, reached = time_each(walk, run.starts)
        suffix = suffix_for(depth, direction)
        run.results.add("networkx_", suffix, latencies, f"median nodes {median(reached)}")


def make_querier(store: GraphStore, *, cache: bool) -> tuple[Querier, Metrics]:
    """A Querier over the store, with or without its result cache, and its metrics."""
    metrics = Metrics()
    querier = Querier(store, indexes=store.indexes, metrics=metrics, cache_enabled=cache)
    return querier, metrics


def cache_hits(metrics: Metrics) -> int:
    """Cache hits so far, as the Querier counted them in ``semstreams_cache_hits_total``."""
    return int(metrics.registry.get_sample_value("semstreams_cache_hits_total") or 0)


def run_summaries(run: Run, ids: Sequence[str], samples: int) -> None:
    """What fetching the summaries of a full answer (``max_nodes`` random ids) costs.

    PathRAG returns every entity it reached with its properties; this is that step
    alone (``queries.summaries``), to tell it apart from the traversal.
    """
    id_sets = [run.rng.sample(ids, run.max_nodes) for _ in range(samples)]
    with run.store.reader() as db:
        latencies, _ = time_each(lambda chosen: summaries(db, chosen), id_sets, keep=len)
    run.results.add("summaries_", f"{run.max_nodes}_ids", latencies, "random ids")


def warm_up(run: Run, starts: Sequence[str]) -> None:
    """A few untimed queries, so statement preparation and page faults are not measured."""
    querier, _ = make_querier(run.store, cache=False)
    for start in starts:
        for direction in ("outgoing", "both"):
            querier.run(path_query(start, 3, direction, run.max_nodes))


def peer_ratios(flat: dict[str, Any]) -> dict[str, Any]:
    """Our latency over each peer's for every setting both measured (below 1: we are faster).

    ``ratio_vs_cte_p99_depth3_both`` is PathRAG's depth-3 ``both`` p99 over the CTE's;
    ``ahead_of_cte_every_setting`` says whether every p50 and p99 ratio to the CTE is
    below 1.
    """
    ratios: dict[str, Any] = {}
    for peer in ("cte", "networkx"):
        for key, ours in list(flat.items()):
            if not key.startswith(("p50_ms_", "p99_ms_")):
                continue
            theirs = flat.get(f"{peer}_{key}")
            if theirs:
                quantile, suffix = key[:3], key.removeprefix(key[:7])
                ratios[f"ratio_vs_{peer}_{quantile}_{suffix}"] = round(ours / theirs, 3)
    to_cte = [value for key, value in ratios.items() if key.startswith("ratio_vs_cte_")]
    ratios["ahead_of_cte_every_setting"] = bool(to_cte) and max(to_cte) < 1.0
    return ratios


# The probe runs in a process of its own, holding only the store and a Querier (as the
# agent's query side does): its RSS is what answering costs, without the benchmark's
# generated graph, networkx copy and results.
_RSS_PROBE = """
import json, sys
import psutil
from pathlib import Path
from edge_agent.config import IndexesConfig
from edge_agent.graph import GraphStore
from edge_agent.graph.pathrag import PathQuery
from edge_agent.graph.querier import Querier
from edge_agent.metrics import Metrics
path, starts = sys.argv[1], json.loads(sys.stdin.read())
store = GraphStore(Path(path), origin="bench-edge", indexes=IndexesConfig())
querier = Querier(store, indexes=store.indexes, metrics=Metrics(), cache_enabled=False)
process = psutil.Process()
opened = peak = process.memory_info().rss
for direction in ("outgoing", "both"):
    for start in starts:
        querier.run(PathQuery(start_entity=start, direction=direction, max_depth=3))
        peak = max(peak, process.memory_info().rss)
print(json.dumps({
    "querier_rss_mb_open": round(opened / 2**20, 1),
    "querier_rss_mb_after_queries": round(process.memory_info().rss / 2**20, 1),
    "querier_rss_mb_peak": round(peak / 2**20, 1),
}))
"""


def querier_rss(path: Path, starts: Sequence[str]) -> dict[str, float]:
    """RSS of a fresh process that opens the store and answers every depth-3 query once."""
    done = subprocess.run(
        [sys.executable, "-c", _RSS_PROBE, str(path)],
        input=json.dumps(list(starts)),
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    figures: dict[str, float] = json.loads(done.stdout)
    print(f"querier process RSS: {figures}", flush=True)
    return figures


def analyze(path: Path) -> float:
    """Run ``ANALYZE`` on the file from a separate connection; returns seconds taken."""
    started = time.perf_counter()
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("ANALYZE")
    finally:
        db.close()
    return time.perf_counter() - started


# ---- query plans -------------------------------------------------------------------------

Plans = dict[str, list[tuple[str, ...]]]


def traced_plans(store: GraphStore, queries: Iterable[PathQuery], plans: Plans) -> None:
    """Add the EXPLAIN QUERY PLAN of every statement ``run_path_query`` issued to ``plans``.

    The statements are caught with a trace callback while the queries run, so these are
    the plans of the engine's real SQL (with its real ``IN`` lists), whatever it is.
    Statements are grouped by shape (``IN`` lists elided); each distinct plan is kept.
    """
    statements: list[str] = []
    with store.reader() as db:
        db.set_trace_callback(statements.append)
        try:
            for query in queries:
                run_path_query(db, query)
        finally:
            db.set_trace_callback(None)
        for sql in statements:
            plan = tuple(row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}"))
            known = plans.setdefault(re.sub(r"IN \([^)]*\)", "IN (...)", sql), [])
            if plan not in known:
                known.append(plan)


def cte_plan(
    store: GraphStore, start: str, direction: str, predicate: str | None
) -> tuple[str, ...]:
    """EXPLAIN QUERY PLAN of the CTE peer."""
    params: dict[str, Any] = {"start": start, "depth": 3, "limit": 500}
    if predicate is not None:
        params["predicate"] = predicate
    sql = _cte_sql(direction, predicate is not None)
    with store.reader() as db:
        return tuple(row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}", params))


def collect_plans(run: Run, samples: int = 20) -> Plans:
    """Plans of PathRAG's statements and of the CTE peer's.

    PathRAG's are traced from depth-3 queries (outgoing and both, with and without the
    predicate filter) from the first ``samples`` start entities.
    """
    plans: Plans = {}
    for predicates in ([], [FILTER_PREDICATE]):
        for direction in ("outgoing", "both"):
            queries = [
                path_query(start, 3, direction, run.max_nodes, predicates)
                for start in run.starts[:samples]
            ]
            traced_plans(run.store, queries, plans)
    for predicate in (None, FILTER_PREDICATE):
        for direction in ("outgoing", "both"):
            label = f"CTE peer, {direction}, predicate={predicate}"
            plans[label] = [cte_plan(run.store, run.starts[0], direction, predicate)]
    return plans


def print_plans(title: str, plans: Plans) -> None:
    """Print each statement shape (shortened) with its distinct plans."""
    print(f"-- query plans {title}")
    for shape, variants in plans.items():
        print(f"   {shape[:110]}")
        for number, plan in enumerate(variants, 1):
            if len(variants) > 1:
                print(f"    plan {number}:")
            for step in plan:
                print(f"      {step}")


def report_plan_changes(before: Plans, after: Plans) -> int:
    """Print both sets of plans and the statements whose plan ANALYZE changed."""
    print_plans("before ANALYZE", before)
    print_plans("after ANALYZE", after)
    changed = [shape for shape in before if sorted(before[shape]) != sorted(after.get(shape, []))]
    print(f"-- statements whose plan ANALYZE changed: {len(changed)}")
    for shape in changed:
        print(f"   {shape[:110]}")
    return len(changed)


# ---- main ----------------------------------------------------------------------------------

DEPTHS = (2, 3, 4)
DIRECTIONS = ("outgoing", "both")
DEPTH3 = ((3, "outgoing"), (3, "both"))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The knobs; the defaults are the benchmark's contract."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--edges", type=int, default=300_000)
    parser.add_argument("--starts", type=int, default=300, help="start entities per setting")
    parser.add_argument("--cached-starts", type=int, default=50, help="fixed set for the cache")
    parser.add_argument("--max-nodes", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=5_000, help="events per apply()")
    parser.add_argument("--seed", type=int, default=20_240_115)
    return parser.parse_args(argv)


def machine_facts() -> dict[str, Any]:
    """What the figures were measured on, and how busy the machine was at the start."""
    return {
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "networkx": nx.__version__,
        "loadavg_1m_start": round(os.getloadavg()[0], 2),
    }


def build_graph_file(
    path: Path, args: argparse.Namespace, rng: random.Random, results: Results
) -> Graph:
    """Generate the graph and load it into ``path``; records the load figures."""
    started = time.perf_counter()
    graph = generate_graph(args.entities, args.edges, rng)
    events = build_events(graph, rng)
    generate_s = time.perf_counter() - started
    degrees = degree_stats(graph)
    print(f"generated in {generate_s:.1f} s: {degrees}", flush=True)
    store = open_store(path)
    try:
        load_s = load(store, events, args.batch_size)
        stats = store.stats()
    finally:
        store.close()
    size_mb = path.stat().st_size / 1e6
    print(
        f"loaded {stats['entities']} entities, {stats['edges']} edges, {stats['triples']}"
        f" triples in {load_s:.1f} s ({size_mb:.0f} MB)",
        flush=True,
    )
    results.flat.update(
        entities=stats["entities"],
        edges=stats["edges"],
        triples=stats["triples"],
        load_s=round(load_s, 2),
        generate_s=round(generate_s, 2),
        db_mb=round(size_mb, 1),
        **degrees,
    )
    return graph


def measure_before_analyze(run: Run, graph: Graph) -> Plans:
    """Every setting of PathRAG (cold and cached) and of both peers, on a fresh file."""
    settings = [(depth, direction) for depth in DEPTHS for direction in DIRECTIONS]
    warm_up(run, run.rng.sample(graph.ids, WARMUP_QUERIES))
    print("-- PathRAG, no cache (before ANALYZE)", flush=True)
    run_pathrag_cold(run, settings)
    run_pathrag_cold(run, DEPTH3, predicate=FILTER_PREDICATE, extra="predicate")
    run_summaries(run, graph.ids, samples=100)
    print("-- PathRAG, with the cache", flush=True)
    run_pathrag_cached(run, settings)
    print("-- recursive CTE peer (before ANALYZE)", flush=True)
    run_cte(run, settings)
    run_cte(run, DEPTH3, predicate=FILTER_PREDICATE, extra="predicate")
    print("-- networkx peer", flush=True)
    run_networkx(run, graph, settings)
    return collect_plans(run)


def measure_after_analyze(run: Run, graph: Graph) -> Plans:
    """The depth-3 sets again on the same file, now with ``ANALYZE`` statistics."""
    warm_up(run, run.rng.sample(graph.ids, WARMUP_QUERIES))
    run_pathrag_cold(run, DEPTH3, extra="analyzed")
    run_pathrag_cold(run, DEPTH3, predicate=FILTER_PREDICATE, extra="predicate_analyzed")
    run_cte(run, [(3, "outgoing")], extra="analyzed")
    run_cte(run, DEPTH3, predicate=FILTER_PREDICATE, extra="predicate_analyzed")
    return collect_plans(run)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; prints the figures and returns the flat result."""
    started = time.perf_counter()
    args = parse_args(argv)
    rng = random.Random(args.seed)
    results = Results()
    facts = machine_facts()
    print(f"machine: {facts}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-pathrag-") as tmp:
        path = Path(tmp) / "graph.db"
        graph = build_graph_file(path, args, rng, results)
        starts = rng.sample(graph.ids, args.starts)
        cached_starts = rng.sample(graph.ids, args.cached_starts)
        # The benchmark's own big, long-lived data should not make the collector pause
        # inside timed queries (the agent has no such heap).
        gc.collect()
        gc.freeze()

        def session() -> Run:
            store = open_store(path)  # fresh read connections: they load current statistics
            return Run(store, starts, cached_starts, args.max_nodes, rng, results)

        run = session()
        plans_before = measure_before_analyze(run, graph)
        run.store.close()
        results.flat.update(querier_rss(path, starts))
        results.flat["analyze_s"] = round(analyze(path), 2)
        print(f"-- after ANALYZE ({results.flat['analyze_s']} s)", flush=True)
        run = session()
        plans_after = measure_after_analyze(run, graph)
        run.store.close()
    results.flat["plans_changed_by_analyze"] = report_plan_changes(plans_before, plans_after)
    results.flat.update(peer_ratios(results.flat))
    results.flat.update(facts)
    results.flat["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    results.flat["total_s"] = round(time.perf_counter() - started, 1)
    return results.flat


if __name__ == "__main__":
    print(json.dumps(main()))
