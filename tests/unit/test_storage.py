"""The disk reserve's decisions (pure) and the errors that mean "no room"."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

from nats.js.errors import APIError, ServiceUnavailableError

from edge_agent.errors import GraphError
from edge_agent.ingest.publisher import storage_refusal
from edge_agent.storage import EXHAUSTED_BYTES, SpaceState, is_disk_full, next_state, refusal

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
