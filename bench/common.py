"""Helpers the benchmark scripts share: child processes, loopback ports, kernel and
Prometheus counters, percentiles.

Not a benchmark itself (``make bench`` skips it). The scripts import it as
``from common import ...``: run as ``python bench/<name>.py``, a script's own directory
is first on ``sys.path``, which is also how ``bench/sync.py`` imports
``bench/leafnode_peer.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

_PR_SET_PDEATHSIG = 1
# Resolved here, in the parent, so that the forked child only makes the call (Linux).
_prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None) if os.name == "posix" else None
_SS_FIELD = re.compile(r"\b(bytes_sent|bytes_acked|bytes_received):(\d+)")
_SAMPLE = re.compile(r"^([A-Za-z_:][\w:]*)(?:\{([^}]*)\})?\s+(\S+)", re.MULTILINE)
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


# ---- processes ---------------------------------------------------------------------------


def die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask the kernel to SIGTERM this child when the benchmark dies, however it dies.

    Used as ``preexec_fn``: it makes one libc call resolved beforehand, so it takes no
    lock another thread of the parent could hold (ruff's PLW1509 is about such locks).
    Does nothing where ``prctl`` is not available (Linux only).
    """
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def stop_group(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM the process group of ``process`` (started with ``start_new_session``);
    SIGKILL the group if ``process`` is still running after ``timeout`` seconds."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def run_main(
    main: Coroutine[Any, Any, dict[str, Any]], log: Callable[[str], None], stopped: str
) -> int:
    """Run a script's ``main`` and print its figures as one JSON line, the last on stdout.

    SIGTERM cancels ``main``, so that it cleans up as it does on Ctrl-C. Returns the exit
    code: 130 when interrupted (``log`` says so, and ``stopped`` what was cleaned up), 1
    when the figures say ``"complete": false``, else 0.
    """

    async def cancellable() -> dict[str, Any]:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await main

    try:
        figures = asyncio.run(cancellable())
    except (asyncio.CancelledError, KeyboardInterrupt):
        log(f"interrupted; {stopped}")
        return 130
    print(json.dumps(figures), flush=True)
    return 0 if figures.get("complete", True) else 1


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback TCP ports that were free a moment ago."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        return ports


def free_port() -> int:
    """A TCP port on loopback that was free a moment ago."""
    return free_ports(1)[0]


def venv_binary(name: str) -> str:
    """A console script installed beside this Python (the venv), else from ``PATH``."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found: run this with the project venv's Python")
    return found


# ---- counters ----------------------------------------------------------------------------


def tcp_bytes(local_port: int) -> tuple[int, int] | None:
    """(received, sent) TCP payload bytes of the one established socket on ``local_port``.

    Read from the kernel's ``tcp_info`` with ``ss -ti`` (Linux, iproute2); ``None`` if
    that is unavailable or there is not exactly one such socket. ``bytes_sent`` counts
    retransmissions too (there are none on loopback); older kernels only have
    ``bytes_acked``, which is used then.
    """
    ss = shutil.which("ss")
    if ss is None:
        return None
    out = subprocess.run(
        [ss, "-tinH", "state", "established", f"( sport = :{local_port} )"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    sockets = [dict(_SS_FIELD.findall(chunk)) for chunk in re.split(r"\n(?=\S)", out.strip())]
    sockets = [fields for fields in sockets if fields]
    if len(sockets) != 1 or "bytes_received" not in sockets[0]:
        return None
    fields = sockets[0]
    sent = fields.get("bytes_sent", fields.get("bytes_acked"))
    if sent is None:
        return None
    return int(fields["bytes_received"]), int(sent)


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_metrics(text: str) -> Samples:
    """Prometheus text as {(name, sorted labels): value}."""
    samples: Samples = {}
    for name, labels, value in _SAMPLE.findall(text):
        with contextlib.suppress(ValueError):
            samples[(name, tuple(sorted(_LABEL.findall(labels))))] = float(value)
    return samples


def metric(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value (0 when absent)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """The nearest-rank percentile of ``values`` (``fraction`` in 0..1); None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(fraction * len(ordered))))
    return round(ordered[rank - 1], 1)
