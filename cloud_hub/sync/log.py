"""The hub's replicated log of edges' batches: the JetStream stream ``SYNC_BATCHES``.

One subject per edge (``sync.batches.<edge>``). An instance appends batch N of an edge
with compare-and-set on that subject's last stream sequence
(``Nats-Expected-Last-Subject-Sequence``), so two instances can never both append an
edge's batch N: the loser is told, reads the log again, and answers from it. The
edge's resume point is the newest message of its subject; the receive time and the
clamp ceiling travel in headers, so every materialiser merges alike.
"""

from __future__ import annotations

import re

import msgspec
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from edge_agent.errors import RemoteProtocolError
from edge_agent.nats.client import ensure_stream_config

__all__ = [
    "SYNC_STREAM",
    "LastBatch",
    "SyncLog",
    "WrongLastSequence",
    "log_subject",
    "stamp_of",
]

SYNC_STREAM = "SYNC_BATCHES"
SYNC_SUBJECTS = "sync.batches.>"
_PREFIX = "sync.batches."
_EDGE, _SEQ = "Semstreams-Edge", "Semstreams-Seq"
_RECEIVED, _CEILING = "Semstreams-Received-Ms", "Semstreams-Ceiling-Ms"
_WRONG_LAST_SEQUENCE = 10071
# What may stand in one subject token: an edge id is [A-Za-z0-9._:-] (model.py), and
# '.' would split the subject, so it is escaped (as '~2e'); so is '~' itself.
_UNSAFE = re.compile(r"[^A-Za-z0-9_:-]")


def log_subject(edge_id: str) -> str:
    """The edge's subject in the log (its id escaped into a single token)."""
    if not edge_id:
        raise RemoteProtocolError("empty edge id")
    return _PREFIX + _UNSAFE.sub(lambda m: f"~{ord(m[0]):02x}", edge_id)


class WrongLastSequence(Exception):
    """Another instance appended to this edge's subject since this one last looked."""


class LastBatch(msgspec.Struct, frozen=True):
    """The newest batch of an edge in the log: its ``seq`` and stream sequence."""

    seq: int = 0
    stream_seq: int = 0


class SyncLog:
    """Appends to and reads from ``SYNC_BATCHES``.

    Args:
        js: JetStream on the hub's NATS (one server or a cluster).
        max_bytes: the stream's byte limit (oldest batches go first).
        max_msg_bytes: the largest batch message.
        replicas: the stream's replication (3 on a cluster).
    """

    def __init__(
        self, js: JetStreamContext, *, max_bytes: int, max_msg_bytes: int, replicas: int
    ) -> None:
        self._js = js
        self.config = StreamConfig(
            name=SYNC_STREAM,
            subjects=[SYNC_SUBJECTS],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            max_bytes=max_bytes,
            max_msg_size=max_msg_bytes,
            duplicate_window=120.0,
            num_replicas=replicas,
        )

    async def ensure(self) -> None:
        """Create the stream, or bring an existing one to this config."""
        await ensure_stream_config(self._js, self.config)

    async def last(self, edge_id: str) -> LastBatch:
        """The edge's newest batch in the log (zeros when it has none)."""
        try:
            msg = await self._js.get_last_msg(SYNC_STREAM, log_subject(edge_id))
        except nats.js.errors.NotFoundError:
            return LastBatch()
        headers = msg.headers or {}
        return LastBatch(int(headers.get(_SEQ, 0)), int(msg.seq or 0))

    async def append(
        self,
        edge_id: str,
        seq: int,
        frame: bytes,
        *,
        after: int,
        received_ms: int,
        ceiling_ms: int,
    ) -> int:
        """Append batch ``seq`` of ``edge_id`` (the encoded Batch frame); its stream seq.

        Args:
            after: the stream sequence of the edge's newest message this instance knows
                of (0: none); the append fails if the log moved on since.

        Raises:
            WrongLastSequence: another instance appended to this edge meanwhile.
            nats.errors.Error, TimeoutError: JetStream did not store it.
        """
        headers = {
            "Nats-Msg-Id": f"{edge_id}:{seq}",
            "Nats-Expected-Last-Subject-Sequence": str(after),
            _EDGE: edge_id,
            _SEQ: str(seq),
            _RECEIVED: str(received_ms),
            _CEILING: str(ceiling_ms),
        }
        try:
            ack = await self._js.publish(
                log_subject(edge_id), frame, stream=SYNC_STREAM, headers=headers
            )
        except nats.js.errors.APIError as exc:
            if exc.err_code == _WRONG_LAST_SEQUENCE:
                raise WrongLastSequence(str(exc)) from exc
            raise
        return int(ack.seq)


def stamp_of(headers: dict[str, str]) -> tuple[str, int, int, int]:
    """(edge id, seq, received_ms, ceiling_ms) from a log message's headers.

    Raises:
        KeyError, ValueError: a header is missing or not a number.
    """
    return headers[_EDGE], int(headers[_SEQ]), int(headers[_RECEIVED]), int(headers[_CEILING])
