"""The subscriber's side of the NATS client protocol, without I/O: bytes in, deliveries out.

The graph processor receives JetStream deliveries through this parser on a connection
of its own (:mod:`edge_agent.nats.delivery`) instead of through nats-py, because
nats-py spends ~30 µs of Python per message (a ``Msg`` object, a queue hop, a callback,
one ``publish`` coroutine per ack) and that time is taken from the graph writer, which
shares the GIL. Here a socket read of hundreds of messages becomes one list, and the
acks of a whole batch one write. The same pieces serve a bulk JetStream publisher
(``bench/ingest.py``'s load generator): :func:`pub_command` per message, the PubAcks
read as :class:`Reply` from an inbox prefix, and :func:`pub_ack_error` to check each.

Invariants:
- :meth:`WireParser.feed` consumes only whole protocol lines and whole messages; a
  partial one stays buffered until the rest arrives, so reads may split anywhere.
- Deliveries come out in the order the server sent them.
- A message whose reply subject is not a JetStream ack subject (a status message such
  as an idle heartbeat) is not a delivery and is dropped: it carries no event, unless
  its subject starts with the parser's ``inbox`` prefix: then it is a reply (a
  publisher's JetStream PubAck, or a status such as ``503`` no responders) and comes
  out in :attr:`WireEvents.replies`, headers and all.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from typing import Any, NamedTuple

import msgspec

__all__ = [
    "AckMetadata",
    "Delivery",
    "PubAck",
    "Reply",
    "WireError",
    "WireEvents",
    "WireParser",
    "ack_commands",
    "ack_metadata",
    "connect_command",
    "pub_ack_error",
    "pub_command",
    "stored_at_ns",
    "stream_sequence",
    "sub_command",
]

_CRLF = b"\r\n"
_JS_ACK = b"$JS.ACK."
PING = b"PING\r\n"
PONG = b"PONG\r\n"


class WireError(Exception):
    """The server sent ``-ERR`` or something this parser cannot read."""


class Delivery(NamedTuple):
    """One JetStream message as delivered: its subject, ack subject and payload."""

    subject: str
    reply: bytes
    data: bytes


class Reply(NamedTuple):
    """A message on the parser's inbox: its subject, raw header block (``b""`` when
    sent without headers) and payload."""

    subject: bytes
    headers: bytes
    data: bytes


class WireEvents(msgspec.Struct):
    """What one :meth:`WireParser.feed` call found, in order within each kind."""

    deliveries: list[Delivery] = msgspec.field(default_factory=list)
    replies: list[Reply] = msgspec.field(default_factory=list)
    pings: int = 0
    pongs: int = 0
    info: dict[str, Any] | None = None


class WireParser:
    """Splits the server's byte stream into deliveries and control messages.

    Call :meth:`feed` with every chunk read from the socket, in order.

    Args:
        inbox: a subject prefix (e.g. ``b"_INBOX.abc."``) whose messages are replies
            for the caller rather than deliveries; empty: none are.
    """

    def __init__(self, inbox: bytes = b"") -> None:
        self._buffer = bytearray()
        self._inbox = inbox

    def feed(self, data: bytes) -> WireEvents:
        """Add ``data`` and return everything now complete.

        Raises:
            WireError: ``-ERR`` from the server, or an unknown operation.
        """
        buffer = self._buffer
        buffer += data
        events = WireEvents()
        deliveries = events.deliveries
        replies = events.replies
        inbox = self._inbox
        pos = 0
        end = len(buffer)
        while pos < end:
            eol = buffer.find(_CRLF, pos)
            if eol < 0:
                break
            op = buffer[pos : pos + 4]
            if op == b"MSG ":
                # MSG <subject> <sid> [reply] <#bytes>
                parts = bytes(buffer[pos + 4 : eol]).split()
                size = int(parts[-1])
                stop = eol + 2 + size
                if stop + 2 > end:
                    break
                reply = parts[2] if len(parts) == 4 else b""
                if reply.startswith(_JS_ACK):
                    deliveries.append(
                        Delivery(parts[0].decode(), reply, bytes(buffer[eol + 2 : stop]))
                    )
                elif inbox and parts[0].startswith(inbox):
                    replies.append(Reply(parts[0], b"", bytes(buffer[eol + 2 : stop])))
                pos = stop + 2
            elif op == b"HMSG":
                # HMSG <subject> <sid> [reply] <#header bytes> <#total bytes>
                parts = bytes(buffer[pos + 5 : eol]).split()
                headers, size = int(parts[-2]), int(parts[-1])
                stop = eol + 2 + size
                if stop + 2 > end:
                    break
                reply = parts[2] if len(parts) == 5 else b""
                if reply.startswith(_JS_ACK):
                    data = bytes(buffer[eol + 2 + headers : stop])
                    deliveries.append(Delivery(parts[0].decode(), reply, data))
                elif inbox and parts[0].startswith(inbox):
                    head = bytes(buffer[eol + 2 : eol + 2 + headers])
                    replies.append(Reply(parts[0], head, bytes(buffer[eol + 2 + headers : stop])))
                pos = stop + 2
            else:
                self._control(bytes(buffer[pos:eol]), events)
                pos = eol + 2
        del buffer[:pos]
        return events

    @staticmethod
    def _control(line: bytes, events: WireEvents) -> None:
        if line == b"PING":
            events.pings += 1
        elif line == b"PONG":
            events.pongs += 1
        elif line.startswith(b"INFO "):
            events.info = json.loads(line[5:])
        elif line.startswith(b"-ERR"):
            raise WireError(f"server error: {line[5:].decode(errors='replace').strip()}")
        elif line != b"+OK":
            raise WireError(f"unexpected from server: {line[:80]!r}")


def connect_command(info: dict[str, Any], *, name: str, nkey: str = "", sign: Any = None) -> bytes:
    """The ``CONNECT`` line for a server that sent ``info``.

    Args:
        info: the server's ``INFO``.
        name: the client name the server shows.
        nkey: the NKey user's public key, when the server asks for a signed nonce.
        sign: ``sign(nonce: bytes) -> bytes``, the NKey signature of the nonce.
    """
    options: dict[str, Any] = {
        "verbose": False,
        "pedantic": False,
        "lang": "python3",
        "version": "semstreams-delivery",
        "protocol": 1,
        "name": name,
        "headers": True,
        "no_responders": True,
    }
    nonce = info.get("nonce")
    if nonce and nkey and sign is not None:
        options["nkey"] = nkey
        options["sig"] = base64.b64encode(sign(nonce.encode())).decode()
    return b"CONNECT " + json.dumps(options).encode() + _CRLF


def sub_command(subject: str, sid: int) -> bytes:
    """``SUB`` of ``subject`` as subscription ``sid``."""
    return f"SUB {subject} {sid}\r\n".encode()


def pub_command(subject: bytes, reply: bytes, payload: bytes) -> bytes:
    """``PUB`` of ``payload`` to ``subject``, the answer to go to ``reply``."""
    return b"PUB %s %s %d\r\n%s\r\n" % (subject, reply, len(payload), payload)


class PubAck(msgspec.Struct):
    """JetStream's answer to a publish: the stream and sequence it was stored at, or
    an ``error`` (``{"code", "err_code", "description"}``)."""

    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: dict[str, Any] | None = None


_PUB_ACK = msgspec.json.Decoder(PubAck)


def pub_ack_error(reply: Reply) -> str | None:
    """Why ``reply`` does not confirm a stored message; ``None`` when it does.

    A status header (``NATS/1.0 503``: no stream listens on the subject) or an
    ``error`` in the PubAck is a refusal; so is a payload that is not a PubAck, or one
    naming no stream and sequence.
    """
    if reply.headers:
        status = reply.headers.split(b"\r\n", 1)[0].split(None, 2)
        if len(status) > 1:
            return f"status {status[1].decode(errors='replace')}"
    try:
        ack = _PUB_ACK.decode(reply.data)
    except msgspec.DecodeError:
        return f"not a PubAck: {reply.data[:80]!r}"
    if ack.error is not None:
        return f"{ack.error.get('err_code', ack.error.get('code'))}: {ack.error.get('description')}"
    if not ack.stream or ack.seq <= 0:
        return f"no stream and sequence in the PubAck: {reply.data[:80]!r}"
    return None


def ack_commands(replies: Iterable[bytes]) -> bytes:
    """One buffer acking every delivery whose ack subject is in ``replies``.

    An empty message to the ack subject is JetStream's ``+ACK``.
    """
    return b"".join([b"PUB " + reply + b" 0\r\n\r\n" for reply in replies])


def _ack_tokens(reply: bytes) -> list[bytes]:
    """The ack subject's tokens from ``<stream>`` on (the newer form's domain and
    account hash dropped).

    ``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ts>.<pending>``,
    or the newer form with a domain and an account hash after ``ACK`` (12 tokens).

    Raises:
        WireError: the subject has neither form.
    """
    tokens = reply.split(b".")
    if len(tokens) == 9:
        return tokens[2:]
    if len(tokens) >= 11:
        return tokens[4:]
    raise WireError(f"not a JetStream ack subject: {reply[:80]!r}")


def stream_sequence(reply: bytes) -> int:
    """The stream sequence of a delivery, from its ack subject.

    Raises:
        WireError: the subject is not a JetStream ack subject.
    """
    return int(_ack_tokens(reply)[3])


def stored_at_ns(reply: bytes) -> int:
    """When JetStream stored the delivered message (epoch ns), from its ack subject.

    Raises:
        WireError: the subject is not a JetStream ack subject.
    """
    return int(_ack_tokens(reply)[5])


class AckMetadata(NamedTuple):
    """What a delivery's ack subject says about its message."""

    #: The message's stream sequence.
    seq: int
    #: When the stream stored it, in nanoseconds since the epoch.
    timestamp_ns: int
    #: Messages after it the consumer had yet to deliver when it was sent.
    pending: int


def ack_metadata(reply: bytes) -> AckMetadata:
    """The stream sequence, storage time and pending count of a delivery, from its ack
    subject, in one parse.

    Raises:
        WireError: the subject is not a JetStream ack subject.
    """
    tokens = _ack_tokens(reply)
    return AckMetadata(int(tokens[3]), int(tokens[5]), int(tokens[6]))
