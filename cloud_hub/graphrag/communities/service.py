"""The hub's community loop: every ``interval``, bring the communities up to date.

A step looks at the change feed; when it holds entities (or a full run is due) it reads
the graph on a read connection, computes in a worker thread (:mod:`.engine`) and writes
the result through the store's single writer, deleting exactly the feed's rows it
consumed. A full run replaces an incremental one when there is no state in memory yet
(the first run after a start, or after a failure), every ``full_every`` seconds once
something changed, when the feed holds more than :data:`FULL_SHARE` of the entities,
and when the incremental partition's modularity drifted more than ``drift`` below the
last full one's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import msgspec

from cloud_hub.graphrag.communities import store
from cloud_hub.graphrag.communities.config import CommunitiesConfig
from cloud_hub.graphrag.communities.engine import State, Update, full_update, incremental_update
from cloud_hub.graphrag.communities.leiden import Hierarchy, seed_hierarchy

__all__ = ["FULL_SHARE", "CommunityMetrics", "CommunityService", "Plan", "plan"]

log = logging.getLogger(__name__)
_T = TypeVar("_T")

#: A change feed holding more than this share of the entities gets a full run.
FULL_SHARE = 0.1


class Reader(Protocol):
    """``Database.read``: ``fn(read_connection, *args)`` on the calling thread."""

    def __call__(self, fn: Callable[..., _T], *args: Any) -> _T: ...


class Writer(Protocol):
    """``Database.write_transaction``: ``fn(write_connection, *args)`` in one write
    transaction on the store's writer thread."""

    def __call__(self, fn: Callable[..., _T], *args: Any) -> Awaitable[_T]: ...


class CommunityMetrics(Protocol):
    """What the service reports to (``HubMetrics`` has it)."""

    def record_communities(
        self, mode: str, seconds: float, modularity: float, per_level: list[int]
    ) -> None:
        """One run's figures."""
        ...


class Plan(msgspec.Struct, frozen=True):
    """What a step should do: ``"full"``, ``"incremental"`` or ``"none"``, and why."""

    mode: str
    reason: str


def plan(
    *,
    has_state: bool,
    dirty: int,
    entities: int,
    since_full: float,
    changed_since_full: bool,
    drifted: bool,
    config: CommunitiesConfig,
) -> Plan:
    """Decide a step (pure).

    Args:
        has_state: an earlier run's state is in memory.
        dirty: entities in the change feed.
        entities: entities clustered by the last run.
        since_full: seconds since the last full run.
        changed_since_full: an incremental run happened since the last full one.
        drifted: the last incremental run's modularity drifted (see the module).
        config: ``full_every``.
    """
    if not has_state:
        return Plan("full", "start")
    if drifted:
        return Plan("full", "drift")
    if since_full >= config.full_every and (dirty or changed_since_full):
        return Plan("full", "schedule")
    if dirty > max(1.0, FULL_SHARE * entities):
        return Plan("full", "backlog")
    if dirty:
        return Plan("incremental", "changes")
    return Plan("none", "no changes")


class CommunityService:
    """Keeps the hub's communities current.

    Args:
        read: the graph store's ``database.read``.
        write: the graph store's ``database.write_transaction``.
        settings: interval, full_every, drift and the clustering's settings.
        metrics: where each run's figures go (``None``: nowhere).
        clock: monotonic seconds (intervals); ``wall``: epoch seconds (``updated_at``).
    """

    def __init__(
        self,
        read: Reader,
        write: Writer,
        settings: CommunitiesConfig,
        metrics: CommunityMetrics | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._read = read
        self._write = write
        self.settings = settings
        self._metrics = metrics
        self._clock = clock
        self._wall = wall
        self._state: State | None = None
        self._full_at = 0.0
        self._changed_since_full = False
        self._drifted = False
        self._status: dict[str, Any] = {"runs": 0, "failures": 0, "last_run": None}

    async def run(self) -> None:
        """Step every ``interval`` until cancelled; a failed step is logged and counted,
        and the next one starts from a full run."""
        while True:
            try:
                await self.step()
            except Exception as exc:  # the loop outlives any one failure
                log.exception("communities: update failed")
                self._status["failures"] += 1
                self._status["last_error"] = str(exc)
            await asyncio.sleep(self.settings.interval)

    async def step(self) -> Plan:
        """Look at the change feed and run what :func:`plan` says; what it did."""
        dirty = await asyncio.to_thread(self._read, store.dirty_count)
        state = self._state
        decision = plan(
            has_state=state is not None,
            dirty=dirty,
            entities=len(state.hierarchy.membership) if state else 0,
            since_full=self._clock() - self._full_at,
            changed_since_full=self._changed_since_full,
            drifted=self._drifted,
            config=self.settings,
        )
        if decision.mode == "none":
            return decision
        started = self._clock()
        # No state until the run and its write succeed: a failure leads to a full run.
        self._state = None
        if decision.mode == "full" or state is None:
            previous = state.hierarchy if state else None
            state = None  # the old graph and summaries go before the new ones are built
            state, update, read_s = await self._full(previous)
        else:
            update, read_s = await self._incremental(state)
        computed = self._clock()
        await self._write(store.write_update, update, self._wall())
        self._state = state
        if update.mode == "full":
            self._full_at = started
        self._changed_since_full = update.mode == "incremental"
        self._drifted = update.modularity < state.full_modularity * (1 - self.settings.drift)
        finished = self._clock()
        phases = {
            "read_s": read_s,
            "compute_s": computed - started - read_s,
            "write_s": finished - computed,
        }
        self._record(decision, update, finished - started, phases)
        return decision

    async def _full(self, previous: Hierarchy | None) -> tuple[State, Update, float]:
        """Read everything and cluster it, ids carried over from ``previous`` (else from
        the stored memberships); the new state, the update, the read's seconds."""
        started = self._clock()
        rows = await asyncio.to_thread(self._read, store.read_all)
        if previous is None:
            previous = seed_hierarchy(await asyncio.to_thread(self._read, store.stored_memberships))
        read_s = self._clock() - started
        new_state, update = await asyncio.to_thread(full_update, rows, self.settings, previous)
        return new_state, update, read_s

    async def _incremental(self, state: State) -> tuple[Update, float]:
        """Read the changes and apply them to ``state``; the update, the read's seconds."""
        started = self._clock()
        rows = await asyncio.to_thread(self._read, store.read_changed)
        read_s = self._clock() - started
        update = await asyncio.to_thread(incremental_update, state, rows, self.settings)
        return update, read_s

    def _record(
        self, decision: Plan, update: Update, seconds: float, phases: dict[str, float]
    ) -> None:
        state = self._state
        assert state is not None
        self._status.update(
            {
                "runs": self._status["runs"] + 1,
                "last_run": self._wall(),
                "duration_s": round(seconds, 3),
                **{name: round(value, 3) for name, value in phases.items()},
                "mode": update.mode,
                "reason": decision.reason,
                "modularity": round(update.modularity, 4),
                "full_modularity": round(state.full_modularity, 4),
                "communities": update.communities,
                "consumed": len(update.consumed),
                "last_error": None,
            }
        )
        if self._metrics is not None:
            self._metrics.record_communities(
                update.mode, seconds, update.modularity, update.communities
            )

    def status(self) -> dict[str, Any]:
        """The last run: when (epoch s), how long (and its read, compute and write), mode
        and why, modularity (and the last full run's), communities per level, feed rows
        consumed; runs and failures."""
        return dict(self._status)

    def health(self) -> dict[str, Any]:
        """``ok`` once a run succeeded and the last one did not fail, else ``degraded``,
        with :meth:`status`."""
        healthy = self._status["last_run"] is not None and not self._status.get("last_error")
        return {"status": "ok" if healthy else "degraded", **self.status()}
