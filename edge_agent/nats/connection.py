"""The NATS part of a program: the embedded nats-server when one is wanted, and the client.

Both the edge agent and the hub hold one. With ``nats.embedded`` (``auto`` by default)
it supervises its own server on loopback, JetStream in the state directory; otherwise
it connects to ``nats.urls`` (a cluster) and starts nothing. Its own server lets in only
the NKey users of ``nats.nkey_seed`` and ``nats.authorized_nkeys`` when a seed is set,
and only TLS clients with ``nats.server_tls``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext

from edge_agent.config import NatsConfig
from edge_agent.config.schema import EDGE_SYNC_INTERVAL, ServerTlsConfig
from edge_agent.errors import ConfigError
from edge_agent.nats.client import (
    connect,
    embedded_port,
    nkey_public_key,
    open_delivery_connection,
)
from edge_agent.nats.delivery import DeliveryConnection
from edge_agent.nats.server import EmbeddedNatsServer
from edge_agent.private_files import check_private

__all__ = ["NatsConnection"]

log = logging.getLogger(__name__)


class NatsConnection:
    """A connected NATS client, and the embedded server behind it when there is one.

    Args:
        config: the ``nats`` section.
        state_dir: where an embedded server keeps its JetStream store.
        name: the program's id (the embedded server's name).
        client_name: what the server shows for the client ("edge-agent <id>").
        stream_bytes: the byte limits of the streams the program will create; an
            embedded server reserves twice that (it refuses a stream that does not fit).
        on_restart: called when the embedded server was restarted after a crash.
    """

    name = "nats"

    def __init__(
        self,
        config: NatsConfig,
        state_dir: Path,
        *,
        name: str,
        client_name: str,
        stream_bytes: int,
        on_restart: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self._state_dir = state_dir
        self._name = name
        self._client_name = client_name
        self._stream_bytes = stream_bytes
        self._on_restart = on_restart
        self._resync: list[Callable[[], None]] = []
        self.server: EmbeddedNatsServer | None = None
        self.nc: Client | None = None
        self.js: JetStreamContext | None = None
        self.urls: list[str] = list(config.urls)

    def on_resync(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after a reconnection or dropped messages (consumers rebind)."""
        self._resync.append(callback)

    @property
    def client(self) -> Client:
        """The connected client (after :meth:`start`)."""
        assert self.nc is not None, "NATS is not started"
        return self.nc

    @property
    def jetstream(self) -> JetStreamContext:
        """JetStream on the connected client (after :meth:`start`)."""
        assert self.js is not None, "NATS is not started"
        return self.js

    @property
    def connected(self) -> bool:
        """Whether the client is connected now."""
        return self.nc is not None and self.nc.is_connected

    async def start(self) -> None:
        """Start the embedded server if wanted, then connect.

        Raises:
            NatsServerError: the server could not start, or no server answered.
        """
        port = await embedded_port(self.config)
        if port is not None:
            self.server = EmbeddedNatsServer(
                self._state_dir,
                port=port,
                max_file_store=2 * self._stream_bytes,
                name=self._name,
                on_restart=self._on_restart,
                nkeys=self._server_nkeys(),
                tls=self._server_tls(),
                memory_limit=self.config.server_memory_limit,
                sync_interval=self.config.jetstream.sync_interval or EDGE_SYNC_INTERVAL,
            )
            await self.server.start()
            self.urls = [self.server.url]
        self.nc = await connect(
            self.config, self.urls, name=self._client_name, on_resync=self._resynced
        )
        self.js = self.nc.jetstream()

    async def open_delivery(self, name: str) -> DeliveryConnection:
        """A delivery-only connection to the server the client is connected to.

        For the graph processor, which receives and acks in bulk on it
        (:mod:`edge_agent.nats.delivery`).

        Raises:
            ConnectionError: the client is not connected, or the handshake failed.
        """
        url = self.nc.connected_url if self.nc is not None else None
        if url is None:
            raise ConnectionError("NATS is not connected")
        return await open_delivery_connection(self.config, url.geturl(), name=name)

    def _server_nkeys(self) -> list[str]:
        """The users the embedded server lets in: the agent's own first; none (open to
        loopback) without a seed."""
        if not self.config.nkey_seed:
            return []
        return [nkey_public_key(self.config.nkey_seed), *self.config.authorized_nkeys]

    def _server_tls(self) -> ServerTlsConfig | None:
        """``nats.server_tls`` once its key is private and its files readable."""
        tls = self.config.server_tls
        if tls is None:
            return None
        check_private(tls.key_file, "nats.server_tls.key_file")
        for key in ("cert_file", "client_ca_file"):
            path = getattr(tls, key)
            if path and not os.access(path, os.R_OK):
                raise ConfigError([f"nats.server_tls.{key}: cannot read {path}"])
        return tls

    def _resynced(self) -> None:
        for callback in self._resync:
            callback()

    async def stop(self) -> None:
        """Close the client, then stop the embedded server."""
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()
        if self.server is not None:
            await self.server.stop()

    def health(self) -> dict[str, Any]:
        """Connected or down, and the embedded server's state."""
        server = self.server
        return {
            "status": "ok" if self.connected else "down",
            "embedded": server is not None,
            "server_running": server.running if server else None,
            "server_restarts": server.restarts if server else 0,
        }
