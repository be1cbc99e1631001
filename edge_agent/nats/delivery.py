"""A NATS connection that only receives JetStream deliveries and acks them, in bulk.

The thin asyncio shell around :mod:`edge_agent.nats.wire`: it owns the socket (plain or
TLS), the handshake (NKey signature when the server asks), answering ``PING`` and
noticing a dead link. It makes no decisions about messages: the graph processor gets
each socket read as a list of deliveries and acks a committed batch with one write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

from edge_agent.nats.wire import (
    PING,
    PONG,
    Delivery,
    WireError,
    WireParser,
    ack_commands,
    connect_command,
    sub_command,
)

__all__ = ["DeliveryConnection", "open_delivery"]

log = logging.getLogger(__name__)

_READ_BYTES = 1 << 18
_CONNECT_TIMEOUT_S = 5.0
#: Silence after which the connection sends a PING; a second silence as long without a
#: PONG means the link is dead (the server or a half-open TCP connection).
_PING_AFTER_S = 30.0


class DeliveryConnection:
    """A connected, handshaken NATS connection for one push subscription.

    Made by :func:`open_delivery`. Call :meth:`subscribe` once, then :meth:`receive`
    in a loop; :meth:`ack` may be called from any task at any time.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._parser = WireParser()
        self._pending: list[Delivery] = []
        self._pongs_due = 0
        self._pong: asyncio.Future[None] | None = None
        self.closed = False

    async def subscribe(self, subject: str) -> None:
        """Subscribe to ``subject`` and wait until the server has it (a PING round trip).

        Raises:
            ConnectionError: the link failed or the server refused.
        """
        self._write(sub_command(subject, 1))
        await self._round_trip()

    async def receive(self) -> list[Delivery]:
        """The next deliveries, as many as one socket read brought (at least one).

        Raises:
            ConnectionError: the server closed the link, sent ``-ERR``, or stopped
                answering PINGs.
        """
        while not self._pending:
            await self._read_once()
        deliveries, self._pending = self._pending, []
        return deliveries

    def ack(self, replies: Sequence[bytes]) -> bool:
        """Ack the deliveries with these ack subjects, in one write.

        Returns:
            False when the connection is closed: the acks are not sent, and the server
            delivers those messages again to the next consumer (whose position check
            skips what was applied).
        """
        if self.closed or self._writer.is_closing():
            return False
        self._writer.write(ack_commands(replies))
        return True

    async def drain(self) -> None:
        """Wait until what was written has gone to the socket (back-pressure)."""
        with contextlib.suppress(ConnectionError):
            await self._writer.drain()

    async def close(self) -> None:
        """Close the socket; later acks are dropped (see :meth:`ack`)."""
        self.closed = True
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()

    # ---- internals -------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self.closed:
            raise ConnectionError("delivery connection closed")
        self._writer.write(data)

    async def _round_trip(self) -> None:
        """PING and read until its PONG (deliveries read meanwhile are kept)."""
        self._write(PING)
        self._pongs_due += 1
        want = self._pongs_due
        while self._pongs_due >= want:
            await self._read_once()

    async def _read_once(self) -> None:
        try:
            data = await asyncio.wait_for(self._reader.read(_READ_BYTES), _PING_AFTER_S)
        except TimeoutError:
            if self._pongs_due:
                raise ConnectionError("NATS server stopped answering PING") from None
            self._write(PING)
            self._pongs_due += 1
            return
        if not data:
            self.closed = True
            raise ConnectionError("NATS server closed the delivery connection")
        try:
            events = self._parser.feed(data)
        except WireError as exc:
            raise ConnectionError(str(exc)) from exc
        if events.pings:
            self._write(PONG * events.pings)
        self._pongs_due = max(0, self._pongs_due - events.pongs)
        if events.deliveries:
            self._pending.extend(events.deliveries)


async def open_delivery(
    url: str,
    *,
    name: str,
    tls: ssl.SSLContext | None = None,
    nkey: str = "",
    sign: Callable[[bytes], bytes] | None = None,
) -> DeliveryConnection:
    """Connect to the NATS server at ``url`` and do the handshake.

    Args:
        url: ``nats://host:port`` or ``tls://host:port``.
        name: the client name the server shows.
        tls: the client's TLS context; used when the server requires TLS.
        nkey: the NKey user's public key, sent with ``sign(nonce)`` when asked.
        sign: signs the server's nonce with the user's seed.

    Raises:
        ConnectionError: no connection, no INFO, a TLS failure, or a refusal.
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 4222
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, limit=_READ_BYTES), _CONNECT_TIMEOUT_S
        )
        line = await asyncio.wait_for(reader.readline(), _CONNECT_TIMEOUT_S)
        info = WireParser().feed(line).info
        if info is None:
            raise ConnectionError(f"no INFO from NATS at {host}:{port}")
        if info.get("tls_required") or parts.scheme == "tls":
            if tls is None:
                raise ConnectionError(f"NATS at {host}:{port} requires TLS")
            await asyncio.wait_for(writer.start_tls(tls, server_hostname=host), _CONNECT_TIMEOUT_S)
        writer.write(connect_command(info, name=name, nkey=nkey, sign=sign))
    except (OSError, TimeoutError, ssl.SSLError, WireError, ValueError) as exc:
        raise ConnectionError(f"delivery connection to {host}:{port}: {exc}") from exc
    connection = DeliveryConnection(reader, writer)
    try:
        # The PONG proves the server took the CONNECT (a refusal comes back as -ERR).
        await asyncio.wait_for(connection._round_trip(), _CONNECT_TIMEOUT_S)
    except (TimeoutError, OSError) as exc:
        await connection.close()
        raise ConnectionError(f"delivery connection to {host}:{port}: {exc}") from exc
    except ConnectionError:
        await connection.close()
        raise
    return connection
