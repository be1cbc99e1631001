"""Settings of the community service."""

from __future__ import annotations

import msgspec

__all__ = ["CommunitiesConfig"]


class CommunitiesConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How the hub keeps its communities.

    Attributes:
        interval: seconds between looks at the change feed; a run happens only when it
            holds changed entities.
        full_every: seconds between full recomputes (the first run is always full).
        drift: a full recompute also runs when the incremental partition's modularity
            falls more than this fraction below the last full one's (0.02: 2 %).
        max_levels: levels of the hierarchy at most (level 0, the finest, included).
        resolution: modularity resolution at level 0; higher gives smaller communities.
        level_scale: each level above is clustered at the resolution of the level below
            times this (again, a few times, until it merges communities), so that it
            has fewer, larger communities.
        seed: random seed of every Leiden run (the same graph gives the same result).
        full_iterations: Leiden iterations of a full level-0 run.
    """

    interval: float = 5.0
    full_every: float = 3600.0
    drift: float = 0.02
    max_levels: int = 3
    resolution: float = 1.0
    level_scale: float = 0.25
    seed: int = 42
    full_iterations: int = 5
