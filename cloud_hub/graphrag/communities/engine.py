"""One run of the community update, full or incremental: rows in, what to store out.

:func:`full_update` builds everything from a read of the whole graph;
:func:`incremental_update` patches the previous :class:`State` with a read of the
changed entities. Both return an :class:`Update`: the summaries and memberships to
write, the communities gone, the change-feed rows consumed. No I/O, no clock.
"""

from __future__ import annotations

import msgspec

from cloud_hub.graphrag.communities.config import CommunitiesConfig
from cloud_hub.graphrag.communities.leiden import (
    Hierarchy,
    full_hierarchy,
    incremental_hierarchy,
)
from cloud_hub.graphrag.communities.model import (
    Graph,
    GraphRows,
    Profile,
    build_graph,
    patch_graph,
)
from cloud_hub.graphrag.communities.summary import (
    Summaries,
    Summary,
    summarise_all,
    update_summaries,
)

__all__ = ["State", "Update", "full_update", "incremental_update"]


class Update(msgspec.Struct, frozen=True):
    """What one run found, to be written in one transaction.

    Attributes:
        mode: ``"full"`` (replace every stored community) or ``"incremental"``.
        summaries: the communities to write (all of them when full).
        removed: ids of communities gone (incremental).
        memberships: entity id -> its community per level, level 0 first, for every
            entity whose chain changed (all when full); an empty list: none any more.
        consumed: the change feed's rows this run took into account.
        modularity: modularity of the level-0 partition after the run.
        communities: how many communities each level has, level 0 first.
    """

    mode: str
    summaries: list[Summary]
    removed: list[str]
    memberships: dict[str, list[str]]
    consumed: list[tuple[int, str]]
    modularity: float
    communities: list[int]


class State:
    """What an incremental run needs from the runs before it (kept in memory).

    Attributes:
        graph: the graph as last read.
        hierarchy: its communities.
        summaries: their summaries and counts.
        full_modularity: the modularity of the last full run (for the drift check).
    """

    def __init__(self, graph: Graph, hierarchy: Hierarchy, summaries: Summaries) -> None:
        self.graph = graph
        self.hierarchy = hierarchy
        self.summaries = summaries
        self.full_modularity = hierarchy.modularity


def _counts(hierarchy: Hierarchy) -> list[int]:
    return [len(hierarchy.communities(level)) for level in range(hierarchy.levels)]


def full_update(
    rows: GraphRows, config: CommunitiesConfig, previous: Hierarchy | None = None
) -> tuple[State, Update]:
    """Cluster and summarise the whole graph ``rows`` holds.

    Args:
        rows: a read of every entity and relationship (and the change feed's rows).
        config: the clustering settings.
        previous: the communities before (in memory, or seeded from the store), whose
            ids carry over by overlap.
    """
    graph = build_graph(rows)
    hierarchy = full_hierarchy(graph, config, previous)
    summaries = summarise_all(hierarchy, graph)
    state = State(graph, hierarchy, summaries)
    update = Update(
        mode="full",
        summaries=list(summaries.summaries.values()),
        removed=[],
        memberships={e: hierarchy.chain(e) for e in hierarchy.membership},
        consumed=rows.dirty,
        modularity=hierarchy.modularity,
        communities=_counts(hierarchy),
    )
    return state, update


def incremental_update(state: State, rows: GraphRows, config: CommunitiesConfig) -> Update:
    """Bring ``state`` (in place) up to date with a read of the changed entities.

    Args:
        state: the previous run's state.
        rows: the changed entities (those still there), every relationship with one of
            them at an end, and the change feed's rows naming them.
        config: the clustering settings.
    """
    hierarchy = state.hierarchy
    changed = {entity_id for _rowid, entity_id in rows.dirty}
    old_profiles: dict[str, Profile | None] = {e: state.graph.profiles.get(e) for e in changed}
    old_parents = [dict(parents) for parents in hierarchy.parents]
    old_chains = {e: hierarchy.chain(e) for e in changed}
    before = patch_graph(state.graph, rows, changed)
    touched = incremental_hierarchy(hierarchy, state.graph, changed, before, config)
    for entity_id, community in touched.before.items():
        if entity_id not in old_chains:
            old_chains[entity_id] = _chain(community, old_parents)
    summaries = update_summaries(
        state.summaries,
        hierarchy,
        state.graph,
        touched,
        old_profiles=old_profiles,
        old_parents=old_parents,
    )
    memberships = {
        e: chain for e, old in old_chains.items() if (chain := hierarchy.chain(e)) != old
    }
    for community in _rechained(hierarchy, old_parents):
        for entity_id in state.summaries.members.get(community, ()):
            memberships[entity_id] = hierarchy.chain(entity_id)
    return Update(
        mode="incremental",
        summaries=summaries.written,
        removed=summaries.removed,
        memberships=memberships,
        consumed=rows.dirty,
        modularity=hierarchy.modularity,
        communities=_counts(hierarchy),
    )


def _chain(community: str | None, parents: list[dict[str, str]]) -> list[str]:
    """A level-0 community's chain of ids under ``parents`` (empty: none)."""
    if community is None:
        return []
    out = [community]
    for level in parents:
        parent = level.get(out[-1])
        if parent is None:
            break
        out.append(parent)
    return out


def _rechained(hierarchy: Hierarchy, old_parents: list[dict[str, str]]) -> list[str]:
    """The level-0 communities whose chain of parents changed."""
    return [
        community
        for community in hierarchy.sizes
        if _chain(community, hierarchy.parents) != _chain(community, old_parents)
    ]
