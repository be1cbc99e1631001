"""A private LAN of Linux network namespaces, for tests that need real multicast.

:class:`Lan` makes a namespace ``<prefix>-lan`` holding a bridge ``br0``, and
:meth:`Lan.add_node` makes a namespace ``<prefix>-<name>`` joined to that bridge by a
veth pair (``eth0`` in the node, ``v<n>`` on the bridge), with an address in a private
/24 and a route for multicast (``224.0.0.0/4 dev eth0``). Nothing touches the
machine's real interfaces, so mDNS and other multicast stay inside the test's LAN.

Every name starts with ``ss-<pid>-<counter>-`` so that :func:`cleanup_stale` can
remove what a crashed run left behind without touching a live run's namespaces.
Needs the ``ip`` binary (iproute2) and root or CAP_NET_ADMIN: see
:func:`netns_available`.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import signal
import subprocess
from types import TracebackType
from typing import Any, Self

PREFIX = "ss-"
_counter = itertools.count()
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}$")
_MAX_NODES = 250


class NetnsError(RuntimeError):
    """An ``ip`` command failed; the message carries its stderr."""


def ip(*args: str, ns: str | None = None) -> str:
    """Run ``ip [-n ns] args...`` and return its stdout; raise :class:`NetnsError`."""
    argv = ["ip", *(["-n", ns] if ns else []), *args]
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    if done.returncode != 0:
        raise NetnsError(f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


def _new_prefix() -> str:
    return f"{PREFIX}{os.getpid()}-{next(_counter)}"


def _subnet(prefix: str) -> str:
    """A private ``10.x.y`` /24 for this Lan, distinct per (pid, counter)."""
    pid, count = (int(part) for part in prefix[len(PREFIX) :].split("-")[:2])
    x, y = divmod((pid * 64 + count) % (250 * 256), 256)
    return f"10.{x + 1}.{y}"


def _pids_in(ns: str) -> list[int]:
    try:
        return [int(pid) for pid in ip("netns", "pids", ns).split()]
    except NetnsError:
        return []


def _delete_namespace(ns: str) -> None:
    """Kill whatever still runs in ``ns`` (only our own children run there), delete it."""
    for pid in _pids_in(ns):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(NetnsError):
        ip("netns", "delete", ns)


def list_namespaces() -> list[str]:
    """The names of all named network namespaces (``ip netns list``)."""
    return [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale(prefix: str = PREFIX) -> list[str]:
    """Delete namespaces named ``<prefix><pid>-...`` whose pid is dead; return their names."""
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)-")
    stale = []
    for ns in list_namespaces():
        match = pattern.match(ns)
        if match and int(match[1]) != os.getpid() and not _pid_alive(int(match[1])):
            _delete_namespace(ns)
            stale.append(ns)
    return stale


def netns_available() -> str | None:
    """None if namespaces with bridges can be made and entered here, else why not."""
    if shutil.which("ip") is None:
        return "the `ip` binary (iproute2) is not installed"
    ns = f"{_new_prefix()}-probe"
    try:
        ip("netns", "add", ns)
    except (NetnsError, OSError, subprocess.SubprocessError) as exc:
        return f"cannot create a network namespace (needs root or CAP_NET_ADMIN): {exc}"
    try:
        ip("link", "add", "br0", "type", "bridge", ns=ns)
        ip("netns", "exec", ns, "true")
    except (NetnsError, OSError, subprocess.SubprocessError) as exc:
        return f"network namespaces are restricted here: {exc}"
    finally:
        _delete_namespace(ns)
    return None


class Node:
    """One host on a :class:`Lan`: its own network namespace with ``lo`` and ``eth0``."""

    def __init__(self, lan: Lan, name: str, ns: str, ip: str, peer: str) -> None:
        self.lan = lan
        self.name = name
        self.ns = ns
        self.ip = ip
        self.peer = peer  # the bridge-side end of the veth pair, in the lan namespace

    def __repr__(self) -> str:
        return f"Node({self.name!r}, ns={self.ns!r}, ip={self.ip!r})"

    def argv(self, argv: list[str]) -> list[str]:
        """``argv`` wrapped to run inside this node's namespace."""
        return ["ip", "netns", "exec", self.ns, *argv]

    def popen(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in this namespace; the Lan kills it at teardown if still running."""
        proc: subprocess.Popen[Any] = subprocess.Popen(self.argv(argv), **kwargs)
        self.lan.processes.append(proc)
        return proc

    def run(self, argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in this namespace to completion (check=True, output captured)."""
        return subprocess.run(
            self.argv(argv), check=True, capture_output=True, text=True, timeout=timeout
        )

    def link_down(self) -> None:
        """Cut this node off the LAN (its veth's bridge end goes down; eth0 loses carrier).

        The node's own ``eth0`` stays administratively up, so its address and routes
        (the multicast one included) survive and :meth:`link_up` restores everything.
        """
        ip("link", "set", self.peer, "down", ns=self.lan.ns)

    def link_up(self) -> None:
        """Reconnect this node to the LAN."""
        ip("link", "set", self.peer, "up", ns=self.lan.ns)


class Lan:
    """A bridge in its own namespace plus nodes joined to it; a context manager.

    Leaving the ``with`` block (also on errors) kills the processes started with
    :meth:`Node.popen` and deletes every namespace this Lan made.
    """

    def __init__(self) -> None:
        self.prefix = _new_prefix()
        self.subnet = _subnet(self.prefix)
        self.ns = f"{self.prefix}-lan"
        self.nodes: dict[str, Node] = {}
        self.processes: list[subprocess.Popen[Any]] = []
        self._namespaces: list[str] = []

    def __enter__(self) -> Self:
        try:
            self._add_namespace(self.ns)
            ip("link", "add", "br0", "type", "bridge", ns=self.ns)
            ip("link", "set", "br0", "up", ns=self.ns)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def add_node(self, name: str) -> Node:
        """Create the namespace ``<prefix>-<name>`` joined to ``br0``; return its Node."""
        if not _NAME.match(name) or name == "lan" or name in self.nodes:
            raise ValueError(f"bad or duplicate node name: {name!r}")
        number = len(self.nodes) + 1
        if number > _MAX_NODES:
            raise ValueError("too many nodes for one /24")
        node = Node(self, name, f"{self.prefix}-{name}", f"{self.subnet}.{number}", f"v{number}")
        self._add_namespace(node.ns)
        ip("link", "set", "lo", "up", ns=node.ns)
        ip(
            "link",
            "add",
            node.peer,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            node.ns,
            ns=self.ns,
        )
        ip("link", "set", node.peer, "master", "br0", "up", ns=self.ns)
        ip("addr", "add", f"{node.ip}/24", "dev", "eth0", ns=node.ns)
        ip("link", "set", "eth0", "up", ns=node.ns)
        ip("route", "add", "224.0.0.0/4", "dev", "eth0", ns=node.ns)
        self.nodes[name] = node
        return node

    def close(self) -> None:
        """Stop the processes started in the nodes and delete all namespaces made."""
        for proc in self.processes:
            _stop(proc)
        self.processes.clear()
        for ns in reversed(self._namespaces):
            _delete_namespace(ns)
        self._namespaces.clear()

    def _add_namespace(self, ns: str) -> None:
        ip("netns", "add", ns)
        self._namespaces.append(ns)


def _stop(proc: subprocess.Popen[Any]) -> None:
    """Terminate ``proc`` (then kill it after 2 s); close its pipes."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
