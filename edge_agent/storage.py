"""Free space under the agent's state: refuse ingest before the disk is full, resume after.

Why the agent watches the disk itself rather than waiting for write errors (checked with
nats-server 2.15.1 on a full tmpfs): a JetStream publish the server cannot write
(``ENOSPC``) gets *no answer* (the publisher times out), and the stream keeps failing
every later write, even once space has returned, until the server restarts. SQLite,
for its part, refuses the commit (``SQLITE_FULL``) and keeps nothing of it, which the
graph processor retries with backoff. So:

- below ``nats.jetstream.min_free_bytes`` free on the JetStream store's filesystem, the
  agent refuses ingest itself: HTTP ``POST /ingest`` answers 507, and the entity stream's
  byte limit is lowered to one byte, so JetStream answers every NATS publisher
  ``maximum bytes exceeded`` (err_code 10077). Nothing already stored is dropped (the
  stream discards new, never old). The reserve left keeps room for the processor to
  apply what the stream holds.
- once free space is back above 1.5 times the reserve (the margin keeps a disk hovering at
  the line from flapping), the limit is restored and ingest resumes by itself.
- if the filesystem ran out altogether meanwhile (another program filled it), the
  embedded nats-server is restarted once space has returned, which clears its stuck
  stream; it restores what it had stored from its files.

The decisions are pure functions of readings (:func:`next_state`); :class:`StorageWatch`
is the thin shell that reads ``statvfs`` and acts.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec

from edge_agent.config import JetStreamConfig
from edge_agent.graph.sql import is_sqlite_full
from edge_agent.metrics import Metrics
from edge_agent.nats.client import ensure_streams, refuse_publishes
from edge_agent.nats.connection import NatsConnection
from edge_agent.nats.subjects import ENTITY_STREAM

__all__ = [
    "EXHAUSTED_BYTES",
    "SpaceState",
    "StorageWatch",
    "is_disk_full",
    "next_state",
    "refusal",
    "watch_agent_storage",
]

log = logging.getLogger(__name__)
#: Free space under which a filesystem counts as exhausted: writes may have failed.
EXHAUSTED_BYTES = 1 << 20
_POLL_S = 0.5


class SpaceState(msgspec.Struct, frozen=True):
    """One filesystem as last read: free bytes, whether it is under its reserve
    (``low``), and whether it ran out altogether while low (``exhausted``)."""

    free: int = 0
    low: bool = False
    exhausted: bool = False


def next_state(previous: SpaceState, free: int, min_free: int) -> SpaceState:
    """The state after reading ``free`` bytes, given the reserve ``min_free``.

    Low below the reserve; back to normal only at 1.5 times the reserve. ``exhausted`` stays
    set until the filesystem leaves the low state.
    """
    resume_at = min_free + min_free // 2
    low = free < (resume_at if previous.low else min_free)
    exhausted = low and (previous.exhausted or free < EXHAUSTED_BYTES)
    return SpaceState(free, low, exhausted)


def refusal(store: str, path: Path, state: SpaceState, min_free: int) -> str:
    """Why ingest is refused, in words ("" when it is not)."""
    if not state.low:
        return ""
    return (
        f"insufficient storage: {state.free} bytes free under {path} ({store}), below"
        f" nats.jetstream.min_free_bytes {min_free}; free space to resume"
    )


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is SQLite's ``SQLITE_FULL`` or ``ENOSPC``."""
    if is_sqlite_full(exc):
        return True
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return True
        seen = seen.__cause__
    return False


def _free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on ``path``'s filesystem."""
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


class StorageWatch:
    """Reads free space under the state directory and acts on the crossings.

    Args:
        paths: what to watch, by name: ``graph`` (the SQLite file's directory) and, for
            the embedded server, ``jetstream`` (its store directory, which gates ingest).
        min_free: ``nats.jetstream.min_free_bytes``.
        metrics: ``semstreams_storage_free_bytes`` and ``semstreams_storage_low``.
        on_low: awaited when the gating filesystem goes low (clamp the stream).
        on_ok: awaited when it is back (restore the stream), again each poll until it
            succeeds.
        on_exhausted: called once when it is back after running out altogether
            (restart the server), before ``on_ok``.
    """

    def __init__(
        self,
        paths: dict[str, Path],
        *,
        min_free: int,
        metrics: Metrics,
        on_low: Callable[[], Awaitable[None]],
        on_ok: Callable[[], Awaitable[None]],
        on_exhausted: Callable[[], None],
    ) -> None:
        self.paths = paths
        self.min_free = min_free
        self._metrics = metrics
        self._on_low = on_low
        self._on_ok = on_ok
        self._on_exhausted = on_exhausted
        self.states = {name: SpaceState() for name in paths}
        self._clamped = False
        # Set before the clamp is tried: a clamp whose answer was lost may have taken.
        self._restore_due = False
        self._exhausted = False
        self._last_failure = ""

    def refused(self) -> str:
        """Why ingest is refused now ("" when it is not): the JetStream store is low."""
        if "jetstream" not in self.paths:
            return ""
        path, state = self.paths["jetstream"], self.states["jetstream"]
        return refusal("jetstream", path, state, self.min_free)

    def read(self) -> None:
        """Read every filesystem once and update the states and gauges."""
        for name, path in self.paths.items():
            with contextlib.suppress(OSError):  # a path not made yet: keep the last state
                state = next_state(self.states[name], _free_bytes(path), self.min_free)
                if state.low != self.states[name].low:
                    log.warning(
                        "storage %s: %d bytes free under %s (%s)",
                        name,
                        state.free,
                        path,
                        "below the reserve" if state.low else "back above the reserve",
                    )
                self.states[name] = state
                self._metrics.storage_free.labels(name).set(state.free)
                self._metrics.storage_low.labels(name).set(int(state.low))

    async def run(self) -> None:
        """Poll until cancelled, acting on the JetStream store's crossings."""
        while True:
            self.read()
            try:
                await self._act()
                self._last_failure = ""
            except Exception as exc:  # NATS down for a moment: the next poll tries again
                if str(exc) != self._last_failure:  # once, not every poll
                    log.warning("storage: acting on the reserve failed: %s", exc)
                self._last_failure = str(exc)
            await asyncio.sleep(_POLL_S)

    async def _act(self) -> None:
        state = self.states.get("jetstream")
        if state is None:
            return
        self._exhausted |= state.exhausted
        if state.low:
            if not self._clamped:
                self._restore_due = True
                await self._on_low()
                self._clamped = True
            return
        # Also when on_low never got through (a disk full to the last byte refuses the
        # stream update too): a server that ran out is restarted all the same.
        if self._exhausted:
            self._exhausted = False
            self._on_exhausted()
        if self._restore_due:
            await self._on_ok()
            self._restore_due = self._clamped = False

    def health(self) -> dict[str, Any]:
        """``/health``'s ``storage`` component: ``ok`` or ``low``, with the reason."""
        low = [name for name, state in self.states.items() if state.low]
        report: dict[str, Any] = {
            "status": "low" if low else "ok",
            "min_free_bytes": self.min_free,
            "free_bytes": {name: state.free for name, state in self.states.items()},
        }
        if low:
            report["reason"] = "; ".join(
                refusal(n, self.paths[n], self.states[n], self.min_free) for n in low
            )
        return report


def watch_agent_storage(
    state_dir: Path, nats: NatsConnection, limits: JetStreamConfig, metrics: Metrics
) -> StorageWatch:
    """The agent's watch: the graph's directory, and the embedded server's store (which
    gates ingest); an agent on someone else's NATS leaves the stream's room to it."""
    paths = {"graph": state_dir}
    if nats.server is not None:
        paths["jetstream"] = state_dir / "jetstream"

    async def on_low() -> None:
        await refuse_publishes(nats.jetstream, ENTITY_STREAM)

    async def on_ok() -> None:
        await ensure_streams(nats.jetstream, limits)

    def on_exhausted() -> None:
        if nats.server is not None:
            nats.server.recycle()  # the client reconnects; the processor rebinds

    return StorageWatch(
        paths,
        min_free=int(limits.min_free_bytes),
        metrics=metrics,
        on_low=on_low,
        on_ok=on_ok,
        on_exhausted=on_exhausted,
    )
