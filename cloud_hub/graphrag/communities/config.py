"""Settings of the community service: the hub's ``communities`` component's config."""

from __future__ import annotations

from typing import Annotated

import msgspec

from edge_agent.config.schema import Section
from edge_agent.config.units import Duration

__all__ = ["CommunitiesConfig"]

_Fraction = Annotated[float, msgspec.Meta(gt=0, lt=1)]


class CommunitiesConfig(Section, frozen=True):
    """``components[].config`` of type ``communities``: how the hub keeps its communities.

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

    interval: Duration = Duration(5.0)
    full_every: Duration = Duration(3600.0)
    drift: _Fraction = 0.02
    max_levels: Annotated[int, msgspec.Meta(ge=1, le=6)] = 3
    resolution: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    level_scale: _Fraction = 0.25
    seed: int = 42
    full_iterations: Annotated[int, msgspec.Meta(ge=1, le=100)] = 5
