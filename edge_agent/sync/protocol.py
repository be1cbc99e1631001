"""The sync link's state machines, one per side, without I/O.

Invariants:
- The edge speaks first (Hello); the hub answers once (Welcome) and nothing else
  crosses before that, except one Challenge (hub → edge) and its Proof (edge → hub)
  when the edge's credential is bound to a device key. A refused Welcome closes the
  link.
- A batch ``seq`` is sent at most once per connection and is in flight until acked or
  nacked; at most ``window`` batches are in flight, and Slow only ever shrinks it.
- The hub acks a batch only after the shell has made it durable (the shell calls
  :meth:`HubProtocol.ack`); a batch at or below the hub's high-water mark is a
  re-send, acked here without reaching the shell.
- The hub hands the shell batches strictly in ``seq`` order: only the next one
  (``expected``) becomes an event; one past a gap is nacked here. After the shell nacks
  a batch, ``expected`` goes back to it, so what was sent behind it is nacked too
  until the edge sends it again. Batches are never made durable around a gap.
- Slow is sent once when the hub's backlog crosses its threshold, and may be sent
  again only after the backlog fell below half of it.
- A resync (the edge's whole share, back from the hub) happens only when the edge
  asked in its Hello and the hub granted it in its Welcome. Share chunks are numbered
  from 1 without gaps, at most ``SHARE_WINDOW`` are unacked, and one ShareEnd, sent
  when every chunk is acked, closes it. Batches flow meanwhile, independently.
- Any frame that is malformed, oversized or unexpected in the current state raises
  :class:`RemoteProtocolError`; the shell closes the link with its message.

Use: feed every received message to ``receive_data``, then send everything from
``data_to_send()`` and handle every frame from ``events_received()``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from edge_agent.errors import LocalProtocolError, RemoteProtocolError
from edge_agent.sync.frames import (
    PROTOCOL_VERSION,
    Ack,
    Batch,
    Challenge,
    Frame,
    Hello,
    Nack,
    Proof,
    Share,
    ShareAck,
    ShareEnd,
    Slow,
    Welcome,
    decode_frame,
    encode_frame,
)

__all__ = ["SHARE_WINDOW", "EdgeProtocol", "HubProtocol", "State"]

DEFAULT_MAX_FRAME_BYTES = 4 << 20
#: Share chunks in flight at most during a resync: the edge applies each before the
#: next arrives, so its memory holds two chunks, never the whole share.
SHARE_WINDOW = 2


class State(enum.IntEnum):
    """Where a link is."""

    HANDSHAKE = 1
    SYNCING = 2
    CLOSED = 3


# (state, frame type received) -> next state. Anything missing is out of protocol.
_EDGE_NEXT: dict[tuple[State, type], State] = {
    (State.HANDSHAKE, Challenge): State.HANDSHAKE,
    (State.HANDSHAKE, Welcome): State.SYNCING,
    (State.SYNCING, Ack): State.SYNCING,
    (State.SYNCING, Nack): State.SYNCING,
    (State.SYNCING, Slow): State.SYNCING,
    (State.SYNCING, Share): State.SYNCING,
    (State.SYNCING, ShareEnd): State.SYNCING,
}
_HUB_NEXT: dict[tuple[State, type], State] = {
    (State.HANDSHAKE, Hello): State.HANDSHAKE,
    (State.HANDSHAKE, Proof): State.HANDSHAKE,
    (State.SYNCING, Batch): State.SYNCING,
    (State.SYNCING, ShareAck): State.SYNCING,
}


class _Protocol:
    def __init__(self, table: dict[tuple[State, type], State], max_frame_bytes: int) -> None:
        self.state = State.HANDSHAKE
        self._table = table
        self.max_frame_bytes = max_frame_bytes
        self._outgoing: list[bytes] = []
        self._events: list[Frame] = []

    def receive_data(self, data: bytes) -> None:
        """Take one received message; then call :meth:`data_to_send` and :meth:`events_received`.

        Raises:
            RemoteProtocolError: the message is malformed or out of protocol.
        """
        frame = decode_frame(data, max_bytes=self.max_frame_bytes)
        new = self._table.get((self.state, type(frame)))
        if new is None:
            what = f"{type(frame).__name__} frame while {self.state.name.lower()}"
            raise RemoteProtocolError(f"unexpected {what}")
        wanted = self._receive(frame)
        self.state = new if self.state != State.CLOSED else State.CLOSED
        if wanted:
            self._events.append(frame)

    def data_to_send(self) -> list[bytes]:
        """Messages to send, in order; each is one binary WebSocket message."""
        out, self._outgoing = self._outgoing, []
        return out

    def events_received(self) -> list[Frame]:
        """Frames received and accepted since the last call, in order."""
        events, self._events = self._events, []
        return events

    def _send(self, frame: Frame) -> None:
        self._outgoing.append(encode_frame(frame))

    def _require(self, state: State, action: str) -> None:
        if self.state != state:
            raise LocalProtocolError(f"cannot {action}: link is {self.state.name.lower()}")

    def _receive(self, frame: Frame) -> bool:
        """Side-specific checks and bookkeeping for an accepted frame; whether the shell
        gets it as an event."""
        return True


class EdgeProtocol(_Protocol):
    """The edge's side: says Hello, sends batches within the window, tracks acks.

    Args:
        edge_id: this edge's id (``platform.id``).
        token: its credential.
        acked_seq: the highest seq the edge knows the hub has (from its own store).
        window: batches in flight at most.
        encodings: payload encodings this edge can write.
        prove: signs the hub's Challenge nonce with the device key (``None``: this edge
            has no key, and answers a Challenge with an empty Proof the hub refuses).
        resync: ask the hub for this edge's whole share; after the Welcome,
            :attr:`resyncing` says whether the hub grants it. Each Share event is
            applied by the shell, which then calls :meth:`ack_share`; the ShareEnd event
            ends it (:attr:`share_end`).
    """

    def __init__(
        self,
        edge_id: str,
        token: str,
        *,
        acked_seq: int = 0,
        window: int = 4,
        encodings: tuple[str, ...] = ("zstd", "zlib", "none"),
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        prove: Callable[[bytes], bytes] | None = None,
        resync: bool = False,
    ) -> None:
        super().__init__(_EDGE_NEXT, max_frame_bytes)
        self._asked_resync = resync
        #: The hub is streaming this edge's share (granted, not ended yet).
        self.resyncing = False
        #: The Welcome asked for everything this edge wrote again (the hub lost some).
        self.full_resend = False
        #: The ShareEnd that closed the resync, once it came.
        self.share_end: ShareEnd | None = None
        self._share_next = 1
        self._share_unacked: set[int] = set()
        self._prove = prove
        self._challenged = False
        self.window = window
        self.in_flight: set[int] = set()
        self.hwm = 0
        self.refusal = ""
        self.encoding = encodings[0]
        self._encodings = encodings
        self._send(
            Hello(
                edge_id=edge_id,
                token=token,
                acked_seq=acked_seq,
                encodings=encodings,
                resync=resync,
            )
        )

    def can_send(self) -> bool:
        """Whether a batch may be sent now (syncing, and the window has room)."""
        return self.state == State.SYNCING and len(self.in_flight) < self.window

    def send_batch(self, seq: int, count: int, payload: bytes, encoding: str = "") -> None:
        """Queue a batch frame (``encoding`` defaults to the one the hub chose).

        Raises:
            LocalProtocolError: not syncing, the window is full, or ``seq`` is in flight
                or not above the hub's high-water mark.
        """
        self._require(State.SYNCING, "send a batch")
        if len(self.in_flight) >= self.window:
            raise LocalProtocolError(f"window of {self.window} batches is full")
        if seq in self.in_flight or seq <= self.hwm:
            raise LocalProtocolError(f"seq {seq} is in flight or at/below the hub's {self.hwm}")
        self.in_flight.add(seq)
        self._send(Batch(seq=seq, encoding=encoding or self.encoding, count=count, payload=payload))

    def ack_share(self, chunk: int) -> None:
        """Tell the hub share ``chunk`` is applied (call it after the commit).

        Raises:
            LocalProtocolError: no such chunk waits for an answer.
        """
        self._require(State.SYNCING, "ack a share chunk")
        if chunk not in self._share_unacked:
            raise LocalProtocolError(f"no share chunk {chunk} is waiting for an ack")
        self._share_unacked.discard(chunk)
        self._send(ShareAck(chunk=chunk))

    def _receive_share(self, frame: Share | ShareEnd) -> None:
        if not self.resyncing:
            raise RemoteProtocolError(f"{type(frame).__name__} frame without a granted resync")
        if isinstance(frame, ShareEnd):
            if self._share_unacked or frame.chunks != self._share_next - 1:
                raise RemoteProtocolError(
                    f"ShareEnd after {frame.chunks} chunks; {self._share_next - 1} came,"
                    f" {len(self._share_unacked)} unacked"
                )
            self.resyncing = False
            self.share_end = frame
            return
        if frame.chunk != self._share_next:
            raise RemoteProtocolError(f"share chunk {frame.chunk}, expected {self._share_next}")
        if len(self._share_unacked) >= SHARE_WINDOW:
            raise RemoteProtocolError(f"more than {SHARE_WINDOW} share chunks unacked")
        self._share_next += 1
        self._share_unacked.add(frame.chunk)

    def _receive(self, frame: Frame) -> bool:
        match frame:
            case Share() | ShareEnd():
                self._receive_share(frame)
            case Challenge(nonce=nonce):
                if self._challenged:
                    raise RemoteProtocolError("second Challenge on one link")
                self._challenged = True
                self._send(Proof(signature=self._prove(nonce) if self._prove else b""))
                return False
            case Welcome(accepted=False, reason=reason):
                self.refusal = reason or "refused"
                self.state = State.CLOSED
            case Welcome():
                if frame.encoding not in self._encodings:
                    raise RemoteProtocolError(f"hub chose unknown encoding {frame.encoding!r}")
                if frame.resync and not self._asked_resync:
                    raise RemoteProtocolError("Welcome grants a resync this edge did not ask for")
                self.hwm = frame.hwm
                self.encoding = frame.encoding
                self.resyncing = frame.resync
                self.full_resend = frame.full_resend
            case Ack(seq=seq) | Nack(seq=seq):
                if seq not in self.in_flight:
                    raise RemoteProtocolError(f"{type(frame).__name__} for seq {seq} not in flight")
                self.in_flight.discard(seq)
                if isinstance(frame, Ack):
                    self.hwm = max(self.hwm, seq)
            case Slow(window=window):
                self.window = max(1, min(self.window, window))
        return True


class HubProtocol(_Protocol):
    """The hub's side: waits for Hello, lets the shell authenticate, takes batches.

    After a Hello event the shell calls :meth:`accept` or :meth:`refuse`, or first
    :meth:`challenge` and then, at the Proof event, :meth:`accept` or :meth:`refuse`; each Batch
    event is the next one in ``seq`` order, which the shell makes durable and then
    acks (:meth:`ack`) or nacks (:meth:`nack`). When the Hello asked for a resync and
    :meth:`accept` granted it, the shell sends the edge's share with :meth:`send_share`
    while :meth:`can_share` (each ShareAck event frees a place) and closes it with
    :meth:`end_share` once :attr:`share_unacked` is empty. Re-sends and batches past a
    gap never become events: they are answered here (:attr:`duplicates`, :attr:`gaps`
    count them). The shell reports its backlog with :meth:`backlog`.
    """

    def __init__(
        self,
        *,
        encodings: tuple[str, ...] = ("zstd", "zlib", "none"),
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        retry_after: float = 2.0,
    ) -> None:
        super().__init__(_HUB_NEXT, max_frame_bytes)
        self.edge_id = ""
        self.hwm = 0
        self.refusal = ""
        #: The seq the next Batch event must carry.
        self.expected = 1
        self.duplicates = 0
        self.gaps = 0
        self.slowed = False
        self._retry_after = retry_after
        self._encodings = encodings
        self._hello: Hello | None = None
        self._challenged = self._proved = False
        self._unanswered: set[int] = set()
        #: The share is being sent (granted in the Welcome, not ended yet).
        self.sharing = False
        self.share_chunks = 0
        self.share_unacked: set[int] = set()
        self.encoding = "none"

    @property
    def resync_asked(self) -> bool:
        """Whether the edge's Hello asked for a resync of its share."""
        return self._hello is not None and self._hello.resync

    def can_share(self) -> bool:
        """Whether a Share chunk may be sent now (sharing, and the window has room)."""
        return self.sharing and len(self.share_unacked) < SHARE_WINDOW

    def send_share(self, count: int, payload: bytes, encoding: str) -> int:
        """Queue the next Share chunk; its number.

        Raises:
            LocalProtocolError: not sharing, or the share window is full.
        """
        if not self.can_share():
            raise LocalProtocolError("cannot send a share chunk: not sharing or window full")
        self.share_chunks += 1
        self.share_unacked.add(self.share_chunks)
        self._send(Share(chunk=self.share_chunks, encoding=encoding, count=count, payload=payload))
        return self.share_chunks

    def end_share(self, entities: int, skipped: int = 0) -> None:
        """Close the share: every chunk sent is acked.

        Raises:
            LocalProtocolError: not sharing, or chunks are still unacked.
        """
        if not self.sharing or self.share_unacked:
            raise LocalProtocolError("cannot end the share: not sharing or chunks unacked")
        self.sharing = False
        self._send(ShareEnd(chunks=self.share_chunks, entities=entities, skipped=skipped))

    def challenge(self, nonce: bytes) -> None:
        """Ask the edge to prove its device key by signing ``nonce`` (a Proof event follows)."""
        self._require(State.HANDSHAKE, "challenge")
        if self._hello is None or self._challenged:
            raise LocalProtocolError("challenge once, after the Hello")
        self._challenged = True
        self._send(Challenge(nonce=nonce))

    def accept(
        self,
        hwm: int,
        *,
        max_bytes_per_second: int = 0,
        max_batch_bytes: int = 0,
        resync: bool = False,
        full_resend: bool = False,
    ) -> None:
        """Welcome the edge; it resumes after ``hwm``, the last seq durable here.

        ``resync`` grants the resync the Hello asked for (see :meth:`send_share`);
        ``full_resend`` asks the edge to send everything it wrote again.
        """
        self._require(State.HANDSHAKE, "accept")
        if self._hello is None:
            raise LocalProtocolError("cannot accept before a Hello")
        if resync and not self._hello.resync:
            raise LocalProtocolError("cannot grant a resync the edge did not ask for")
        self.sharing = resync
        encoding = next((e for e in self._hello.encodings if e in self._encodings), "none")
        #: The payload encoding both ends speak (the Welcome tells the edge).
        self.encoding = encoding
        self.hwm = hwm
        self.expected = hwm + 1
        self.state = State.SYNCING
        self._send(
            Welcome(
                accepted=True,
                hwm=hwm,
                max_batch_bytes=min(self.max_frame_bytes, max_batch_bytes or self.max_frame_bytes),
                max_bytes_per_second=max_bytes_per_second,
                encoding=encoding,
                resync=resync,
                full_resend=full_resend,
            )
        )

    def refuse(self, reason: str) -> None:
        """Refuse the edge with a reason; the link is closed, no batch is read."""
        self._require(State.HANDSHAKE, "refuse")
        self.state = State.CLOSED
        self.refusal = reason
        self._send(Welcome(accepted=False, reason=reason))

    def ack(self, seq: int) -> None:
        """Acknowledge batch ``seq`` once it is durable."""
        self._answer(seq)
        self.hwm = max(self.hwm, seq)
        self._send(Ack(seq=seq))

    def nack(self, seq: int, reason: str, retry_after: float | None = None) -> None:
        """Refuse batch ``seq`` for now; the edge sends it (and what follows) again."""
        self._answer(seq)
        self.expected = min(self.expected, seq)
        wait = self._retry_after if retry_after is None else retry_after
        self._send(Nack(seq=seq, reason=reason, retry_after=wait))

    def nack_all(self, reason: str) -> list[int]:
        """Nack every batch taken and not answered yet (the shell lost them); their seqs."""
        held = sorted(self._unanswered) if self.state == State.SYNCING else []
        for seq in held:
            self.nack(seq, reason)
        return held

    def ready(self, seq: int) -> bool:
        """Whether Batch event ``seq`` is the one to make durable now (``hwm + 1``).

        An event taken before an earlier batch was nacked is not: it is nacked here,
        and the shell drops it.
        """
        if seq == self.hwm + 1:
            return True
        self.gaps += 1
        self.nack(seq, f"out of order: expected batch {self.hwm + 1}")
        return False

    def backlog(self, batches: int, threshold: int) -> None:
        """The hub holds ``batches`` not yet applied: past ``threshold``, ask for a window
        of one (once, until the backlog fell below half the threshold)."""
        if self.state != State.SYNCING:
            return
        if batches > threshold and not self.slowed:
            self.slowed = True
            self._send(Slow(window=1))
        elif batches < threshold / 2:
            self.slowed = False

    def slow(self, window: int, max_bytes_per_second: int = 0) -> None:
        """Ask the edge to shrink its window (and rate)."""
        self._require(State.SYNCING, "send slow")
        self._send(Slow(window=window, max_bytes_per_second=max_bytes_per_second))

    def _answer(self, seq: int) -> None:
        self._require(State.SYNCING, "answer a batch")
        if seq not in self._unanswered:
            raise LocalProtocolError(f"no batch {seq} is waiting for an answer")
        self._unanswered.discard(seq)

    def _receive(self, frame: Frame) -> bool:
        match frame:
            case Hello():
                if self._hello is not None:
                    raise RemoteProtocolError("second Hello on one link")
                self._hello = frame
                self.edge_id = frame.edge_id
                if frame.version != PROTOCOL_VERSION:
                    # Refused in a Welcome, which edges of every version understand.
                    self.refuse(
                        f"sync protocol version {frame.version} not supported: this hub"
                        f" speaks {PROTOCOL_VERSION}; update the edge"
                    )
                    return False
            case ShareAck(chunk=chunk):
                if chunk not in self.share_unacked:
                    raise RemoteProtocolError(f"ShareAck for chunk {chunk} not in flight")
                self.share_unacked.discard(chunk)
            case Proof():
                if not self._challenged or self._proved:
                    raise RemoteProtocolError("Proof without a Challenge")
                self._proved = True
            case Batch(seq=seq, count=count):
                if seq < 1 or count < 0:
                    raise RemoteProtocolError(f"batch seq {seq} / count {count} out of range")
                if seq in self._unanswered:
                    raise RemoteProtocolError(f"batch {seq} sent twice before an answer")
                self._unanswered.add(seq)
                return self._next_in_order(seq)
        return True

    def _next_in_order(self, seq: int) -> bool:
        if seq <= self.hwm:  # a re-send of a durable batch
            self.duplicates += 1
            self.ack(seq)
            return False
        if seq != self.expected:
            self.gaps += 1
            self.nack(seq, f"out of order: expected batch {self.expected}")
            return False
        self.expected = seq + 1
        return True
