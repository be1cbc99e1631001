"""Background tasks that stop when asked: supervised, restarted on failure, cancelled
for good (a cancellation a library swallowed is asked again)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from edge_agent.sync.pacing import Backoff

__all__ = ["Tasks", "stop_task"]

log = logging.getLogger(__name__)
#: stop_task asks a task again after this long, this many times at most.
_CANCEL_AGAIN_S = 0.5
_CANCEL_TRIES = 20


async def stop_task(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait until it has ended; its failure, if any, is dropped.

    A cancellation can be swallowed: Python 3.11's ``asyncio.wait_for`` (which nats-py
    and our own code call) returns its awaitable's result when that finished at the
    moment it was cancelled, and a task looping around such a call runs on. So the task
    is asked again every ``_CANCEL_AGAIN_S`` until it ends; one that never does is
    logged and left, so that stopping the program cannot hang on it.
    """
    for _ in range(_CANCEL_TRIES):
        task.cancel()
        await asyncio.wait({task}, timeout=_CANCEL_AGAIN_S)
        if task.done():
            if not task.cancelled():
                task.exception()  # retrieved: whoever ran it reported a failure
            return
    log.error("task %s ignored %d cancellations; left running", task.get_name(), _CANCEL_TRIES)


class Tasks:
    """The background tasks of a program's own parts: spawned, supervised, then cancelled
    together.

    None dies silently: a task that fails (anything but being cancelled) is logged with
    its traceback and counted (``on_failure`` gets its name), and, unless spawned with
    ``restart=False``, started again after a backoff (``first_wait``, doubling to 30 s).

    Args:
        on_failure: called with a task's name each time it fails.
        first_wait: seconds before the first restart.
    """

    def __init__(
        self, on_failure: Callable[[str], None] | None = None, first_wait: float = 1.0
    ) -> None:
        self._tasks: list[asyncio.Task[None]] = []
        self._on_failure = on_failure
        self._first_wait = first_wait

    def spawn(
        self, start: Callable[[], Awaitable[None]], name: str, *, restart: bool = True
    ) -> None:
        """Run ``start()`` as task ``name`` until it returns or :meth:`cancel`."""
        task = asyncio.create_task(self._supervise(start, name, restart), name=name)
        self._tasks.append(task)

    async def _supervise(
        self, start: Callable[[], Awaitable[None]], name: str, restart: bool
    ) -> None:
        backoff = Backoff(self._first_wait, 30.0)
        while True:
            try:
                await start()
                return
            except Exception:
                log.exception("task %s failed%s", name, "; starting it again" if restart else "")
                if self._on_failure is not None:
                    self._on_failure(name)
                if not restart:
                    return
            await asyncio.sleep(backoff.next())

    async def cancel(self) -> None:
        """Cancel every task, newest first, and wait for them (see :func:`stop_task`)."""
        for task in reversed(self._tasks):
            task.cancel()
        for task in self._tasks:
            await stop_task(task)
        self._tasks.clear()
