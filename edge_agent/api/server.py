"""Serve an ASGI app with uvicorn on a socket the agent binds itself.

Binding here (not in uvicorn) turns "address in use" into an exception the agent can
report, instead of uvicorn's ``sys.exit``; and leaving signals alone keeps shutdown in
the agent's hands.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Iterator
from typing import Any

import uvicorn

__all__ = ["HttpServer"]


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpServer:
    """One HTTP listener.

    Args:
        app: the ASGI app.
        host: the address to bind.
        port: the port (0 picks a free one; see :attr:`port` after :meth:`start`).
        ssl_context: serve HTTPS with this server context; ``None`` serves plain HTTP.
        options: more ``uvicorn.Config`` settings (e.g. ``ws_max_size``).
    """

    def __init__(
        self,
        app: Any,
        *,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        self._app = app
        self._options = options or {}
        self.host = host
        self.port = port
        self._ssl_context = ssl_context
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Bind and start serving.

        Raises:
            OSError: the address could not be bound.
        """
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # IPPROTO_TCP named explicitly: only then does asyncio set TCP_NODELAY on the
        # accepted connections; without it every response on a kept-alive connection
        # waited ~40 ms for the client's delayed ACK.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            # The errno alone ("Permission denied") does not say which port to fix.
            raise OSError(
                exc.errno, f"cannot bind {self.host}:{self.port}: {exc.strerror}"
            ) from exc
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app,
            log_config=None,
            lifespan="off",
            access_log=False,
            timeout_graceful_shutdown=5,
            **self._options,
        )
        if self._ssl_context is not None:
            # uvicorn builds a context only from file paths, with its own cipher string;
            # load the config now and hand it ours. serve() skips load() once loaded.
            config.load()
            config.ssl = self._ssl_context
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="http")
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        """Stop accepting, finish in-flight requests, close."""
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
