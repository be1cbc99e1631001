"""What an in-memory PathRAG adjacency would hold, measured on the PathRAG bench graph.

Issue 17 asks for PathRAG within 2x of networkx (which walks an in-memory graph) and for
no more than +10 % agent RSS. This prints, in MB as ``tracemalloc`` counts them, what
keeping the graph in memory the compact way would cost, part by part:

- ``ids_mb``: the entity id strings;
- ``id_index_mb``: a dict from id to node number;
- ``adjacency_mb``: both directions' edges as compressed sparse rows sorted by weight
  (``int32`` offsets and targets, ``float32`` weights, ``uint8`` predicate numbers);
- ``summaries_mb``: each entity's answer summary as JSON bytes (what a ``both`` answer
  spends most of its time reading from SQLite).

It builds no store: the graph is ``bench/pathrag.py``'s generator at the same defaults.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import array
import gc
import json
import random
import tracemalloc
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from pathrag import STATUSES, Graph, generate_graph

T = TypeVar("T")


def held_mb(build: Callable[[], T]) -> tuple[T, float]:
    """What ``build()`` returns and the memory it still holds afterwards, in MB."""
    gc.collect()
    tracemalloc.start()
    try:
        built = build()
        gc.collect()
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return built, held / 2**20


def sparse_rows(
    nodes: int, edges: Sequence[tuple[int, int, float, int]]
) -> tuple[array.array[int], array.array[int], array.array[float], array.array[int]]:
    """(offsets, targets, weights, predicates) of ``(source, target, weight, predicate)``
    edges, each node's edges strongest first."""
    ordered = sorted(edges, key=lambda edge: (edge[0], -edge[2]))
    offsets = array.array("i", bytes(4 * (nodes + 1)))
    for source, *_ in ordered:
        offsets[source + 1] += 1
    for node in range(nodes):
        offsets[node + 1] += offsets[node]
    return (
        offsets,
        array.array("i", (edge[1] for edge in ordered)),
        array.array("f", (edge[2] for edge in ordered)),
        array.array("B", (edge[3] for edge in ordered)),
    )


def summary(entity_id: str, kind: str, rng: random.Random) -> bytes:
    """An answer's summary of one bench entity (its two properties), as JSON bytes."""
    properties = {"status": rng.choice(STATUSES), "battery": round(rng.random() * 100, 1)}
    entity = {"entity_id": entity_id, "entity_type": kind, "version": 1, "properties": properties}
    return json.dumps(entity).encode()


def measure(graph: Graph, rng: random.Random) -> dict[str, Any]:
    """The four parts' memory for ``graph``."""
    raw_ids = [entity_id.encode() for entity_id in graph.ids]
    predicates = {name: number for number, name in enumerate(sorted({e[1] for e in graph.edges}))}
    forward = [(s, o, w, predicates[p]) for s, p, o, w in graph.edges]
    backward = [(o, s, w, predicate) for s, o, w, predicate in forward]
    nodes = len(graph.ids)
    ids, ids_mb = held_mb(lambda: [raw.decode() for raw in raw_ids])
    _, index_mb = held_mb(lambda: {entity_id: node for node, entity_id in enumerate(ids)})
    _, adjacency_mb = held_mb(lambda: (sparse_rows(nodes, forward), sparse_rows(nodes, backward)))
    _, summaries_mb = held_mb(
        lambda: [summary(i, kind, rng) for i, kind in zip(ids, graph.types, strict=True)]
    )
    return {
        "entities": nodes,
        "edges": len(graph.edges),
        "ids_mb": round(ids_mb, 1),
        "id_index_mb": round(index_mb, 1),
        "adjacency_mb": round(adjacency_mb, 1),
        "summaries_mb": round(summaries_mb, 1),
        "total_mb": round(ids_mb + index_mb + adjacency_mb + summaries_mb, 1),
    }


def main() -> None:
    """Measure and print the figures as one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--edges", type=int, default=300_000)
    parser.add_argument("--seed", type=int, default=20_240_115)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    print(json.dumps(measure(generate_graph(args.entities, args.edges, rng), rng)))


if __name__ == "__main__":
    main()
