"""Hub benchmark: ten simulated edges → one hub, then → two hub instances on a 3-node cluster.

Run it with ``.venv/bin/python bench/hub.py`` (``--help`` lists the knobs; the defaults
are the benchmark's contract and take about 2 minutes on 2 cores). Every process runs
on 127.0.0.1 with its state in a temp directory (``--keep`` keeps it, with the logs);
every process started here is stopped at the end, also on errors, SIGTERM or Ctrl-C. A
280 s budget cuts a phase that hangs. Progress goes to stderr; the last line on stdout
is one JSON object with flat keys. The exit code is 1 when a phase did not complete.

The edges are not agents: to leave their cost out, each "edge" is an asyncio
``websockets`` client in this process speaking the sync protocol itself
(:class:`~edge_agent.sync.protocol.EdgeProtocol`), with its own ``devices`` token in
the hub's ``websocket_input``, sending batches encoded before the clock starts
(:func:`~edge_agent.sync.codec.encode_deltas` of
:class:`~edge_agent.sync.frames.EntityDelta` lists, zstd, as the edge's ``events``
mode sends them: every reading a delta of one of its 100 drones, two triples each),
with a window of 8 batches in flight, honouring Nacks' ``retry_after`` as the real edge
does. Every delta is an event: the hub applies each one (``semstreams_sync_deltas_total
{outcome="applied"}``).

Phases:

1. **One instance** (``cloud-hub run`` with its embedded nats-server, ``SYNC_BATCHES``
   R1): the 10 edges connect, then all send ``--batches`` batches of ``--batch-size``
   deltas at once. ``events_per_s_one_instance`` = events / (time from the first
   send until the hub's applied-deltas counter, polled every 50 ms, counts them all),
   i.e. acked into the log *and* materialised into SQLite. ``..._acked`` is the
   same up to the last ack only (the log side alone).
2. **Cluster** (``tests/cluster.py``'s ``NatsCluster``: 3 nats-servers; two
   ``cloud-hub run`` instances ``hub-a`` and ``hub-b`` on it, ``stream_replicas: 3``;
   edges 0-4 link to hub-a, 5-9 to hub-b, each with the other as its fallback).
   ``events_per_s_cluster_r3``: ``--cluster-batches`` batches per edge at once,
   events / time until every edge has its acks *and* hub-a has materialised them
   all (hub-a materialises the whole log, hub-b's edges included).
3. **Stream-leader failover**: paced traffic (each edge one batch of
   ``--paced-size`` deltas every 100 ms); after 2 s the nats-server leading
   ``SYNC_BATCHES`` is ``kill -9``-ed. ``failover_gap_s`` = time from the kill to the
   first ack of a batch *sent after the kill* (acks already on their way do not count);
   ``failover_all_edges_s`` is until every edge had such an ack.
4. **Hub instance failover**: paced traffic again; after 1 s hub-b is ``kill -9``-ed.
   Its five edges reconnect to hub-a (after 100 ms, like an edge that lost its link).
   ``reconnect_resume_s`` = time from the kill until the last of them got an ack on
   hub-a (``..._first_s`` the first); hub-a must then have materialised every acked
   event (``cluster_events_lost`` = acked minus applied on hub-a, must be 0).

Also reported: counts, peak RSS of each hub process (and nats-servers), the commit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import websockets
from common import free_port, metric, run_main
from sync import MB, Bench, Node, PhaseError, machine, rss_bytes

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.cluster

from edge_agent.sync.codec import encode_deltas
from edge_agent.sync.frames import Ack, EntityDelta, Nack, Welcome
from edge_agent.sync.protocol import EdgeProtocol, State
from tests.cluster import NatsCluster

SYNC_PATH = "/edge-sync"
STREAM = "SYNC_BATCHES"
BUDGET_S = 280.0
POLL_S = 0.05
WINDOW = 8
PACE_S = 0.1
RECONNECT_S = 0.1
DRONES = 100
APPLIED = ("semstreams_sync_deltas_total", {"outcome": "applied"})


def log(message: str) -> None:
    """Progress on stderr, so that stdout ends with the JSON line alone."""
    print(f"[hub] {message}", file=sys.stderr, flush=True)


# ---- traffic -----------------------------------------------------------------------------


def encode_batches(edge_id: str, batches: int, size: int, start: int = 0) -> list[bytes]:
    """``batches`` zstd payloads of ``size`` readings each, of the edge's 100 drones."""
    payloads = []
    base = int(time.time() * 1000)
    n = start
    for _ in range(batches):
        deltas = []
        for _ in range(size):
            drone, version = n % DRONES, n // DRONES + 1
            ts = base + n
            deltas.append(
                EntityDelta(
                    f"{edge_id}.drone.{drone:03d}",
                    "drone",
                    version,
                    ts,
                    3,
                    [
                        ("telemetry.altitude", 100.0 + (n % 977) / 10, ts, edge_id),
                        ("telemetry.battery", 100 - (n % 100), ts, edge_id),
                    ],
                )
            )
            n += 1
        payloads.append(encode_deltas(deltas, "zstd")[0])
    return payloads


@dataclass
class SimEdge:
    """One simulated edge: a websockets client speaking :class:`EdgeProtocol`."""

    edge_id: str
    token: str
    urls: list[str]
    size: int
    payloads: list[bytes] = field(default_factory=list)
    hwm: int = 0
    #: (monotonic time, seq, url index) of each Ack.
    acks: list[tuple[float, int, int]] = field(default_factory=list)
    sent_at: dict[int, float] = field(default_factory=dict)
    connected_url: int = -1
    #: Batches up to this seq may be sent now (paced phases raise it over time).
    limit: int = 0
    nacks: int = 0
    reconnects: int = 0
    _next: int = 1
    _paused_until: float = 0.0
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, payloads: list[bytes]) -> None:
        """More pre-encoded batches to send (seq continues)."""
        self.payloads += payloads

    def allow(self, limit: int) -> None:
        """Let batches up to ``limit`` go."""
        self.limit = min(limit, len(self.payloads))
        self._changed.set()

    async def run(self, ready: asyncio.Event | None = None) -> None:
        """Link (to ``urls[0]`` first, the next on failure) and send until cancelled."""
        index = 0
        while True:
            url = index % len(self.urls)
            try:
                await self._link(url, ready)
            except (OSError, websockets.WebSocketException, TimeoutError) as exc:
                if self.connected_url == url:
                    log(f"  {self.edge_id}: link to {self.urls[url]} lost: {type(exc).__name__}")
            self.connected_url = -1
            self.reconnects += 1
            index += 1
            await asyncio.sleep(RECONNECT_S)

    async def _link(self, url: int, ready: asyncio.Event | None) -> None:
        async with websockets.connect(
            self.urls[url], max_size=None, compression=None, open_timeout=5
        ) as ws:
            proto = EdgeProtocol(self.edge_id, self.token, acked_seq=self.hwm, window=WINDOW)
            for out in proto.data_to_send():
                await ws.send(out)
            proto.receive_data(await asyncio.wait_for(ws.recv(), 5))
            welcome = proto.events_received()[0]
            if not isinstance(welcome, Welcome) or proto.state != State.SYNCING:
                raise PhaseError(f"{self.edge_id} refused: {proto.refusal}")
            self.hwm = max(self.hwm, proto.hwm)
            self.connected_url = url
            self._next, self._paused_until = proto.hwm + 1, 0.0
            if ready is not None:
                ready.set()
            sender = asyncio.create_task(self._send(ws, proto))
            try:
                async for message in ws:
                    proto.receive_data(message)
                    now = time.monotonic()
                    for frame in proto.events_received():
                        if isinstance(frame, Ack):
                            self.hwm = max(self.hwm, frame.seq)
                            self.acks.append((now, frame.seq, url))
                        elif isinstance(frame, Nack):
                            self.nacks += 1
                            self._next = min(self._next, frame.seq)
                            self._paused_until = max(self._paused_until, now + frame.retry_after)
                    self._changed.set()
                    if sender.done():
                        sender.result()
            finally:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError, websockets.WebSocketException):
                    await sender

    async def _send(self, ws: Any, proto: EdgeProtocol) -> None:
        while True:
            self._changed.clear()
            seq = self._next
            wait = self._paused_until - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            if seq <= self.limit and proto.can_send() and seq not in proto.in_flight:
                self.sent_at[seq] = time.monotonic()
                proto.send_batch(seq, self.size, self.payloads[seq - 1])
                self._next = seq + 1
                for out in proto.data_to_send():
                    await ws.send(out)
                continue
            await self._changed.wait()

    def acked_events(self) -> int:
        """Events of the batches the hub acked."""
        return self.hwm * self.size


def sim_edges(count: int, token: str, urls_of: Any, size: int) -> list[SimEdge]:
    """``count`` simulated edges; ``urls_of(i)`` lists edge i's hub URLs."""
    return [SimEdge(f"edge-{i:02d}", token, urls_of(i), size) for i in range(count)]


# ---- hubs --------------------------------------------------------------------------------


class HubNode(Node):
    """``cloud-hub run`` with a ``websocket_input`` for every simulated edge, on its
    embedded nats-server or on a cluster (``cluster_urls``)."""

    def __init__(
        self, workdir: Path, name: str, edges: list[str], token: str, cluster_urls: list[str]
    ) -> None:
        config: dict[str, Any] = {
            "port": free_port(),
            "path": SYNC_PATH,
            "devices": {edge: {"token": token} for edge in edges},
        }
        if cluster_urls:
            config["stream_replicas"] = 3
        super().__init__(
            "hub", workdir / name, {"id": "in", "type": "websocket_input", "config": config}
        )
        self.name = name
        self.cluster_urls = cluster_urls

    @property
    def sync_url(self) -> str:
        """Where edges link."""
        return f"ws://127.0.0.1:{self.component['config']['port']}{SYNC_PATH}"

    def config(self) -> dict[str, Any]:
        """The sync bench's hub config, with its own id and, on a cluster, its URLs."""
        config = super().config()
        config["platform"] = {"id": self.name, "type": "cloud-hub"}
        config["logging"]["level"] = "WARNING"
        if self.cluster_urls:
            config["nats"] = {"urls": self.cluster_urls, "embedded": False}
        return config

    def kill9(self) -> None:
        """``kill -9`` the hub process (its group: nothing else is in it on a cluster)."""
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    async def wait_ready(self, http: httpx.AsyncClient) -> None:
        """Wait until ``/health`` answers ``healthy``, or ``degraded`` on a cluster: there
        the materialiser's first bind can fail while the new stream elects, and its
        ``last_error`` is only cleared by the first applied batch, so an idle hub stays
        ``degraded`` although it works."""
        if not self.cluster_urls:
            await super().wait_ready(http)
            return
        assert self.process is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise PhaseError(f"{self.name} exited: {self.tail()}")
            with contextlib.suppress(httpx.HTTPError, ValueError):
                reply = await http.get(f"{self.api}/health", timeout=2.0)
                body = reply.json()
                materialiser = body.get("components", {}).get("materialiser", {})
                if body.get("status") == "healthy" or (
                    body.get("status") == "degraded" and materialiser.get("status") == "retrying"
                ):
                    return
            await asyncio.sleep(POLL_S)
        raise PhaseError(f"{self.name} not up after 30 s: {self.tail()}")

    async def applied(self, http: httpx.AsyncClient) -> float:
        """Deltas this instance has materialised."""
        return metric(await self.metrics(http), APPLIED[0], **APPLIED[1])


async def wait_applied(http: httpx.AsyncClient, hub: HubNode, events: int, timeout: float) -> float:
    """Poll the hub until it has applied ``events`` deltas; the poll's monotonic time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = time.monotonic()
        with contextlib.suppress(httpx.HTTPError):
            if await hub.applied(http) >= events:
                return (before + time.monotonic()) / 2
        await asyncio.sleep(POLL_S)
    raise PhaseError(f"{hub.name} applied {await hub.applied(http):.0f} of {events} in time")


async def link_all(edges: list[SimEdge]) -> list[asyncio.Task[None]]:
    """Start every edge's link; return once each has been welcomed."""
    tasks, ready = [], []
    for edge in edges:
        event = asyncio.Event()
        ready.append(event)
        tasks.append(asyncio.create_task(edge.run(event)))
    try:
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in ready)), 20)
    except TimeoutError:
        await stop_tasks(tasks)
        raise PhaseError("not every edge was welcomed within 20 s") from None
    return tasks


async def stop_tasks(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel the edges' tasks."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def burst(edges: list[SimEdge], timeout: float) -> tuple[float, float]:
    """Let every pre-encoded batch go at once; (start, time of the last ack)."""
    start = time.monotonic()
    for edge in edges:
        edge.allow(len(edge.payloads))
    deadline = start + timeout
    while any(edge.hwm < len(edge.payloads) for edge in edges):
        if time.monotonic() > deadline:
            raise PhaseError("the edges' batches were not all acked in time")
        await asyncio.sleep(0.01)
    return start, max(edge.acks[-1][0] for edge in edges)


async def paced(edges: list[SimEdge], stop: asyncio.Event) -> None:
    """One more batch per edge every ``PACE_S`` until ``stop`` (or the batches run out)."""
    base = [e.hwm for e in edges]
    ticks = 0
    while not stop.is_set():
        ticks += 1
        for edge, first in zip(edges, base, strict=True):
            edge.allow(first + ticks)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), PACE_S)


# ---- phases ------------------------------------------------------------------------------


@dataclass
class Run:
    """What the phases share."""

    args: argparse.Namespace
    bench: Bench
    http: httpx.AsyncClient
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))

    @property
    def edge_ids(self) -> list[str]:
        """The simulated edges' ids."""
        return [f"edge-{i:02d}" for i in range(self.args.edges)]


async def phase_one(run: Run) -> dict[str, Any]:
    """Phase 1: ten edges, one hub on its embedded nats-server."""
    args = run.args
    hub = HubNode(run.bench.workdir, "one", run.edge_ids, run.token, [])
    run.bench.nodes.append(hub)
    edges = sim_edges(args.edges, run.token, lambda i: [hub.sync_url], args.batch_size)
    for edge in edges:
        edge.add(encode_batches(edge.edge_id, args.batches, args.batch_size))
    events = args.edges * args.batches * args.batch_size
    async with run.bench.running(hub):
        tasks = await link_all(edges)
        try:
            profiler = start_profile(run, hub, "one")
            start, acked = await burst(edges, 120)
            done = await wait_applied(run.http, hub, events, 120)
            stop_profile(profiler)
        finally:
            await stop_tasks(tasks)
        samples = await hub.metrics(run.http)
    figures = {
        "events_one_instance": events,
        "events_per_s_one_instance": round(events / (done - start)),
        "events_per_s_one_instance_acked": round(events / (acked - start)),
        "one_instance_s": round(done - start, 2),
        "one_instance_nacks": sum(e.nacks for e in edges),
        "one_instance_materialised_batches": round(
            metric(samples, "semstreams_hub_materialised_batches_total", outcome="applied")
        ),
    }
    log(
        f"  {figures['events_per_s_one_instance']:,} events/s materialised"
        f" ({figures['events_per_s_one_instance_acked']:,}/s acked)"
    )
    return figures


def start_profile(run: Run, hub: HubNode, name: str) -> subprocess.Popen[bytes] | None:
    """With ``--profile DIR``: py-spy the hub into DIR/<name>.txt until stopped."""
    if run.args.profile is None or hub.process is None:
        return None
    run.args.profile.mkdir(parents=True, exist_ok=True)
    out = run.args.profile / f"{name}.txt"
    return subprocess.Popen(
        [
            sys.executable.replace("python", "py-spy").rsplit("/", 1)[0] + "/py-spy",
            "record",
            "-p",
            str(hub.process.pid),
            "-f",
            "raw",
            "-o",
            str(out),
            "-r",
            "200",
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop_profile(profiler: subprocess.Popen[bytes] | None) -> None:
    """Stop py-spy (it writes its file on SIGINT)."""
    if profiler is not None:
        profiler.send_signal(signal.SIGINT)
        profiler.wait(20)


async def phase_cluster(run: Run) -> dict[str, Any]:
    """Phases 2-4: two instances on a 3-node cluster; throughput, then the two kills."""
    args = run.args
    figures: dict[str, Any] = {}
    # The hub's default stream_max_bytes (1 GiB) must fit in each node's file store:
    # with NatsCluster's default 256MB the stream cannot be created at all.
    cluster = NatsCluster(run.bench.workdir / "cluster", max_file="2GB")
    cluster.start()
    try:
        await cluster.wait_ready()
        urls = cluster.urls
        hub_a = HubNode(run.bench.workdir, "hub-a", run.edge_ids, run.token, urls)
        hub_b = HubNode(run.bench.workdir, "hub-b", run.edge_ids, run.token, urls[1:] + urls[:1])
        run.bench.nodes += [hub_a, hub_b]
        run.bench.cluster_pids = cluster  # type: ignore[attr-defined]
        half = args.edges // 2

        def urls_of(i: int) -> list[str]:
            return (
                [hub_a.sync_url, hub_b.sync_url] if i < half else [hub_b.sync_url, hub_a.sync_url]
            )

        edges = sim_edges(args.edges, run.token, urls_of, args.batch_size)
        for edge in edges:
            edge.add(encode_batches(edge.edge_id, args.cluster_batches, args.batch_size))
        burst_events = args.edges * args.cluster_batches * args.batch_size
        async with run.bench.running(hub_a, hub_b):
            tasks = await link_all(edges)
            try:
                # ---- throughput, R3
                start, acked = await burst(edges, 120)
                done = await wait_applied(run.http, hub_a, burst_events, 120)
                done_b = await wait_applied(run.http, hub_b, burst_events, 60)
                figures.update(
                    {
                        "events_cluster_r3": burst_events,
                        "events_per_s_cluster_r3": round(burst_events / (done - start)),
                        "events_per_s_cluster_r3_acked": round(burst_events / (acked - start)),
                        "cluster_r3_hub_b_caught_up_s": round(done_b - start, 2),
                    }
                )
                log(
                    f"  cluster R3: {figures['events_per_s_cluster_r3']:,} events/s"
                    f" acked+materialised on hub-a ({figures['events_per_s_cluster_r3_acked']:,}"
                    " acked)"
                )
                # ---- paced traffic from here on: a batch of paced_size every PACE_S
                paced_batches = int(60 / PACE_S)
                for edge in edges:
                    edge.size = args.paced_size
                    edge.add(
                        encode_batches(
                            edge.edge_id, paced_batches, args.paced_size, start=burst_events
                        )
                    )
                figures.update(await stream_failover(run, cluster, edges))
                figures.update(await hub_failover(run, hub_a, hub_b, edges, half))
                acked_events = burst_events + sum(
                    (e.hwm - args.cluster_batches) * args.paced_size for e in edges
                )
                with contextlib.suppress(PhaseError):  # reported as events_lost below
                    await wait_applied(run.http, hub_a, acked_events, 20)
                applied = await hub_a.applied(run.http)
                figures["cluster_events_acked"] = acked_events
                figures["cluster_events_lost"] = acked_events - round(applied)
                if figures["cluster_events_lost"]:
                    log(f"  hub-a materialised {applied:.0f} of {acked_events} acked events")
                figures["cluster_nacks"] = sum(e.nacks for e in edges)
            finally:
                await stop_tasks(tasks)
    finally:
        cluster.stop()
    return figures


def first_ack_after(
    edge: SimEdge, moment: float, *, sent_after: bool, url: int | None = None
) -> float | None:
    """The time of the edge's first ack after ``moment`` (of a batch sent after it, with
    ``sent_after``; on hub URL ``url`` if given)."""
    for at, seq, via in edge.acks:
        if at <= moment or (url is not None and via != url):
            continue
        if sent_after and edge.sent_at.get(seq, 0.0) <= moment:
            continue
        return at
    return None


async def until_all(edges: list[SimEdge], find: Any, timeout: float) -> list[float | None]:
    """Poll ``find(edge)`` for every edge until none is ``None`` or ``timeout``."""
    deadline = time.monotonic() + timeout
    found = [find(e) for e in edges]
    while None in found and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
        found = [find(e) for e in edges]
    return found


async def stream_failover(run: Run, cluster: NatsCluster, edges: list[SimEdge]) -> dict[str, Any]:
    """Phase 3: kill -9 the stream leader under paced traffic."""
    leader = await cluster.stream_leader(STREAM)
    stop = asyncio.Event()
    pacer = asyncio.create_task(paced(edges, stop))
    try:
        await asyncio.sleep(2.0)
        killed = time.monotonic()
        cluster.kill9(leader)
        log(f"  killed {cluster.names[leader]}, the {STREAM} leader, under paced traffic")
        found = await until_all(edges, lambda e: first_ack_after(e, killed, sent_after=True), 60)
        new_leader = await cluster.stream_leader(STREAM)
        await asyncio.sleep(1.0)
    finally:
        stop.set()
        await pacer
    got = [at - killed for at in found if at is not None]
    if not got:
        raise PhaseError("no batch was acked after the stream leader was killed")
    figures = {
        "failover_gap_s": round(min(got), 3),
        "failover_all_edges_s": round(max(got), 3) if len(got) == len(edges) else None,
        "failover_killed": cluster.names[leader],
        "failover_new_leader": cluster.names[new_leader],
    }
    log(
        f"  failover gap {figures['failover_gap_s']} s"
        f" (all edges {figures['failover_all_edges_s']} s)"
    )
    await settle(edges, 30)
    return figures


async def settle(edges: list[SimEdge], timeout: float) -> None:
    """Wait until every batch the edges were allowed has been acked."""
    deadline = time.monotonic() + timeout
    while any(e.hwm < e.limit for e in edges) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)


async def hub_failover(
    run: Run, hub_a: HubNode, hub_b: HubNode, edges: list[SimEdge], half: int
) -> dict[str, Any]:
    """Phase 4: kill -9 hub-b under paced traffic; its edges resume on hub-a."""
    stop = asyncio.Event()
    pacer = asyncio.create_task(paced(edges, stop))
    moved = edges[half:]
    try:
        await asyncio.sleep(1.0)
        killed = time.monotonic()
        hub_b.kill9()
        hub_b.stopped = True
        run.bench.read_logs(hub_b)
        log("  killed hub-b under paced traffic")
        found = await until_all(
            moved, lambda e: first_ack_after(e, killed, sent_after=False, url=1), 60
        )
        await asyncio.sleep(1.0)
    finally:
        stop.set()
        await pacer
    got = sorted(at - killed for at in found if at is not None)
    if len(got) != len(moved):
        raise PhaseError(f"only {len(got)} of hub-b's {len(moved)} edges resumed on hub-a")
    figures = {
        "reconnect_resume_s": round(got[-1], 3),
        "reconnect_resume_first_s": round(got[0], 3),
        "reconnect_edges_moved": len(moved),
    }
    log(f"  hub-b's edges resumed on hub-a within {figures['reconnect_resume_s']} s")
    await settle(edges, 30)
    return figures


# ---- main --------------------------------------------------------------------------------


def commit() -> str:
    """The checkout's commit (``-dirty`` when it has changes)."""
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        ["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=7"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip() or "unknown"


PHASES = {
    "1": ("one hub instance, embedded nats-server", phase_one),
    "2": ("two hub instances on a 3-node cluster (R3), then failovers", phase_cluster),
}


async def sample_rss_forever(bench: Bench) -> None:
    """The hubs' peak RSS, and the cluster's nats-servers'."""
    while True:
        bench.sample_rss()
        cluster = getattr(bench, "cluster_pids", None)
        if cluster is not None:
            for proc in cluster._procs:
                if proc is not None and proc.poll() is None:
                    label = "cluster_nats_max"
                    bench.peak_rss[label] = max(bench.peak_rss.get(label, 0), rss_bytes(proc.pid))
        await asyncio.sleep(0.2)


async def benchmark(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Every phase asked for within the budget; the figures as one flat dict."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BUDGET_S
    began = time.monotonic()
    figures: dict[str, Any] = {
        **await machine(),
        "commit": commit(),
        "edges": args.edges,
        "batch_size": args.batch_size,
        "batches_per_edge": args.batches,
        "cluster_batches_per_edge": args.cluster_batches,
        "paced_batch_size": args.paced_size,
        "window": WINDOW,
        "complete": True,
    }
    async with httpx.AsyncClient(timeout=10.0) as http:
        bench = Bench(workdir, http, args)
        run = Run(args, bench, http)
        sampler = asyncio.create_task(sample_rss_forever(bench))
        try:
            for key, (title, phase) in PHASES.items():
                if key not in args.phases:
                    continue
                started = time.monotonic()
                log(f"phase {key}: {title} ...")
                try:
                    async with asyncio.timeout_at(deadline):
                        figures.update(await phase(run))
                    if figures.get("cluster_events_lost"):
                        figures["complete"] = False
                except Exception as exc:  # reported, and the next phase runs
                    figures["complete"] = False
                    reason = str(exc.args[0]) if exc.args else ""
                    if isinstance(exc, TimeoutError):
                        reason = f"over the {BUDGET_S:.0f} s budget"
                    figures[f"phase{key}_error"] = f"{type(exc).__name__}: {reason}"[:300]
                    log(f"phase {key} did not complete: {figures[f'phase{key}_error']}")
                figures[f"phase{key}_s"] = round(time.monotonic() - started, 1)
                log(f"phase {key}: {figures[f'phase{key}_s']} s")
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
            bench.stop(*bench.nodes)
    for label, peak in sorted(bench.peak_rss.items()):
        figures[f"{label}_rss_mb"] = round(peak / MB, 1)
    figures["log_warnings"] = bench.log_levels["WARNING"] + bench.log_levels["WRN"]
    figures["log_errors"] = sum(bench.log_levels[k] for k in ("ERROR", "CRITICAL", "ERR", "FTL"))
    for line, count in bench.log_lines.most_common(15):
        log(f"log x{count}: {line}")
    figures["total_s"] = round(time.monotonic() - began, 1)
    return figures


async def main_task(args: argparse.Namespace) -> dict[str, Any]:
    """:func:`benchmark` in a temp dir (kept with ``--keep``)."""
    if args.keep:
        path = Path(tempfile.mkdtemp(prefix="bench-hub-"))
        log(f"state and logs kept in {path}")
        return await benchmark(args, path)
    with tempfile.TemporaryDirectory(prefix="bench-hub-") as tmp:
        return await benchmark(args, Path(tmp))


def parse_args() -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--edges", type=int, default=10, help="simulated edges (10)")
    parser.add_argument("--batch-size", type=int, default=1000, help="deltas a batch (1000)")
    parser.add_argument("--batches", type=int, default=30, help="phase 1: batches an edge (30)")
    parser.add_argument(
        "--cluster-batches", type=int, default=10, help="phase 2: batches an edge (10)"
    )
    parser.add_argument(
        "--paced-size", type=int, default=50, help="phases 3-4: deltas a paced batch (50)"
    )
    parser.add_argument("--phases", default="12", help="1 and/or 2 (default: 12)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir and its logs")
    parser.add_argument(
        "--profile", type=Path, metavar="DIR", help="py-spy the hub in phase 1 into DIR/one.txt"
    )
    args = parser.parse_args()
    if args.edges < 2 or args.batch_size < 1 or args.batches < 1 or args.cluster_batches < 1:
        parser.error("--edges >= 2; sizes and counts >= 1")
    return args


def main() -> int:
    """Run the benchmark and print its JSON line last."""
    return run_main(main_task(parse_args()), log, "every process it started is stopped")


if __name__ == "__main__":
    sys.exit(main())
