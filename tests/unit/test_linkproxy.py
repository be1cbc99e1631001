"""The fault-injecting link proxy, over real loopback sockets and a real echo server."""

from __future__ import annotations

import asyncio
import socket
import socketserver
import threading
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.linkproxy import AsyncLinkProxy, LinkProxy

#: How long "nothing arrives" is watched for.
QUIET = 0.5


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server = self.server
        assert isinstance(server, EchoServer)
        while data := self.request.recv(65536):
            server.add_received(len(data))
            self.request.sendall(data)


class EchoServer(socketserver.ThreadingTCPServer):
    """A threaded echo server on 127.0.0.1 that counts the bytes it received."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _EchoHandler)
        self._lock = threading.Lock()
        self._received = 0

    @property
    def port(self) -> int:
        port: int = self.server_address[1]
        return port

    @property
    def received(self) -> int:
        with self._lock:
            return self._received

    def add_received(self, count: int) -> None:
        with self._lock:
            self._received += count


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def proxy(echo: EchoServer) -> Iterator[LinkProxy]:
    with LinkProxy("127.0.0.1", echo.port) as link:
        yield link


def connect(port: int) -> socket.socket:
    """A blocking client socket with a timeout, so no test can hang."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=2.0)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    """Read ``size`` bytes, failing on EOF."""
    chunks: list[bytes] = []
    remaining = size
    while remaining:
        chunk = sock.recv(min(remaining, 65536))
        assert chunk, f"EOF after {size - remaining} of {size} bytes"
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def roundtrip(sock: socket.socket, payload: bytes) -> bytes:
    """Send ``payload`` and read back as many bytes."""
    sock.sendall(payload)
    return recv_exactly(sock, len(payload))


def assert_closed(sock: socket.socket) -> None:
    """The peer has closed the connection: recv gives EOF or a reset, not data or a timeout."""
    sock.settimeout(1.0)
    try:
        data = sock.recv(1)
    except ConnectionResetError:
        data = b""
    finally:
        sock.close()
    assert data == b"", f"got {data!r} on a connection that should be closed"


def assert_silent(sock: socket.socket, wait: float = QUIET) -> None:
    """Nothing arrives -- neither data nor EOF nor a reset -- for ``wait`` seconds."""
    sock.settimeout(wait)
    with pytest.raises(TimeoutError):
        data = sock.recv(1)
        pytest.fail(f"expected silence, got {data!r}")
    sock.settimeout(2.0)


def wait_until(condition: object, timeout: float = 2.0) -> None:
    """Poll ``condition()`` until true."""
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_forwards_both_ways_and_counts(proxy: LinkProxy, echo: EchoServer) -> None:
    payload = bytes(range(256)) * 1024  # 256 KiB: several chunks each way
    with connect(proxy.port) as sock:
        assert roundtrip(sock, payload) == payload
        assert roundtrip(sock, b"hello") == b"hello"
        assert proxy.active == 1
    assert echo.received == len(payload) + 5
    assert proxy.bytes_up == len(payload) + 5
    assert proxy.bytes_down == len(payload) + 5
    assert proxy.connections == 1
    wait_until(lambda: proxy.active == 0)  # the client's close went through


def test_cut_closes_connections_and_refuses_until_restore(proxy: LinkProxy) -> None:
    sock = connect(proxy.port)
    assert roundtrip(sock, b"before") == b"before"

    proxy.cut()
    assert proxy.active == 0
    assert_closed(sock)
    assert_closed(connect(proxy.port))  # accepted, then closed at once
    assert proxy.bytes_up == len(b"before")  # nothing got through while cut

    proxy.restore()
    with connect(proxy.port) as again:
        assert roundtrip(again, b"after") == b"after"
    assert proxy.connections == 3


def test_blackhole_keeps_connections_open_but_silent(proxy: LinkProxy, echo: EchoServer) -> None:
    old = connect(proxy.port)
    assert roundtrip(old, b"before") == b"before"

    proxy.blackhole()
    old.sendall(b"lost")
    assert_silent(old)  # no echo, no EOF, no reset
    assert echo.received == len(b"before")  # it never reached the server
    with connect(proxy.port) as during:  # accepted, but nothing is forwarded
        during.sendall(b"lost too")
        assert_silent(during, 0.2)
    assert echo.received == len(b"before")
    assert proxy.bytes_dropped == len(b"lost") + len(b"lost too")

    proxy.restore()
    with connect(proxy.port) as new:
        assert roundtrip(new, b"after") == b"after"
    old.sendall(b"still lost")
    assert_silent(old, 0.2)  # blackholed connections stay dead after restore
    old.close()


def test_rate_limit_paces_forwarding(proxy: LinkProxy) -> None:
    payload = b"x" * 40_000
    proxy.set_rate(20_000)
    with connect(proxy.port) as sock:
        sock.settimeout(5.0)
        started = time.monotonic()
        assert roundtrip(sock, payload) == payload
        elapsed = time.monotonic() - started
    # 40 KB at 20 KB/s is 2 s less a 2 KB burst; up and down are paced concurrently.
    assert 1.5 <= elapsed < 3.5, elapsed

    proxy.set_rate(None)
    with connect(proxy.port) as sock:
        started = time.monotonic()
        assert roundtrip(sock, payload) == payload
        assert time.monotonic() - started < 0.5


def test_stop_closes_everything(echo: EchoServer) -> None:
    link = LinkProxy("127.0.0.1", echo.port)
    link.start()
    port = link.port
    sock = connect(port)
    assert roundtrip(sock, b"hi") == b"hi"
    link.blackhole()
    silent = connect(port)  # a blackholed connection is closed by stop() as well

    link.stop()
    assert link.active == 0
    assert_closed(sock)
    assert_closed(silent)
    with pytest.raises(ConnectionRefusedError):
        connect(port)
    link.stop()  # idempotent


# -- the same proxy in the test's own event loop -------------------------------


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


@pytest.fixture
async def async_proxy() -> AsyncIterator[AsyncLinkProxy]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with AsyncLinkProxy("127.0.0.1", port) as link:
        yield link
    server.close()
    await server.wait_closed()


async def test_async_proxy_forwards_cuts_and_restores(async_proxy: AsyncLinkProxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", async_proxy.port)
    writer.write(b"ping")
    assert await asyncio.wait_for(reader.readexactly(4), 2) == b"ping"
    assert (async_proxy.bytes_up, async_proxy.bytes_down) == (4, 4)

    await async_proxy.cut()
    assert await asyncio.wait_for(reader.read(), 2) == b""
    writer.close()

    async_proxy.restore()
    reader, writer = await asyncio.open_connection("127.0.0.1", async_proxy.port)
    writer.write(b"pong")
    assert await asyncio.wait_for(reader.readexactly(4), 2) == b"pong"
    writer.close()
    assert async_proxy.connections == 2


async def test_async_proxy_blackhole(async_proxy: AsyncLinkProxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", async_proxy.port)
    async_proxy.blackhole()
    writer.write(b"lost")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(1), QUIET)
    assert async_proxy.bytes_up == 0
    writer.close()


async def test_async_proxy_stop_closes_connections(async_proxy: AsyncLinkProxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", async_proxy.port)
    writer.write(b"ping")
    assert await asyncio.wait_for(reader.readexactly(4), 2) == b"ping"

    await async_proxy.stop()  # the loop keeps running: stop() itself must close them
    assert async_proxy.active == 0
    assert await asyncio.wait_for(reader.read(), 2) == b""
    writer.close()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", async_proxy.port)
