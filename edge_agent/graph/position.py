"""The graph processor's stream position against the stream it binds to (pure logic).

The entity stream is a work queue: a message is removed once the processor acks it,
after the commit that applied it. The store records, in that commit, the last applied
stream sequence, that message's stream timestamp and the highest sequence the
processor knew the stream held (:class:`PositionMark`). Messages at or below the
position are skipped as already applied.

A power cut can take the tail of the JetStream store with it (what nats-server had not
fsynced: ``nats.jetstream.sync_interval``). The stream then restarts from an older
last sequence and gives the numbers it lost to new messages. Skipping those as
"already applied" would lose them without a word, so at every bind
:func:`reconcile` compares the mark with the stream (:class:`StreamFacts`):

- ``first_bind``: no mark yet (a new store). Resume at 0.
- ``new_stream``: the stream was made at another time (wiped, or remade because its
  store was unreadable). Resume at 0: every number is new.
- ``tail_lost``: the stream's last sequence is below what the processor had seen.
  ``lost`` counts the messages the processor knew of, had not applied, and the stream
  no longer holds: they are gone (a lower bound: the processor knows of a message only
  once a delivery's pending count names it). If the last sequence is below the
  position, the numbers above it will be reused, and the processor resumes before the
  stream's first message (not at its last: publishers may have added messages since
  the server came back, which would be skipped), applying again those it still holds
  from before, as for ``reused``.
- ``reused``: the message now at the position is not the one applied (its timestamp
  differs): the stream lost its tail and new messages took the numbers before the
  processor bound. Where the loss began is unknown, so the processor resumes before
  the stream's first message: every message the stream holds is applied. Those it had
  applied already (their acks were lost with the tail) are applied again, in order,
  which leaves the graph as it was (newest timestamp wins); ``reapplied`` bounds them.
- ``intact``: the position stands.

Nothing here does I/O or reads a clock; the processor gathers the facts.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Literal

import msgspec

__all__ = [
    "OUTCOMES",
    "Outcome",
    "PositionMark",
    "Reconciliation",
    "StreamFacts",
    "reconcile",
    "timestamp_ns",
]

Outcome = Literal["first_bind", "new_stream", "tail_lost", "reused", "intact"]
#: Every outcome, for metrics initialised at zero.
OUTCOMES: tuple[Outcome, ...] = ("first_bind", "new_stream", "tail_lost", "reused", "intact")


class PositionMark(msgspec.Struct, frozen=True):
    """What the store recorded with a consumer's position, in the commit that set it.

    Attributes:
        stream_created: the creation time of the stream the position counts in.
        applied_seq: the last stream sequence applied.
        applied_ts: that message's stream timestamp (ns since the epoch); 0 if unknown.
        seen_seq: the highest sequence the stream was known to hold (a delivery's
            sequence plus its pending count), at least ``applied_seq``.
    """

    stream_created: str
    applied_seq: int
    applied_ts: int = 0
    seen_seq: int = 0


class StreamFacts(msgspec.Struct, frozen=True):
    """The stream as the processor finds it when it binds.

    Attributes:
        created: its creation time (as the mark records it).
        first_seq: its first sequence (last + 1 when empty).
        last_seq: the last sequence it assigned.
        ts_at_applied: the timestamp (ns) of the message it now holds at the mark's
            ``applied_seq``; ``None`` when it holds none there (acked and removed).
    """

    created: str
    first_seq: int
    last_seq: int
    ts_at_applied: int | None = None


class Reconciliation(msgspec.Struct, frozen=True):
    """What :func:`reconcile` found, and where the processor resumes.

    Attributes:
        outcome: see the module docstring.
        previous: the position recorded (0 without a mark).
        position: the position to resume at: sequences above it are applied.
        lost: messages the processor knew the stream held, unapplied, that it no longer
            holds (at least this many).
        reused: sequence numbers at or below ``previous`` that the stream gives (or
            gave) to new messages (for ``reused``: at most this many).
        reapplied: at most this many messages already applied are applied again.
        stream_first: the stream's first sequence.
        stream_last: the stream's last sequence.
    """

    outcome: Outcome
    previous: int
    position: int
    lost: int = 0
    reused: int = 0
    reapplied: int = 0
    stream_first: int = 0
    stream_last: int = 0

    @property
    def changed(self) -> bool:
        """Whether the store's position must be rewritten."""
        return self.outcome in ("first_bind", "new_stream") or self.position != self.previous

    def describe(self) -> str:
        """One line for the log: what happened to the stream, and what the graph lost."""
        stream = f"stream seq {self.stream_first}..{self.stream_last}"
        if self.outcome == "intact":
            return f"stream position {self.previous} intact ({stream})"
        if self.outcome == "first_bind":
            return f"no stream position yet; starting at 0 ({stream})"
        if self.outcome == "new_stream":
            return (
                f"the stream was re-created: position {self.previous} of the old one"
                f" dropped, starting at 0; at least {self.lost} unapplied messages of the"
                f" old stream lost ({stream})"
            )
        if self.outcome == "tail_lost":
            return (
                f"the stream lost its tail: at least {self.lost} unapplied messages lost"
                " (not counting those stored in the last nats.jetstream.sync_interval"
                " before the cut that the agent had not received);"
                f" {self.reused} applied sequence numbers will be reused, so the position"
                f" goes from {self.previous} back to {self.position}, at most"
                f" {self.reapplied} messages applied again ({stream})"
            )
        return (
            f"the stream reuses sequence numbers up to {self.previous} (message"
            f" {self.previous} is not the one applied): resuming at {self.position};"
            f" at most {self.reapplied} messages applied again ({stream})"
        )


def reconcile(mark: PositionMark | None, stream: StreamFacts) -> Reconciliation:
    """Where the processor resumes in ``stream``, given the store's ``mark``."""
    bounds = {"stream_first": stream.first_seq, "stream_last": stream.last_seq}
    if mark is None:
        return Reconciliation("first_bind", 0, 0, **bounds)
    applied = mark.applied_seq
    seen = max(mark.seen_seq, applied)
    if mark.stream_created != stream.created:
        return Reconciliation("new_stream", applied, 0, lost=seen - applied, **bounds)
    if stream.last_seq < applied:
        # Where the surviving tail ends is not known: publishers may have added messages
        # since the server started. So resume before the first message, as for "reused".
        position = max(0, stream.first_seq - 1)
        return Reconciliation(
            "tail_lost",
            applied,
            position,
            lost=seen - applied,
            reused=applied - stream.last_seq,
            reapplied=max(0, stream.last_seq - position),
            **bounds,
        )
    at = stream.ts_at_applied
    if mark.applied_ts and at is not None and at != mark.applied_ts:
        position = max(0, stream.first_seq - 1)
        return Reconciliation(
            "reused",
            applied,
            position,
            reused=applied - position,
            reapplied=applied - position,
            **bounds,
        )
    if stream.last_seq < seen:
        return Reconciliation("tail_lost", applied, applied, lost=seen - stream.last_seq, **bounds)
    return Reconciliation("intact", applied, applied, **bounds)


_RFC3339 = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$")


def timestamp_ns(text: str) -> int:
    """An RFC 3339 time as JetStream writes it (nanosecond fraction) in ns since the
    epoch, exactly: the message timestamps the position is checked against.

    Raises:
        ValueError: not such a time.
    """
    match = _RFC3339.match(text)
    if match is None:
        raise ValueError(f"not an RFC 3339 time: {text[:40]!r}")
    zone = "+00:00" if match[3] == "Z" else match[3]
    whole = datetime.fromisoformat(match[1] + zone).astimezone(UTC)
    fraction = int((match[2] or "0").ljust(9, "0"))
    return int(whole.timestamp()) * 1_000_000_000 + fraction
