"""The dashboard part of the hub: samples the fleet's history and serves its live view.

One snapshot of the fleet is computed at most once a second however many dashboards
are open (:meth:`Dashboard.snapshot`); each open page holds one server-sent event
stream, which sends the snapshot when it changed and a comment line otherwise, so
proxies keep the connection. Open streams are capped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import msgspec

from cloud_hub.config import DashboardConfig
from cloud_hub.dashboard.fleet import fleet_rows, fleet_summary
from cloud_hub.dashboard.history import record_samples
from cloud_hub.dashboard.status import Thresholds
from edge_agent.errors import GraphError
from edge_agent.graph import GraphStore
from edge_agent.tasks import stop_task

__all__ = ["Dashboard"]

log = logging.getLogger(__name__)
_SNAPSHOT_TTL_S = 1.0
_KEEPALIVE_S = 15.0
MAX_STREAMS = 64

_json = msgspec.json.Encoder()


class Dashboard:
    """Samples each edge's counters into the history and keeps the fleet's snapshot.

    Args:
        settings: the ``dashboard`` component's settings.
        store: the hub's graph store (history goes through its writer).
        links: this instance's links, by edge id: ``connected`` and ``last_seen_ms``.
        devices: the device registry's devices as dicts (empty when enrolment is off).
        clock: epoch seconds (tests pass their own).
    """

    name = "dashboard"

    def __init__(
        self,
        settings: DashboardConfig,
        *,
        store: GraphStore,
        links: Callable[[], Mapping[str, Mapping[str, Any]]],
        devices: Callable[[], Sequence[Mapping[str, Any]]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.thresholds = Thresholds(
            offline_after=float(settings.offline_after),
            lag_warning=float(settings.lag_warning),
            usage_warning=settings.usage_warning,
            temperature_warning=settings.temperature_warning,
        )
        self.group_thresholds = {
            group: msgspec.structs.replace(
                self.thresholds,
                offline_after=float(given.offline_after or settings.offline_after),
                lag_warning=float(given.lag_warning or settings.lag_warning),
            )
            for group, given in settings.groups.items()
        }
        self._store = store
        self._links = links
        self._devices = devices
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._snapshot: bytes = b""
        self._snapshot_at = -_SNAPSHOT_TTL_S
        #: Bumped when the fleet's content changed (not merely the snapshot's time).
        self._version = 0
        self._content = b""
        self._lock = asyncio.Lock()
        self.streams = 0

    async def start(self) -> None:
        """Sample now, then every ``sample_interval``."""
        self._task = asyncio.create_task(self._sample_forever(), name="dashboard-samples")

    async def stop(self) -> None:
        """Stop sampling (open streams end with the server)."""
        if self._task is not None:
            await stop_task(self._task)

    async def _sample_forever(self) -> None:
        while True:
            try:
                await self.sample()
            except GraphError as exc:  # disk full: the next sample may work
                log.warning("dashboard: history sample not written: %s", exc)
            await asyncio.sleep(float(self.settings.sample_interval))

    async def sample(self) -> int:
        """Write one history sample per edge now; how many."""
        linked = {edge: bool(link.get("connected")) for edge, link in self._links().items()}
        return await self._store.database.write_transaction(
            record_samples,
            int(self._clock() * 1000),
            keep_ms=int(float(self.settings.history) * 1000),
            silent_after_ms=int(float(self.settings.offline_after) * 1000),
            linked=linked,
        )

    def device(self, edge_id: str) -> dict[str, Any] | None:
        """The registry's record of ``edge_id`` (``None``: not enrolled, e.g. a static
        token in ``websocket_input.devices``)."""
        return next((dict(d) for d in self._devices() if d.get("id") == edge_id), None)

    def rows(self) -> list[dict[str, Any]]:
        """The fleet now, one row per edge (blocking: call from a thread)."""
        return self._store.database.read(
            fleet_rows,
            now_ms=int(self._clock() * 1000),
            thresholds=self.thresholds,
            group_thresholds=self.group_thresholds,
            links=self._links(),
            devices=self._devices(),
        )

    async def snapshot(self) -> bytes:
        """The fleet as JSON (``{"at", "summary", "edges"}``), at most a second old."""
        async with self._lock:
            now = time.monotonic()
            if now - self._snapshot_at >= _SNAPSHOT_TTL_S:
                rows = await asyncio.to_thread(self.rows)
                content = {"summary": fleet_summary(rows), "edges": rows}
                encoded = _json.encode(content)
                if encoded != self._content:
                    self._content, self._version = encoded, self._version + 1
                self._snapshot = _json.encode({"at": self._clock(), **content})
                self._snapshot_at = now
            return self._snapshot

    async def events(self, is_disconnected: Callable[[], Any]) -> AsyncIterator[bytes]:
        """Server-sent events: ``fleet`` when the fleet changed (an idle fleet sends
        nothing new), comments between."""
        self.streams += 1
        try:
            sent, quiet = -1, 0.0
            while not await is_disconnected():
                body = await self.snapshot()
                if self._version != sent:
                    yield b"event: fleet\ndata: " + body + b"\n\n"
                    sent, quiet = self._version, 0.0
                elif quiet >= _KEEPALIVE_S:
                    yield b": keepalive\n\n"
                    quiet = 0.0
                await asyncio.sleep(_SNAPSHOT_TTL_S)
                quiet += _SNAPSHOT_TTL_S
        finally:
            self.streams -= 1
