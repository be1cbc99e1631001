"""Ingest benchmark: events through JetStream into the SQLite graph of a real edge agent.

Run it with ``make bench`` or ``.venv/bin/python bench/ingest.py`` (``--help`` lists the
knobs; the defaults are the benchmark's contract: 200,000 events over 100,000 entities,
the agent's default settings, then the same load again into an agent with the "small"
profile of ``examples/edge-small.json``). It binds only to 127.0.0.1, keeps its state in a
temp directory, stops every process it started (also on SIGTERM or Ctrl-C; children
die with it even on SIGKILL), and stops waiting after a 4-minute budget so it always
ends within 5 minutes. The last line it prints is one JSON object with flat keys; the
exit code is 1 when the load was not fully applied within the budget.

One run has four phases:

1. **SQLite ceiling**: ``GraphStore.apply`` (the agent's own write path, with the
   agent's indexes and ``synchronous = FULL``) on the benchmark's events, decoded
   beforehand, in batches of the agent's batch size, in a temp file, in this process.
2. **JetStream ceiling**: a separate publisher process (``bench/publisher.py``: many
   ``PUB`` commands per write, every PubAck read and checked, up to 4,000 unacked) sends
   the same events to a work-queue file stream configured like ``GRAPH_ENTITIES`` on a
   scratch ``nats-server``, which is stopped before phase 3.
3. **The measured run**: ``edge-agent run --config <temp config>`` as a subprocess, with
   its embedded nats-server on a free loopback port. The same publisher code, again in
   its own process, sends the events to ``events.graph.entity.<type>``; meanwhile this
   process publishes a low-rate latency probe, samples the RSS of the agent and of its
   nats-server child, and polls ``/metrics`` until every event is applied. Then it
   times single events sent to the idle agent.
4. **The small profile**: phase 3 again, with the ``nats`` and ``graph`` sections of
   ``examples/edge-small.json`` (the settings for a 512 MB Pi) in the agent's config;
   its figures are the ``small_profile_*`` keys (``--no-small-profile`` skips it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec
import nats
import psutil
from common import (
    die_with_parent,
    free_port,
    metric,
    parse_metrics,
    percentile,
    run_main,
    venv_binary,
)
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from publisher import publish_messages

from edge_agent.config import GraphSettings
from edge_agent.graph import GraphStore
from edge_agent.model import decode_event

EVENT_TYPES = ("drone", "sensor", "vehicle")
ENTITY_SUBJECT_PREFIX = "events.graph.entity"
SCRATCH_SUBJECT_PREFIX = "scratch.entity"
SCRATCH_STREAM = "SCRATCH_ENTITIES"
PROBE_TYPE = "probe"
PUBLISH_MAX_PENDING = 4000
BASE_MS = 1_735_689_600_000  # 2025-01-01T00:00:00Z; event i is stamped BASE_MS + i ms
METRICS_POLL_S = 0.05
RSS_POLL_S = 0.1
PROBE_POLL_S = 0.01
IDLE_PROBE_POLL_S = 0.002
START_TIMEOUT_S = 30.0
#: Seconds from start after which the benchmark stops waiting and reports what it has;
#: stopping the processes afterwards takes well under the minute that remains.
BUDGET_S = 240.0
#: Seconds from start by which the default-settings run must be done, leaving the rest
#: of the budget to the small profile's run.
MAIN_BUDGET_S = 150.0
SMALL_PROFILE = Path(__file__).resolve().parent.parent / "examples" / "edge-small.json"
#: The small profile's sections the benchmark takes (the rest of the file names places
#: and ports of a real device).
PROFILE_SECTIONS = ("nats", "graph")
MB = 1 << 20
#: A new connection per request. On a reused (keep-alive) connection every request to
#: the agent takes 40+ ms more: its API socket lacks TCP_NODELAY, so the response body
#: waits for the client's delayed ACK of the headers (Nagle). That would swamp what
#: the probe measures; a fresh connection is ACKed at once.
FRESH_CONNECTIONS = httpx.Limits(max_keepalive_connections=0)


@dataclass(frozen=True)
class Settings:
    """What to run: the load's size, the probe's rate and the agent's graph settings."""

    events: int
    entities: int
    probe_interval_s: float
    idle_probes: int
    batch_size: int | None = None
    queue_size: int | None = None
    workers: int | None = None
    no_predicate_index: bool = False
    small_profile: bool = True
    #: ``nats.jetstream.sync_interval`` and ``graph.config.sqlite_synchronous`` of the
    #: measured run (default: the agent's), to price durability (docs/operations.md).
    sync_interval: str | None = None
    sqlite_synchronous: str | None = None

    def nats_overrides(self) -> dict[str, Any]:
        """The ``nats`` keys given on the command line, as config overrides."""
        if self.sync_interval is None:
            return {}
        return {"nats": {"jetstream": {"sync_interval": self.sync_interval}}}

    def graph_overrides(self) -> dict[str, Any]:
        """The ``graph.config`` keys given on the command line, as config JSON."""
        graph: dict[str, Any] = {}
        indexer: dict[str, Any] = {}
        if self.batch_size is not None:
            indexer["batch_processing"] = {"size": self.batch_size}
        if self.no_predicate_index:
            indexer["indexes"] = {"predicate": False}
        if indexer:
            graph["indexer"] = indexer
        if self.queue_size is not None:
            graph["queue_size"] = self.queue_size
        if self.workers is not None:
            graph["workers"] = self.workers
        if self.sqlite_synchronous is not None:
            graph["sqlite_synchronous"] = self.sqlite_synchronous
        return graph

    def graph_settings(self) -> GraphSettings:
        """The agent's effective ``graph.config``: its defaults, with the overrides."""
        return msgspec.convert(self.graph_overrides(), GraphSettings)


# ---- events ------------------------------------------------------------------------------


def iso(ms: int) -> str:
    """Epoch milliseconds as an RFC 3339 UTC timestamp."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def make_event(index: int, entities: int) -> tuple[str, dict[str, Any]]:
    """Event ``index`` of the load, for entity ``index % entities``: (type, event).

    A device report with five properties (two of them a position) and one relationship
    to its fleet. Entities are visited round-robin, so each is updated
    ``events / entities`` times, each update newer than the one before.
    """
    number = index % entities
    kind = EVENT_TYPES[number % len(EVENT_TYPES)]
    event = {
        "entity_id": f"{kind}-{number:06d}",
        "entity_type": kind,
        "priority": number % 10,
        "timestamp": iso(BASE_MS + index),
        "properties": {
            "battery": round(20 + (index * 7919 % 8000) / 100, 2),
            "status": "degraded" if index % 7 == 0 else "ok",
            "altitude_m": index % 400,
            "geo.location.latitude": round(37.0 + (number % 1000) / 1000, 4),
            "geo.location.longitude": round(-122.0 - (number // 1000) / 1000, 4),
        },
        "relationships": [{"predicate": "member_of", "object": f"fleet-{number % 100:03d}"}],
        "source": "bench",
    }
    return kind, event


def build_messages(count: int, entities: int, prefix: str) -> list[tuple[str, bytes]]:
    """The load as (subject, JSON payload) pairs, subjects ``<prefix>.<entity type>``."""
    encode = msgspec.json.Encoder().encode
    messages = []
    for index in range(count):
        kind, event = make_event(index, entities)
        messages.append((f"{prefix}.{kind}", encode(event)))
    return messages


def probe_event(entity_id: str) -> bytes:
    """A latency probe: a small event of its own type, for an entity not seen before."""
    event = {"entity_id": entity_id, "entity_type": PROBE_TYPE, "properties": {"probe": True}}
    return msgspec.json.encode(event)


# ---- the publisher process ---------------------------------------------------------------


async def publish_load(url: str, prefix: str, count: int, entities: int) -> dict[str, Any]:
    """Publish the load with :func:`publisher.publish_messages`, up to 4,000 unacked.

    Prints ``{"phase": "started", ...}`` just before the first publish. The payloads are
    encoded before that, so encoding is not timed. The result holds ``failed`` (every
    message without a PubAck naming a stream and sequence); the caller judges it.
    """
    messages = [
        (subject.encode(), payload) for subject, payload in build_messages(count, entities, prefix)
    ]

    def started() -> None:
        print(json.dumps({"phase": "started", "t": time.time()}), flush=True)

    result = await publish_messages(
        url, messages, window=PUBLISH_MAX_PENDING, name="bench-publisher", on_first=started
    )
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {**result, "cpu_s": usage.ru_utime + usage.ru_stime}


async def run_publisher(
    url: str,
    prefix: str,
    settings: Settings,
    on_started: Callable[[float], None] = lambda _: None,
) -> dict[str, Any]:
    """Run :func:`publish_load` in a child process (``ingest.py publish``); its result.

    ``on_started`` gets the wall time of the first publish as soon as it is known.
    """
    process = await asyncio.create_subprocess_exec(
        *[sys.executable, __file__, "publish", "--url", url, "--prefix", prefix],
        *["--events", str(settings.events), "--entities", str(settings.entities)],
        stdout=asyncio.subprocess.PIPE,
        preexec_fn=die_with_parent,
    )
    assert process.stdout is not None
    try:
        result: dict[str, Any] = {}
        async for line in process.stdout:
            result = json.loads(line)
            if result.get("phase") == "started":
                on_started(result["t"])
        if await process.wait() != 0 or "published" not in result:
            raise RuntimeError(f"publisher failed with exit code {process.returncode}")
        return result
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


# ---- processes ---------------------------------------------------------------------------


def nats_server_version() -> str:
    """``nats-server --version`` of the binary the agent uses, e.g. ``v2.15.1``."""
    out = subprocess.run(
        [venv_binary("nats-server"), "--version"], capture_output=True, text=True, check=False
    )
    return out.stdout.strip().rsplit(" ", 1)[-1]


def stop_process(process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM, then SIGKILL if it is still running after ``timeout`` seconds."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def wait_for_port(port: int, timeout: float = START_TIMEOUT_S) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


@contextlib.asynccontextmanager
async def scratch_nats(workdir: Path) -> AsyncIterator[str]:
    """A throwaway nats-server with JetStream on loopback; yields its URL."""
    port = free_port()
    store = workdir / "scratch-jetstream"
    process = subprocess.Popen(
        [venv_binary("nats-server"), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=die_with_parent,  # noqa: PLW1509
    )
    try:
        await wait_for_port(port)
        yield f"nats://127.0.0.1:{port}"
    finally:
        stop_process(process)


@dataclass
class AgentProcess:
    """``edge-agent run`` as a child process on free loopback ports, state in ``workdir``."""

    workdir: Path
    graph: dict[str, Any]
    #: Config sections merged over the benchmark's own (the small profile's).
    overrides: dict[str, Any] = field(default_factory=dict)
    nats_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def api(self) -> str:
        """The agent's HTTP API."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def nats_url(self) -> str:
        """The embedded nats-server's URL."""
        return f"nats://127.0.0.1:{self.nats_port}"

    @property
    def log_path(self) -> Path:
        """Where the agent's output goes."""
        return self.workdir / "agent.log"

    def config(self) -> dict[str, Any]:
        """The agent's config: its defaults but for state, ports, log level and ``graph``,
        with :attr:`overrides` merged in (the benchmark's places and ports win)."""
        own = {"urls": [self.nats_url], "port": self.nats_port, "embedded": True}
        return {
            "state_dir": str(self.workdir / "state"),
            "platform": {"id": "bench-edge"},
            "nats": merged(self.overrides.get("nats", {}), own),
            "graph": merged(self.overrides.get("graph", {}), {"config": self.graph}),
            "services": {
                "service-manager": {
                    "config": {"http_host": "127.0.0.1", "http_port": self.http_port}
                }
            },
            "logging": {"level": "WARNING", "format": "json", "output": "stderr"},
        }

    async def start(self, http: httpx.AsyncClient) -> None:
        """Start the agent and wait until ``/health`` says healthy."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / "agent.json"
        config_path.write_text(json.dumps(self.config()))
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [venv_binary("edge-agent"), "run", "--config", str(config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,  # noqa: PLW1509
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"agent exited with {self.process.returncode}: {self.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                reply = await http.get(f"{self.api}/health", timeout=1.0)
                if reply.status_code == 200 and reply.json()["status"] == "healthy":
                    return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"agent not healthy after {START_TIMEOUT_S}s: {self.tail()}")

    def processes(self) -> tuple[psutil.Process, psutil.Process]:
        """The agent process and its embedded nats-server child."""
        assert self.process is not None
        agent = psutil.Process(self.process.pid)
        for child in agent.children(recursive=True):
            if child.name().startswith("nats-server"):
                return agent, child
        raise RuntimeError("the agent has no nats-server child")

    def stop(self) -> None:
        """Stop the agent (it stops its nats-server); kill the server if it lingers."""
        if self.process is None:
            return
        server = None
        with contextlib.suppress(psutil.Error, RuntimeError):
            _, server = self.processes()
        stop_process(self.process, timeout=20.0)
        if server is not None:
            with contextlib.suppress(psutil.Error):
                server.wait(5.0)
            with contextlib.suppress(psutil.Error):
                server.kill()

    def tail(self, chars: int = 2000) -> str:
        """The end of the agent's log."""
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""


def merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` merged in, section by section (``over`` wins)."""
    out = dict(base)
    for key, value in over.items():
        inner = out.get(key)
        both = isinstance(inner, dict) and isinstance(value, dict)
        out[key] = merged(inner, value) if both else value  # type: ignore[arg-type]
    return out


def small_profile() -> dict[str, Any]:
    """The sections of ``examples/edge-small.json`` the benchmark runs the agent with."""
    config = json.loads(SMALL_PROFILE.read_text())
    return {key: config[key] for key in PROFILE_SECTIONS if key in config}


@contextlib.asynccontextmanager
async def running_agent(
    workdir: Path,
    graph: dict[str, Any],
    http: httpx.AsyncClient,
    overrides: dict[str, Any] | None = None,
) -> AsyncIterator[tuple[AgentProcess, int]]:
    """A started agent and the attempts it took; it is retried once if it fails to start."""
    for attempt in (1, 2):
        agent = AgentProcess(workdir / f"agent-{attempt}", graph, overrides or {})
        try:
            await agent.start(http)
        except (RuntimeError, OSError) as exc:
            agent.stop()
            if attempt == 2:
                raise
            log(f"agent did not start ({exc}); retrying once")
            continue
        try:
            yield agent, attempt
        finally:
            agent.stop()
        return


# ---- ceilings ----------------------------------------------------------------------------


def sqlite_ceiling(workdir: Path, settings: Settings) -> float:
    """Events/s of ``GraphStore.apply`` alone, configured as the agent's store is.

    The events are decoded beforehand (decoding is not timed); each batch is one
    transaction that also advances the consumer position, as in the agent.
    """
    graph = settings.graph_settings()
    batch_size = graph.indexer.batch_processing.size
    payloads = build_messages(settings.events, settings.entities, ENTITY_SUBJECT_PREFIX)
    batch = [
        (seq, decode_event(data, max_bytes=graph.max_event_bytes))
        for seq, (_, data) in enumerate(payloads, start=1)
    ]
    store = GraphStore(
        workdir / "ceiling.db",
        origin="bench",
        indexes=graph.indexer.indexes,
        edge_batch_size=graph.data_manager.edge_batch_size,
    )
    try:
        store.position("bench", "ceiling")
        started = time.perf_counter()
        for start in range(0, len(batch), batch_size):
            chunk = batch[start : start + batch_size]
            store.apply(chunk, consumer="bench", now_ms=int(time.time() * 1000))
        return len(batch) / (time.perf_counter() - started)
    finally:
        store.close()


async def jetstream_ceiling(workdir: Path, settings: Settings) -> float:
    """Messages/s one publisher process gets acked by a scratch server's file stream."""
    async with scratch_nats(workdir) as url:
        nc = await nats.connect(url)
        try:
            await nc.jetstream().add_stream(
                StreamConfig(
                    name=SCRATCH_STREAM,
                    subjects=[f"{SCRATCH_SUBJECT_PREFIX}.>"],
                    retention=RetentionPolicy.WORK_QUEUE,
                    storage=StorageType.FILE,
                    discard=DiscardPolicy.NEW,
                    max_bytes=1 << 30,
                )
            )
        finally:
            await nc.close()
        result = await run_publisher(url, SCRATCH_SUBJECT_PREFIX, settings)
    if result["failed"]:
        raise RuntimeError(f"the scratch stream did not ack {result['failed']} messages")
    return float(result["published"] / (result["t_acked"] - result["t_first"]))


# ---- the measured run --------------------------------------------------------------------


class ProcessSampler:
    """Peak resident memory of the agent and of its nats-server, sampled periodically.

    Also the CPU seconds each has used since the sampler was made, and the share of the
    machine's CPU time the hypervisor took away meanwhile (:meth:`cpu_used`).
    """

    def __init__(self, agent: psutil.Process, server: psutil.Process) -> None:
        self.agent = agent
        self.server = server
        self.peak_agent = 0
        self.peak_server = 0
        #: The peak of agent + nats-server RSS sampled at the same moment: what the
        #: device must hold at once.
        self.peak_total = 0
        self._cpu_start = (cpu_seconds(agent), cpu_seconds(server), psutil.cpu_times())

    def sample(self) -> None:
        """Take one sample of both processes."""
        agent = server = 0
        with contextlib.suppress(psutil.Error):
            agent = self.agent.memory_info().rss
        with contextlib.suppress(psutil.Error):
            server = self.server.memory_info().rss
        self.peak_agent = max(self.peak_agent, agent)
        self.peak_server = max(self.peak_server, server)
        self.peak_total = max(self.peak_total, agent + server)

    def cpu_used(self) -> tuple[float, float, float]:
        """CPU seconds of the agent and of its nats-server, and steal %, since creation."""
        agent, server, machine_start = self._cpu_start
        machine_now = psutil.cpu_times()
        total = sum(machine_now) - sum(machine_start)
        steal = getattr(machine_now, "steal", 0.0) - getattr(machine_start, "steal", 0.0)
        return (
            cpu_seconds(self.agent) - agent,
            cpu_seconds(self.server) - server,
            100 * steal / total if total > 0 else 0.0,
        )

    async def run(self) -> None:
        """Sample every 100 ms until cancelled."""
        while True:
            self.sample()
            await asyncio.sleep(RSS_POLL_S)


def cpu_seconds(process: psutil.Process) -> float:
    """User plus system CPU time of a process so far."""
    times = process.cpu_times()
    return float(times.user + times.system)


class LatencyProbe:
    """Ingest→queryable latency, from probe events for entities not seen before.

    Each probe is published on its own subject (``events.graph.entity.probe``) and its
    JetStream ack awaited; the clock starts at the ack, the moment the event counts as
    accepted. The checker polls ``GET /graph/entities/{id}`` for the oldest probe not
    yet seen and stops its clock at the first 200. The processor applies in stream
    order, so once a probe is visible the next one is checked at once, without a pause.
    A figure therefore includes one HTTP query (on a new connection, a few ms here)
    and overstates the latency by at most the poll interval (10 ms under load, 2 ms
    idle): it is what a client polling the API sees. The probes share the stream and
    the consumer with the load, so under load the figure is mostly queueing: the time
    the backlog ahead of a probe takes to drain.
    """

    def __init__(self, js: JetStreamContext, http: httpx.AsyncClient, api: str) -> None:
        self.js = js
        self.http = http
        self.api = api
        self.pending: deque[tuple[str, float]] = deque()
        self.samples_ms: list[float] = []
        self.published = 0
        self.stopped = asyncio.Event()

    async def publish(self, entity_id: str) -> None:
        """Publish one probe; queue it for the checker once JetStream acked it."""
        subject = f"{ENTITY_SUBJECT_PREFIX}.{PROBE_TYPE}"
        await self.js.publish(subject, probe_event(entity_id), timeout=30.0)
        self.pending.append((entity_id, time.perf_counter()))
        self.published += 1

    async def publish_until_stopped(self, interval: float) -> None:
        """Publish a probe every ``interval`` seconds until :meth:`stop`."""
        while not self.stopped.is_set():
            await self.publish(f"probe-{self.published:06d}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopped.wait(), interval)

    def stop(self) -> None:
        """Publish no more probes."""
        self.stopped.set()

    async def visible(self, entity_id: str) -> bool:
        """Whether ``GET /graph/entities/{id}`` finds the entity."""
        reply = await self.http.get(f"{self.api}/graph/entities/{entity_id}")
        if reply.status_code not in (200, 404):
            reply.raise_for_status()
        return reply.status_code == 200

    async def time_oldest(self, poll_s: float) -> None:
        """Poll the oldest pending probe until it is visible, and record its latency."""
        entity_id, acked = self.pending[0]
        while not await self.visible(entity_id):
            await asyncio.sleep(poll_s)
        self.pending.popleft()
        self.samples_ms.append((time.perf_counter() - acked) * 1000)

    async def check_until_drained(self) -> None:
        """Time every probe until :meth:`stop` was called and none is left."""
        while not (self.stopped.is_set() and not self.pending):
            if self.pending:
                await self.time_oldest(PROBE_POLL_S)
            else:
                await asyncio.sleep(PROBE_POLL_S)

    async def idle(self, count: int) -> list[float]:
        """Latencies of ``count`` probes sent one at a time, each once the last is seen."""
        samples = []
        for number in range(count):
            await self.publish(f"idle-probe-{number:06d}")
            await self.time_oldest(IDLE_PROBE_POLL_S)
            samples.append(self.samples_ms.pop())
        return samples


async def applied_count(http: httpx.AsyncClient, api: str) -> int:
    """``semstreams_messages_processed_total`` from the agent's ``/metrics``."""
    reply = await http.get(f"{api}/metrics")
    reply.raise_for_status()
    return int(metric(parse_metrics(reply.text), "semstreams_messages_processed_total"))


class MeasuredRun:
    """Phase 3: the load from a publisher process into the agent, and what it took.

    Attributes filled in as the run goes, so a run cut short by the time budget can
    still report what it saw.
    """

    def __init__(self, agent: AgentProcess, settings: Settings, http: httpx.AsyncClient):
        self.agent = agent
        self.settings = settings
        self.http = http
        self.sampler = ProcessSampler(*agent.processes())
        self.first_publish = 0.0  # wall time of the load's first publish
        self.published: dict[str, Any] = {}
        self.applied = 0
        self.applied_at = 0.0  # wall time all events were seen applied
        self.loaded_ms: list[float] = []
        self.idle_ms: list[float] = []
        self.stats: dict[str, Any] = {}
        self.cpu: tuple[float, float, float] | None = None  # from ProcessSampler.cpu_used
        self._started = asyncio.Event()

    async def run(self) -> None:
        """Publish, probe and sample until everything is applied; then the idle probes."""
        nc = await nats.connect(self.agent.nats_url, name="bench-probe")
        probe = LatencyProbe(nc.jetstream(), self.http, self.agent.api)
        tasks = [
            asyncio.create_task(self.sampler.run()),
            asyncio.create_task(self._probe_from_first_publish(probe)),
            asyncio.create_task(probe.check_until_drained()),
        ]
        try:
            self.published = await run_publisher(
                self.agent.nats_url, ENTITY_SUBJECT_PREFIX, self.settings, self._on_started
            )
            self._started.set()
            probe.stop()
            await asyncio.gather(*tasks[1:])
            self.loaded_ms = list(probe.samples_ms)
            if self.published["failed"]:
                # Not all of the load is in the stream: it can never be applied in full.
                log(
                    f"the agent's stream did not ack {self.published['failed']} messages "
                    f"({self.published['missing']} unanswered): {self.published['errors']}"
                )
                self.applied = await applied_count(self.http, self.agent.api)
                return
            await self._wait_applied(self.settings.events + probe.published)
            self.cpu = self.sampler.cpu_used()
            self.idle_ms = await probe.idle(self.settings.idle_probes)
            self.sampler.sample()
            self.stats = (await self.http.get(f"{self.agent.api}/graph/stats")).json()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.loaded_ms = self.loaded_ms or list(probe.samples_ms)
            await nc.close()

    def _on_started(self, wall_time: float) -> None:
        self.first_publish = wall_time
        self._started.set()

    async def _probe_from_first_publish(self, probe: LatencyProbe) -> None:
        """Start the probe when the load's first message goes out, not before."""
        await self._started.wait()
        await probe.publish_until_stopped(self.settings.probe_interval_s)

    async def _wait_applied(self, target: int) -> None:
        """Poll ``/metrics`` until ``target`` events are applied."""
        while True:
            self.applied = await applied_count(self.http, self.agent.api)
            if self.applied >= target:
                self.applied_at = time.time()
                return
            await asyncio.sleep(METRICS_POLL_S)

    def figures(self) -> dict[str, Any]:
        """The run's figures as flat keys (``None`` for what it did not get to)."""
        events = self.settings.events
        complete = self.applied_at > 0 and self.published.get("failed") == 0
        end = self.applied_at if complete else time.time()
        duration = end - self.first_publish if self.first_publish else None
        applied_load = events if complete else min(self.applied, events)
        publish_s = (
            self.published["t_acked"] - self.published["t_first"] if self.published else None
        )
        return {
            "complete": complete,
            "events_per_s": round(applied_load / duration) if duration else None,
            "duration_s": round(duration, 2) if duration else None,
            "publish_s": round(publish_s, 2) if publish_s else None,
            "publish_events_per_s": round(events / publish_s) if publish_s else None,
            "publish_failed": self.published.get("failed"),
            "publisher_cpu_s": round(self.published["cpu_s"], 1) if self.published else None,
            "latency_p50_ms": percentile(self.loaded_ms, 0.50),
            "latency_p99_ms": percentile(self.loaded_ms, 0.99),
            "latency_max_ms": percentile(self.loaded_ms, 1.0),
            "latency_probes": len(self.loaded_ms),
            "idle_latency_p50_ms": percentile(self.idle_ms, 0.50),
            "idle_latency_p99_ms": percentile(self.idle_ms, 0.99),
            "agent_rss_mb": round(self.sampler.peak_agent / MB, 1),
            "nats_rss_mb": round(self.sampler.peak_server / MB, 1),
            "edge_rss_total_mb": round(self.sampler.peak_total / MB, 1),
            "agent_cpu_s": round(self.cpu[0], 1) if self.cpu else None,
            "nats_cpu_s": round(self.cpu[1], 1) if self.cpu else None,
            "cpu_steal_pct": round(self.cpu[2], 1) if self.cpu else None,
            "graph_entities": self.stats.get("entities"),
            "graph_triples": self.stats.get("triples"),
            "graph_edges": self.stats.get("edges"),
            "dead_letters": self.stats.get("dead_letters"),
        }


# ---- main --------------------------------------------------------------------------------


def log(message: str) -> None:
    """Progress on stderr, so that stdout ends with the JSON line alone."""
    print(message, file=sys.stderr, flush=True)


def machine() -> dict[str, Any]:
    """Where the figures come from, including how busy the machine already is."""
    return {
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "nats_server_version": nats_server_version(),
        "loadavg_1m_before": round(os.getloadavg()[0], 2),
    }


async def measured_run(
    workdir: Path,
    settings: Settings,
    deadline: float,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Phase 3 (or 4, with the small profile's ``overrides``) until ``deadline``."""
    figures: dict[str, Any] = {}
    async with (
        httpx.AsyncClient(timeout=10.0, limits=FRESH_CONNECTIONS) as http,
        running_agent(
            workdir, settings.graph_overrides(), http, overrides or settings.nats_overrides()
        ) as (agent, attempts),
    ):
        figures["agent_start_attempts"] = attempts
        run = MeasuredRun(agent, settings, http)
        # Right after /health says healthy, before any load: the agent at rest.
        run.sampler.sample()
        figures["agent_rss_after_start_mb"] = round(run.sampler.peak_agent / MB, 1)
        figures["nats_rss_after_start_mb"] = round(run.sampler.peak_server / MB, 1)
        try:
            async with asyncio.timeout_at(deadline):
                await run.run()
        except TimeoutError:
            log("not all events applied in time; reporting what was")
            run.applied = await applied_count(http, agent.api)
        figures.update(run.figures())
    return figures


def ceiling_ratio(figures: dict[str, Any]) -> float | None:
    """End-to-end events/s over the lower of the two ceilings measured in this run."""
    rate = figures.get("events_per_s")
    lower = min(figures["sqlite_upsert_ceiling_per_s"], figures["jetstream_publish_ceiling_per_s"])
    return round(rate / lower, 3) if rate and lower else None


SMALL_PROFILE_KEYS = (
    "complete",
    "events_per_s",
    "duration_s",
    "latency_p99_ms",
    "agent_rss_mb",
    "nats_rss_mb",
    "agent_rss_after_start_mb",
    "nats_rss_after_start_mb",
    "agent_cpu_s",
    "nats_cpu_s",
)


async def benchmark(settings: Settings) -> dict[str, Any]:
    """All four phases within the time budget; the figures as one flat dict."""
    now = asyncio.get_running_loop().time()
    graph = settings.graph_settings()
    figures: dict[str, Any] = {
        "events": settings.events,
        "entities": settings.entities,
        **machine(),
        "batch_size": graph.indexer.batch_processing.size,
        "queue_size": graph.queue_size,
        "workers": graph.workers,
        "predicate_index": graph.indexer.indexes.predicate,
    }
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        workdir = Path(tmp)
        log(f"SQLite ceiling: GraphStore.apply of {settings.events} events ...")
        figures["sqlite_upsert_ceiling_per_s"] = round(sqlite_ceiling(workdir, settings))
        log(f"JetStream ceiling: {settings.events} publishes to a scratch nats-server ...")
        figures["jetstream_publish_ceiling_per_s"] = round(
            await jetstream_ceiling(workdir, settings)
        )
        log("measured run: edge-agent + publisher process + latency probe ...")
        main_deadline = now + (MAIN_BUDGET_S if settings.small_profile else BUDGET_S)
        figures.update(await measured_run(workdir / "default", settings, main_deadline))
        figures["ingest_ratio_vs_ceiling"] = ceiling_ratio(figures)
        if settings.small_profile:
            log(f"small profile ({SMALL_PROFILE.name}): the same load again ...")
            small = await measured_run(workdir / "small", settings, now + BUDGET_S, small_profile())
            figures["small_profile_rss_total_mb"] = small["edge_rss_total_mb"]
            for key in SMALL_PROFILE_KEYS:
                figures[f"small_profile_{key}"] = small[key]
            # Exit 1 (run_main) unless both runs applied the whole load in time.
            figures["complete"] = bool(figures["complete"] and small["complete"])
    figures["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
    return figures


def parse_args() -> argparse.Namespace:
    """The command line: the benchmark (default) or the internal ``publish`` role."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--probe-interval", type=float, default=0.05, help="seconds")
    parser.add_argument("--idle-probes", type=int, default=50)
    parser.add_argument("--batch-size", type=int, help="graph batch size (default: agent's)")
    parser.add_argument("--queue-size", type=int, help="graph queue_size (default: agent's)")
    parser.add_argument("--workers", type=int, help="graph workers (default: agent's)")
    parser.add_argument(
        "--no-predicate-index", action="store_true", help="switch the predicate index off"
    )
    parser.add_argument(
        "--no-small-profile",
        action="store_true",
        help="skip the second run with examples/edge-small.json's settings",
    )
    parser.add_argument(
        "--sync-interval", help='nats.jetstream.sync_interval ("always" or a duration)'
    )
    parser.add_argument(
        "--sqlite-synchronous", choices=["full", "normal"], help="graph.config.sqlite_synchronous"
    )
    roles = parser.add_subparsers(dest="role")
    publish = roles.add_parser("publish", help="internal: be the publisher process")
    publish.add_argument("--url", required=True)
    publish.add_argument("--prefix", required=True)
    publish.add_argument("--events", type=int, required=True)
    publish.add_argument("--entities", type=int, required=True)
    return parser.parse_args()


def main() -> int:
    """Run the benchmark and print its JSON line last (or be the publisher process)."""
    args = parse_args()
    if args.role == "publish":
        result = asyncio.run(publish_load(args.url, args.prefix, args.events, args.entities))
        print(json.dumps(result), flush=True)
        return 0
    settings = Settings(
        events=args.events,
        entities=args.entities,
        probe_interval_s=args.probe_interval,
        idle_probes=args.idle_probes,
        batch_size=args.batch_size,
        queue_size=args.queue_size,
        workers=args.workers,
        no_predicate_index=args.no_predicate_index,
        small_profile=not args.no_small_profile,
        sync_interval=args.sync_interval,
        sqlite_synchronous=args.sqlite_synchronous,
    )
    return run_main(benchmark(settings), log, "every process it started is stopped")


if __name__ == "__main__":
    sys.exit(main())
