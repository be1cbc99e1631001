"""sd_notify: datagram formatting, real AF_UNIX sockets (path and abstract), the watchdog."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.systemd.notify import (
    Notifier,
    encode,
    keep_alive,
    socket_address,
    watchdog_interval,
)


@contextlib.contextmanager
def listening(address: str | bytes) -> Iterator[socket.socket]:
    """A bound AF_UNIX datagram socket, as systemd listens on ``$NOTIFY_SOCKET``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(2)
    try:
        yield sock
    finally:
        sock.close()


@pytest.fixture
def path_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify")
    assert len(path) < 100, "AF_UNIX paths are limited to 108 bytes"
    with listening(path) as sock:
        yield path, sock


def test_encode_is_one_line_per_field_in_order() -> None:
    assert encode({"READY": 1, "STATUS": "up"}) == b"READY=1\nSTATUS=up"
    assert encode({"WATCHDOG": "1"}) == b"WATCHDOG=1"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "nothing to notify"),
        ({"ready": 1}, "invalid notify variable name 'ready'"),
        ({"STATUS": "two\nREADY=1"}, "newline in the value of STATUS"),
    ],
)
def test_encode_refuses_malformed_fields(fields: dict[str, str | int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        encode(fields)


def test_socket_address_forms() -> None:
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@sd-notify/x") == b"\0sd-notify/x"
    assert socket_address(None) is None
    assert socket_address("") is None
    assert socket_address("@") is None
    assert socket_address("relative/path") is None
    assert socket_address("vsock:2:1234") is None


def test_ready_sends_ready_and_status_to_a_path_socket(
    path_socket: tuple[str, socket.socket],
) -> None:
    path, sock = path_socket
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready("12 events applied, 0 pending")
    assert sock.recv(4096) == b"READY=1\nSTATUS=12 events applied, 0 pending"
    assert notifier.status("line one\nline two")  # folded: a newline would add a variable
    assert sock.recv(4096) == b"STATUS=line one line two"
    assert notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    assert notifier.stopping()
    assert sock.recv(4096) == b"STOPPING=1"
    notifier.close()


def test_abstract_socket() -> None:
    name = f"semstreams-test-{uuid.uuid4().hex}"
    with listening(b"\0" + name.encode()) as sock:
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": f"@{name}"})
        assert notifier.ready("up")
        assert sock.recv(4096) == b"READY=1\nSTATUS=up"
        notifier.close()


def test_without_notify_socket_everything_is_a_no_op() -> None:
    notifier = Notifier.from_environ({"WATCHDOG_USEC": "1000000"})
    assert not notifier.enabled
    assert notifier.watchdog_interval is None  # no manager, no pings
    assert notifier.ready("up") is False
    assert notifier.watchdog() is False
    assert notifier.stopping() is False


def test_an_unusable_notify_socket_disables_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, "edge_agent.systemd.notify"):
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": "relative"})
    assert not notifier.enabled
    assert "not a usable socket" in caplog.text


def test_send_failures_are_logged_once_and_never_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    with caplog.at_level(logging.DEBUG, "edge_agent.systemd.notify"):
        assert notifier.ready("up") is False
        assert notifier.watchdog() is False
        assert notifier.watchdog() is False
    failures = [r for r in caplog.records if "failed" in r.getMessage()]
    assert [r.levelno for r in failures] == [logging.WARNING, logging.DEBUG, logging.DEBUG]
    notifier.close()


@pytest.mark.parametrize(
    ("env", "interval"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}, 1.0),
        ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "x"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], interval: float | None) -> None:
    assert watchdog_interval(env) == interval


def test_watchdog_interval_for_another_pid() -> None:
    env = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "4242"}
    assert watchdog_interval(env, pid=4242) == 2.0
    assert watchdog_interval(env, pid=4243) is None


async def test_keep_alive_pings_every_half_interval_and_refreshes_changed_status(
    path_socket: tuple[str, socket.socket],
) -> None:
    path, sock = path_socket
    sock.setblocking(False)
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})
    lines = iter(["first", "first", "second"])
    task = asyncio.create_task(keep_alive(notifier, lambda: next(lines, "last"), status_every=0.15))
    received: list[tuple[float, bytes]] = []
    deadline = time.monotonic() + 0.75
    while time.monotonic() < deadline:
        with contextlib.suppress(BlockingIOError):
            while True:
                received.append((time.monotonic(), sock.recv(4096)))
        await asyncio.sleep(0.01)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    pings = [at for at, data in received if data == b"WATCHDOG=1"]
    assert len(pings) >= 6  # every 0.1 s for 0.75 s
    assert max(b - a for a, b in itertools.pairwise(pings)) < 0.2
    statuses = [data for _, data in received if data.startswith(b"STATUS=")]
    assert statuses[:2] == [b"STATUS=first", b"STATUS=second"]  # unchanged lines not resent
    notifier.close()


async def test_keep_alive_returns_at_once_without_a_manager() -> None:
    await asyncio.wait_for(keep_alive(Notifier(None), lambda: "x"), 1)
