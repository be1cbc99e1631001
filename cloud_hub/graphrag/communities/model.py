"""The graph as the clustering sees it, and what the summaries know of each entity.

A read of the hub's graph (:mod:`.store`) returns :class:`GraphRows`: entities with
their type, string property values and reporting edges, and relationships as
``(subject, predicate, object, weight)``. :class:`Graph` keeps them as an undirected
weighted adjacency (all relationships between two entities, either way and any
predicate, add up to one weight; self-loops and relationships to ids that are not
entities are left out) and one :class:`Profile` per entity. :func:`patch_graph`
replaces what a batch of changed entities says, which is exact because every change
of a relationship marks both its ends as changed (the store's triggers).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

import msgspec

from cloud_hub.graphrag.text import STOP_WORDS

__all__ = [
    "EdgeRow",
    "EntityRow",
    "Graph",
    "GraphRows",
    "Pair",
    "Profile",
    "build_graph",
    "patch_graph",
    "terms",
]

#: A relationship as read: (subject, predicate, object, weight).
EdgeRow = tuple[str, str, str, float]
#: An undirected weighted pair of entities: (one end, other end, weight).
Pair = tuple[str, str, float]

_WORD = re.compile(r"[^\W_]+")


class EntityRow(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One entity as read: its id, type, string property values and reporting edges."""

    entity_id: str
    entity_type: str
    text: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()


class GraphRows(msgspec.Struct, frozen=True, gc=False):
    """What one read of the graph returns.

    Attributes:
        entities: the entities read (all of them, or the changed ones that still exist).
        edges: the relationships read (all, or every one with a changed entity at an end).
        dirty: ``(rowid, entity id)`` of the change feed's rows this read consumes.
    """

    entities: list[EntityRow]
    edges: list[EdgeRow]
    dirty: list[tuple[int, str]] = []


class Profile(msgspec.Struct, frozen=True, gc=False):
    """What the summaries count of one entity.

    Attributes:
        entity_type: its type.
        terms: its words (id, type, string property values) with their counts.
        predicates: its outgoing relationships' predicates with their counts.
        devices: the edges that report it.
    """

    entity_type: str
    terms: dict[str, int]
    predicates: dict[str, int]
    devices: tuple[str, ...]


class Graph:
    """An undirected weighted adjacency and a profile per entity (both by entity id)."""

    def __init__(self) -> None:
        self.adjacency: dict[str, dict[str, float]] = {}
        self.profiles: dict[str, Profile] = {}

    def pairs(self, around: Iterable[str] | None = None) -> list[Pair]:
        """Each pair once (``a < b``), of the whole graph or with an end in ``around``."""
        adjacency = self.adjacency
        if around is None:
            return [(a, b, w) for a, row in adjacency.items() for b, w in row.items() if a < b]
        seen = set(around)
        out: list[Pair] = []
        append = out.append
        for a in seen:
            for b, w in adjacency.get(a, {}).items():
                if a < b:
                    append((a, b, w))
                elif b not in seen:  # else it is added from b's side
                    append((b, a, w))
        return out

    def strength(self, entity_id: str) -> float:
        """The sum of the weights of an entity's pairs."""
        return sum(self.adjacency.get(entity_id, {}).values())


def terms(*texts: str) -> dict[str, int]:
    """The words of ``texts`` (lower case, at least two characters, at least one letter,
    no stop word: keywords should say what a community is about) with their counts;
    ``UAV-007`` gives ``uav``."""
    words = (w.lower() for text in texts for w in _WORD.findall(text))
    return dict(Counter(w for w in words if len(w) > 1 and not w.isdigit() and w not in STOP_WORDS))


def _profile(row: EntityRow, predicates: Counter[str]) -> Profile:
    return Profile(
        row.entity_type,
        terms(row.entity_id, row.entity_type, *row.text),
        dict(predicates),
        row.devices,
    )


def _outgoing(edges: Iterable[EdgeRow]) -> dict[str, Counter[str]]:
    out: dict[str, Counter[str]] = {}
    for subject, predicate, _obj, _w in edges:
        out.setdefault(subject, Counter())[predicate] += 1
    return out


def _link(adjacency: dict[str, dict[str, float]], edges: Iterable[EdgeRow]) -> None:
    """Add ``edges`` whose ends are both in ``adjacency`` (both ways, weights summed)."""
    for subject, _p, obj, weight in edges:
        if subject == obj:
            continue
        row = adjacency.get(subject)
        other = adjacency.get(obj)
        if row is None or other is None:
            continue
        row[obj] = row.get(obj, 0.0) + weight
        other[subject] = other.get(subject, 0.0) + weight


def build_graph(rows: GraphRows) -> Graph:
    """The graph of a full read."""
    graph = Graph()
    outgoing = _outgoing(rows.edges)
    for row in rows.entities:
        graph.adjacency[row.entity_id] = {}
        graph.profiles[row.entity_id] = _profile(row, outgoing.get(row.entity_id, Counter()))
    _link(graph.adjacency, rows.edges)
    return graph


def patch_graph(graph: Graph, rows: GraphRows, changed: Iterable[str]) -> list[Pair]:
    """Replace, in place, what ``graph`` holds of the ``changed`` entities by ``rows``.

    ``rows`` is a read of the changed entities (those still there) and of every
    relationship with one of them at an end. Entities of ``changed`` that ``rows`` does
    not hold are removed, with their pairs.

    Returns:
        The pairs with a changed end as they were before, each once (``a < b``).
    """
    changed = set(changed)
    before = graph.pairs(changed)
    adjacency = graph.adjacency
    for entity_id in changed:
        for other in adjacency.pop(entity_id, {}):
            adjacency.get(other, {}).pop(entity_id, None)
        graph.profiles.pop(entity_id, None)
    outgoing = _outgoing(rows.edges)
    for row in rows.entities:
        adjacency[row.entity_id] = {}
        graph.profiles[row.entity_id] = _profile(row, outgoing.get(row.entity_id, Counter()))
    _link(adjacency, rows.edges)
    return before
