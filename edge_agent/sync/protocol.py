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
    Slow,
    Welcome,
    decode_frame,
    encode_frame,
)

__all__ = ["EdgeProtocol", "HubProtocol", "State"]

DEFAULT_MAX_FRAME_BYTES = 4 << 20


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
}
_HUB_NEXT: dict[tuple[State, type], State] = {
    (State.HANDSHAKE, Hello): State.HANDSHAKE,
    (State.HANDSHAKE, Proof): State.HANDSHAKE,
    (State.SYNCING, Batch): State.SYNCING,
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
    ) -> None:
        super().__init__(_EDGE_NEXT, max_frame_bytes)
        self._prove = prove
        self._challenged = False
        self.window = window
        self.in_flight: set[int] = set()
        self.hwm = 0
        self.refusal = ""
        self.encoding = encodings[0]
        self._encodings = encodings
        self._send(Hello(edge_id=edge_id, token=token, acked_seq=acked_seq, encodings=encodings))

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

    def _receive(self, frame: Frame) -> bool:
        match frame:
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
                self.hwm = frame.hwm
                self.encoding = frame.encoding
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
    acks (:meth:`ack`) or nacks (:meth:`nack`). Re-sends and batches past a gap never become
    events: they are answered here (:attr:`duplicates`, :attr:`gaps` count them). The
    shell reports its backlog with :meth:`backlog`.
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

    def challenge(self, nonce: bytes) -> None:
        """Ask the edge to prove its device key by signing ``nonce`` (a Proof event follows)."""
        self._require(State.HANDSHAKE, "challenge")
        if self._hello is None or self._challenged:
            raise LocalProtocolError("challenge once, after the Hello")
        self._challenged = True
        self._send(Challenge(nonce=nonce))

    def accept(self, hwm: int, *, max_bytes_per_second: int = 0, max_batch_bytes: int = 0) -> None:
        """Welcome the edge; it resumes after ``hwm``, the last seq durable here."""
        self._require(State.HANDSHAKE, "accept")
        if self._hello is None:
            raise LocalProtocolError("cannot accept before a Hello")
        encoding = next((e for e in self._hello.encodings if e in self._encodings), "none")
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
