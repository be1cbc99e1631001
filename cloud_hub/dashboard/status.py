"""One status word per edge, from the hub's own evidence (pure: no I/O, no clock).

The words, most decisive first:

- ``revoked``: the registry revoked (or rejected) the device; its links are refused.
- ``pending``: enrolled, waiting for a person to approve it.
- ``offline``: not linked to this instance, and no batch of it reached the log within
  ``offline_after`` seconds (another instance may hold its link: its batches still
  arrive, so it is not offline).
- ``degraded``: heard from, but something is wrong, each named in ``reasons``: lag past
  ``lag_warning``, an outbox backlog growing for several samples, a disk or memory past
  ``usage_warning`` percent, a temperature past ``temperature_warning``.
- ``online``: heard from recently and none of the above.

A person asks "is my fleet healthy, and if not, which device and why": the word answers
the first, ``reasons`` the second.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import msgspec

__all__ = ["STATUSES", "EdgeEvidence", "Thresholds", "Verdict", "judge"]

#: Every status word, in the order the dashboard sorts them (worst first).
STATUSES = ("offline", "degraded", "pending", "revoked", "online")


class Thresholds(msgspec.Struct, frozen=True):
    """When an edge counts as offline or degraded (seconds, percent, degrees Celsius)."""

    offline_after: float = 90.0
    lag_warning: float = 30.0
    usage_warning: float = 90.0
    temperature_warning: float = 80.0
    #: Samples in a row over which the outbox backlog must grow to count as rising.
    rising_samples: int = 3


class EdgeEvidence(msgspec.Struct, frozen=True):
    """What the hub knows of one edge at one moment.

    Attributes:
        registry_status: the device registry's status ("" when the edge is configured
            with a static token and not enrolled).
        linked_here: its sync link is open to this instance.
        last_batch_ms: when its newest batch was received (from the log), 0 if never.
        lag_s: seconds between its newest change and the hub receiving it.
        backlog: its outbox backlog (changed entities) in recent samples, oldest first.
        telemetry: its ``system_telemetry`` entity's properties (may be empty).
    """

    registry_status: str = ""
    linked_here: bool = False
    last_batch_ms: int = 0
    lag_s: float = 0.0
    backlog: Sequence[int] = ()
    telemetry: dict[str, object] = msgspec.field(default_factory=dict)


class Verdict(msgspec.Struct, frozen=True):
    """The status word and why."""

    status: str
    reasons: list[str]


def judge(evidence: EdgeEvidence, now_ms: int, thresholds: Thresholds) -> Verdict:
    """The status of an edge at ``now_ms`` (epoch milliseconds)."""
    if evidence.registry_status in ("revoked", "rejected"):
        return Verdict("revoked", [f"device {evidence.registry_status}"])
    if evidence.registry_status == "pending":
        return Verdict("pending", ["waiting for approval"])
    silent_s = (now_ms - evidence.last_batch_ms) / 1000 if evidence.last_batch_ms else None
    if not evidence.linked_here and (silent_s is None or silent_s > thresholds.offline_after):
        heard = "never heard from" if silent_s is None else f"no batch for {silent_s:.0f} s"
        return Verdict("offline", [heard])
    reasons = _warnings(evidence, thresholds)
    return Verdict("degraded" if reasons else "online", reasons)


def _warnings(evidence: EdgeEvidence, thresholds: Thresholds) -> list[str]:
    reasons = []
    if evidence.lag_s > thresholds.lag_warning:
        reasons.append(f"lag {evidence.lag_s:.0f} s")
    if _rising(evidence.backlog, thresholds.rising_samples):
        reasons.append(f"outbox backlog rising ({evidence.backlog[-1]:,} entities)")
    telemetry = evidence.telemetry
    for key, what in (("system.disk_percent", "disk"), ("system.memory_percent", "memory")):
        used = _number(telemetry.get(key))
        if used is not None and used > thresholds.usage_warning:
            reasons.append(f"{what} {used:.0f} % used")
    celsius = _number(telemetry.get("system.temperature_c"))
    if celsius is not None and celsius > thresholds.temperature_warning:
        reasons.append(f"temperature {celsius:.0f} °C")
    return reasons


def _rising(backlog: Sequence[int], samples: int) -> bool:
    """Over the last ``samples`` steps it never fell and ended higher (telemetry comes
    less often than samples are taken, so a rising backlog shows as steps)."""
    recent = list(backlog)[-(samples + 1) :]
    if len(recent) <= samples:
        return False
    never_fell = all(later >= earlier for earlier, later in itertools.pairwise(recent))
    return never_fell and recent[-1] > recent[0]


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
