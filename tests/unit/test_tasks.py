"""The agent's task supervisor: no background task dies silently."""

from __future__ import annotations

import asyncio
import logging

import pytest

from edge_agent.tasks import Tasks


async def test_a_failing_task_is_logged_counted_and_started_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failures: list[str] = []
    runs = 0
    done = asyncio.Event()

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs < 3:
            raise RuntimeError(f"bug #{runs}")
        done.set()

    tasks = Tasks(on_failure=failures.append, first_wait=0.01)
    with caplog.at_level(logging.ERROR, logger="edge_agent.tasks"):
        tasks.spawn(flaky, "sync (test)")
        await asyncio.wait_for(done.wait(), 5)
    await tasks.cancel()
    assert runs == 3 and failures == ["sync (test)", "sync (test)"]
    assert "task sync (test) failed; starting it again" in caplog.text
    assert "RuntimeError: bug #2" in caplog.text  # with its traceback


async def test_a_task_spawned_without_restart_is_logged_and_counted_once() -> None:
    failures: list[str] = []
    runs = 0

    async def once() -> None:
        nonlocal runs
        runs += 1
        raise ValueError("broken")

    tasks = Tasks(on_failure=failures.append)
    tasks.spawn(once, "provisioning", restart=False)
    await asyncio.sleep(0.05)
    await tasks.cancel()
    assert runs == 1 and failures == ["provisioning"]


async def test_cancelling_stops_a_task_without_counting_a_failure() -> None:
    failures: list[str] = []
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.sleep(3600)

    tasks = Tasks(on_failure=failures.append)
    tasks.spawn(forever, "graph-processor")
    await started.wait()
    await tasks.cancel()
    assert failures == []


async def test_a_task_that_swallows_a_cancellation_is_cancelled_again() -> None:
    """As one looping around Python 3.11's wait_for, when its awaitable finishes at the
    moment of the cancel: stopping the program hung on such a task."""
    started = asyncio.Event()
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        started.set()
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed == 2:
                    raise
                swallowed += 1

    tasks = Tasks()
    tasks.spawn(stubborn, "sync")
    await started.wait()
    await asyncio.wait_for(tasks.cancel(), 5)
    assert swallowed == 2
