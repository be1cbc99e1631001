"""Pacing without I/O: the byte-rate token bucket, reconnect backoff, WebSocket framing."""

from __future__ import annotations

import math
import random

import pytest

from edge_agent.sync.pacing import Backoff, TokenBucket, wire_size


def send(bucket: TokenBucket, start: float, end: float, size: int, tick: float = 1e-9) -> int:
    """Send ``size``-byte messages whenever the bucket allows, from ``start`` to ``end`` on
    a fake clock that waits each delay rounded up to ``tick`` (a real clock's resolution).

    Returns:
        The bytes sent.
    """
    now, sent = start, 0
    for _ in range(1_000_000):
        if now >= end:
            return sent
        wait = bucket.delay(now)
        if wait > 0:
            now += math.ceil(wait / tick) * tick
        else:
            bucket.spend(size, now)
            sent += size
    raise AssertionError(f"stuck at {now} s")


def test_the_bucket_averages_its_rate_over_a_minute() -> None:
    bucket = TokenBucket(1000, 250, 0.0)
    sent = send(bucket, 0.0, 60.0, 100)
    assert sent / 60.0 == pytest.approx(1000, rel=0.01)


def test_waiting_out_the_delay_is_enough_to_send() -> None:
    # Driven exactly, as the module says tests do: advance the clock by the delay given.
    bucket = TokenBucket(1000, 250, 0.0)
    now = 0.0
    for _ in range(100):
        wait = bucket.delay(now)
        if wait > 0:
            now += wait
            assert bucket.delay(now) == 0, f"still {bucket.delay(now)!r} s to wait at {now} s"
        bucket.spend(100, now)


def test_a_message_goes_whole_then_is_paid_for() -> None:
    bucket = TokenBucket(1000, 250, 0.0)
    assert bucket.delay(0.0) == 0
    bucket.spend(1250, 0.0)  # larger than the burst: sent, and the debt is 1000 bytes
    assert bucket.delay(0.0) == pytest.approx(1.0)
    assert bucket.delay(0.5) == pytest.approx(0.5)
    assert bucket.delay(1.0) == 0


def test_idle_time_saves_up_at_most_the_burst() -> None:
    bucket = TokenBucket(1000, 250, 0.0)
    bucket.delay(3600.0)
    bucket.spend(250, 3600.0)
    assert bucket.delay(3600.0) == 0
    bucket.spend(1, 3600.0)
    assert bucket.delay(3600.0) == pytest.approx(0.001)


def test_rate_zero_never_waits() -> None:
    bucket = TokenBucket(0, 0, 0.0)
    for now in (0.0, 0.0, 1.0):
        bucket.spend(10**9, now)
        assert bucket.delay(now) == 0


def test_set_rate_applies_from_that_moment() -> None:
    bucket = TokenBucket(1000, 250, 0.0)
    bucket.spend(1250, 0.0)  # 1000 bytes of debt
    bucket.set_rate(100, 0.5)  # half a second repaid at 1000 B/s, the rest at 100 B/s
    assert bucket.delay(0.5) == pytest.approx(5.0)
    assert bucket.delay(5.5) == 0

    after = TokenBucket(1000, 250, 0.0)
    after.set_rate(100, 10.0)
    # a minute at 100 B/s, plus at most the burst saved up and one message on credit
    assert 100 * 60 <= send(after, 10.0, 70.0, 100) <= 100 * 60 + 250 + 100


def test_backoff_grows_by_the_multiplier_up_to_the_cap() -> None:
    backoff = Backoff(0.5, 30.0, multiplier=2.0, jitter=0.0, rng=random.Random(1))
    waits = [backoff.next() for _ in range(9)]
    assert waits == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_backoff_stays_at_the_cap_through_any_number_of_failures() -> None:
    # 2.0**1024 overflows a float: a link down for hours once crashed the sync task.
    backoff = Backoff(0.1, 0.2, multiplier=2.0, jitter=0.0)
    waits = [backoff.next() for _ in range(5000)]
    assert waits[:2] == [0.1, 0.2] and set(waits[1:]) == {0.2}


def test_backoff_jitter_stays_within_its_spread() -> None:
    initial, maximum, multiplier, jitter = 0.5, 30.0, 3.0, 0.2
    backoff = Backoff(initial, maximum, multiplier, jitter, rng=random.Random(42))
    for round_ in range(20):
        waits = [backoff.next() for _ in range(12)]
        bases = [min(maximum, initial * multiplier**n) for n in range(12)]
        for wait, base in zip(waits, bases, strict=True):
            assert base * (1 - jitter) <= wait <= base * (1 + jitter)
            assert wait <= maximum * (1 + jitter)
        assert len(set(waits)) == len(waits), "jitter spreads every wait"
        backoff.reset()
        assert backoff.failures == 0, round_


def test_backoff_reset_restarts_at_initial() -> None:
    backoff = Backoff(1.0, 60.0, multiplier=2.0, jitter=0.1, rng=random.Random(7))
    for _ in range(6):
        backoff.next()
    backoff.reset()
    assert 0.9 <= backoff.next() <= 1.1
    assert 1.8 <= backoff.next() <= 2.2


def test_backoff_is_reproducible_with_a_seed() -> None:
    def waits(seed: int) -> list[float]:
        backoff = Backoff(0.5, 30.0, rng=random.Random(seed))
        return [backoff.next() for _ in range(8)]

    assert waits(3) == waits(3)
    assert waits(3) != waits(4)


@pytest.mark.parametrize(
    ("payload", "overhead"),
    [
        (0, 2 + 4),
        (10, 2 + 4),
        (125, 2 + 4),
        (126, 2 + 2 + 4),
        (200, 2 + 2 + 4),
        (65_535, 2 + 2 + 4),
        (65_536, 2 + 8 + 4),
        (70_000, 2 + 8 + 4),
    ],
)
def test_wire_size_is_rfc6455_client_framing(payload: int, overhead: int) -> None:
    assert wire_size(payload) == payload + overhead
