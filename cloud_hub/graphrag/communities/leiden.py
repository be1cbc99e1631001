"""Leiden clustering into a hierarchy of communities, in full or incrementally.

Level 0 is the finest: Leiden (modularity with a resolution) on the entity graph of
:mod:`.model`. Level ``l`` is Leiden on the graph of level ``l - 1``'s communities (each
a node, the weights between them summed, their inner weight a self-loop) at the
resolution of the level below times ``level_scale``, or times ``level_scale`` again
(up to :data:`RESOLUTION_TRIES` times) until it merges something; up to ``max_levels``
levels, or until a level merges nothing. Entities without any relationship belong to no
community.

A **full** run clusters level 0 with igraph's Leiden (C; leidenalg's is an order of
magnitude slower on 100k entities), the levels above with leidenalg. An **incremental**
run re-optimises only around the changed entities, with leidenalg warm-started from
the previous partition: the changed entities and their neighbours (before and after the
change) are free; every other entity is fixed, and stands inside its community's
*super node*, which carries the fixed members' weights to the free entities, and the
rest of their strength as a self-loop. The reduced graph has the full graph's total
weight and community strengths, so every move Leiden weighs has the gain it has in the
full graph, at the cost of the changed part only. An
incremental run makes Leiden's node moves (until no free node gains by moving), at
level 0 and then on the levels above for the communities touched (the others fixed):
the refinement and aggregation phases cost ten times more on 100k entities for the same
modularity (measured), but they are what keeps every community connected, so a
community a change splits stays in one piece until the next full run.

**Stable ids**: a community keeps its id across runs when it is the same region: a
community with a fixed member keeps that member's id; the others take the previous id
they overlap most (largest overlaps first, each id once), else a new id (``L<level>-<n>``,
never reused).

Everything here is pure computation on in-memory data; the caller owns the threads.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

import msgspec

from cloud_hub.graphrag.communities.config import CommunitiesConfig
from cloud_hub.graphrag.communities.model import Graph, Pair

__all__ = [
    "Hierarchy",
    "Touched",
    "full_hierarchy",
    "incremental_hierarchy",
    "modularity",
    "seed_hierarchy",
]

#: A weight below this is rounding left by subtracting; the pair is gone.
_EPSILON = 1e-9
#: How many times a level's resolution is lowered (by ``level_scale``) looking for one
#: that merges communities of the level below, before the hierarchy stops there.
RESOLUTION_TRIES = 4

_Link = tuple[str, str]


class Hierarchy(msgspec.Struct):
    """The communities of every level, and what an incremental run needs of level 0.

    Attributes:
        membership: entity id -> its level-0 community id.
        parents: ``parents[l]``: level-``l`` community id -> its level-``l+1`` id.
        links: level-0 communities' pair weights, ``(a, b)`` with ``a <= b``; ``(a, a)``
            is the weight inside ``a``.
        strengths: level-0 community id -> the sum of its members' strengths.
        sizes: level-0 community id -> its number of entities.
        next_ids: per level, the number the next new id takes.
        resolutions: the resolution each level was clustered at.
        modularity: modularity (resolution 1) of the level-0 partition.
    """

    membership: dict[str, str] = msgspec.field(default_factory=dict)
    parents: list[dict[str, str]] = msgspec.field(default_factory=list)
    links: dict[_Link, float] = msgspec.field(default_factory=dict)
    strengths: dict[str, float] = msgspec.field(default_factory=dict)
    sizes: dict[str, int] = msgspec.field(default_factory=dict)
    next_ids: list[int] = msgspec.field(default_factory=list)
    resolutions: list[float] = msgspec.field(default_factory=list)
    modularity: float = 0.0

    @property
    def levels(self) -> int:
        """How many levels there are (0 when nothing is clustered)."""
        return len(self.parents) + 1 if self.membership else 0

    def chain(self, entity_id: str) -> list[str]:
        """An entity's community id at each level, level 0 first (empty: none)."""
        community = self.membership.get(entity_id)
        if community is None:
            return []
        out = [community]
        for parents in self.parents:
            out.append(parents[out[-1]])
        return out

    def communities(self, level: int) -> list[str]:
        """The ids of one level's communities, sorted."""
        if level == 0:
            return sorted(self.sizes)
        return sorted(set(self.parents[level - 1].values()))

    def level_sizes(self, level: int) -> dict[str, int]:
        """Entities per community of ``level``."""
        sizes = dict(self.sizes)
        for parents in self.parents[:level]:
            up: Counter[str] = Counter()
            for child, n in sizes.items():
                up[parents[child]] += n
            sizes = dict(up)
        return sizes

    def level_links(self, level: int) -> dict[_Link, float]:
        """Pair weights between the communities of ``level`` (as :attr:`links`)."""
        links = self.links
        for parents in self.parents[:level]:
            up: dict[_Link, float] = {}
            for (a, b), w in links.items():
                key = _link(parents[a], parents[b])
                up[key] = up.get(key, 0.0) + w
            links = up
        return links


class Touched(msgspec.Struct, frozen=True):
    """What an incremental run changed.

    Attributes:
        before: entity id -> its level-0 community before the run (``None``: it had
            none), for every entity the run could move (changed or next to a change).
        communities: per level, the ids (old and new) whose members changed.
    """

    before: dict[str, str | None]
    communities: list[set[str]]


def _link(a: str, b: str) -> _Link:
    return (a, b) if a <= b else (b, a)


def _new_id(level: int, next_ids: list[int]) -> str:
    while len(next_ids) <= level:
        next_ids.append(0)
    next_ids[level] += 1
    return f"L{level}-{next_ids[level]}"


def modularity(links: dict[_Link, float], strengths: dict[str, float]) -> float:
    """Modularity (resolution 1) of a partition given by its communities' pair weights and
    strengths."""
    total = sum(links.values())
    if total <= 0:
        return 0.0
    inner = sum(w for (a, b), w in links.items() if a == b)
    expected = sum(k * k for k in strengths.values()) / (4 * total * total)
    return inner / total - expected


# ---- Leiden runs (igraph and leidenalg imported on use: hub-only dependencies) -----------


def _igraph_leiden(
    n: int, edges: list[tuple[int, int]], weights: list[float], config: CommunitiesConfig
) -> list[int]:
    """Level 0 in full: igraph's Leiden (modularity), seeded."""
    import igraph

    graph = igraph.Graph(n=n, edges=edges)
    # igraph draws from one process-wide generator: seed it for this run, then restore.
    igraph.set_random_number_generator(random.Random(config.seed))
    try:
        clusters = graph.community_leiden(
            objective_function="modularity",
            weights=weights,
            resolution=config.resolution,
            n_iterations=config.full_iterations,
        )
    finally:
        igraph.set_random_number_generator(random)
    return list(clusters.membership)


def _leidenalg(
    n: int,
    edges: list[tuple[int, int]],
    weights: list[float],
    *,
    resolution: float,
    seed: int,
    initial: list[int] | None = None,
    fixed: list[bool] | None = None,
) -> list[int]:
    """leidenalg (RB configuration model, i.e. modularity with a resolution): full Leiden
    iterations until stable, or, warm-started from ``initial`` with the ``fixed`` nodes
    kept where they are, Leiden's node moves until no free node gains by moving."""
    import igraph
    import leidenalg

    graph = igraph.Graph(n=n, edges=edges)
    partition = leidenalg.RBConfigurationVertexPartition(
        graph, initial_membership=initial, weights=weights, resolution_parameter=resolution
    )
    optimiser = leidenalg.Optimiser()
    optimiser.set_rng_seed(seed)
    if fixed is None:
        optimiser.optimise_partition(partition, n_iterations=-1)
    else:
        optimiser.move_nodes(partition, is_membership_fixed=fixed)
    return list(partition.membership)


# ---- ids --------------------------------------------------------------------------------


def _assign(
    groups: dict[int, Counter[str]],
    labels: Iterable[int],
    taken: set[str],
    level: int,
    next_ids: list[int],
) -> dict[int, str]:
    """Give each label an id: the untaken previous id it overlaps most (largest overlaps
    first), else a new one."""
    ranked = sorted(
        (-n, label, old)
        for label, counts in groups.items()
        for old, n in counts.items()
        if old not in taken
    )
    out: dict[int, str] = {}
    for _n, label, old in ranked:
        if label not in out and old not in taken:
            out[label] = old
            taken.add(old)
    for label in sorted(set(labels)):
        if label not in out:
            out[label] = _new_id(level, next_ids)
    return out


# ---- full -------------------------------------------------------------------------------


def full_hierarchy(
    graph: Graph, config: CommunitiesConfig, previous: Hierarchy | None = None
) -> Hierarchy:
    """Cluster ``graph`` from scratch into up to ``config.max_levels`` levels.

    Ids are carried over from ``previous`` by overlap, and new ones continue its
    numbering.
    """
    previous = previous or Hierarchy()
    pairs = graph.pairs()
    ids = sorted({e for a, b, _w in pairs for e in (a, b)})
    index = {entity_id: i for i, entity_id in enumerate(ids)}
    edges = [(index[a], index[b]) for a, b, _w in pairs]
    labels = _igraph_leiden(len(ids), edges, [w for _a, _b, w in pairs], config)
    groups: dict[int, Counter[str]] = {}
    for entity_id, label in zip(ids, labels, strict=True):
        old = previous.membership.get(entity_id)
        if old is not None:
            groups.setdefault(label, Counter())[old] += 1
    next_ids = list(previous.next_ids)
    names = _assign(groups, labels, set(), 0, next_ids)
    out = Hierarchy(next_ids=next_ids, resolutions=[config.resolution])
    out.membership = {e: names[label] for e, label in zip(ids, labels, strict=True)}
    _tally(out, pairs)
    for entity_id in ids:
        out.sizes[out.membership[entity_id]] = out.sizes.get(out.membership[entity_id], 0) + 1
    _build_levels(out, previous, config)
    out.modularity = modularity(out.links, out.strengths)
    return out


def _tally(hierarchy: Hierarchy, pairs: Iterable[Pair]) -> None:
    """The level-0 links and strengths of a full run's partition."""
    membership, strengths = hierarchy.membership, hierarchy.strengths
    for a, b, w in pairs:
        key = _link(membership[a], membership[b])
        hierarchy.links[key] = hierarchy.links.get(key, 0.0) + w
        for end in key:
            strengths[end] = strengths.get(end, 0.0) + w


def _level_graph(
    nodes: Sequence[str], links: dict[_Link, float]
) -> tuple[list[tuple[int, int]], list[float]]:
    index = {node: i for i, node in enumerate(nodes)}
    edges = [(index[a], index[b]) for a, b in links]
    return edges, list(links.values())


def _build_levels(out: Hierarchy, previous: Hierarchy, config: CommunitiesConfig) -> None:
    """Levels 1 and up, each on the graph of the level below, until one stops shrinking."""
    for level in range(1, config.max_levels):
        nodes = out.communities(level - 1)
        if len(nodes) <= 1:
            return
        edges, weights = _level_graph(nodes, out.level_links(level - 1))
        resolution = out.resolutions[-1]
        for _try in range(RESOLUTION_TRIES):
            resolution *= config.level_scale
            labels = _leidenalg(len(nodes), edges, weights, resolution=resolution, seed=config.seed)
            if len(set(labels)) < len(nodes):
                break
        else:
            return
        out.resolutions.append(resolution)
        before = previous.parents[level - 1] if level - 1 < len(previous.parents) else {}
        sizes = out.level_sizes(level - 1)
        groups: dict[int, Counter[str]] = {}
        for node, label in zip(nodes, labels, strict=True):
            if node in before:
                groups.setdefault(label, Counter())[before[node]] += sizes[node]
        names = _assign(groups, labels, set(), level, out.next_ids)
        out.parents.append({n: names[label] for n, label in zip(nodes, labels, strict=True)})


# ---- incremental ------------------------------------------------------------------------


def incremental_hierarchy(
    hierarchy: Hierarchy,
    graph: Graph,
    changed: Iterable[str],
    before: Sequence[Pair],
    config: CommunitiesConfig,
) -> Touched:
    """Bring ``hierarchy`` (in place) up to date with ``graph`` after a change.

    Args:
        hierarchy: the communities before the change (updated here).
        graph: the graph after the change (:func:`.model.patch_graph`).
        changed: the entities the change touched (the change feed's ids).
        before: the pairs with a changed end as they were before the change (what
            :func:`.model.patch_graph` returned).
        config: resolution, seed, levels.

    Returns:
        What moved, for the summaries and the store.
    """
    changed = set(changed)
    free = set(changed)
    for a, b, _w in before:
        free.update((a, b))
    for entity_id in changed:
        free.update(graph.adjacency.get(entity_id, ()))
    pairs = graph.pairs(free)
    # A pair with a changed end has both ends free: the pairs that changed are
    # ``before`` (as they were) and ``touching`` (as they are).
    touching = [p for p in pairs if p[0] in changed or p[1] in changed]
    now = {e: graph.strength(e) for e in free}
    was = {e: hierarchy.membership.pop(e, None) for e in free}
    old_of = _old_community(hierarchy.membership, was)
    strengths = _strengths_before(now, before, touching)
    for entity_id, community in was.items():
        if community is not None:
            hierarchy.sizes[community] -= 1
            hierarchy.strengths[community] -= strengths[entity_id]
    labels = _reoptimise_level0(hierarchy, graph, pairs, was, config)
    for entity_id, community in labels.items():
        hierarchy.membership[entity_id] = community
        hierarchy.sizes[community] = hierarchy.sizes.get(community, 0) + 1
        hierarchy.strengths[community] = hierarchy.strengths.get(community, 0.0) + now[entity_id]
    moved = {e for e in free if was[e] != labels.get(e)}
    shifted = [
        p
        for p in pairs
        if (p[0] in moved or p[1] in moved) and p[0] not in changed and p[1] not in changed
    ]
    new_of = hierarchy.membership.__getitem__
    _shift(hierarchy.links, before, old_of, -1)
    _shift(hierarchy.links, shifted, old_of, -1)
    _shift(hierarchy.links, touching, new_of, 1)
    _shift(hierarchy.links, shifted, new_of, 1)
    touched = [{c for c in (*was.values(), *labels.values()) if c is not None}]
    _drop_empty(hierarchy, touched[0])
    for level in range(1, len(hierarchy.parents) + 1):
        touched.append(_reoptimise_level(hierarchy, level, touched[-1], config))
    hierarchy.modularity = modularity(hierarchy.links, hierarchy.strengths)
    return Touched(was, touched)


def _old_community(membership: dict[str, str], was: dict[str, str | None]) -> Callable[[str], str]:
    """An entity's level-0 community before the run (``membership`` holds the fixed
    ones, ``was`` the free ones)."""

    def old(entity_id: str) -> str:
        community = was[entity_id] if entity_id in was else membership[entity_id]
        assert community is not None  # an entity with a pair before had a community
        return community

    return old


def _strengths_before(
    now: dict[str, float], before: Sequence[Pair], touching: Sequence[Pair]
) -> dict[str, float]:
    """The free entities' strengths before the change: now, less their changed pairs as
    they are, plus them as they were."""
    out = dict(now)
    for a, b, w in before:
        out[a] += w
        out[b] += w
    for a, b, w in touching:
        out[a] -= w
        out[b] -= w
    return out


def _shift(
    links: dict[_Link, float], pairs: Iterable[Pair], community: Callable[[str], str], sign: int
) -> None:
    """Add (``sign`` 1) or take away (-1) pairs' weights to the level-0 links, each
    end in ``community(end)``."""
    for a, b, w in pairs:
        key = _link(community(a), community(b))
        weight = links.get(key, 0.0) + sign * w
        if abs(weight) < _EPSILON:
            links.pop(key, None)
        else:
            links[key] = weight


def _drop_empty(hierarchy: Hierarchy, communities: Iterable[str]) -> None:
    """Forget level-0 communities left without members."""
    for community in communities:
        if hierarchy.sizes.get(community, 0) == 0:
            hierarchy.sizes.pop(community, None)
            hierarchy.strengths.pop(community, None)


def _reoptimise_level0(
    hierarchy: Hierarchy,
    graph: Graph,
    pairs: list[Pair],
    was: dict[str, str | None],
    config: CommunitiesConfig,
) -> dict[str, str]:
    """Leiden's node moves for the free entities (``was``) with one fixed super node per
    community standing for its fixed members; the free entities' new community ids
    (those left without any pair have none)."""
    free = sorted(e for e in was if graph.adjacency.get(e))
    if not free:
        return {}
    supers = sorted(c for c, n in hierarchy.sizes.items() if n > 0)
    index = {e: i for i, e in enumerate(free)}
    super_index = {c: len(free) + i for i, c in enumerate(supers)}
    membership = hierarchy.membership
    weights: dict[tuple[int, int], float] = {}
    to_free: dict[str, float] = {}
    position = index.get
    for a, b, w in pairs:
        i, j = position(a), position(b)
        if i is None:
            i = super_index[membership[a]]
            to_free[membership[a]] = to_free.get(membership[a], 0.0) + w
        if j is None:
            j = super_index[membership[b]]
            to_free[membership[b]] = to_free.get(membership[b], 0.0) + w
        key = (i, j) if i <= j else (j, i)
        weights[key] = weights.get(key, 0.0) + w
    # A super node's strength is its fixed members' (hierarchy.strengths now): its
    # weights to free entities, and the rest as a self-loop (counted twice).
    for community, at in super_index.items():
        loop = (hierarchy.strengths[community] - to_free.get(community, 0.0)) / 2
        if loop > _EPSILON:
            weights[(at, at)] = loop
    labels = _leidenalg(
        len(free) + len(supers),
        list(weights),
        list(weights.values()),
        resolution=config.resolution,
        seed=config.seed,
        initial=_initial(free, supers, was),
        fixed=[False] * len(free) + [True] * len(supers),
    )
    names = {labels[super_index[c]]: c for c in supers}
    moved = labels[: len(free)]
    groups: dict[int, Counter[str]] = {}
    for entity_id, label in zip(free, moved, strict=True):
        old = was[entity_id]
        if label not in names and old is not None:
            groups.setdefault(label, Counter())[old] += 1
    loose = [label for label in moved if label not in names]
    names.update(_assign(groups, loose, set(supers), 0, hierarchy.next_ids))
    return {e: names[label] for e, label in zip(free, moved, strict=True)}


def _initial(free: list[str], supers: list[str], was: dict[str, str | None]) -> list[int]:
    """The starting labels: a free entity in its previous community (its super node's
    label, or one label for a community whose members are all free), a new one alone;
    super node ``i`` has label ``i``."""
    label_of = {c: i for i, c in enumerate(supers)}
    spare = itertools.count(len(supers))
    out: list[int] = []
    for entity_id in free:
        old = was[entity_id]
        if old is None:
            out.append(next(spare))
            continue
        if old not in label_of:
            label_of[old] = next(spare)
        out.append(label_of[old])
    return [*out, *range(len(supers))]


def _reoptimise_level(
    hierarchy: Hierarchy, level: int, touched_below: set[str], config: CommunitiesConfig
) -> set[str]:
    """Re-optimise ``level`` for the touched communities of the level below (and their
    neighbours), the others fixed; the ids of ``level`` whose members changed."""
    parents = hierarchy.parents[level - 1]
    nodes = hierarchy.communities(level - 1)
    if not nodes:  # the graph is empty: so is this level
        hierarchy.parents[level - 1] = {}
        return {parents[n] for n in touched_below if n in parents}
    links = hierarchy.level_links(level - 1)
    present = set(nodes)
    free = {n for n in touched_below if n in present}
    for a, b in links:
        if a in touched_below or b in touched_below:
            free.update((a, b))
    free.update(n for n in nodes if n not in parents)
    previous = sorted({parents[n] for n in nodes if n in parents})
    label_of = {p: i for i, p in enumerate(previous)}
    initial = [
        label_of[parents[n]] if n in parents else len(previous) + i for i, n in enumerate(nodes)
    ]
    edges, weights = _level_graph(nodes, links)
    labels = _leidenalg(
        len(nodes),
        edges,
        weights,
        resolution=hierarchy.resolutions[level],
        seed=config.seed,
        initial=initial,
        fixed=[n not in free for n in nodes],
    )
    names = {label: parents[n] for n, label in zip(nodes, labels, strict=True) if n not in free}
    sizes = hierarchy.level_sizes(level - 1)
    groups: dict[int, Counter[str]] = {}
    for node, label in zip(nodes, labels, strict=True):
        if label not in names and node in parents:
            groups.setdefault(label, Counter())[parents[node]] += sizes[node]
    loose = [label for label in labels if label not in names]
    names.update(_assign(groups, loose, set(names.values()), level, hierarchy.next_ids))
    touched = {parents[n] for n in touched_below if n in parents}
    new = {n: names[label] for n, label in zip(nodes, labels, strict=True)}
    touched.update(new[n] for n in free)
    touched.update(parents[n] for n in free if n in parents)
    hierarchy.parents[level - 1] = new
    return touched


def seed_hierarchy(memberships: dict[str, list[str]]) -> Hierarchy:
    """A hierarchy holding only stored ids (entity -> id per level, level 0 first): the
    ``previous`` of a first full run after a restart, so that ids survive it."""
    out = Hierarchy()
    depth = max((len(chain) for chain in memberships.values()), default=0)
    out.parents = [{} for _ in range(max(depth - 1, 0))]
    out.next_ids = [0] * depth
    for entity_id, chain in memberships.items():
        out.membership[entity_id] = chain[0]
        for level, (low, high) in enumerate(itertools.pairwise(chain)):
            out.parents[level][low] = high
        for level, community in enumerate(chain):
            number = community.rpartition("-")[2]
            if number.isdigit():
                out.next_ids[level] = max(out.next_ids[level], int(number))
    return out
