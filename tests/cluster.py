"""A real NATS cluster for tests: N ``nats-server`` processes on loopback.

The configs come from :mod:`cloud_hub.cluster` (what ``cloud-hub cluster-config``
writes), with host 127.0.0.1, free ports, a store and a log per node, and a monitoring
port per node (tests only) for readiness checks. Nodes can be killed with SIGKILL and
restarted on the same config and store, to test failover::

    async with NatsCluster(tmp_path) as cluster:        # started and ready
        nc = await nats.connect(servers=cluster.urls)
        ...
        cluster.kill9(await cluster.stream_leader("ORDERS"))
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

import msgspec
import nats

from cloud_hub.cluster import ClusterNode, ClusterOptions, render_node_config
from edge_agent.nats.server import nats_server_binary
from tests.helpers import free_port

__all__ = ["NatsCluster"]

_HOST = "127.0.0.1"


def _guarded(command: list[str]) -> list[str]:
    """``command`` run so that the kernel kills it when this process dies (``setpriv``
    from util-linux sets the parent-death signal, then execs it): a test runner killed
    with SIGKILL leaves no server behind. A ``preexec_fn`` would do the same but is not
    safe to fork with while worker threads run."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--", *command] if setpriv else command


class NatsCluster:
    """``size`` clustered nats-servers with JetStream, bound to 127.0.0.1.

    Nodes are numbered from 0; node ``i`` is named ``nats-{i+1}`` and keeps its config,
    store and log under ``workdir/nats-{i+1}/``.

    Args:
        workdir: where each node's directory goes.
        size: how many servers (3 or more).
        max_memory: each node's JetStream memory limit.
        max_file: each node's JetStream file store limit.
    """

    def __init__(
        self, workdir: Path, size: int = 3, *, max_memory: str = "64MB", max_file: str = "256MB"
    ) -> None:
        self.workdir = workdir
        self.nodes = [
            ClusterNode(
                name=f"nats-{i + 1}",
                host=_HOST,
                client_port=free_port(),
                cluster_port=free_port(),
                monitor_port=free_port(),
            )
            for i in range(size)
        ]
        options = ClusterOptions(listen_host=_HOST, max_memory=max_memory, max_file=max_file)
        self.config_paths: list[Path] = []
        self.log_paths: list[Path] = []
        for index, node in enumerate(self.nodes):
            home = workdir / node.name
            store = home / "jetstream"
            store.mkdir(parents=True, exist_ok=True)
            per_node = msgspec.structs.replace(options, store_dir=str(store))
            config = home / "nats-server.conf"
            config.write_text(render_node_config(self.nodes, index, per_node))
            self.config_paths.append(config)
            self.log_paths.append(home / "nats-server.log")
        self._procs: list[subprocess.Popen[bytes] | None] = [None] * size

    @property
    def size(self) -> int:
        """How many nodes the cluster has."""
        return len(self.nodes)

    @property
    def names(self) -> list[str]:
        """The server names, by node index."""
        return [node.name for node in self.nodes]

    @property
    def urls(self) -> list[str]:
        """Every node's client URL, by node index."""
        return [f"nats://{_HOST}:{node.client_port}" for node in self.nodes]

    def url(self, index: int) -> str:
        """Node ``index``'s client URL."""
        return self.urls[index]

    def running(self, index: int) -> bool:
        """Whether node ``index``'s process is alive."""
        proc = self._procs[index]
        return proc is not None and proc.poll() is None

    def start(self, timeout: float = 15.0) -> None:
        """Start every node and wait until each accepts clients (not yet JetStream-ready).

        Raises:
            AssertionError: a node exited or did not listen in time (its log is quoted);
                every node is stopped first.
        """
        try:
            for index in range(self.size):
                self._spawn(index)
            for index in range(self.size):
                self._wait_listening(index, timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Kill every node still running and reap it; safe to call twice or after a failure."""
        for proc in self._procs:
            if proc is not None and proc.poll() is None:
                proc.kill()
        for proc in self._procs:
            if proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)

    def kill9(self, index: int) -> None:
        """``kill -9`` node ``index`` and reap it."""
        proc = self._procs[index]
        assert proc is not None and proc.poll() is None, f"{self.names[index]} is not running"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def restart(self, index: int, timeout: float = 15.0) -> None:
        """Start node ``index`` again on the same config and store; wait until it listens.

        Raises:
            AssertionError: it is still running, or did not come back in time.
        """
        assert not self.running(index), f"{self.names[index]} is still running"
        self._spawn(index)
        self._wait_listening(index, timeout)

    def jsz(self, index: int, **query: str) -> dict[str, Any]:
        """Node ``index``'s ``/jsz`` monitoring report (its own view, from its own store).

        Args:
            index: the node.
            query: query parameters, e.g. ``accounts="true", streams="true"``.
        """
        node = self.nodes[index]
        params = "&".join(f"{key}={value}" for key, value in query.items())
        url = f"http://{_HOST}:{node.monitor_port}/jsz?{params}"
        with urllib.request.urlopen(url, timeout=2) as reply:
            report: dict[str, Any] = json.loads(reply.read())
            return report

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until every running node has JetStream up, one meta leader is agreed on,
        and the leader counts every other running node as a current peer.

        Raises:
            AssertionError: not ready after ``timeout`` seconds (the last views are quoted).
        """
        deadline = time.monotonic() + timeout
        views: dict[str, Any] = {}
        while time.monotonic() < deadline:
            views = await asyncio.to_thread(self._meta_views)
            if self._ready(views):
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"cluster not ready after {timeout}s: {views}")

    async def stream_leader(self, stream: str, timeout: float = 30.0) -> int:
        """The index of the node leading ``stream``'s replicas, once it has a leader.

        Asks the running nodes through nats-py (``STREAM.INFO``) until one answers with
        a leader.

        Raises:
            AssertionError: no leader after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            live = [url for index, url in enumerate(self.urls) if self.running(index)]
            try:
                client = await nats.connect(servers=live, connect_timeout=1, allow_reconnect=False)
            except Exception as exc:
                last = exc
            else:
                try:
                    info = await client.jetstream(timeout=2).stream_info(stream)
                    leader = info.cluster.leader if info.cluster else None
                    if leader in self.names:
                        return self.names.index(leader)
                    last = info.cluster
                except Exception as exc:
                    last = exc
                finally:
                    await client.close()
            await asyncio.sleep(0.1)
        raise AssertionError(f"stream {stream} has no leader after {timeout}s: {last!r}")

    def log_tail(self, index: int, chars: int = 2000) -> str:
        """The end of node ``index``'s log."""
        path = self.log_paths[index]
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def _spawn(self, index: int) -> None:
        # The parent-death signal follows the thread that forks: spawn from the test's
        # own thread, never from a worker thread that may end first.
        command = [str(nats_server_binary()), "-c", str(self.config_paths[index])]
        command += ["-l", str(self.log_paths[index])]
        self._procs[index] = subprocess.Popen(
            _guarded(command),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def _wait_listening(self, index: int, timeout: float) -> None:
        node = self.nodes[index]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running(index):
                raise AssertionError(f"{node.name} exited: {self.log_tail(index)}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection((_HOST, node.client_port), timeout=1) as sock,
            ):
                sock.settimeout(1)
                if sock.recv(5) == b"INFO ":
                    return
            time.sleep(0.02)
        raise AssertionError(f"{node.name} not listening after {timeout}s: {self.log_tail(index)}")

    def _meta_views(self) -> dict[str, Any]:
        """Each running node's ``meta_cluster`` view by name (an error text if it failed)."""
        views: dict[str, Any] = {}
        for index, name in enumerate(self.names):
            if not self.running(index):
                continue
            try:
                views[name] = self.jsz(index).get("meta_cluster") or {}
            except (OSError, ValueError) as exc:
                views[name] = repr(exc)
        return views

    def _ready(self, views: dict[str, Any]) -> bool:
        if not views or not all(isinstance(view, dict) for view in views.values()):
            return False
        leaders = {view.get("leader") for view in views.values()}
        if len(leaders) != 1 or any(v.get("cluster_size") != self.size for v in views.values()):
            return False
        (leader,) = leaders
        if leader not in views:
            return False
        current = {
            peer.get("name") for peer in views[leader].get("replicas") or [] if peer.get("current")
        }
        return all(name in current for name in views if name != leader)

    def __enter__(self) -> NatsCluster:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> NatsCluster:
        self.start()  # from this thread: see _spawn
        try:
            await self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
