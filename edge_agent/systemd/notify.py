"""The sd_notify protocol without libsystemd: newline-separated ``KEY=VALUE`` datagrams.

The service manager passes ``NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract
namespace) and, with ``WatchdogSec=``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID``. Formatting
is pure (:func:`encode`, :func:`socket_address`, :func:`watchdog_interval`); the
:class:`Notifier` is a thin shell that sends one datagram per call.

Invariants:

- Without ``NOTIFY_SOCKET`` every send is a no-op, so the agent runs the same outside
  systemd (a shell, a container, the tests).
- A failed send is logged (once at WARNING, later at DEBUG) and never raised: losing a
  notification must not kill the agent. systemd notices missing watchdog pings anyway.
- A send never blocks the event loop: the socket is non-blocking, and a full queue
  counts as a failed send.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Mapping

__all__ = ["Notifier", "encode", "keep_alive", "socket_address", "watchdog_interval"]

log = logging.getLogger(__name__)

_KEY = re.compile(r"[A-Z][A-Z0-9_]*\Z")


def encode(fields: Mapping[str, str | int]) -> bytes:
    """The datagram announcing ``fields``: one ``KEY=VALUE`` line each, in order.

    Args:
        fields: protocol variables, e.g. ``{"READY": 1, "STATUS": "up"}``.

    Returns:
        The UTF-8 datagram, e.g. ``b"READY=1\\nSTATUS=up"``.

    Raises:
        ValueError: no fields, a key that is not upper-case ``[A-Z0-9_]``, or a value
            with a newline (it would smuggle in another assignment).
    """
    if not fields:
        raise ValueError("nothing to notify")
    lines = []
    for key, value in fields.items():
        if not _KEY.match(key):
            raise ValueError(f"invalid notify variable name {key!r}")
        text = str(value)
        if "\n" in text:
            raise ValueError(f"newline in the value of {key}")
        lines.append(f"{key}={text}")
    return "\n".join(lines).encode()


def socket_address(value: str | None) -> str | bytes | None:
    """The ``AF_UNIX`` address named by ``$NOTIFY_SOCKET``, or ``None`` if there is none.

    ``/path`` is a socket file; ``@name`` is ``name`` in the abstract namespace (a leading
    NUL byte). Anything else (an empty value, a relative path, ``vsock:``) is unusable
    here and yields ``None``.
    """
    if not value:
        return None
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


def watchdog_interval(env: Mapping[str, str], pid: int | None = None) -> float | None:
    """The watchdog timeout in seconds if the manager expects pings from ``pid``, else ``None``.

    Args:
        env: the process environment (``WATCHDOG_USEC``, ``WATCHDOG_PID``).
        pid: the process asking; defaults to this one. A ``WATCHDOG_PID`` naming another
            process (a parent that spawned us) means the pings are not ours to send.

    Returns:
        ``WATCHDOG_USEC`` in seconds; ``None`` when unset, invalid, zero or not for us.
        Ping at least every half of it.
    """
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    expected = env.get("WATCHDOG_PID")
    if expected:
        try:
            if int(expected) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    return usec / 1_000_000


class Notifier:
    """Sends notifications to the service manager; every method is a no-op without one.

    Build it with :meth:`from_environ`. Call :meth:`ready` once the service is up, then
    :meth:`watchdog` at least every ``watchdog_interval / 2`` seconds and :meth:`status`
    when the summary changes, and :meth:`stopping` before shutting down.

    Args:
        address: from :func:`socket_address`; ``None`` disables notifications.
        watchdog_interval: from :func:`watchdog_interval`; ``None`` means no watchdog.
    """

    def __init__(self, address: str | bytes | None, watchdog_interval: float | None = None) -> None:
        self.address = address
        #: The manager's watchdog timeout in seconds, or ``None`` when none is asked for.
        self.watchdog_interval = watchdog_interval if address is not None else None
        self._sock: socket.socket | None = None
        self._failed = False

    @classmethod
    def from_environ(cls, env: Mapping[str, str] = os.environ) -> Notifier:
        """A notifier for the manager named in ``env`` (the service manager's protocol
        variables, not settings: the process environment is where systemd puts them)."""
        raw = env.get("NOTIFY_SOCKET")
        address = socket_address(raw)
        if raw and address is None:
            log.warning("NOTIFY_SOCKET=%r is not a usable socket; not notifying", raw)
        return cls(address, watchdog_interval(env))

    @property
    def enabled(self) -> bool:
        """Whether a service manager listens."""
        return self.address is not None

    def send(self, **fields: str | int) -> bool:
        """Send ``fields`` (e.g. ``READY=1``) in one datagram.

        Returns:
            Whether the datagram went out (``False`` when disabled or on an error,
            which is logged, never raised).

        Raises:
            ValueError: a malformed field (a bug in the caller), see :func:`encode`.
        """
        data = encode(fields)
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(data, self.address)
        except OSError as exc:
            # Once loudly: a lost datagram repeats every few seconds and would flood the log.
            level = logging.DEBUG if self._failed else logging.WARNING
            log.log(level, "sd_notify to %r failed: %s", self.address, exc)
            self._failed = True
            return False
        if log.isEnabledFor(logging.DEBUG):
            log.debug("> sd_notify %r", data)
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``, with a ``STATUS=`` line if given: start-up is complete."""
        if status is None:
            return self.send(READY=1)
        return self.send(READY=1, STATUS=_one_line(status))

    def status(self, text: str) -> bool:
        """``STATUS=``: a one-line summary shown by ``systemctl status``."""
        return self.send(STATUS=_one_line(text))

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the service is alive; resets the manager's watchdog timer."""
        return self.send(WATCHDOG=1)

    def stopping(self) -> bool:
        """``STOPPING=1``: shutdown has begun."""
        return self.send(STOPPING=1)

    def close(self) -> None:
        """Close the socket; a later send opens a new one."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


async def keep_alive(
    notifier: Notifier, describe: Callable[[], str], *, status_every: float = 10.0
) -> None:
    """Ping the watchdog and refresh ``STATUS=`` until cancelled; run it on the service's loop.

    Pings go out every half watchdog interval from a task on the event loop the service
    runs on, so a wedged loop stops them and the manager restarts the service. Start it
    after :meth:`Notifier.ready`: systemd arms the watchdog at readiness.

    Args:
        notifier: where to send; returns at once if it is disabled.
        describe: the one-line status; a failure is logged and the old line kept.
        status_every: seconds between status refreshes (sent only when changed).
    """
    if not notifier.enabled:
        return
    interval = notifier.watchdog_interval
    period = status_every if interval is None else min(interval / 2, status_every)
    # READY=1 carried the first status line.
    shown = ""
    next_status = time.monotonic() + status_every
    while True:
        if interval is not None:
            notifier.watchdog()
        if time.monotonic() >= next_status:
            next_status = time.monotonic() + status_every
            try:
                text = _one_line(describe())
            except Exception:
                log.debug("status line failed", exc_info=True)
                text = shown
            if text and text != shown:
                notifier.status(text)
                shown = text
        await asyncio.sleep(period)


def _one_line(text: str) -> str:
    return " ".join(text.split())
