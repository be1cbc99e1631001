"""Programs as assemblies of parts: start them in order, stop them in reverse.

The edge agent and the cloud hub are two blueprints over shared parts (the NATS
connection, the graph service, the HTTP API) plus parts of their own; neither is a
subclass of the other. A part is anything with ``name``, ``start()``, ``stop()`` and
``health()``; the blueprint starts each after the ones before it, and when one fails
to start, stops those already started, newest first.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

__all__ = ["Blueprint", "Part", "Stage"]

log = logging.getLogger(__name__)


class Part(Protocol):
    """One part of a program."""

    #: What ``/health`` and the logs call it.
    name: str

    async def start(self) -> None:
        """Start; raise (naming the cause) when it cannot."""
        ...

    async def stop(self) -> None:
        """Stop; safe to call when :meth:`start` failed halfway."""
        ...

    def health(self) -> dict[str, Any] | None:
        """``{"status": "ok" | "down" | ..., ...}`` for ``/health``, or ``None``."""
        ...


class Blueprint:
    """Parts started in the order given and stopped in reverse.

    Args:
        parts: the program's parts, each after those it needs.
    """

    def __init__(self, parts: Sequence[Part]) -> None:
        self.parts = list(parts)
        self._started: list[Part] = []

    async def start(self) -> None:
        """Start every part in order; on a failure, stop the started ones and re-raise."""
        for part in self.parts:
            # Added first: a part that fails halfway is stopped too.
            self._started.append(part)
            try:
                await part.start()
            except BaseException:
                await self.stop()
                raise

    async def stop(self) -> None:
        """Stop the started parts, newest first; a part's failure to stop is logged."""
        while self._started:
            part = self._started.pop()
            try:
                await part.stop()
            except Exception:
                log.exception("%s did not stop cleanly", part.name)

    def health(self) -> dict[str, dict[str, Any]]:
        """Each part's health report, by name (parts with nothing to say left out)."""
        reports = {}
        for part in self.parts:
            report = part.health()
            if report is not None:
                reports[part.name] = report
        return reports


class Stage:
    """A part that is a pair of a program's own coroutines (ingest, the log, ...).

    Args:
        name: what the logs call it.
        start: starts it.
        stop: stops it (``None``: nothing to stop).
    """

    def __init__(
        self,
        name: str,
        start: Callable[[], Awaitable[None]],
        stop: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.name = name
        self._start = start
        self._stop = stop

    async def start(self) -> None:
        """Run the start coroutine."""
        await self._start()

    async def stop(self) -> None:
        """Run the stop coroutine, if there is one."""
        if self._stop is not None:
            await self._stop()

    def health(self) -> None:
        """Nothing to report: the program reports on its own stages."""
        return
