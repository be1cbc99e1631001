"""A TCP proxy on loopback that puts real, test-controlled faults on a link.

Integration tests run an edge agent and a hub as two processes talking over a
WebSocket. To test what happens when that link fails we need faults on a real
TCP connection, not mocks. The usual tool, ``tc netem``, is not available on
this kernel (and would need root); a proxy in the middle that the test drives
gives the two faults that matter, deterministically and without privileges:

* **cut** -- the link goes down: every proxied connection is closed (both the
  agent and the hub see the close) and new connections are refused until
  :meth:`~AsyncLinkProxy.restore`.
* **blackhole** -- a half-open link, like a radio link that silently died:
  connections stay open (no FIN, no RST) but no byte gets through in either
  direction. Only application-level keepalives (WebSocket ping/pong timeouts)
  can notice it, which is exactly what such a test exercises.

Plus an optional rate cap (:meth:`~AsyncLinkProxy.set_rate`) to emulate a slow
uplink, and counters for the bytes and connections that went through.

Two flavours share one implementation:

* :class:`AsyncLinkProxy` runs in the caller's event loop (``await proxy.cut()``).
* :class:`LinkProxy` runs an :class:`AsyncLinkProxy` in its own event loop on a
  daemon thread and exposes thread-safe, blocking methods. It works from sync
  tests and also from async tests whose loop runs the agent or hub in-process:
  the proxy's work never depends on the caller's loop, so blocking it briefly is
  safe. Each method returns only once the change has taken effect.

The proxy listens on 127.0.0.1 only. Forwarding reads 64 KiB chunks with
``TCP_NODELAY`` on both sockets, so it forwards far more than tens of MB/s on
loopback and is not the bottleneck.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeVar

__all__ = ["LISTEN_HOST", "AsyncLinkProxy", "LinkProxy"]

#: The proxy only ever binds loopback.
LISTEN_HOST = "127.0.0.1"
#: Read size for forwarding.
CHUNK = 64 * 1024
#: How long the thread-hosted proxy waits for its loop to carry out a call.
CALL_TIMEOUT = 10.0
#: Listen backlog.
BACKLOG = 128

T = TypeVar("T")


class Direction(enum.Enum):
    """Which way bytes flow through the proxy."""

    UP = "client->target"
    DOWN = "target->client"


class _Mode(enum.Enum):
    NORMAL = "normal"
    CUT = "cut"
    BLACKHOLE = "blackhole"
    STOPPED = "stopped"


class TokenBucket:
    """A token bucket: ``rate`` bytes per second with a burst of 100 ms worth."""

    def __init__(self, rate: int) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self.rate = rate
        self.burst = max(1, min(rate // 10, CHUNK))
        self._tokens = float(self.burst)
        self._stamp = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    async def take(self, wanted: int) -> int:
        """Wait until some bytes may pass; return how many (1..min(wanted, burst))."""
        amount = max(1, min(wanted, self.burst))
        while True:
            self._refill()
            if self._tokens >= amount:
                self._tokens -= amount
                return amount
            await asyncio.sleep((amount - self._tokens) / self.rate)


@dataclass(eq=False)
class _Pair:
    """One proxied connection: the accepted client socket and (usually) the target side.

    ``client`` is None until the accepted socket ``conn`` is wrapped in a
    stream. ``target`` is None when the client was accepted during a
    blackhole: its connection attempt never "reached" the target.
    """

    conn: socket.socket
    blackholed: bool
    client_reader: asyncio.StreamReader | None = None
    client: asyncio.StreamWriter | None = None
    target_reader: asyncio.StreamReader | None = None
    target: asyncio.StreamWriter | None = None

    def source(self, direction: Direction) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """The reader and writer bytes flowing in ``direction`` come from."""
        if direction is Direction.UP:
            reader, writer = self.client_reader, self.client
        else:
            reader, writer = self.target_reader, self.target
        assert reader is not None and writer is not None
        return reader, writer

    def sink(self, direction: Direction) -> asyncio.StreamWriter | None:
        """The writer bytes flowing in ``direction`` go to."""
        return self.target if direction is Direction.UP else self.client

    def writers(self) -> list[asyncio.StreamWriter]:
        """Both ends that exist."""
        return [w for w in (self.client, self.target) if w is not None]

    def abort(self) -> None:
        """Close both ends at once, dropping anything still buffered."""
        for writer in self.writers():
            writer.transport.abort()

    def close(self) -> None:
        """Close both ends after flushing what is buffered."""
        for writer in self.writers():
            writer.close()
        if self.client is None:
            self.conn.close()  # never wrapped in a stream


def _set_nodelay(sock: socket.socket | None) -> None:
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class AsyncLinkProxy:
    """A fault-injecting TCP proxy from 127.0.0.1:``listen_port`` to a target.

    Runs in the event loop that calls :meth:`start`; every method must be
    called from that loop. Use :class:`LinkProxy` from sync code.
    """

    def __init__(self, target_host: str, target_port: int, *, listen_port: int = 0) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self._listen_port = listen_port
        self._listener: socket.socket | None = None
        self._port: int | None = None
        self._mode = _Mode.NORMAL
        self._pairs: dict[_Pair, asyncio.Task[None]] = {}
        self._buckets: dict[Direction, TokenBucket | None] = dict.fromkeys(Direction)
        self._bytes: dict[Direction, int] = dict.fromkeys(Direction, 0)
        self._dropped = 0
        self._connections = 0

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Listen on 127.0.0.1:``listen_port`` (0 picks a free port; see :attr:`port`)."""
        if self._listener is not None:
            raise RuntimeError("proxy already started")
        listener = socket.create_server((LISTEN_HOST, self._listen_port), backlog=BACKLOG)
        listener.setblocking(False)
        self._mode = _Mode.NORMAL
        self._listener = listener
        self._port = listener.getsockname()[1]
        # Not asyncio.start_server: on Python 3.11 closing a Server while an
        # accept is in flight leaves the accepted socket open until garbage
        # collection. Here accepting and registering happen in one callback.
        asyncio.get_running_loop().add_reader(listener.fileno(), self._accept_ready)

    async def stop(self) -> None:
        """Stop listening and close every connection, both sides. Idempotent."""
        listener, self._listener = self._listener, None
        self._mode = _Mode.STOPPED
        if listener is None:
            return
        asyncio.get_running_loop().remove_reader(listener.fileno())
        listener.close()
        await self._close_all()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- faults ------------------------------------------------------------

    async def cut(self) -> None:
        """Take the link down: close all proxied connections, refuse new ones.

        Both ends of every connection are aborted (buffered bytes are dropped;
        the peers see EOF or a reset). Until :meth:`restore` (or
        :meth:`blackhole`), new connections are accepted and closed at once.
        Returns when every connection is closed.
        """
        self._mode = _Mode.CUT
        await self._close_all()

    def blackhole(self) -> None:
        """Make the link half-open: connections stay up, nothing gets through.

        Existing connections are not closed, but from now on the proxy reads
        and discards every byte in both directions (counted in
        :attr:`bytes_dropped`). New connections are accepted but never reach
        the target and get nothing either.

        A blackholed connection stays that way for good, even after
        :meth:`restore`: like the two ends of a TCP connection over a dead
        link, each side is closed only when its own peer closes it (that close
        is not passed on either), or by :meth:`cut` / :meth:`stop`. Since the
        proxy keeps reading, senders never see back-pressure; only
        application-level keepalives can detect the dead link.
        """
        self._mode = _Mode.BLACKHOLE
        for pair in self._pairs:
            pair.blackholed = True

    def restore(self) -> None:
        """End a cut or blackhole: new connections are forwarded normally again.

        Connections blackholed earlier stay silent (see :meth:`blackhole`).
        """
        if self._mode is not _Mode.STOPPED:
            self._mode = _Mode.NORMAL

    def set_rate(self, bytes_per_second: int | None) -> None:
        """Cap forwarding at ``bytes_per_second`` in each direction; None removes the cap.

        Each direction has one token bucket shared by all connections (the cap
        is on the link), with a burst of 100 ms worth of bytes. Applies to
        live connections from their next chunk on.
        """
        for direction in Direction:
            self._buckets[direction] = (
                None if bytes_per_second is None else TokenBucket(bytes_per_second)
            )

    # -- counters ----------------------------------------------------------

    @property
    def port(self) -> int:
        """The port the proxy listens (or last listened) on, on 127.0.0.1."""
        if self._port is None:
            raise RuntimeError("proxy not started")
        return self._port

    @property
    def bytes_up(self) -> int:
        """Bytes forwarded client -> target."""
        return self._bytes[Direction.UP]

    @property
    def bytes_down(self) -> int:
        """Bytes forwarded target -> client."""
        return self._bytes[Direction.DOWN]

    @property
    def bytes_dropped(self) -> int:
        """Bytes read from blackholed connections and thrown away (both directions)."""
        return self._dropped

    @property
    def connections(self) -> int:
        """Connections accepted so far, including those refused while cut."""
        return self._connections

    @property
    def active(self) -> int:
        """Proxied connections currently open (blackholed ones included)."""
        return len(self._pairs)

    # -- internals ---------------------------------------------------------

    def _accept_ready(self) -> None:
        # Called by the loop when the listener is readable: accept everything
        # pending and register each connection before returning, so cut() and
        # stop() can never miss one.
        while self._listener is not None:
            try:
                conn, _ = self._listener.accept()
            except OSError:  # nothing pending (BlockingIOError), or aborted meanwhile
                return
            self._on_accept(conn)

    def _on_accept(self, conn: socket.socket) -> None:
        self._connections += 1
        if self._mode in (_Mode.CUT, _Mode.STOPPED):
            conn.close()
            return
        conn.setblocking(False)
        _set_nodelay(conn)
        pair = _Pair(conn, blackholed=self._mode is _Mode.BLACKHOLE)
        self._pairs[pair] = asyncio.get_running_loop().create_task(self._serve(pair))

    async def _serve(self, pair: _Pair) -> None:
        try:
            pair.client_reader, pair.client = await asyncio.open_connection(
                sock=pair.conn, limit=CHUNK
            )
            if not pair.blackholed and not await self._connect_target(pair):
                return
            async with asyncio.TaskGroup() as group:
                group.create_task(self._pump(pair, Direction.UP))
                if pair.target is not None:
                    group.create_task(self._pump(pair, Direction.DOWN))
        finally:
            pair.close()
            self._pairs.pop(pair, None)

    async def _connect_target(self, pair: _Pair) -> bool:
        try:
            reader, writer = await asyncio.open_connection(
                self.target_host, self.target_port, limit=CHUNK
            )
        except OSError:
            return False  # target down: the client just sees its connection close
        _set_nodelay(writer.get_extra_info("socket"))
        pair.target_reader, pair.target = reader, writer
        return True

    async def _pump(self, pair: _Pair, direction: Direction) -> None:
        reader, source = pair.source(direction)
        try:
            while data := await reader.read(CHUNK):
                await self._forward(pair, direction, data)
        except OSError:
            self._on_reset(pair, source)
        else:
            self._on_eof(pair, direction, source)

    async def _forward(self, pair: _Pair, direction: Direction, data: bytes) -> None:
        view = memoryview(data)
        while view:
            sink = pair.sink(direction)
            if pair.blackholed or sink is None:
                self._dropped += len(view)
                return
            bucket = self._buckets[direction]
            amount = len(view) if bucket is None else await bucket.take(len(view))
            if pair.blackholed:  # blackhole() was called while we waited
                continue
            self._bytes[direction] += amount  # before write: readers never see more than counted
            sink.write(view[:amount])
            view = view[amount:]
            await sink.drain()

    def _on_eof(self, pair: _Pair, direction: Direction, source: asyncio.StreamWriter) -> None:
        sink = pair.sink(direction)
        if pair.blackholed or sink is None:
            source.close()  # the FIN is lost on the dead link: only this side closes
            return
        with contextlib.suppress(OSError, RuntimeError):
            if sink.can_write_eof():
                sink.write_eof()  # pass the half-close on

    def _on_reset(self, pair: _Pair, source: asyncio.StreamWriter) -> None:
        if pair.blackholed:
            source.transport.abort()
        else:
            pair.abort()

    async def _close_all(self) -> None:
        pairs = list(self._pairs.items())
        for pair, task in pairs:
            pair.abort()
            task.cancel()
        await asyncio.gather(*(task for _, task in pairs), return_exceptions=True)
        for pair, _ in pairs:  # a task cancelled before its first step ran no cleanup
            pair.conn.close()
            self._pairs.pop(pair, None)
        await asyncio.sleep(0)  # let the transports' close callbacks run


class LinkProxy:
    """:class:`AsyncLinkProxy` on its own event loop in a daemon thread.

    All methods are thread-safe and block until the proxy has carried them
    out, so ``proxy.cut()`` returning means the connections are closed.
    Usable as a context manager: ``with LinkProxy(host, port) as proxy: ...``.
    """

    def __init__(self, target_host: str, target_port: int, *, listen_port: int = 0) -> None:
        self._proxy = AsyncLinkProxy(target_host, target_port, listen_port=listen_port)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Start the loop thread and listen on 127.0.0.1 (see :attr:`port`)."""
        if self._thread is not None:
            raise RuntimeError("proxy already started")
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        thread = threading.Thread(
            target=asyncio.run, args=(self._main(started),), name="linkproxy", daemon=True
        )
        thread.start()
        try:
            started.result(timeout=CALL_TIMEOUT)
        except BaseException:
            thread.join(timeout=CALL_TIMEOUT)
            raise
        self._thread = thread

    def stop(self) -> None:
        """Close every connection, stop listening and end the thread. Idempotent."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        assert self._loop is not None and self._stop_requested is not None
        self._loop.call_soon_threadsafe(self._stop_requested.set)
        thread.join(timeout=CALL_TIMEOUT)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- faults ------------------------------------------------------------

    def cut(self) -> None:
        """See :meth:`AsyncLinkProxy.cut`; returns once every connection is closed."""
        self._run(self._proxy.cut())

    def blackhole(self) -> None:
        """See :meth:`AsyncLinkProxy.blackhole`."""
        self._call(self._proxy.blackhole)

    def restore(self) -> None:
        """See :meth:`AsyncLinkProxy.restore`."""
        self._call(self._proxy.restore)

    def set_rate(self, bytes_per_second: int | None) -> None:
        """See :meth:`AsyncLinkProxy.set_rate`."""
        self._call(lambda: self._proxy.set_rate(bytes_per_second))

    # -- counters (plain reads of ints: safe from any thread) ----------------

    @property
    def port(self) -> int:
        """The port the proxy listens on (127.0.0.1)."""
        return self._proxy.port

    @property
    def bytes_up(self) -> int:
        """Bytes forwarded client -> target."""
        return self._proxy.bytes_up

    @property
    def bytes_down(self) -> int:
        """Bytes forwarded target -> client."""
        return self._proxy.bytes_down

    @property
    def bytes_dropped(self) -> int:
        """Bytes thrown away on blackholed connections."""
        return self._proxy.bytes_dropped

    @property
    def connections(self) -> int:
        """Connections accepted so far, including those refused while cut."""
        return self._proxy.connections

    @property
    def active(self) -> int:
        """Proxied connections currently open."""
        return self._proxy.active

    # -- internals ---------------------------------------------------------

    async def _main(self, started: concurrent.futures.Future[None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_requested = asyncio.Event()
        try:
            await self._proxy.start()
        except BaseException as exc:
            started.set_exception(exc)
            return
        started.set_result(None)
        await self._stop_requested.wait()
        await self._proxy.stop()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop is None or self._thread is None:
            coro.close()
            raise RuntimeError("proxy not started")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=CALL_TIMEOUT)

    def _call(self, func: Callable[[], T]) -> T:
        async def call() -> T:
            return func()

        return self._run(call())
