"""Peer system for the edge→cloud sync benchmark: NATS leafnode + JetStream sourcing.

This is what the sync benchmark compares SemStreams' own sync against: the stock NATS
way of getting edge events to the cloud. Everything runs on 127.0.0.1 in a temp
directory, and every process started here is stopped at the end, also on errors,
cancellation or SIGTERM (the servers run in their own process groups and, on Linux,
are also SIGTERMed by the kernel if this process dies).

The setup:

* a **hub** ``nats-server`` (JetStream domain ``hub``) with a ``leafnodes { listen }``
  block, and an **edge** ``nats-server`` (JetStream domain ``edge``) whose
  ``leafnodes { remotes }`` dials the hub. Both blocks carry the same ``compression``
  mode (``s2_auto`` unless told otherwise); each side of a leafnode connection
  compresses what *it* sends, by its own mode.
* on the edge, the file stream ``EDGE_EVENTS`` on ``events.graph.entity.>``;
* on the hub, the file stream ``HUB_EVENTS`` that *sources* ``EDGE_EVENTS`` through
  the edge domain's API (``external.api = "$JS.edge.API"``). The hub then runs a
  flow-controlled consumer on the edge over the leafnode connection.

A run publishes the events to the edge with JetStream ``publish_async`` (bounded in
flight, every ack awaited) and polls ``HUB_EVENTS`` until it holds them all.

How bytes are read: the ``in_bytes``/``out_bytes`` that ``/leafz`` reports for a leaf
connection are *not* wire bytes. nats-server counts only message payloads (headers
included) as it parses and delivers them: after S2 decompression, before S2
compression, and without the protocol around them (``LMSG`` lines with subjects and
reply subjects, interest propagation, PING/PONG). An experiment agrees: 5,000
payloads of 1 KB of ``a`` give ``in_bytes`` = 5,040,072 with compression ``off`` and
with ``s2_fast`` alike, while the TCP bytes are 5.7 MB and 0.12 MB. So the wire figure
is taken from the kernel: the TCP byte counters (``tcp_info``, read with ``ss -ti``)
of the hub's end of the leafnode socket, i.e. the TCP payload that crossed the
connection in each direction, compressed as it was sent. Where ``ss`` is not
available the ``/leafz`` figure is used instead, and ``leafnode_wire_source`` says
which one it is. Both are read once the leaf is connected and sourcing is established
(idle) and again when the last event has been sourced; the difference is reported, so
the setup is not counted but the sourcing consumer's flow control and heartbeats
during the run are.

Two things move the compressed figure a lot:

* ``s2_auto`` picks its level from the connection's RTT (default thresholds 10/50/100
  ms). On idle loopback that is ``s2_uncompressed`` (S2 framing, no compression), but
  a busy server answers PINGs late enough that a side may switch to ``s2_fast``
  mid-run, so ``s2_auto`` results vary from run to run. ``leafnode_compression``
  (hub) and ``leafnode_compression_edge`` report the modes at the end; the edge's is
  the one that matters, as it compresses the edge→hub direction. For a stable WAN-like
  figure pass ``compression="s2_fast"`` (what ``s2_auto`` uses at 10-50 ms RTT).
* S2 compresses each write to the socket on its own, so events sent in a burst share
  a block and compress far better than events trickling in one at a time. ``rate``
  paces the publishing like a live fleet would.

Run standalone (``.venv/bin/python bench/leafnode_peer.py``) it sends a drone fleet's
telemetry (:func:`drone_workload`) and prints one JSON line with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nats
from common import die_with_parent, free_ports, run_main, stop_group, tcp_bytes, venv_binary
from nats.aio.client import Client as NATS
from nats.js.api import ExternalStream, StorageType, StreamConfig, StreamSource

EDGE_STREAM = "EDGE_EVENTS"
HUB_STREAM = "HUB_EVENTS"
EDGE_DOMAIN = "edge"
HUB_DOMAIN = "hub"
SUBJECT_PREFIX = "events.graph.entity"
#: Unacked JetStream publishes allowed in flight at once.
MAX_IN_FLIGHT = 2000
START_TIMEOUT_S = 20.0
POLL_S = 0.02
#: Idle time after sourcing is established, before the baseline is read.
SETTLE_S = 0.5
STOP_TIMEOUT_S = 10.0
BASE_TIME = datetime(2026, 11, 29, 10, 0, 0, tzinfo=UTC)


def log(message: str) -> None:
    """Progress on stderr (stdout carries only the JSON line)."""
    print(f"[leafnode_peer] {message}", file=sys.stderr, flush=True)


# ---- workload ----------------------------------------------------------------------------


def _stamp(moment: datetime) -> str:
    """RFC 3339 UTC with milliseconds and a ``Z``, e.g. ``2026-11-29T10:00:00.100Z``."""
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


METRES_PER_DEGREE = 111_320.0
METRES_PER_DEGREE_LONGITUDE = METRES_PER_DEGREE * math.cos(math.radians(37.77))
ALERT_KINDS = ("low_battery", "geofence_breach", "link_degraded", "obstacle_detected")


@dataclass
class _Drone:
    """The random-walk state of one drone."""

    entity_id: str
    latitude: float
    longitude: float
    heading: float  # radians, 0 = north
    speed: float  # metres per second
    altitude: float  # metres
    battery: float  # percent
    status: str

    def step(self, rng: random.Random, dt: float) -> None:
        """Advance the drone by ``dt`` seconds."""
        if self.status == "hovering":
            self.altitude = min(400.0, max(30.0, self.altitude + rng.gauss(0.0, 0.1)))
            self.battery -= rng.uniform(0.001, 0.003)
            if rng.random() < 0.01:
                self.status = "flying"
        else:  # flying or returning
            if self.status == "flying":
                self.heading += rng.gauss(0.0, 0.05)
                self.speed = min(18.0, max(2.0, self.speed + rng.gauss(0.0, 0.3)))
                if rng.random() < 0.0005:
                    self.status = "hovering"
            metres = self.speed * dt
            self.latitude += metres * math.cos(self.heading) / METRES_PER_DEGREE
            self.longitude += metres * math.sin(self.heading) / METRES_PER_DEGREE_LONGITUDE
            self.altitude = min(400.0, max(30.0, self.altitude + rng.gauss(0.0, 0.4)))
            self.battery -= rng.uniform(0.002, 0.006)
        if self.battery < 20.0 and self.status != "returning":
            self.status = "returning"
            self.heading += math.pi
        self.battery = max(0.0, self.battery)

    def event(self, moment: datetime) -> dict[str, Any]:
        """The telemetry event for the drone's current state."""
        return {
            "entity_id": self.entity_id,
            "entity_type": "drone",
            "priority": 1,
            "timestamp": _stamp(moment),
            "properties": {
                "geo.location.latitude": round(self.latitude, 6),
                "geo.location.longitude": round(self.longitude, 6),
                "battery": round(self.battery, 1),
                "status": self.status,
                "altitude": round(self.altitude, 1),
            },
            "source": "telemetry",
        }


def drone_workload(
    drones: int = 100,
    hz: int = 10,
    seconds: int = 20,
    seed: int = 1,
    alert_every: float | None = 1.0,
) -> list[tuple[str, bytes]]:
    """A drone fleet's telemetry as (subject, compact JSON payload) pairs, in time order.

    Each of ``drones`` drones (``drone-000`` ...) reports its position, altitude,
    battery and status ``hz`` times a second for ``seconds`` seconds, on
    ``events.graph.entity.drone`` (priority 1); the values are a seeded random walk
    around San Francisco, so the same arguments give the same bytes. Every
    ``alert_every`` seconds (``None`` or 0: never) one priority-9 event of type
    ``alert`` about a random drone goes to ``events.graph.entity.alert``.

    The default is 20,000 telemetry events plus 20 alerts.
    """
    rng = random.Random(seed)
    fleet = [
        _Drone(
            entity_id=f"drone-{number:03d}",
            latitude=37.7749 + rng.uniform(-0.05, 0.05),
            longitude=-122.4194 + rng.uniform(-0.05, 0.05),
            heading=rng.uniform(0.0, 2 * math.pi),
            speed=rng.uniform(5.0, 15.0),
            altitude=rng.uniform(60.0, 150.0),
            battery=rng.uniform(60.0, 100.0),
            status="flying",
        )
        for number in range(drones)
    ]
    ticks = hz * seconds
    alert_ticks = max(1, round(alert_every * hz)) if alert_every else 0
    encode = json.JSONEncoder(separators=(",", ":")).encode
    events: list[tuple[str, bytes]] = []
    alerts = 0
    for tick in range(ticks):
        tick_time = BASE_TIME + timedelta(seconds=tick / hz)
        for number, drone in enumerate(fleet):
            drone.step(rng, 1.0 / hz)
            # Drones are not in lock step: each reports a few ms into the tick.
            moment = tick_time + timedelta(milliseconds=(number * 7) % max(1, 1000 // hz))
            events.append((f"{SUBJECT_PREFIX}.drone", encode(drone.event(moment)).encode()))
        if alert_ticks and tick % alert_ticks == alert_ticks - 1:
            drone = rng.choice(fleet)
            alert = {
                "entity_id": f"alert-{alerts:05d}",
                "entity_type": "alert",
                "priority": 9,
                "timestamp": _stamp(tick_time + timedelta(milliseconds=rng.randrange(100))),
                "properties": {
                    "alert.kind": rng.choice(ALERT_KINDS),
                    "severity": "critical",
                    "drone_id": drone.entity_id,
                    "geo.location.latitude": round(drone.latitude, 6),
                    "geo.location.longitude": round(drone.longitude, 6),
                    "battery": round(drone.battery, 1),
                },
                "relationships": [{"predicate": "about", "object": drone.entity_id}],
                "source": "telemetry",
            }
            events.append((f"{SUBJECT_PREFIX}.alert", encode(alert).encode()))
            alerts += 1
    return events


# ---- servers -----------------------------------------------------------------------------


@dataclass
class _Server:
    """One running ``nats-server`` and where to reach it."""

    name: str
    process: subprocess.Popen[bytes]
    client_port: int
    http_port: int
    log_path: Path

    @property
    def url(self) -> str:
        """The client URL."""
        return f"nats://127.0.0.1:{self.client_port}"

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the server's log, for error messages."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        """SIGTERM the server's process group; SIGKILL it if it lingers."""
        stop_group(self.process, STOP_TIMEOUT_S)


def _start_server(
    stack: contextlib.ExitStack, workdir: Path, name: str, config: str, ports: tuple[int, int]
) -> _Server:
    """Write ``config`` and start ``nats-server`` with it; ``stack`` stops it later."""
    conf_path = workdir / f"{name}.conf"
    conf_path.write_text(config)
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [venv_binary("nats-server"), "-c", str(conf_path)],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group, so killpg reaches only it
            preexec_fn=die_with_parent,  # noqa: PLW1509 - a single pre-resolved libc call
        )
    server = _Server(name, process, ports[0], ports[1], log_path)
    stack.callback(server.stop)
    return server


def _hub_config(workdir: Path, client: int, http: int, leaf: int, compression: str) -> str:
    return f"""
server_name: hub
listen: 127.0.0.1:{client}
http: 127.0.0.1:{http}
jetstream {{
  store_dir: "{workdir / "hub-js"}"
  domain: {HUB_DOMAIN}
}}
leafnodes {{
  listen: 127.0.0.1:{leaf}
  compression: {compression}
}}
"""


def _edge_config(workdir: Path, client: int, http: int, hub_leaf: int, compression: str) -> str:
    return f"""
server_name: edge
listen: 127.0.0.1:{client}
http: 127.0.0.1:{http}
jetstream {{
  store_dir: "{workdir / "edge-js"}"
  domain: {EDGE_DOMAIN}
}}
leafnodes {{
  reconnect: 1
  remotes = [
    {{ url: "nats-leaf://127.0.0.1:{hub_leaf}", compression: {compression} }}
  ]
}}
"""


def _get_json(port: int, path: str) -> dict[str, Any]:
    """GET ``http://127.0.0.1:<port><path>`` (a monitoring endpoint) as JSON."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        data: dict[str, Any] = json.load(response)
        return data


async def _monitor(server: _Server, path: str) -> dict[str, Any]:
    """A monitoring endpoint of ``server``, read off the event loop's thread."""
    return await asyncio.to_thread(_get_json, server.http_port, path)


async def _wait_ready(server: _Server, deadline: float) -> None:
    """Wait until ``/healthz`` of ``server`` answers OK (JetStream included)."""
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} nats-server exited:\n{server.log_tail()}")
        with contextlib.suppress(OSError, ValueError):
            if (await _monitor(server, "/healthz")).get("status") == "ok":
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{server.name} nats-server not ready:\n{server.log_tail()}")
        await asyncio.sleep(POLL_S)


async def _leaf(server: _Server) -> dict[str, Any] | None:
    """The one leafnode connection ``/leafz`` of ``server`` lists, if any."""
    leafs: list[dict[str, Any]] = (await _monitor(server, "/leafz")).get("leafs") or []
    return leafs[0] if leafs else None


# ---- wire bytes --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Counters:
    """Byte counters of the leafnode connection, seen from the hub."""

    leafz_in: int  # /leafz in_bytes: message bytes the hub received from the edge
    leafz_out: int  # /leafz out_bytes: message bytes the hub sent to the edge
    wire_in: int | None  # TCP payload bytes the hub's socket received (None: no ss)
    wire_out: int | None  # TCP payload bytes the hub's socket sent


async def _counters(hub: _Server, hub_leaf_port: int) -> _Counters:
    """The hub's ``/leafz`` counters and its leaf socket's TCP counters, now."""
    leaf = await _leaf(hub)
    if leaf is None:
        raise RuntimeError(f"the leafnode connection is gone:\n{hub.log_tail()}")
    wire = await asyncio.to_thread(tcp_bytes, hub_leaf_port)
    return _Counters(
        leafz_in=int(leaf["in_bytes"]),
        leafz_out=int(leaf["out_bytes"]),
        wire_in=wire[0] if wire else None,
        wire_out=wire[1] if wire else None,
    )


# ---- the run -----------------------------------------------------------------------------


async def _wait_for_leaf(hub: _Server, edge: _Server, deadline: float) -> tuple[str, str]:
    """Wait until hub and edge both list the leafnode connection; their modes."""
    while True:
        hub_leaf, edge_leaf = await _leaf(hub), await _leaf(edge)
        if hub_leaf is not None and edge_leaf is not None:
            return str(hub_leaf.get("compression", "")), str(edge_leaf.get("compression", ""))
        if time.monotonic() > deadline:
            raise TimeoutError(f"leafnode did not connect:\n{edge.log_tail()}")
        await asyncio.sleep(POLL_S)


async def _wait_for_sourcing(hub_nc: NATS, deadline: float) -> None:
    """Wait until the hub reports its source of ``EDGE_EVENTS`` active, without error."""
    js = hub_nc.jetstream()
    while True:
        info = await js.stream_info(HUB_STREAM)
        source = info.sources[0] if info.sources else None
        if source is not None and source.error is None and source.active not in (None, -1):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"sourcing did not start: {source}")
        await asyncio.sleep(POLL_S)


async def _publish_all(
    edge_nc: NATS, events: Sequence[tuple[str, bytes]], deadline: float, rate: float | None
) -> None:
    """JetStream-publish every event to the edge, ``MAX_IN_FLIGHT`` unacked at most.

    With ``rate`` (events per second) event ``i`` is sent no earlier than ``i / rate``
    seconds after the first; without it, as fast as the acks allow.

    Raises:
        TimeoutError: not every publish was acked by ``deadline``.
        nats.js.errors.Error: the edge refused an event.
    """
    # The window is kept here: were nats-py's own limit reached, its publish_async would
    # turn a cancellation (our timeout, SIGTERM) into TooManyStalledMsgsError.
    js = edge_nc.jetstream(publish_async_max_pending=len(events) + 1)
    start = time.monotonic()
    async with asyncio.timeout(max(0.0, deadline - start)):
        acks: list[asyncio.Future[Any]] = []
        for index, (subject, payload) in enumerate(events):
            if index >= MAX_IN_FLIGHT:
                await acks[index - MAX_IN_FLIGHT]  # raises if the edge refused that one
            if rate is not None:
                ahead = start + index / rate - time.monotonic()
                if ahead > 0.001:
                    await asyncio.sleep(ahead)
            acks.append(await js.publish_async(subject, payload))
        await asyncio.gather(*acks)


async def _wait_for_count(hub_nc: NATS, count: int, deadline: float) -> int:
    """Poll ``HUB_EVENTS`` until it holds ``count`` messages; the count it reached."""
    js = hub_nc.jetstream()
    while True:
        messages = (await js.stream_info(HUB_STREAM)).state.messages
        if messages >= count:
            return messages
        if time.monotonic() > deadline:
            raise TimeoutError(f"HUB_EVENTS holds {messages} of {count} events")
        await asyncio.sleep(POLL_S)


@contextlib.contextmanager
def _workdir() -> Iterator[Path]:
    """A temp directory, removed afterwards (after the servers are stopped)."""
    with tempfile.TemporaryDirectory(prefix="leafnode-peer-") as path:
        yield Path(path)


async def run_leafnode_peer(
    events: Sequence[tuple[str, bytes]],
    *,
    timeout: float = 120.0,
    compression: str = "s2_auto",
    rate: float | None = None,
) -> dict[str, Any]:
    """Sync ``events`` edge→hub with a NATS leafnode and JetStream sourcing; measure it.

    Starts the hub and edge servers and their streams (see the module docstring),
    publishes every (subject, payload) to the edge with JetStream, waits until the
    hub's ``HUB_EVENTS`` holds them all, and stops everything again.

    Args:
        events: (subject, payload) pairs; subjects must match ``events.graph.entity.>``.
        timeout: seconds allowed from the first publish until all events are sourced.
        compression: the leafnode compression mode for both ends, e.g. ``s2_auto``,
            ``s2_fast``, ``s2_best``, ``off``.
        rate: publish at this many events per second (like a live fleet would), or
            ``None`` (default) for as fast as the edge acks them. Batching matters:
            S2 compresses each write to the leaf socket on its own, so a burst
            compresses far better than events trickling in one by one.

    Returns:
        Flat figures: ``leafnode_events`` (messages sourced into ``HUB_EVENTS``),
        ``leafnode_wire_bytes`` (both directions over the leaf connection, setup
        excluded), ``leafnode_wire_bytes_per_event``, ``leafnode_seconds`` (first
        publish until all sourced), ``leafnode_compression`` (the mode the hub's
        ``/leafz`` reports); and, for context, the per-direction wire bytes,
        ``leafnode_wire_source`` (``tcp_info`` or ``leafz``), the ``/leafz`` message
        byte counters, the payload bytes, the edge's compression mode, the time until
        all publishes were acked, and the server version.

    Raises:
        TimeoutError: a server, the leaf connection, the sourcing or the run did not
            get there in time.
        RuntimeError: a server exited or the leaf connection dropped.
    """
    if not events:
        raise ValueError("no events to send")
    hub_client, hub_http, hub_leaf_port, edge_client, edge_http = free_ports(5)
    payload_bytes = sum(len(payload) for _, payload in events)
    with contextlib.ExitStack() as stack:  # stops the servers, then removes the dir
        workdir = stack.enter_context(_workdir())
        hub = _start_server(
            stack,
            workdir,
            "hub",
            _hub_config(workdir, hub_client, hub_http, hub_leaf_port, compression),
            (hub_client, hub_http),
        )
        edge = _start_server(
            stack,
            workdir,
            "edge",
            _edge_config(workdir, edge_client, edge_http, hub_leaf_port, compression),
            (edge_client, edge_http),
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        await _wait_ready(hub, deadline)
        await _wait_ready(edge, deadline)
        await _wait_for_leaf(hub, edge, deadline)
        hub_nc = edge_nc = None
        try:
            hub_nc = await nats.connect(hub.url, name="leafnode-peer-hub", max_reconnect_attempts=0)
            edge_nc = await nats.connect(
                edge.url, name="leafnode-peer-edge", max_reconnect_attempts=0
            )
            await edge_nc.jetstream().add_stream(
                StreamConfig(
                    name=EDGE_STREAM,
                    subjects=[f"{SUBJECT_PREFIX}.>"],
                    storage=StorageType.FILE,
                )
            )
            await hub_nc.jetstream().add_stream(
                StreamConfig(
                    name=HUB_STREAM,
                    storage=StorageType.FILE,
                    sources=[
                        StreamSource(
                            name=EDGE_STREAM,
                            external=ExternalStream(api=f"$JS.{EDGE_DOMAIN}.API"),
                        )
                    ],
                )
            )
            await _wait_for_sourcing(hub_nc, deadline)
            await asyncio.sleep(SETTLE_S)
            before = await _counters(hub, hub_leaf_port)
            _, edge_mode_start = await _wait_for_leaf(hub, edge, deadline)

            start = time.monotonic()
            run_deadline = start + timeout
            await _publish_all(edge_nc, events, run_deadline, rate)
            published = time.monotonic()
            sourced = await _wait_for_count(hub_nc, len(events), run_deadline)
            seconds = time.monotonic() - start
            after = await _counters(hub, hub_leaf_port)
            hub_mode, edge_mode = await _wait_for_leaf(hub, edge, run_deadline)
            version = str((await _monitor(hub, "/varz")).get("version", ""))
        finally:
            for nc in (edge_nc, hub_nc):
                if nc is not None:
                    with contextlib.suppress(Exception):
                        await nc.close()

    leafz_in = after.leafz_in - before.leafz_in
    leafz_out = after.leafz_out - before.leafz_out
    if after.wire_in is not None and before.wire_in is not None:
        assert after.wire_out is not None and before.wire_out is not None
        source = "tcp_info"
        edge_to_hub = after.wire_in - before.wire_in
        hub_to_edge = after.wire_out - before.wire_out
    else:  # no kernel counters: fall back to /leafz, which undercounts (see docstring)
        source = "leafz"
        edge_to_hub, hub_to_edge = leafz_in, leafz_out
    wire = edge_to_hub + hub_to_edge
    return {
        "leafnode_events": sourced,
        "leafnode_wire_bytes": wire,
        "leafnode_wire_bytes_per_event": round(wire / sourced, 2),
        "leafnode_seconds": round(seconds, 3),
        "leafnode_compression": hub_mode,
        "leafnode_compression_edge": edge_mode,
        "leafnode_compression_edge_start": edge_mode_start,
        "leafnode_compression_configured": compression,
        "leafnode_wire_source": source,
        "leafnode_wire_bytes_edge_to_hub": edge_to_hub,
        "leafnode_wire_bytes_hub_to_edge": hub_to_edge,
        "leafnode_leafz_in_bytes": leafz_in,
        "leafnode_leafz_out_bytes": leafz_out,
        "leafnode_payload_bytes": payload_bytes,
        "leafnode_publish_seconds": round(published - start, 3),
        "leafnode_rate": rate,
        "leafnode_events_per_second": round(sourced / seconds, 1),
        "leafnode_nats_server_version": version,
    }


# ---- standalone --------------------------------------------------------------------------


async def _main_task(args: argparse.Namespace) -> dict[str, Any]:
    """Generate the workload and run the peer."""
    events = drone_workload(args.drones, args.hz, args.seconds, args.seed)
    log(f"{len(events)} events, {sum(len(p) for _, p in events)} payload bytes")
    return await run_leafnode_peer(
        events, compression=args.compression, timeout=args.timeout, rate=args.rate
    )


def main() -> int:
    """Run the peer on the drone workload and print its figures as one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drones", type=int, default=100)
    parser.add_argument("--hz", type=int, default=10)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--compression", default="s2_auto", help="leafnode compression mode")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds for the run")
    parser.add_argument(
        "--rate", type=float, help="events per second (default: as fast as possible)"
    )
    return run_main(_main_task(parser.parse_args()), log, "the servers are stopped")


if __name__ == "__main__":
    sys.exit(main())
