"""The disk reserve's decisions (pure) and the errors that mean "no room"."""

from __future__ import annotations

import contextlib
import errno
import sqlite3
from pathlib import Path

from nats.js.errors import APIError, ServiceUnavailableError

from edge_agent.errors import GraphError
from edge_agent.ingest.publisher import storage_refusal
from edge_agent.metrics import Metrics
from edge_agent.storage import (
    EXHAUSTED_BYTES,
    SpaceState,
    StorageWatch,
    is_disk_full,
    next_state,
    refusal,
)

MIN = 100 << 20


def test_low_below_the_reserve_and_back_only_at_one_and_a_half_times_it() -> None:
    state = next_state(SpaceState(), MIN, MIN)
    assert not state.low  # exactly the reserve is still fine
    state = next_state(state, MIN - 1, MIN)
    assert state.low and not state.exhausted
    state = next_state(state, MIN + MIN // 2 - 1, MIN)
    assert state.low  # hovering just above the line does not flap
    state = next_state(state, MIN + MIN // 2, MIN)
    assert not state.low


def test_exhausted_is_remembered_until_the_disk_leaves_the_low_state() -> None:
    state = next_state(SpaceState(), EXHAUSTED_BYTES - 1, MIN)
    assert state.low and state.exhausted
    state = next_state(state, MIN, MIN)  # some space back, still under 1.5 x
    assert state.low and state.exhausted
    state = next_state(state, 2 * MIN, MIN)
    assert not state.low and not state.exhausted


def test_a_zero_reserve_never_refuses() -> None:
    assert not next_state(SpaceState(), 0, 0).low


def test_refusal_names_the_store_the_free_bytes_and_the_key() -> None:
    state = SpaceState(free=1234, low=True)
    text = refusal("jetstream", Path("/var/lib/x"), state, MIN)
    assert "1234 bytes free under /var/lib/x (jetstream)" in text
    assert "nats.jetstream.min_free_bytes" in text
    assert refusal("jetstream", Path("/"), SpaceState(free=1), MIN) == ""


def test_disk_full_is_found_through_the_cause_chain() -> None:
    full = sqlite3.OperationalError("database or disk is full")
    try:
        raise GraphError("batch not applied") from full
    except GraphError as wrapped:
        assert is_disk_full(wrapped)
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert not is_disk_full(GraphError("batch not applied"))
    assert not is_disk_full(sqlite3.OperationalError("database is locked"))


def test_jetstream_no_room_answers_are_storage_refusals() -> None:
    assert storage_refusal(
        ServiceUnavailableError(code=503, err_code=10077, description="maximum bytes exceeded")
    )
    assert storage_refusal(APIError(code=503, err_code=10023, description="insufficient resources"))
    assert not storage_refusal(APIError(code=503, err_code=10008, description="other"))
    assert not storage_refusal(TimeoutError())


class _Calls:
    """Records the watch's actions; ``fail_low`` makes that many clamps fail first."""

    def __init__(self, fail_low: int = 0) -> None:
        self.log: list[str] = []
        self.fail_low = fail_low

    async def low(self) -> None:
        self.log.append("low")
        if self.fail_low:
            self.fail_low -= 1
            raise TimeoutError("no answer")

    async def ok(self) -> None:
        self.log.append("ok")

    def exhausted(self) -> None:
        self.log.append("restart")


def _watch(calls: _Calls, tmp_path: Path) -> StorageWatch:
    return StorageWatch(
        {"graph": tmp_path, "jetstream": tmp_path},
        min_free=MIN,
        metrics=Metrics(),
        on_low=calls.low,
        on_ok=calls.ok,
        on_exhausted=calls.exhausted,
    )


async def _poll(watch: StorageWatch, free: int) -> None:
    """One poll as if ``free`` bytes were free (the shell's read, without statvfs)."""
    watch.states["jetstream"] = next_state(watch.states["jetstream"], free, MIN)
    with contextlib.suppress(TimeoutError):
        await watch._act()


async def test_the_stream_is_clamped_once_and_restored_once(tmp_path: Path) -> None:
    calls = _Calls()
    watch = _watch(calls, tmp_path)
    for free in (2 * MIN, MIN - 1, MIN - 1, MIN, 2 * MIN, 2 * MIN):
        await _poll(watch, free)
    assert calls.log == ["low", "ok"]
    assert watch.refused() == ""


async def test_a_failed_clamp_is_tried_again_and_restored_even_if_unsure(tmp_path: Path) -> None:
    calls = _Calls(fail_low=2)
    watch = _watch(calls, tmp_path)
    for free in (MIN - 1, MIN - 1, MIN - 1, MIN - 1):
        await _poll(watch, free)
    assert calls.log == ["low", "low", "low"]  # until one got through
    assert "insufficient storage" in watch.refused()
    await _poll(watch, 2 * MIN)
    assert calls.log[-1] == "ok"


async def test_a_disk_that_ran_out_restarts_the_server_once_when_space_returns(
    tmp_path: Path,
) -> None:
    calls = _Calls(fail_low=10)  # a full disk refuses the stream update too
    watch = _watch(calls, tmp_path)
    for free in (0, 0, MIN):
        await _poll(watch, free)
    await _poll(watch, 2 * MIN)
    await _poll(watch, 2 * MIN)
    assert calls.log == ["low", "low", "low", "restart", "ok"]


def test_health_names_the_low_store(tmp_path: Path) -> None:
    watch = _watch(_Calls(), tmp_path)
    watch.states["graph"] = SpaceState(free=5, low=True)
    report = watch.health()
    assert report["status"] == "low"
    assert "5 bytes free" in report["reason"] and "(graph)" in report["reason"]
    assert watch.refused() == ""  # the graph's disk alone does not stop ingest
