"""Pacing for the sync link, without I/O: a byte-rate token bucket and reconnect backoff.

Both take the time (and the random source) as parameters, so tests drive them exactly.
"""

from __future__ import annotations

import random

__all__ = ["Backoff", "TokenBucket", "wire_size"]


def wire_size(payload_bytes: int) -> int:
    """Bytes a client's binary WebSocket message of ``payload_bytes`` puts on the wire.

    RFC 6455: 2 header bytes, 2 or 8 more for lengths over 125 or 65,535, and the
    4-byte mask every client frame carries. (TCP/IP headers are not counted.)
    """
    extended = 0 if payload_bytes <= 125 else 2 if payload_bytes <= 0xFFFF else 8
    return payload_bytes + 2 + extended + 4


class TokenBucket:
    """A byte-rate cap that allows debt: a message is sent whole once the balance is
    not negative, then paid for, so a long run averages exactly ``rate``.

    Args:
        rate: bytes per second; 0 means no cap.
        burst: the most that can be saved up while idle, in bytes.
        now: the current monotonic time in seconds.
    """

    def __init__(self, rate: int, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._balance = float(burst)
        self._at = now

    def _refill(self, now: float) -> None:
        if now > self._at:
            self._balance = min(self.burst, self._balance + (now - self._at) * self.rate)
        self._at = max(self._at, now)

    def delay(self, now: float) -> float:
        """Seconds to wait before the next message may go (0 when it may go now)."""
        if self.rate <= 0:
            return 0.0
        self._refill(now)
        # A debt below a thousandth of a byte is float rounding, not a reason to wait.
        return 0.0 if self._balance > -1e-3 else -self._balance / self.rate

    def spend(self, nbytes: int, now: float) -> None:
        """Pay for a message of ``nbytes`` sent at ``now``."""
        if self.rate <= 0:
            return
        self._refill(now)
        self._balance -= nbytes

    def set_rate(self, rate: int, now: float) -> None:
        """Change the rate from ``now`` on (a hub's ``slow`` or welcome can lower it)."""
        self._refill(now)
        self.rate = rate


class Backoff:
    """Exponential backoff with jitter and a cap; :meth:`reset` after a success.

    Args:
        initial: the first wait, in seconds.
        maximum: the cap.
        multiplier: growth per failure in a row.
        jitter: each wait is spread uniformly by ±this fraction, so a fleet that lost
            its hub at once does not come back at once.
        rng: the random source.
    """

    def __init__(
        self,
        initial: float,
        maximum: float,
        multiplier: float = 2.0,
        jitter: float = 0.2,
        rng: random.Random | None = None,
    ) -> None:
        self.initial = initial
        self.maximum = maximum
        self.multiplier = multiplier
        self.jitter = jitter
        self.failures = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        """The wait after one more failure."""
        # Compared as the exponent grows, never computed past the cap: multiplier**failures
        # overflows a float after ~1,000 failures (a link down for hours).
        base = self.initial * self.multiplier**self.failures
        if base < self.maximum:
            self.failures += 1
        base = min(self.maximum, base)
        spread = base * self.jitter
        return max(0.0, base + self._rng.uniform(-spread, spread))

    def reset(self) -> None:
        """A success: the next failure waits ``initial`` again."""
        self.failures = 0
