"""Statistical summaries of communities, kept additively as the communities change.

Per community: its size; its most frequent entity types and outgoing predicates; its
representative entities (PageRank within the community); its keywords (tf-idf over the
words of its members' ids, types and string property values, each community of a level
one document); the edges (hub ``edge_id``) that report its members; its parent and
children.

Level 0 counts are sums over members, updated per moved or changed entity; a level
above sums its children's counts, redone for the communities touched. Representatives
are computed by PageRank on the community's own subgraph (igraph) and merged upwards
(each child's scores weighted by its share of the parent). An incremental run
recomputes them for a level-0 community that is new, lost one of its representatives,
or whose members changed by :data:`RERANK_SHARE` of its size since they were computed;
the others keep theirs (their PageRank within the community costs as much as the rest
of the run) until that happens or the next full run. Keywords of a community are
recomputed when it is touched, against the level's current document frequencies.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Iterable

import msgspec

from cloud_hub.graphrag.communities.leiden import Hierarchy, Touched
from cloud_hub.graphrag.communities.model import Graph, Profile

__all__ = ["Summaries", "Summary", "SummaryChanges", "summarise_all", "update_summaries"]

TOP_TYPES = 5
TOP_PREDICATES = 5
TOP_REPRESENTATIVES = 5
TOP_KEYWORDS = 10
#: Reporting edges listed per community at most (the most reporting first).
TOP_EDGES = 100
#: A level-0 community's representatives are recomputed once this share of its size
#: has moved in or out since they were (or one of them left, or it is new).
RERANK_SHARE = 0.1

_Ranked = list[tuple[str, float]]


class Summary(msgspec.Struct, frozen=True, gc=False):
    """What a community is, in numbers.

    Attributes:
        id: the community's id; ``level`` its level (0 the finest).
        size: its entities.
        parent: the community one level up (``None`` at the top).
        children: the communities one level down (none at level 0).
        types: the most frequent entity types, with counts.
        predicates: the most frequent outgoing predicates of its members, with counts.
        representatives: the entities with the highest PageRank within it (scores sum
            to at most 1).
        keywords: the words of highest tf-idf, with their scores.
        edges: the edges reporting the most of its members, with how many members each.
    """

    id: str
    level: int
    size: int
    parent: str | None
    children: list[str]
    types: list[tuple[str, int]]
    predicates: list[tuple[str, int]]
    representatives: list[tuple[str, float]]
    keywords: list[tuple[str, float]]
    edges: list[tuple[str, int]]


class SummaryChanges(msgspec.Struct, frozen=True):
    """The summaries one update wrote anew, and the ids of communities that are gone."""

    written: list[Summary]
    removed: list[str]


class _Aggregate:
    """Counts of one community, sums over its members."""

    __slots__ = ("devices", "predicates", "size", "terms", "types")

    def __init__(self) -> None:
        self.size = 0
        self.types: Counter[str] = Counter()
        self.predicates: Counter[str] = Counter()
        self.terms: Counter[str] = Counter()
        self.devices: Counter[str] = Counter()

    def add(self, profile: Profile, sign: int) -> None:
        """Count one member in (``sign`` 1) or out (-1)."""
        self.size += sign
        self.types[profile.entity_type] += sign
        _count(self.predicates, profile.predicates, sign)
        _count(self.terms, profile.terms, sign)
        _count(self.devices, dict.fromkeys(profile.devices, 1), sign)

    def merge(self, other: _Aggregate) -> None:
        """Add another community's counts (a child's, into its parent)."""
        self.size += other.size
        self.types.update(other.types)
        self.predicates.update(other.predicates)
        self.terms.update(other.terms)
        self.devices.update(other.devices)


def _count(counter: Counter[str], counts: dict[str, int], sign: int) -> None:
    for key, n in counts.items():
        value = counter[key] + sign * n
        if value:
            counter[key] = value
        else:
            del counter[key]


class Summaries:
    """The summaries of every level, and the counts they are made of."""

    def __init__(self) -> None:
        self.aggregates: list[dict[str, _Aggregate]] = []
        self.frequencies: list[Counter[str]] = []
        self.members: dict[str, set[str]] = {}
        self.ranks: dict[str, _Ranked] = {}
        self.churn: Counter[str] = Counter()
        self.summaries: dict[str, Summary] = {}


# ---- pieces -----------------------------------------------------------------------------


def _top(counter: Counter[str], n: int) -> list[tuple[str, int]]:
    return heapq.nsmallest(n, counter.items(), key=lambda item: (-item[1], item[0]))


def _keywords(terms: Counter[str], frequencies: Counter[str], documents: int) -> _Ranked:
    """Top words by tf-idf: sublinear tf ``1 + ln(n)`` (a word every member repeats does
    not drown the rarer ones), smooth idf ``ln((1 + N) / (1 + df)) + 1``."""
    scored = (
        (t, (1 + math.log(n)) * (math.log((1 + documents) / (1 + frequencies[t])) + 1))
        for t, n in terms.items()
        if n > 0
    )
    best = heapq.nsmallest(TOP_KEYWORDS, scored, key=lambda item: (-item[1], item[0]))
    return [(t, round(score, 6)) for t, score in best]


def _pagerank(members: Iterable[str], graph: Graph) -> _Ranked:
    """The members of highest PageRank on the community's own weighted subgraph."""
    import igraph

    ids = sorted(members)
    index = {e: i for i, e in enumerate(ids)}
    edges: list[tuple[int, int]] = []
    weights: list[float] = []
    for a in ids:
        i = index[a]
        for b, w in graph.adjacency.get(a, {}).items():
            j = index.get(b)
            if j is not None and i < j:
                edges.append((i, j))
                weights.append(w)
    scores = igraph.Graph(n=len(ids), edges=edges).pagerank(weights=weights or None)
    best = heapq.nsmallest(
        TOP_REPRESENTATIVES, zip(ids, scores, strict=True), key=lambda item: (-item[1], item[0])
    )
    return [(e, round(score, 6)) for e, score in best]


def _merged_ranks(children: Iterable[tuple[_Ranked, int]], size: int) -> _Ranked:
    """A parent's representatives: its children's, each weighted by the child's share."""
    scored = [(e, s * n / size) for ranked, n in children for e, s in ranked]
    best = heapq.nsmallest(TOP_REPRESENTATIVES, scored, key=lambda item: (-item[1], item[0]))
    return [(e, round(score, 6)) for e, score in best]


def _children(hierarchy: Hierarchy) -> list[dict[str, list[str]]]:
    """Per level, each community's children (level 0: none)."""
    out: list[dict[str, list[str]]] = [{}]
    for parents in hierarchy.parents:
        level: dict[str, list[str]] = {}
        for child, parent in sorted(parents.items()):
            level.setdefault(parent, []).append(child)
        out.append(level)
    return out


def _frequencies(aggregates: dict[str, _Aggregate]) -> Counter[str]:
    frequencies: Counter[str] = Counter()
    for aggregate in aggregates.values():
        frequencies.update(aggregate.terms.keys())
    return frequencies


def _summary(
    state: Summaries,
    hierarchy: Hierarchy,
    children: list[dict[str, list[str]]],
    level: int,
    community: str,
) -> Summary:
    aggregate = state.aggregates[level][community]
    parents = hierarchy.parents[level] if level < len(hierarchy.parents) else {}
    return Summary(
        id=community,
        level=level,
        size=aggregate.size,
        parent=parents.get(community),
        children=children[level].get(community, []),
        types=_top(aggregate.types, TOP_TYPES),
        predicates=_top(aggregate.predicates, TOP_PREDICATES),
        representatives=state.ranks[community],
        keywords=_keywords(aggregate.terms, state.frequencies[level], len(state.aggregates[level])),
        edges=_top(aggregate.devices, TOP_EDGES),
    )


def _upper(
    state: Summaries,
    children: list[dict[str, list[str]]],
    level: int,
    communities: Iterable[str],
) -> None:
    """(Re)build the counts and representatives of ``communities`` of ``level`` >= 1
    from their children's."""
    below = state.aggregates[level - 1]
    aggregates = state.aggregates[level]
    frequencies = state.frequencies[level]
    for community in communities:
        old = aggregates.pop(community, None)
        if old is not None:
            frequencies.subtract(old.terms.keys())
        kids = children[level].get(community)
        if not kids:
            state.ranks.pop(community, None)
            continue
        aggregate = _Aggregate()
        for kid in kids:
            aggregate.merge(below[kid])
        aggregates[community] = aggregate
        frequencies.update(aggregate.terms.keys())
        state.ranks[community] = _merged_ranks(
            ((state.ranks[kid], below[kid].size) for kid in kids), aggregate.size
        )
    for term in [t for t, n in frequencies.items() if n <= 0]:
        del frequencies[term]


# ---- full and incremental ---------------------------------------------------------------


def summarise_all(hierarchy: Hierarchy, graph: Graph) -> Summaries:
    """Every community's summary, from scratch."""
    state = Summaries()
    level0: dict[str, _Aggregate] = {}
    for entity_id, community in hierarchy.membership.items():
        state.members.setdefault(community, set()).add(entity_id)
        level0.setdefault(community, _Aggregate()).add(graph.profiles[entity_id], 1)
    state.aggregates.append(level0)
    state.frequencies.append(_frequencies(level0))
    for community, members in state.members.items():
        state.ranks[community] = _pagerank(members, graph)
    children = _children(hierarchy)
    for level in range(1, hierarchy.levels):
        state.aggregates.append({})
        state.frequencies.append(Counter())
        _upper(state, children, level, hierarchy.communities(level))
    for level in range(hierarchy.levels):
        for community in hierarchy.communities(level):
            state.summaries[community] = _summary(state, hierarchy, children, level, community)
    return state


def update_summaries(
    state: Summaries,
    hierarchy: Hierarchy,
    graph: Graph,
    touched: Touched,
    *,
    old_profiles: dict[str, Profile | None],
    old_parents: list[dict[str, str]],
) -> SummaryChanges:
    """Bring ``state`` (in place) up to date after an incremental run.

    Args:
        state: the summaries before the run.
        hierarchy: the communities after it.
        graph: the graph after the change.
        touched: what the run moved (:func:`.leiden.incremental_hierarchy`).
        old_profiles: the changed entities' profiles before the change (``None``: new).
        old_parents: ``hierarchy.parents`` as it was before the run.

    Returns:
        The summaries written anew (touched, or whose parent changed) and the ids gone.
    """
    for community in _update_level0(state, hierarchy, graph, touched, old_profiles):
        _rerank(state, community, graph)
    children = _children(hierarchy)
    for level in range(1, len(touched.communities)):
        _upper(state, children, level, touched.communities[level])
    written: list[Summary] = []
    removed: list[str] = []
    for level in range(len(touched.communities)):
        parents = hierarchy.parents[level] if level < len(hierarchy.parents) else {}
        was = old_parents[level] if level < len(old_parents) else {}
        moved = {c for c, p in parents.items() if was.get(c) != p}
        for community in sorted(touched.communities[level] | moved):
            if community in state.aggregates[level]:
                summary = _summary(state, hierarchy, children, level, community)
                state.summaries[community] = summary
                written.append(summary)
            elif state.summaries.pop(community, None) is not None:
                removed.append(community)
    return SummaryChanges(written, removed)


def _rerank(state: Summaries, community: str, graph: Graph) -> None:
    """Recompute a level-0 community's representatives if they are due (see
    :data:`RERANK_SHARE`)."""
    members = state.members.get(community)
    if not members:
        state.ranks.pop(community, None)
        state.churn.pop(community, None)
        return
    ranks = state.ranks.get(community)
    if (
        ranks is None
        or any(e not in members for e, _s in ranks)
        or state.churn[community] >= RERANK_SHARE * len(members)
    ):
        state.ranks[community] = _pagerank(members, graph)
        state.churn.pop(community, None)


def _update_level0(
    state: Summaries,
    hierarchy: Hierarchy,
    graph: Graph,
    touched: Touched,
    old_profiles: dict[str, Profile | None],
) -> set[str]:
    """Move the counts of moved or changed entities; the communities whose members
    changed."""
    aggregates = state.aggregates[0]
    frequencies = state.frequencies[0]
    reranked: set[str] = set()
    for entity_id, old in touched.before.items():
        new = hierarchy.membership.get(entity_id)
        changed = entity_id in old_profiles
        if old == new and not changed:
            continue
        before = old_profiles[entity_id] if changed else graph.profiles.get(entity_id)
        after = graph.profiles.get(entity_id) if new is not None else None
        if old is not None and before is not None:
            _recount(aggregates, frequencies, old, before, -1)
        if new is not None and after is not None:
            _recount(aggregates, frequencies, new, after, 1)
        if old != new:
            reranked.update(c for c in (old, new) if c is not None)
            state.churn.update(c for c in (old, new) if c is not None)
            if old is not None:
                state.members[old].discard(entity_id)
            if new is not None:
                state.members.setdefault(new, set()).add(entity_id)
    for community in reranked:
        if not state.members.get(community):
            state.members.pop(community, None)
            gone = aggregates.pop(community, None)
            if gone is not None:
                frequencies.subtract(gone.terms.keys())
    return reranked


def _recount(
    aggregates: dict[str, _Aggregate],
    frequencies: Counter[str],
    community: str,
    profile: Profile,
    sign: int,
) -> None:
    """Count a member in or out of a level-0 community, keeping the level's document
    frequencies (terms present in the community or not)."""
    aggregate = aggregates.setdefault(community, _Aggregate())
    present = {t for t in profile.terms if t in aggregate.terms}
    aggregate.add(profile, sign)
    for term in profile.terms:
        now = term in aggregate.terms
        if now and term not in present:
            frequencies[term] += 1
        elif term in present and not now:
            frequencies[term] -= 1
            if frequencies[term] <= 0:
                del frequencies[term]
