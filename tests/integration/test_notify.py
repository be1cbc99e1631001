"""A real ``edge-agent run`` under a fake service manager: READY, WATCHDOG, STATUS, STOPPING.

The test listens on an AF_UNIX datagram socket, as systemd does, and hands it to the
child as ``NOTIFY_SOCKET`` with ``WATCHDOG_USEC=1000000`` (pings due every 0.5 s).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.app import Agent
from edge_agent.cli import _status_line
from tests.helpers import AgentProcess, config_dict, event, http_json, wait_for

#: Pings are sent every 0.5 s; allow for scheduling on a busy test machine.
_MAX_PING_GAP_S = 0.75


class FakeManager:
    """Receives notifications in a thread, stamping each datagram on arrival.

    On ``READY=1`` it asks the agent's ``/health`` at once and records the answer, so a
    READY sent before the API is up shows as a failed check.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.received: list[tuple[float, str]] = []
        self.health_url = ""
        self.health_at_ready: int | str | None = None
        self._health_checked = threading.Event()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closed.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            now = time.monotonic()
            for line in data.decode().split("\n"):
                self.received.append((now, line))
            if "READY=1" in data.decode().split("\n"):
                try:
                    self.health_at_ready = http_json(self.health_url, timeout=2)[0]
                except OSError as exc:
                    self.health_at_ready = repr(exc)
                self._health_checked.set()

    def times(self, line: str, since: float = 0.0) -> list[float]:
        return [at for at, got in list(self.received) if got == line and at >= since]

    def lines(self, prefix: str) -> list[str]:
        return [got for _, got in list(self.received) if got.startswith(prefix)]

    def wait_for(self, line: str, timeout: float = 30.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if found := self.times(line):
                return found[0]
            time.sleep(0.02)
        raise AssertionError(f"no {line} within {timeout}s; got {self.received}")

    def wait_ready(self, timeout: float = 30.0) -> float:
        """Wait for READY=1 and for the health check made on its arrival; return its time."""
        ready_at = self.wait_for("READY=1", timeout)
        # The check runs in the receiving thread after the line is recorded.
        assert self._health_checked.wait(5), "the health check on READY did not finish"
        return ready_at

    def close(self) -> None:
        self._closed.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[FakeManager]:
    fake = FakeManager(tmp_path / "notify")
    yield fake
    fake.close()


def _agent(tmp_path: Path, manager: FakeManager, **kwargs: str) -> AgentProcess:
    env = {"NOTIFY_SOCKET": str(manager.path), "WATCHDOG_USEC": "1000000"}
    agent = AgentProcess(config_dict(tmp_path / "state"), tmp_path, env=env, **kwargs)
    manager.health_url = f"{agent.api}/health"
    return agent


def _gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


def test_ready_watchdog_status_and_stopping(tmp_path: Path, manager: FakeManager) -> None:
    agent = _agent(tmp_path, manager)
    agent.start()
    try:
        ready_at = manager.wait_ready()
        # READY came only once the API answered: checked the moment it arrived.
        assert manager.health_at_ready == 200
        assert manager.lines("STATUS=")[0] == "STATUS=starting"
        status = manager.lines("STATUS=")[1]
        assert status.startswith("STATUS=0 events applied, 0 pending"), status

        time.sleep(3)
        pings = manager.times("WATCHDOG=1", since=ready_at)
        assert len(pings) >= 5, pings
        assert pings[0] - ready_at < _MAX_PING_GAP_S
        assert max(_gaps(pings)) < _MAX_PING_GAP_S, _gaps(pings)
    finally:
        assert agent.stop() == 0
    stopping = manager.times("STOPPING=1")
    assert stopping, manager.received
    assert manager.times("READY=1") == [ready_at]  # READY exactly once


@pytest.mark.slow
def test_a_stopped_loop_stops_the_pings(tmp_path: Path, manager: FakeManager) -> None:
    agent = _agent(tmp_path, manager)
    agent.start()
    assert agent.proc is not None
    try:
        manager.wait_for("READY=1")
        time.sleep(1)
        os.kill(agent.proc.pid, signal.SIGSTOP)  # a wedged loop, as systemd would see it
        stopped_at = time.monotonic()
        time.sleep(2)
        os.kill(agent.proc.pid, signal.SIGCONT)
        resumed_at = time.monotonic()
        time.sleep(1.5)
        pings = manager.times("WATCHDOG=1")
        # A ping may already be in flight when the signal lands; none after that.
        silent = [at for at in pings if stopped_at + 0.1 < at < resumed_at]
        assert silent == [], silent
        around = [at for at in pings if at <= stopped_at + 0.1][-1:] + [
            at for at in pings if at >= resumed_at
        ]
        assert max(_gaps(around)) > 1.5  # systemd (WatchdogSec=1s) would have killed it
        after = [at for at in pings if at >= resumed_at]
        assert len(after) >= 2, "pings did not resume after SIGCONT"
        assert after[0] - resumed_at < _MAX_PING_GAP_S
        assert max(_gaps(after)) < _MAX_PING_GAP_S
    finally:
        os.kill(agent.proc.pid, signal.SIGCONT)
        assert agent.stop() == 0
    assert manager.times("STOPPING=1")


def test_the_hub_notifies_too(tmp_path: Path, manager: FakeManager) -> None:
    hub = _agent(tmp_path, manager, program="cloud_hub.cli")
    hub.start()
    try:
        manager.wait_ready()
        assert manager.health_at_ready == 200
        manager.wait_for("WATCHDOG=1")
    finally:
        assert hub.stop() == 0
    assert manager.times("STOPPING=1")


async def test_the_status_line_counts_applied_events(agent: Agent) -> None:
    assert agent.status_line() == "0 events applied, 0 pending"
    await agent.publisher.publish(
        [json.dumps(event(f"s-{i}")).encode() for i in range(3)], path="test"
    )

    async def applied() -> bool:
        return agent.status_line().startswith("3 events applied, ")

    await wait_for(applied, what="3 events in the status line")


def test_a_service_without_or_with_a_broken_status_line_still_gets_one() -> None:
    class Bare:
        async def start(self) -> None: ...
        async def stop(self) -> None: ...

    class Broken(Bare):
        def status_line(self) -> str:
            raise RuntimeError("boom")

    assert _status_line(Bare()) == "running"
    assert _status_line(Broken()) == "running (no status: boom)"
