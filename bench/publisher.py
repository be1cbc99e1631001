"""The ingest benchmark's load generator: a JetStream publisher that costs little CPU.

Not a benchmark itself (``make bench`` skips it); ``bench/ingest.py`` imports it as
``from publisher import ...`` (see ``bench/common.py`` on how the scripts import).

Every message is a real JetStream publish: ``PUB <subject> <inbox>.<index>`` to the
server, whose stream answers each one with a PubAck on the reply subject. What makes it
cheap is doing per socket operation what nats-py does per message: the ``PUB`` commands
of many messages go out in one write, the PubAcks come back through one subscription
to ``<inbox>.*`` and are read in bulk by the sans-I/O parser of
:mod:`edge_agent.nats.wire`. nats-py's ``publish_async`` spent ~30 µs of Python per
message (a future, an inbox subscription entry, a callback), which on a 2-core machine
is taken from the agent being measured.

Invariants:
- At most ``window`` messages are unacked at any moment (a bounded window, as
  ``publish_async_max_pending`` bounded nats-py's).
- Each message is settled exactly once: acked (a PubAck naming a stream and sequence),
  failed (a PubAck with an error, or a status such as ``503`` no responders), or
  missing (no answer within ``stall_s`` of silence, or the connection closed). An
  answer for a message not awaiting one is counted as ``unexpected``. Nothing is
  dropped without being counted: ``failed`` in the result is all but ``acked``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from edge_agent.nats.wire import (
    PING,
    PONG,
    Reply,
    WireError,
    WireParser,
    connect_command,
    pub_ack_error,
    pub_command,
    sub_command,
)

__all__ = ["publish_messages"]

READ_BYTES = 1 << 18
#: Messages per socket write at most, so acks are read between writes.
WRITE_MESSAGES = 1000
CONNECT_TIMEOUT_S = 5.0


async def _handshake(url: str, name: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect, read ``INFO``, send ``CONNECT`` and wait for the ``PONG`` to a ``PING``."""
    parts = urlsplit(url)
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(parts.hostname or "127.0.0.1", parts.port or 4222),
        CONNECT_TIMEOUT_S,
    )
    parser = WireParser()
    info = parser.feed(await asyncio.wait_for(reader.readline(), CONNECT_TIMEOUT_S)).info
    if info is None:
        raise ConnectionError(f"no INFO from NATS at {url}")
    writer.write(connect_command(info, name=name) + PING)
    while True:
        data = await asyncio.wait_for(reader.read(READ_BYTES), CONNECT_TIMEOUT_S)
        if not data:
            raise ConnectionError(f"NATS at {url} closed the connection")
        if parser.feed(data).pongs:
            return reader, writer


class _Window:
    """The messages and which of them still wait for a PubAck; what the answers said."""

    def __init__(self, messages: Sequence[tuple[bytes, bytes]], inbox: bytes, size: int):
        self.messages = messages
        self.inbox = inbox
        self.size = size
        self.awaiting = bytearray(len(messages))  # 1 while message i waits for its PubAck
        self.sent = self.acked = self.refused = self.unexpected = 0
        self.errors: Counter[str] = Counter()

    @property
    def settled(self) -> int:
        """Messages answered, either way."""
        return self.acked + self.refused

    def next_commands(self) -> bytes:
        """``PUB`` commands for as many messages as the window has room for (or none)."""
        start = self.sent
        room = min(self.size - (start - self.settled), len(self.messages) - start, WRITE_MESSAGES)
        if room <= 0:
            return b""
        stop = start + room
        inbox = self.inbox
        commands = b"".join(
            [
                pub_command(subject, b"%s%d" % (inbox, index), payload)
                for index, (subject, payload) in enumerate(self.messages[start:stop], start)
            ]
        )
        self.awaiting[start:stop] = b"\x01" * room
        self.sent = stop
        return commands

    def settle(self, replies: list[Reply]) -> None:
        """Count each answer against the message it names."""
        prefix = len(self.inbox)
        awaiting = self.awaiting
        for reply in replies:
            try:
                index = int(reply.subject[prefix:])
            except ValueError:
                self.unexpected += 1
                continue
            if not 0 <= index < self.sent or not awaiting[index]:
                self.unexpected += 1
                continue
            awaiting[index] = 0
            error = pub_ack_error(reply)
            if error is None:
                self.acked += 1
            else:
                self.refused += 1
                self.errors[error] += 1


async def publish_messages(
    url: str,
    messages: Sequence[tuple[bytes, bytes]],
    *,
    window: int = 4000,
    stall_s: float = 30.0,
    name: str = "bench-publisher",
    on_first: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Publish ``messages`` ((subject, payload) pairs) to JetStream; await every PubAck.

    ``on_first()`` is called just before the first ``PUB`` is written.

    Returns:
        ``published`` (messages written), ``acked``, ``failed`` (every message not
        acked: refused, plus missing), ``refused``, ``missing``, ``unexpected``,
        ``errors`` (refusal reasons and their counts), ``t_first`` and ``t_acked``
        (wall times of the first write and of the last answer).

    Raises:
        ConnectionError: no connection, or the server sent ``-ERR``.
    """
    reader, writer = await _handshake(url, name)
    inbox = b"_INBOX.%s." % os.urandom(8).hex().encode()
    parser = WireParser(inbox=inbox)
    state = _Window(messages, inbox, window)
    writer.write(sub_command(inbox.decode() + "*", 1))
    if on_first is not None:
        on_first()
    t_first = t_last = time.time()
    try:
        while state.settled < len(messages):
            commands = state.next_commands()
            if commands:
                writer.write(commands)
                await writer.drain()
            try:
                data = await asyncio.wait_for(reader.read(READ_BYTES), stall_s)
            except TimeoutError:
                break  # silence: whatever is unanswered is missing
            if not data:
                break  # the server closed the connection: the same
            try:
                events = parser.feed(data)
            except WireError as exc:
                raise ConnectionError(str(exc)) from exc
            if events.pings:
                writer.write(PONG * events.pings)
            if events.replies:
                t_last = time.time()
                state.settle(events.replies)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    missing = len(messages) - state.settled
    return {
        "published": state.sent,
        "acked": state.acked,
        "failed": state.refused + missing,
        "refused": state.refused,
        "missing": missing,
        "unexpected": state.unexpected,
        "errors": dict(state.errors),
        "t_first": t_first,
        "t_acked": t_last,
    }
