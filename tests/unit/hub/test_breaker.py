"""The embedding client's circuit breaker: a pure state machine over the time it is given."""

from __future__ import annotations

import pytest

from cloud_hub.graphrag.embedding.breaker import Breaker


def opened(at: float = 0.0) -> Breaker:
    breaker = Breaker(failures=3, reset=10.0)
    for _ in range(3):
        breaker.failed(at)
    return breaker


def test_closed_until_the_failures_in_a_row() -> None:
    breaker = Breaker(failures=3, reset=10.0)
    breaker.failed(0.0)
    breaker.failed(1.0)
    assert breaker.state(1.0) == "closed"
    assert breaker.allow(1.0)
    breaker.failed(2.0)
    assert breaker.state(2.0) == "open"


def test_a_success_starts_the_count_again() -> None:
    breaker = Breaker(failures=3, reset=10.0)
    for _ in range(5):
        breaker.failed(0.0)
        breaker.failed(0.0)
        breaker.succeeded()
    assert breaker.state(0.0) == "closed"


def test_open_fails_fast_until_the_reset() -> None:
    breaker = opened(at=100.0)
    assert not breaker.allow(100.0)
    assert not breaker.allow(109.9)
    assert breaker.retry_in(104.0) == pytest.approx(6.0)
    assert breaker.state(110.0) == "half_open"
    assert breaker.retry_in(110.0) == 0.0


def test_half_open_lets_one_trial_through() -> None:
    breaker = opened()
    assert breaker.allow(10.0)
    assert not breaker.allow(10.0)
    assert not breaker.allow(15.0)


def test_the_trial_succeeding_closes_it() -> None:
    breaker = opened()
    assert breaker.allow(10.0)
    breaker.succeeded()
    assert breaker.state(10.0) == "closed"
    assert breaker.allow(10.0)
    assert breaker.allow(10.0)


def test_the_trial_failing_opens_it_for_another_reset() -> None:
    breaker = opened()
    assert breaker.allow(10.0)
    breaker.failed(11.0)  # one failure is enough for a trial
    assert breaker.state(11.0) == "open"
    assert not breaker.allow(20.9)
    assert breaker.allow(21.0)


def test_an_unsettled_trial_gives_way_after_a_reset() -> None:
    breaker = opened()
    assert breaker.allow(10.0)  # its caller never reports back
    assert not breaker.allow(19.9)
    assert breaker.allow(20.0)


def test_at_least_one_failure() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Breaker(failures=0, reset=1.0)
