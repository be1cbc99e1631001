"""Sync benchmark: the edge → hub WebSocket link of real agents, against a NATS leafnode.

Run it with ``.venv/bin/python bench/sync.py`` (``--help`` lists the knobs; the
defaults are the benchmark's contract and take about 3.5 minutes on 2 cores). Every
process runs on 127.0.0.1 with its state in a temp directory (``--keep`` keeps it, with
the agents' logs), and every process started here is stopped at the end, also on
errors, SIGTERM or Ctrl-C (each agent runs in its own process group; the kernel also
SIGTERMs it if this process dies). A 280 s budget cuts a phase that hangs, so a run
ends within 5 minutes. Progress goes to stderr, a few lines per phase; the last line
on stdout is one JSON object with flat keys. The exit code is 1 when a phase did not
complete.

Each phase runs on fresh agents: ``cloud-hub run`` and ``edge-agent run`` as child
processes, each with its embedded nats-server and SQLite graph, the edge's
``websocket_output`` dialling the hub's ``websocket_input`` (on a port of its own, so
that the link is the only TCP connection on that port). Four phases:

1. **Wire bytes, same workload on both systems.** ``drone_workload(drones=100, hz=10,
   seconds=S)`` from ``bench/leafnode_peer.py`` (S = ``--seconds``, default 20: 20,000
   telemetry events plus one priority-9 alert a second) is fed to the edge in real
   time, 1,000 events/s: every 100 ms a ``POST /ingest`` (NDJSON) carries the events due.
   Once the hub has everything (the edge has applied every event, its outbox and
   in-flight batches are empty, and the hub has applied or judged every delta the edge
   sent), the link's bytes are read. This runs in ``state`` mode (the default: latest
   changed triples per entity) and again on a fresh pair in ``events`` mode (every
   reading a delta). In state mode the drones' readings coalesce: a batch goes every
   ``batch.max_age`` (0.5 s), with one delta per drone that changed. The peer
   (``run_leafnode_peer``) gets the same events at the same pace (``rate=1000``) with
   leafnode compression ``s2_auto`` (the contract; on idle loopback it picks
   ``s2_uncompressed``) and ``s2_fast`` (what ``s2_auto`` picks at 10-50 ms RTT).
2. **events_per_s**: 100,000 readings (100 drones x 1,000) are published with
   JetStream to an edge in ``events`` mode (batch 2,000 deltas / 1 MB / 50 ms,
   window 8) whose hub is not running yet; once all are in the outbox the hub starts.
   ``events_per_s`` = backlog / (time from the link coming up, seen by polling the
   edge's ``semstreams_sync_connected`` every 20 ms, until the hub's
   ``semstreams_sync_deltas_total`` counts them all); ``events_per_s_from_hub_start``
   counts from the hub's spawn instead, so it includes its ~1 s start-up. Edges that
   wait for their hub reconnect every 100-200 ms (``reconnect``), so the backoff
   adds nothing. ``throughput_<process>_cpu_pct`` is each process's CPU use meanwhile
   (100 = one core busy); ``--profile DIR`` also py-spies the two agents then.
3. **drain_s_256kbit**: the same 100,000 readings in ``state`` mode (so they coalesce
   to one delta per drone) drained under ``max_bytes_per_second: 32000``, timed the
   same way (``drain_s_from_hub_start`` from the hub's spawn). ``--drain-events``
   adds the same in ``events`` mode (about 100 s more: with ``--phases 2``, or the
   run passes its budget).
   Phases 2 and 3 (and the optional drain) build their backlogs at the same time.
4. **Cap and alerts**: ``max_bytes_per_second: 8000`` with 1,000 drones at 2 Hz
   (state mode; the backlog gauge shows the link saturated throughout). After a
   warm-up, for 60 s: the edge's wire counter at the window's start and end gives
   the measured rate (``cap_error_pct`` = 100 x (rate - cap) / cap), and every second
   one priority-9 alert is posted (``POST /ingest``) and a poller of its own asks the
   hub for it (``GET /graph/entities/<id>``, new connection, every 20 ms). Its latency
   is the first 200 answer's time minus the time just before the post, so it
   includes the post and overstates by at most one poll. ``alert_at_edge_*`` is the
   same for the edge's own graph (polled first), i.e. the ingest part of it.

What is counted as wire bytes:

* ``wire_bytes_per_event`` (and ``events_mode_...``): the edge's
  ``semstreams_sync_bytes_sent_total{stage="wire"}`` over the run, i.e. the WebSocket
  frames edge → hub (payload plus frame header), divided by the events fed. Not in it:
  WebSocket pings and the hub's answers. The ``_hub_counter`` figure is the hub's
  ``semstreams_sync_bytes_received_total{stage="wire"}`` (payloads without the frame
  headers); the ``_tcp`` figure is the kernel's TCP payload bytes edge → hub of the
  link's socket (``ss -ti`` at the hub's end, as the peer measures its leafnode),
  and ``_both_directions`` adds the hub → edge bytes (acks, pongs) to it.
* ``leafnode_wire_bytes_per_event``: the peer's TCP payload bytes **edge → hub only**
  (``leafnode_wire_bytes_edge_to_hub`` / events), so that both sides count the same
  direction; the peer's own figure, both directions (the hub's flow control and acks
  to the edge included), is ``leafnode_wire_bytes_per_event_both_directions``.
* ``wire_ratio_vs_leafnode`` = ``wire_bytes_per_event`` / ``leafnode_wire_bytes_per_event``
  (state mode, ``s2_auto``), ``..._events_mode`` the same for events mode, and
  ``..._s2_fast`` against the ``s2_fast`` peer. Neither side counts connection set-up:
  both are read once the link is up and idle, and again when the last event is in.

Also reported: per-phase seconds, peak RSS of each agent and of its nats-server,
how busy the machine was before the run (``cpu_busy_pct_before``: other processes'
share of all CPUs, as the figures depend on it), and how many WARNING and ERROR lines
the agents and their nats-servers logged (the distinct ones go to stderr at the end).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import nats
from common import (
    Samples,
    die_with_parent,
    free_port,
    metric,
    parse_metrics,
    percentile,
    run_main,
    stop_group,
    tcp_bytes,
    venv_binary,
)
from leafnode_peer import drone_workload, run_leafnode_peer

EDGE_ID = "edge-1"
SYNC_PATH = "/edge-sync"
#: Seconds from start after which phases are cut short; stopping takes well under the
#: 20 s left of the 5 minutes.
BUDGET_S = 280.0
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0
POLL_S = 0.05
LINK_POLL_S = 0.02
ALERT_POLL_S = 0.02
#: Idle time once the link is up, before the byte counters are read.
SETTLE_S = 0.5
#: The edge refreshes its backlog gauge every second; a reading this long after the
#: last event was applied is known to be taken after it.
GAUGE_FRESH_S = 1.5
#: How long an alert may take before it counts as missing.
ALERT_TIMEOUT_S = 15.0
JS_IN_FLIGHT = 2000
NDJSON = {"Content-Type": "application/x-ndjson"}
MB = 1 << 20
#: A new connection per request: on a reused one every answer waits 40+ ms for the
#: client's delayed ACK (the API socket lacks TCP_NODELAY), which would swamp latencies.
FRESH_CONNECTIONS = httpx.Limits(max_keepalive_connections=0)
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_LOG_LEVEL = re.compile(r" (WARNING|ERROR|CRITICAL) |\[(WRN|ERR|FTL)\]")


def log(message: str) -> None:
    """Progress on stderr, so that stdout ends with the JSON line alone."""
    print(f"[sync] {message}", file=sys.stderr, flush=True)


class PhaseError(RuntimeError):
    """A phase could not do what it measures (the message says what was missing)."""


# ---- processes ---------------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (0 once it is gone)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of a process so far (0 once it is gone)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    return 0.0


def judged(samples: Samples) -> float:
    """Deltas the hub has applied, found stale, or recorded as conflicts."""
    return sum(
        metric(samples, "semstreams_sync_deltas_total", outcome=outcome)
        for outcome in ("applied", "stale", "conflict")
    )


@dataclass
class Node:
    """``edge-agent run`` or ``cloud-hub run`` as a child process on free loopback ports."""

    role: str  # "edge" or "hub"
    workdir: Path
    component: dict[str, Any]
    http_port: int = field(default_factory=free_port)
    nats_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    spawned_at: float = 0.0  # monotonic
    stopped: bool = False

    @property
    def api(self) -> str:
        """The HTTP API."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def state_dir(self) -> Path:
        """The agent's ``state_dir``."""
        return self.workdir / "state"

    @property
    def log_path(self) -> Path:
        """Where the agent's stdout and stderr go."""
        return self.workdir / f"{self.role}.log"

    def config(self) -> dict[str, Any]:
        """The agent's config: defaults but for ports, state, logging and the component."""
        hub = self.role == "hub"
        return {
            "state_dir": str(self.state_dir),
            "platform": {"id": "hub", "type": "cloud-hub"} if hub else {"id": EDGE_ID},
            "nats": {
                "urls": [f"nats://127.0.0.1:{self.nats_port}"],
                "port": self.nats_port,
                "embedded": True,
            },
            "services": {
                "service-manager": {
                    "config": {"http_host": "127.0.0.1", "http_port": self.http_port}
                }
            },
            "components": [self.component],
            "logging": {"level": "INFO", "format": "text", "output": "stderr"},
        }

    def spawn(self) -> None:
        """Start the process (in a process group of its own); see :meth:`wait_ready`."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / f"{self.role}.json"
        config_path.write_text(json.dumps(self.config(), indent=1))
        program = "cloud-hub" if self.role == "hub" else "edge-agent"
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                [venv_binary(program), "run", "--config", str(config_path)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,  # noqa: PLW1509 - one pre-resolved libc call
            )
        self.spawned_at = time.monotonic()

    async def wait_ready(self, http: httpx.AsyncClient) -> None:
        """Wait until ``/health`` answers ``healthy``."""
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise PhaseError(
                    f"{self.role} exited with {self.process.returncode}: {self.tail()}"
                )
            with contextlib.suppress(httpx.HTTPError, ValueError):
                reply = await http.get(f"{self.api}/health", timeout=2.0)
                if reply.status_code == 200 and reply.json().get("status") == "healthy":
                    return
            await asyncio.sleep(POLL_S)
        raise PhaseError(f"{self.role} not healthy after {START_TIMEOUT_S:.0f}s: {self.tail()}")

    def nats_pid(self) -> int | None:
        """The embedded nats-server's pid, from its pid file."""
        with contextlib.suppress(OSError, ValueError):
            return int((self.state_dir / "nats-server.pid").read_text().strip())
        return None

    def pids(self) -> dict[str, int]:
        """{``<role>``: agent pid, ``<role>_nats``: its nats-server's pid} while running."""
        pids: dict[str, int] = {}
        if self.process is not None and self.process.poll() is None:
            pids[self.role] = self.process.pid
            nats_pid = self.nats_pid()
            if nats_pid is not None:
                pids[f"{self.role}_nats"] = nats_pid
        return pids

    def stop(self) -> None:
        """SIGTERM the process group (the agent stops its server); SIGKILL what lingers."""
        process = self.process
        if process is None:
            return
        nats_pid = self.nats_pid()
        stop_group(process, STOP_TIMEOUT_S)
        if nats_pid is not None:  # its own session: stopped by the agent, else here
            deadline = time.monotonic() + 5.0
            while Path(f"/proc/{nats_pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(nats_pid, signal.SIGKILL)

    def tail(self, chars: int = 1500) -> str:
        """The end of the agent's log."""
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""

    async def metrics(self, http: httpx.AsyncClient) -> Samples:
        """``/metrics``, parsed."""
        reply = await http.get(f"{self.api}/metrics")
        reply.raise_for_status()
        return parse_metrics(reply.text)


def hub_node(workdir: Path, token: str) -> Node:
    """A hub whose ``websocket_input`` listens on a port of its own."""
    port = free_port()
    component = {
        "id": "in",
        "type": "websocket_input",
        "config": {"port": port, "path": SYNC_PATH, "devices": {EDGE_ID: {"token": token}}},
    }
    return Node("hub", workdir / "hub", component)


def sync_port(hub: Node) -> int:
    """The port of the hub's ``websocket_input``."""
    port: int = hub.component["config"]["port"]
    return port


def edge_node(workdir: Path, hub: Node, token: str, **link: Any) -> Node:
    """An edge whose ``websocket_output`` dials ``hub``; ``link`` adds to its config."""
    config = {
        "url": f"ws://127.0.0.1:{sync_port(hub)}{SYNC_PATH}",
        "token": token,
        "mode": "state",
        "max_bytes_per_second": 0,
        **link,
    }
    return Node(
        "edge", workdir / "edge", {"id": "up", "type": "websocket_output", "config": config}
    )


class Bench:
    """What every phase shares: the temp dir, the HTTP client, the nodes and their logs."""

    def __init__(self, workdir: Path, http: httpx.AsyncClient, args: argparse.Namespace):
        self.workdir = workdir
        self.http = http
        self.args = args
        self.token = secrets.token_urlsafe(24)
        self.nodes: list[Node] = []
        self.peak_rss: dict[str, int] = {}
        self.log_lines: Counter[str] = Counter()
        self.log_levels: Counter[str] = Counter()

    def pair(self, name: str, **link: Any) -> tuple[Node, Node]:
        """A fresh (edge, hub) pair under ``<workdir>/<name>``, not started."""
        hub = hub_node(self.workdir / name, self.token)
        edge = edge_node(self.workdir / name, hub, self.token, **link)
        self.nodes += [edge, hub]
        return edge, hub

    async def start(self, *nodes: Node) -> None:
        """Start the nodes one after the other, each once the one before is healthy."""
        for node in nodes:
            node.spawn()
            await node.wait_ready(self.http)

    def stop(self, *nodes: Node) -> None:
        """Stop the nodes (edges first, so the hub does not see the link drop) and read
        their logs."""
        for node in sorted(nodes, key=lambda n: n.role != "edge"):
            if node.process is None or node.stopped:
                continue
            node.stop()
            node.stopped = True
            self.read_logs(node)

    def read_logs(self, node: Node) -> None:
        """Count the WARNING/ERROR lines of the agent's and its nats-server's logs."""
        for path in (node.log_path, node.state_dir / "nats-server.log"):
            with contextlib.suppress(OSError):
                for line in path.read_text(errors="replace").splitlines():
                    found = _LOG_LEVEL.search(line)
                    if found is None:
                        continue
                    level = found.group(1) or found.group(2)
                    self.log_levels[level] += 1
                    # Without the time stamp; numbers folded, so repeats count as one.
                    text = line[found.start() :].strip()
                    self.log_lines[f"{node.role}: {re.sub(r'[0-9]+', 'N', text)[:200]}"] += 1

    @contextlib.asynccontextmanager
    async def running(self, *nodes: Node) -> AsyncIterator[None]:
        """The nodes started in order, stopped at the end whatever happens."""
        try:
            await self.start(*nodes)
            yield
        finally:
            self.stop(*nodes)

    def sample_rss(self) -> None:
        """Note the resident memory of every running agent and nats-server."""
        for node in self.nodes:
            for label, pid in node.pids().items():
                self.peak_rss[label] = max(self.peak_rss.get(label, 0), rss_bytes(pid))

    async def sample_rss_forever(self) -> None:
        """:meth:`sample_rss` every 200 ms until cancelled."""
        while True:
            self.sample_rss()
            await asyncio.sleep(0.2)


# ---- feeding the edge --------------------------------------------------------------------


async def post_ndjson(http: httpx.AsyncClient, api: str, payloads: Sequence[bytes]) -> None:
    """``POST /ingest`` the payloads as NDJSON; raise unless all were accepted."""
    body = b"\n".join(payloads) + b"\n"
    reply = await http.post(f"{api}/ingest", content=body, headers=NDJSON)
    if reply.status_code != 202 or reply.json().get("accepted") != len(payloads):
        raise PhaseError(f"/ingest answered {reply.status_code}: {reply.text[:300]}")


async def feed_paced(
    http: httpx.AsyncClient, api: str, payloads: Sequence[bytes], rate: float, every: float = 0.1
) -> None:
    """Post the payloads in real time at ``rate`` per second, one request every ``every`` s.

    Request ``k`` goes at ``k * every`` seconds and carries the events due before the
    next one; a slow request makes the next ones go at once, so the pace catches up.
    """
    start = time.monotonic()
    sent, tick = 0, 0
    while sent < len(payloads):
        ahead = start + tick * every - time.monotonic()
        if ahead > 0:
            await asyncio.sleep(ahead)
        tick += 1
        due = min(len(payloads), round(tick * every * rate))
        if due > sent:
            await post_ndjson(http, api, payloads[sent:due])
            sent = due


async def publish_js(port: int, events: Sequence[tuple[str, bytes]]) -> None:
    """JetStream-publish the events to the edge's nats-server, ``JS_IN_FLIGHT`` unacked."""
    nc = await nats.connect(f"nats://127.0.0.1:{port}", name="bench-sync", max_reconnect_attempts=0)
    try:
        js = nc.jetstream(publish_async_max_pending=len(events) + 1)
        acks: list[asyncio.Future[Any]] = []
        for index, (subject, payload) in enumerate(events):
            if index >= JS_IN_FLIGHT:
                await acks[index - JS_IN_FLIGHT]
            acks.append(await js.publish_async(subject, payload))
        await asyncio.gather(*acks)
    finally:
        await nc.close()


async def wait_processed(bench: Bench, edge: Node, count: int) -> float:
    """Wait until the edge has applied ``count`` events; the monotonic time it had."""
    while True:
        samples = await edge.metrics(bench.http)
        if metric(samples, "semstreams_messages_processed_total") >= count:
            return time.monotonic()
        await asyncio.sleep(POLL_S)


async def wait_linked(bench: Bench, edge: Node, hub: Node) -> float:
    """Wait until the edge's link is up; the monotonic time it was seen up."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        samples = await edge.metrics(bench.http)
        if metric(samples, "semstreams_sync_connected") >= 1:
            return time.monotonic()
        if hub.process is not None and hub.process.poll() is not None:
            raise PhaseError(f"hub exited with {hub.process.returncode}: {hub.tail()}")
        await asyncio.sleep(LINK_POLL_S)
    raise PhaseError(f"the link did not come up in {START_TIMEOUT_S:.0f}s: {edge.tail()}")


async def wait_synced(bench: Bench, edge: Node, hub: Node, count: int) -> None:
    """Wait until the hub has all of the ``count`` events the edge applied.

    That is: the edge applied them all; its backlog gauge, read well after that, says
    nothing waits or is in flight; and the hub judged every delta the edge sent.
    """
    applied_at = await wait_processed(bench, edge, count)
    await asyncio.sleep(max(0.0, applied_at + GAUGE_FRESH_S - time.monotonic()))
    while True:
        edge_samples = await edge.metrics(bench.http)
        hub_samples = await hub.metrics(bench.http)
        sent = metric(edge_samples, "semstreams_sync_deltas_total", outcome="sent")
        backlog = metric(edge_samples, "semstreams_sync_backlog_entities")
        if backlog == 0 and judged(hub_samples) >= sent:
            return
        await asyncio.sleep(POLL_S)


# ---- phase 1: wire bytes -----------------------------------------------------------------


@dataclass(frozen=True)
class LinkCounters:
    """The link's byte counters at one moment."""

    edge_wire: float  # edge: semstreams_sync_bytes_sent_total{stage="wire"}
    edge_raw: float  # edge: semstreams_sync_bytes_sent_total{stage="uncompressed"}
    hub_wire: float  # hub: semstreams_sync_bytes_received_total{stage="wire"}
    tcp: tuple[int, int] | None  # (edge → hub, hub → edge) TCP payload bytes
    batches: float  # edge: batches sent
    judged: float  # hub: deltas applied, stale or conflict
    applied: float  # hub: deltas applied


async def link_counters(bench: Bench, edge: Node, hub: Node) -> LinkCounters:
    """Read every counter of the link now."""
    edge_samples = await edge.metrics(bench.http)
    hub_samples = await hub.metrics(bench.http)
    return LinkCounters(
        edge_wire=metric(edge_samples, "semstreams_sync_bytes_sent_total", stage="wire"),
        edge_raw=metric(edge_samples, "semstreams_sync_bytes_sent_total", stage="uncompressed"),
        hub_wire=metric(hub_samples, "semstreams_sync_bytes_received_total", stage="wire"),
        tcp=await asyncio.to_thread(tcp_bytes, sync_port(hub)),
        batches=metric(edge_samples, "semstreams_sync_batches_total", direction="sent"),
        judged=judged(hub_samples),
        applied=metric(hub_samples, "semstreams_sync_deltas_total", outcome="applied"),
    )


async def link_run(
    bench: Bench, mode: str, events: Sequence[tuple[str, bytes]], rate: float
) -> dict[str, Any]:
    """Feed ``events`` in real time to a fresh pair in ``mode``; the link's bytes."""
    edge, hub = bench.pair(f"wire-{mode}", mode=mode)
    payloads = [payload for _, payload in events]
    async with bench.running(hub, edge):
        await wait_linked(bench, edge, hub)
        await asyncio.sleep(SETTLE_S)
        before = await link_counters(bench, edge, hub)
        started = time.monotonic()
        await feed_paced(bench.http, edge.api, payloads, rate)
        fed = time.monotonic()
        await wait_synced(bench, edge, hub, len(payloads))
        after = await link_counters(bench, edge, hub)
        synced = time.monotonic()
    count = len(payloads)
    figures: dict[str, Any] = {
        "wire_bytes": round(after.edge_wire - before.edge_wire),
        "wire_bytes_per_event": round((after.edge_wire - before.edge_wire) / count, 2),
        "wire_bytes_per_event_hub_counter": round((after.hub_wire - before.hub_wire) / count, 2),
        "uncompressed_bytes_per_event": round((after.edge_raw - before.edge_raw) / count, 2),
        "batches": round(after.batches - before.batches),
        "deltas_applied": round(after.applied - before.applied),
        "deltas_not_applied": round(
            (after.judged - after.applied) - (before.judged - before.applied)
        ),
        "feed_s": round(fed - started, 2),
        "catch_up_s": round(synced - fed, 2),
    }
    if before.tcp is not None and after.tcp is not None:
        up = after.tcp[0] - before.tcp[0]
        down = after.tcp[1] - before.tcp[1]
        figures["wire_bytes_per_event_tcp"] = round(up / count, 2)
        figures["hub_to_edge_bytes_per_event_tcp"] = round(down / count, 2)
        figures["wire_bytes_per_event_both_directions"] = round((up + down) / count, 2)
    return figures


def ratio(ours: Any, theirs: Any) -> float | None:
    """ours / theirs, rounded; None if either is missing."""
    if not isinstance(ours, int | float) or not isinstance(theirs, int | float) or not theirs:
        return None
    return round(ours / theirs, 3)


async def phase_wire(bench: Bench) -> dict[str, Any]:
    """Phase 1: the same paced drone workload over our link (both modes) and the peer's."""
    args = bench.args
    events = drone_workload(drones=100, hz=10, seconds=args.seconds)
    count = len(events)
    rate = 100 * 10.0
    figures: dict[str, Any] = {
        "wire_events": count,
        "wire_alerts": sum(1 for subject, _ in events if subject.endswith(".alert")),
        "payload_bytes_per_event": round(sum(len(p) for _, p in events) / count, 2),
        "feed_rate_per_s": rate,
    }
    state = await link_run(bench, "state", events, rate)
    log(f"  state mode: {state['wire_bytes_per_event']} wire bytes/event")
    figures.update(state)
    events_mode = await link_run(bench, "events", events, rate)
    log(f"  events mode: {events_mode['wire_bytes_per_event']} wire bytes/event")
    figures.update({f"events_mode_{key}": value for key, value in events_mode.items()})

    peer = await run_leafnode_peer(events, compression="s2_auto", rate=rate, timeout=90.0)
    both = peer.pop("leafnode_wire_bytes_per_event")
    figures.update(peer)
    figures["leafnode_wire_bytes_per_event"] = round(
        peer["leafnode_wire_bytes_edge_to_hub"] / peer["leafnode_events"], 2
    )
    figures["leafnode_wire_bytes_per_event_both_directions"] = both
    log(
        f"  leafnode s2_auto ({peer['leafnode_compression_edge']}): "
        f"{figures['leafnode_wire_bytes_per_event']} bytes/event edge → hub"
    )
    fast = await run_leafnode_peer(events, compression="s2_fast", rate=rate, timeout=90.0)
    fast_events = fast["leafnode_events"]
    figures.update(
        {
            "leafnode_s2_fast_wire_bytes_per_event": round(
                fast["leafnode_wire_bytes_edge_to_hub"] / fast_events, 2
            ),
            "leafnode_s2_fast_wire_bytes_per_event_both_directions": fast[
                "leafnode_wire_bytes_per_event"
            ],
            "leafnode_s2_fast_compression_edge": fast["leafnode_compression_edge"],
            "leafnode_s2_fast_seconds": fast["leafnode_seconds"],
        }
    )
    ours, leaf = figures["wire_bytes_per_event"], figures["leafnode_wire_bytes_per_event"]
    ours_events = figures["events_mode_wire_bytes_per_event"]
    fast_leaf = figures["leafnode_s2_fast_wire_bytes_per_event"]
    figures.update(
        {
            "wire_ratio_vs_leafnode": ratio(ours, leaf),
            "wire_ratio_vs_leafnode_events_mode": ratio(ours_events, leaf),
            "wire_ratio_vs_leafnode_s2_fast": ratio(ours, fast_leaf),
            "wire_ratio_vs_leafnode_s2_fast_events_mode": ratio(ours_events, fast_leaf),
            "wire_ratio_vs_leafnode_both_directions": ratio(
                figures.get("wire_bytes_per_event_both_directions"),
                figures["leafnode_wire_bytes_per_event_both_directions"],
            ),
        }
    )
    return figures


# ---- phases 2 and 3: draining a backlog ------------------------------------------------


@dataclass
class Backlog:
    """An edge with a backlog built while its hub was down, and the hub to drain it to."""

    name: str
    edge: Node
    hub: Node
    events: int = 0
    rows: int = 0  # the edge's backlog gauge once every event was applied


async def build_backlog(
    bench: Bench, backlog: Backlog, events: Sequence[tuple[str, bytes]]
) -> None:
    """Start the edge alone, publish ``events`` to it and wait until its outbox has them."""
    edge = backlog.edge
    edge.spawn()
    await edge.wait_ready(bench.http)
    await publish_js(edge.nats_port, events)
    applied_at = await wait_processed(bench, edge, len(events))
    await asyncio.sleep(max(0.0, applied_at + GAUGE_FRESH_S - time.monotonic()))
    samples = await edge.metrics(bench.http)
    backlog.events = len(events)
    backlog.rows = round(metric(samples, "semstreams_sync_backlog_entities"))
    if backlog.rows <= 0:
        raise PhaseError(f"{backlog.name}: the edge's outbox is empty after the ingest")


@contextlib.contextmanager
def profiled(targets: dict[str, int], out_dir: Path | None) -> Iterator[None]:
    """With ``out_dir``: ``py-spy record`` each target pid meanwhile (``--nonblocking --idle
    --threads``, raw collapsed stacks in ``<out_dir>/<label>.txt``); without it, nothing.

    Even non-blocking, sampling costs the targets CPU: the figures of a profiled run
    are lower than those of a plain one.
    """
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if out_dir is None or not Path(spy).exists():
        yield
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    spies = [
        subprocess.Popen(
            [
                *[spy, "record", "--pid", str(pid), "--rate", "100", "--nonblocking"],
                *["--idle", "--threads"],
                *["--format", "raw", "--output", str(out_dir / f"{label}.txt")],
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - one pre-resolved libc call
        )
        for label, pid in targets.items()
    ]
    try:
        yield
    finally:
        for process in spies:
            process.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        for process in spies:
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def drain(bench: Bench, backlog: Backlog, profile: Path | None = None) -> dict[str, Any]:
    """Start the hub; time the link from coming up until every backlog row is judged.

    Also the CPU each process used meanwhile, in % of one core.
    """
    edge, hub = backlog.edge, backlog.hub
    pids = edge.pids()
    edge_before = await edge.metrics(bench.http)
    hub.spawn()
    linked = await wait_linked(bench, edge, hub)
    pids.update(hub.pids())
    cpu_before = {label: cpu_seconds(pid) for label, pid in pids.items()}
    agents = {label: pid for label, pid in pids.items() if label in ("edge", "hub")}
    with profiled(agents, profile):
        while True:
            samples = await hub.metrics(bench.http)
            if judged(samples) >= backlog.rows:
                done = time.monotonic()
                break
            await asyncio.sleep(POLL_S)
    cpu_after = {label: cpu_seconds(pid) for label, pid in pids.items()}
    edge_after = await edge.metrics(bench.http)
    seconds = done - linked
    figures: dict[str, Any] = {
        "events": backlog.events,
        "deltas": backlog.rows,
        "s": round(seconds, 3),
        "s_from_hub_start": round(done - hub.spawned_at, 3),
        "hub_link_up_s": round(linked - hub.spawned_at, 3),
        "deltas_applied": round(metric(samples, "semstreams_sync_deltas_total", outcome="applied")),
        "batches": round(
            metric(edge_after, "semstreams_sync_batches_total", direction="sent")
            - metric(edge_before, "semstreams_sync_batches_total", direction="sent")
        ),
        "wire_bytes": round(
            metric(edge_after, "semstreams_sync_bytes_sent_total", stage="wire")
            - metric(edge_before, "semstreams_sync_bytes_sent_total", stage="wire")
        ),
    }
    for label, before in cpu_before.items():
        used = cpu_after[label] - before
        figures[f"{label}_cpu_pct"] = round(100 * used / seconds, 1) if seconds > 0 else None
    return figures


async def phase_backlogs(bench: Bench) -> dict[str, Any]:
    """Phases 2 and 3 (and the optional events-mode drain): backlogs drained to a hub."""
    args = bench.args
    events = drone_workload(drones=100, hz=10, seconds=args.backlog // 1000, alert_every=None)
    big_batch = {"max_count": 2000, "max_bytes": "1MB", "max_age": "50ms"}
    fast_reconnect = {"initial": "100ms", "max": "200ms"}
    plans: list[tuple[str, dict[str, Any]]] = [
        ("throughput", {"mode": "events", "batch": big_batch, "window": 8}),
        ("drain", {"mode": "state", "max_bytes_per_second": 32000}),
    ]
    if args.drain_events:
        plans.append(("drain-events", {"mode": "events", "max_bytes_per_second": 32000}))
    backlogs = []
    for name, link in plans:
        edge, hub = bench.pair(name, reconnect=fast_reconnect, **link)
        backlogs.append(Backlog(name, edge, hub))
    figures: dict[str, Any] = {"backlog_events": len(events)}
    try:
        started = time.monotonic()
        await asyncio.gather(*(build_backlog(bench, b, events) for b in backlogs))
        figures["backlog_build_s"] = round(time.monotonic() - started, 1)
        log(f"  backlogs of {len(events)} events built in {figures['backlog_build_s']} s")
        for backlog in backlogs:
            profile = args.profile if backlog.name == "throughput" else None
            result = await drain(bench, backlog, profile)
            bench.stop(backlog.edge, backlog.hub)
            log(f"  {backlog.name}: {result['deltas']} deltas in {result['s']} s")
            if backlog.name == "throughput":
                figures["events_per_s"] = round(result["events"] / result["s"])
                figures["events_per_s_from_hub_start"] = round(
                    result["events"] / result["s_from_hub_start"]
                )
                figures.update({f"throughput_{k}": v for k, v in result.items()})
            elif backlog.name == "drain":
                figures["drain_s_256kbit"] = result["s"]
                figures.update({f"drain_{k}": v for k, v in result.items() if k != "s"})
            else:
                figures["drain_s_256kbit_events_mode"] = result["s"]
                figures.update({f"drain_events_mode_{k}": v for k, v in result.items() if k != "s"})
    finally:
        for backlog in backlogs:
            bench.stop(backlog.edge, backlog.hub)
    return figures


# ---- phase 4: the cap and urgent alerts --------------------------------------------------


def alert_event(number: int, sent_at: float) -> bytes:
    """A priority-9 alert for an entity not seen before, stamped with its send time."""
    event = {
        "entity_id": f"bench-alert-{number:05d}",
        "entity_type": "alert",
        "priority": 9,
        "timestamp": datetime.fromtimestamp(sent_at, UTC).isoformat(timespec="milliseconds"),
        "properties": {
            "alert.kind": "obstacle_detected",
            "severity": "critical",
            "drone_id": f"drone-{number % 1000:03d}",
            "sent_at": sent_at,
        },
        "relationships": [{"predicate": "about", "object": f"drone-{number % 1000:03d}"}],
        "source": "bench",
    }
    return json.dumps(event, separators=(",", ":")).encode()


async def visible_after(
    http: httpx.AsyncClient, api: str, entity_id: str, sent_at: float, deadline: float
) -> float | None:
    """Poll ``GET /graph/entities/<id>`` until it answers 200: ms since ``sent_at``."""
    while time.time() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            reply = await http.get(f"{api}/graph/entities/{entity_id}")
            if reply.status_code == 200:
                return (time.time() - sent_at) * 1000
        await asyncio.sleep(ALERT_POLL_S)
    return None


async def alert_latency(
    bench: Bench, edge: Node, hub: Node, number: int
) -> tuple[float | None, float | None]:
    """Post alert ``number`` to the edge; ms until the edge's graph has it, and until the
    hub's has it (None: not within ``ALERT_TIMEOUT_S``)."""
    entity_id = f"bench-alert-{number:05d}"
    sent_at = time.time()
    await post_ndjson(bench.http, edge.api, [alert_event(number, sent_at)])
    deadline = sent_at + ALERT_TIMEOUT_S
    at_edge = await visible_after(bench.http, edge.api, entity_id, sent_at, deadline)
    at_hub = await visible_after(bench.http, hub.api, entity_id, sent_at, deadline)
    return at_edge, at_hub


async def timed_counter(bench: Bench, node: Node, name: str, **labels: str) -> tuple[float, float]:
    """(monotonic time, value) of one counter, the time taken mid-request."""
    before = time.monotonic()
    samples = await node.metrics(bench.http)
    return (before + time.monotonic()) / 2, metric(samples, name, **labels)


async def phase_cap(bench: Bench) -> dict[str, Any]:
    """Phase 4: saturate a capped link with telemetry; measure the rate and alert latency."""
    args = bench.args
    cap = 8000
    drones, hz = 1000, 2
    seconds = math.ceil(args.warmup + args.window + ALERT_TIMEOUT_S + 5)
    events = drone_workload(drones=drones, hz=hz, seconds=seconds, alert_every=None)
    payloads = [payload for _, payload in events]
    edge, hub = bench.pair("cap", mode="state", max_bytes_per_second=cap)
    figures: dict[str, Any] = {"cap_bytes_per_s": cap, "cap_offered_events_per_s": drones * hz}
    wire = ("semstreams_sync_bytes_sent_total", {"stage": "wire"})
    received = ("semstreams_sync_bytes_received_total", {"stage": "wire"})
    async with bench.running(hub, edge):
        await wait_linked(bench, edge, hub)
        feed = asyncio.create_task(feed_paced(bench.http, edge.api, payloads, drones * hz))
        alerts: list[asyncio.Task[tuple[float | None, float | None]]] = []
        backlog: list[float] = []
        try:
            await asyncio.sleep(args.warmup)
            start, start_bytes = await timed_counter(bench, edge, wire[0], **wire[1])
            _, hub_start_bytes = await timed_counter(bench, hub, received[0], **received[1])
            for number in range(round(args.window)):
                alerts.append(asyncio.create_task(alert_latency(bench, edge, hub, number)))
                samples = await edge.metrics(bench.http)
                backlog.append(metric(samples, "semstreams_sync_backlog_entities"))
                if feed.done():
                    feed.result()  # raises what stopped it
                    raise PhaseError("the telemetry ran out before the window ended")
                await asyncio.sleep(max(0.0, start + number + 1 - time.monotonic()))
            end, end_bytes = await timed_counter(bench, edge, wire[0], **wire[1])
            _, hub_end_bytes = await timed_counter(bench, hub, received[0], **received[1])
            timings = await asyncio.gather(*alerts)
        finally:
            feed.cancel()
            for task in alerts:
                task.cancel()
            await asyncio.gather(feed, *alerts, return_exceptions=True)
    measured = (end_bytes - start_bytes) / (end - start)
    arrived = [hub_ms for _, hub_ms in timings if hub_ms is not None]
    at_edge = [edge_ms for edge_ms, _ in timings if edge_ms is not None]
    figures.update(
        {
            "cap_window_s": round(end - start, 2),
            "cap_measured_bytes_per_s": round(measured, 1),
            "cap_error_pct": round(100 * (measured - cap) / cap, 2),
            "cap_hub_received_bytes_per_s": round(
                (hub_end_bytes - hub_start_bytes) / (end - start), 1
            ),
            "cap_backlog_entities_min": round(min(backlog)) if backlog else None,
            "cap_backlog_entities_max": round(max(backlog)) if backlog else None,
            "alerts": len(timings),
            "alerts_missing": len(timings) - len(arrived),
            "alert_p50_ms": percentile(arrived, 0.50),
            "alert_p99_ms": percentile(arrived, 0.99),
            "alert_max_ms": percentile(arrived, 1.0),
            "alert_at_edge_p50_ms": percentile(at_edge, 0.50),
            "alert_at_edge_p99_ms": percentile(at_edge, 0.99),
        }
    )
    log(
        f"  {figures['cap_measured_bytes_per_s']} B/s under a {cap} B/s cap; alerts p50"
        f" {figures['alert_p50_ms']} ms, p99 {figures['alert_p99_ms']} ms"
        f" (in the edge's graph: p99 {figures['alert_at_edge_p99_ms']} ms)"
    )
    if figures["alerts_missing"]:
        raise PhaseError(f"{figures['alerts_missing']} alerts never reached the hub", figures)
    if not backlog or min(backlog) <= 0:
        raise PhaseError("the link was not saturated: the backlog emptied", figures)
    return figures


# ---- main --------------------------------------------------------------------------------


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine so far, from ``/proc/stat``."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


async def machine() -> dict[str, Any]:
    """Where the figures come from, including how busy the machine already is: the
    share of all its CPUs other processes use during one second before the run."""
    busy, total = cpu_times()
    await asyncio.sleep(1.0)
    busy_after, total_after = cpu_times()
    return {
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "loadavg_1m_before": round(os.getloadavg()[0], 2),
        "cpu_busy_pct_before": round(100 * (busy_after - busy) / max(1, total_after - total), 1),
    }


PHASES = {
    "1": ("wire bytes: drone fleet over our link (state, events) and the leafnode", phase_wire),
    "2": ("backlogs: events_per_s and drain_s_256kbit", phase_backlogs),
    "4": ("cap and alerts: 64 kbit/s saturated, priority-9 alerts", phase_cap),
}


async def benchmark(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Every phase asked for within the budget; the figures as one flat dict."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BUDGET_S
    began = time.monotonic()
    figures: dict[str, Any] = {**await machine(), "complete": True}
    async with httpx.AsyncClient(timeout=10.0, limits=FRESH_CONNECTIONS) as http:
        bench = Bench(workdir, http, args)
        sampler = asyncio.create_task(bench.sample_rss_forever())
        try:
            for key, (title, phase) in PHASES.items():
                if key not in args.phases:
                    continue
                started = time.monotonic()
                log(f"phase {key}: {title} ...")
                try:
                    async with asyncio.timeout_at(deadline):
                        figures.update(await phase(bench))
                except Exception as exc:  # reported, and the next phase runs
                    figures["complete"] = False
                    if isinstance(exc, PhaseError) and len(exc.args) > 1:
                        figures.update(exc.args[1])
                    reason = str(exc.args[0]) if exc.args else ""
                    if isinstance(exc, TimeoutError):
                        reason = f"over the {BUDGET_S:.0f} s budget"
                    figures[f"phase{key}_error"] = f"{type(exc).__name__}: {reason}"[:300]
                    log(f"phase {key} did not complete: {figures[f'phase{key}_error']}")
                elapsed = round(time.monotonic() - started, 1)
                figures[f"phase{key}_s"] = elapsed
                outcome = "failed after" if f"phase{key}_error" in figures else "done in"
                log(f"phase {key}: {outcome} {elapsed} s")
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
            bench.stop(*bench.nodes)
    for label, peak in sorted(bench.peak_rss.items()):
        figures[f"{label}_rss_mb"] = round(peak / MB, 1)
    figures["log_warnings"] = bench.log_levels["WARNING"] + bench.log_levels["WRN"]
    figures["log_errors"] = sum(bench.log_levels[k] for k in ("ERROR", "CRITICAL", "ERR", "FTL"))
    for line, count in bench.log_lines.most_common(25):
        log(f"log x{count}: {line}")
    figures["total_s"] = round(time.monotonic() - began, 1)
    figures["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
    return figures


async def main_task(args: argparse.Namespace) -> dict[str, Any]:
    """:func:`benchmark` in a temp dir (kept with ``--keep``)."""
    if args.keep:
        path = Path(tempfile.mkdtemp(prefix="bench-sync-"))
        log(f"state and logs kept in {path}")
        return await benchmark(args, path)
    with tempfile.TemporaryDirectory(prefix="bench-sync-") as tmp:
        return await benchmark(args, Path(tmp))


def parse_args() -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--seconds", type=int, default=20, help="phase 1: seconds of drone telemetry (20)"
    )
    parser.add_argument(
        "--backlog",
        type=int,
        default=100_000,
        help="phases 2-3: backlog events, 100 drones at 10 Hz (100000)",
    )
    parser.add_argument("--window", type=float, default=60.0, help="phase 4: seconds measured (60)")
    parser.add_argument("--warmup", type=float, default=5.0, help="phase 4: warm-up seconds (5)")
    parser.add_argument(
        "--drain-events",
        action="store_true",
        help="phase 3 also drains the backlog in events mode under the cap: ~100 s more,"
        " so run it with --phases 2 to stay within the budget",
    )
    parser.add_argument(
        "--phases", default="124", help="which phases to run: 1, 2 (with 3) and/or 4 (default: 124)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir and its logs")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="py-spy the edge and the hub during the phase 2 drain into DIR/<edge|hub>.txt",
    )
    args = parser.parse_args()
    if args.seconds < 1 or args.backlog < 1000 or args.window < 1 or args.warmup < 0:
        parser.error("--seconds and --window must be >= 1, --backlog >= 1000, --warmup >= 0")
    if not set(args.phases) <= set(PHASES):
        parser.error(f"--phases: one or more of {''.join(PHASES)}")
    return args


def main() -> int:
    """Run the benchmark and print its JSON line last."""
    return run_main(main_task(parse_args()), log, "every process it started is stopped")


if __name__ == "__main__":
    sys.exit(main())
