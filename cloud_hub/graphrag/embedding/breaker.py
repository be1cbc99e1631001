"""A circuit breaker for the embedding service (pure: the caller passes the time).

``closed``: calls go through; ``failures`` failures in a row open it. ``open``: calls
fail fast, without touching the service, until ``reset`` seconds have passed since it
opened. ``half_open``: one trial call goes through (the others still fail fast); its
success closes the breaker, its failure opens it again for another ``reset``. A trial
never settled (its caller gone) gives way to another after ``reset``.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["Breaker", "State"]

State = Literal["closed", "open", "half_open"]


class Breaker:
    """The breaker's state machine.

    Args:
        failures: consecutive failures that open it (at least 1).
        reset: seconds it stays open before it lets one trial through.
    """

    def __init__(self, failures: int, reset: float) -> None:
        if failures < 1:
            raise ValueError("failures must be at least 1")
        self.failures = failures
        self.reset = reset
        self._failed = 0
        self._opened_at: float | None = None
        self._trial_at: float | None = None

    def state(self, now: float) -> State:
        """``closed``, ``open`` or ``half_open`` at ``now``."""
        if self._opened_at is None:
            return "closed"
        return "half_open" if now - self._opened_at >= self.reset else "open"

    def allow(self, now: float) -> bool:
        """Whether a call may go to the service now; a half-open breaker lets one trial
        through, and until it is settled, no other call."""
        state = self.state(now)
        if state == "closed":
            return True
        if state == "open" or (self._trial_at is not None and now - self._trial_at < self.reset):
            return False
        self._trial_at = now
        return True

    def succeeded(self) -> None:
        """A call succeeded: closed, the failure count back to zero."""
        self._failed = 0
        self._opened_at = None
        self._trial_at = None

    def failed(self, now: float) -> None:
        """A call failed: a trial's failure, or the ``failures``-th in a row, opens it."""
        self._failed += 1
        if self._trial_at is not None or self._failed >= self.failures:
            self._opened_at = now
            self._trial_at = None

    def retry_in(self, now: float) -> float:
        """Seconds until an open breaker lets a trial through (0 when it would now)."""
        if self._opened_at is None:
            return 0.0
        return max(0.0, self._opened_at + self.reset - now)
