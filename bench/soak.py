"""Soak: an edge and its hub under mixed load, a flapping link and random kills, for long.

Run it with ``.venv/bin/python bench/soak.py`` (30 minutes by default; ``--minutes``
changes it, ``--help`` lists the knobs). Not part of ``make test``.

What runs: ``cloud-hub run`` and ``edge-agent run`` as child processes (each with its
embedded nats-server and SQLite graph), the edge's ``websocket_output`` dialling the hub
through a loopback proxy this script controls (``tests/linkproxy.py``), all on
127.0.0.1 with state in a temp directory (``--keep`` keeps it). Meanwhile:

- **ingest**: every 0.5 s one reading of ``--drones`` drones is POSTed to the edge's
  ``/ingest`` and retried until it is accepted (202), so a killed edge delays readings
  but loses none; the last accepted reading of each drone is remembered;
- **queries**: entity lookups, depth-2 PathRAG and ``/graph/stats`` on the edge, in a
  loop; answers that are not 200 while the edge is up are errors, refused connections
  while it is down are counted as ``queries_unavailable``;
- **link**: cut for 2-15 s every 20-60 s (``--no-flaps`` turns it off);
- **kills**: every ``--kill-every`` s (jittered) a ``kill -9`` of one of the edge agent,
  the edge's nats-server, the hub, the hub's nats-server (the agents restart their
  servers themselves; this script restarts a killed agent at once);
- **samples** every 10 s: RSS and open file descriptors of the four processes, the WAL
  size of both graphs, the link's bytes.

At the end the load stops, the link is restored, and the invariant checker of the sync
tests (``tests/integration/sync_harness.py``) runs: the hub holds exactly the edge's
entities, no stale or conflicting delta was recorded, each batch is stored once; plus
every drone's last accepted reading is what the edge holds. ``invariants`` is ``"ok"``
or the first violation, and ``complete`` is false (exit 1) on a violation.

RSS trend: a restart resets a process's memory, so the slope is fitted within each
uninterrupted run of a process (after its first 5 minutes, while its caches fill), with
one intercept per run and one slope shared by all (``<process>_rss_slope_mb_per_h``,
null when no run lasted past its warm-up; ``<process>_longest_run_s`` says how long the
longest lasted). The last line on stdout is
one JSON object with flat keys; ``--series FILE`` writes every sample as JSON too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from common import percentile  # noqa: E402

from tests.integration.sync_harness import SyncPair, drone_round, export, post_events  # noqa: E402

SAMPLE_EVERY_S = 10.0
# Measured: a fresh agent's RSS climbs for about 5 minutes (caches and SQLite's page
# caches filling) and then stays within a megabyte; the trend is what comes after.
WARM_UP_S = 300.0
PROCESSES = ("edge", "edge_nats", "hub", "hub_nats")


def log(message: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---- processes -------------------------------------------------------------------------


def pids(pair: SyncPair) -> dict[str, int | None]:
    """The four processes' pids (None while one is down)."""
    edge_state, hub_state = state_dirs(pair)

    def server_pid(state: Path) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            pid = int((state / "nats-server.pid").read_text())
            if Path(f"/proc/{pid}").exists():
                return pid
        return None

    def agent_pid(process: Any) -> int | None:
        proc = process.proc
        return proc.pid if proc is not None and proc.poll() is None else None

    return {
        "edge": agent_pid(pair.edge),
        "edge_nats": server_pid(edge_state),
        "hub": agent_pid(pair.hub),
        "hub_nats": server_pid(hub_state),
    }


def state_dirs(pair: SyncPair) -> tuple[Path, Path]:
    """The edge's and the hub's state directories."""
    return Path(pair.edge.config["state_dir"]), Path(pair.hub.config["state_dir"])


def rss_mb(pid: int) -> float | None:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


def open_fds(pid: int) -> int | None:
    with contextlib.suppress(OSError):
        return len(os.listdir(f"/proc/{pid}/fd"))
    return None


def file_mb(path: Path) -> float:
    with contextlib.suppress(OSError):
        return path.stat().st_size / 2**20
    return 0.0


# ---- the load --------------------------------------------------------------------------


@dataclass
class Load:
    """What the load threads did; shared with the main thread under ``lock``."""

    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    rounds_accepted: int = 0
    events_accepted: int = 0
    query_ms: dict[str, list[float]] = field(default_factory=dict)
    queries: Counter[str] = field(default_factory=Counter)
    kills: Counter[str] = field(default_factory=Counter)
    link_cuts: int = 0
    link_down_s: float = 0.0
    failures: list[str] = field(default_factory=list)


def ingest(pair: SyncPair, load: Load, drones: int) -> None:
    """One reading of every drone each 0.5 s, each retried until accepted."""
    round_ = 0
    while not load.stop.is_set():
        started = time.monotonic()
        try:
            post_events(pair.edge.api, drone_round(round_, drones), timeout=120)
        except Exception as exc:  # any failure ends the run, with its reason
            load.failures.append(f"ingest of round {round_} not accepted in 120 s: {exc}")
            load.stop.set()
            return
        with load.lock:
            load.rounds_accepted = round_ + 1
            load.events_accepted += drones
        round_ += 1
        time.sleep(max(0.0, 0.5 - (time.monotonic() - started)))


def query(pair: SyncPair, load: Load, drones: int) -> None:
    """Entity, PathRAG and stats queries on the edge, back to back."""
    rng = random.Random(7)
    while not load.stop.is_set():
        drone = f"drone-{rng.randrange(drones):04d}"
        kind, path, body = rng.choice(
            [
                ("entity", f"/graph/entities/{drone}", None),
                ("pathrag", "/graph/query/path", {"start_entity": drone, "max_depth": 2}),
                ("stats", "/graph/stats", None),
            ]
        )
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{pair.edge.api}{path}", data=data)
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                reply.read()
            outcome = "ok"
        except urllib.error.HTTPError as exc:
            # 404: a drone not ingested yet (only at the start).
            outcome = "not_found" if exc.code == 404 else f"http_{exc.code}"
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            outcome = "unavailable"
        elapsed_ms = (time.perf_counter() - started) * 1000
        with load.lock:
            load.queries[outcome] += 1
            if outcome == "ok":
                load.query_ms.setdefault(kind, []).append(elapsed_ms)
        if outcome == "unavailable":
            time.sleep(0.2)
        else:
            time.sleep(0.02)


def flap(pair: SyncPair, load: Load, seed: int) -> None:
    """Cut the link for 2-15 s every 20-60 s."""
    rng = random.Random(seed)
    while not load.stop.wait(rng.uniform(20, 60)):
        down = rng.uniform(2, 15)
        pair.proxy.cut()
        load.stop.wait(down)
        pair.proxy.restore()
        with load.lock:
            load.link_cuts += 1
            load.link_down_s += down


def chaos(pair: SyncPair, load: Load, every_s: float, seed: int) -> None:
    """``kill -9`` one process every ``every_s`` (jittered); restart a killed agent."""
    rng = random.Random(seed)
    while not load.stop.wait(rng.uniform(0.5, 1.5) * every_s):
        victim = rng.choice(PROCESSES)
        pid = pids(pair)[victim]
        if pid is None:
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with load.lock:
            load.kills[victim] += 1
        log(f"kill -9 {victim} (pid {pid})")
        if victim in ("edge", "hub"):
            agent = pair.edge if victim == "edge" else pair.hub
            assert agent.proc is not None
            agent.proc.wait(10)
            try:
                agent.start(timeout=60)
            except AssertionError as exc:
                load.failures.append(f"{victim} did not restart: {exc}")
                load.stop.set()


# ---- samples and figures -------------------------------------------------------------


def sample(pair: SyncPair, started: float) -> dict[str, Any]:
    """One row: per process pid, RSS, fds; WAL sizes; link bytes."""
    row: dict[str, Any] = {"t": round(time.monotonic() - started, 1)}
    for name, pid in pids(pair).items():
        row[f"{name}_pid"] = pid
        row[f"{name}_rss_mb"] = rss_mb(pid) if pid else None
        row[f"{name}_fds"] = open_fds(pid) if pid else None
    edge_state, hub_state = state_dirs(pair)
    row["edge_wal_mb"] = file_mb(edge_state / "graph.db-wal")
    row["hub_wal_mb"] = file_mb(hub_state / "graph.db-wal")
    row["wire_bytes_up"] = pair.proxy.bytes_up
    row["wire_bytes_down"] = pair.proxy.bytes_down
    return row


def within_run_slope(points: list[tuple[int, float, float]]) -> float | None:
    """Least-squares slope of (run, t, y) with one intercept per run: per second.

    Each run's times and values are centred on its own means, so a restart's drop in
    memory is not mistaken for a trend. None with fewer than two distinct times.
    """
    by_run: dict[int, list[tuple[float, float]]] = {}
    for run, t, y in points:
        by_run.setdefault(run, []).append((t, y))
    numerator = denominator = 0.0
    for values in by_run.values():
        mean_t = sum(t for t, _ in values) / len(values)
        mean_y = sum(y for _, y in values) / len(values)
        numerator += sum((t - mean_t) * (y - mean_y) for t, y in values)
        denominator += sum((t - mean_t) ** 2 for t, _ in values)
    return numerator / denominator if denominator else None


def longest_run(rows: list[dict[str, Any]], name: str) -> float:
    """The longest time one pid of ``name`` was seen running, in seconds."""
    seen: dict[int, list[float]] = {}
    for row in rows:
        if row[f"{name}_pid"] is not None:
            seen.setdefault(row[f"{name}_pid"], []).append(row["t"])
    return round(max((times[-1] - times[0] for times in seen.values()), default=0.0), 1)


def memory_figures(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per process: RSS slope within runs (MB/h), max and last RSS, max and last fds."""
    figures: dict[str, Any] = {}
    for name in PROCESSES:
        points: list[tuple[int, float, float]] = []
        run_started: dict[int, float] = {}
        for row in rows:
            pid, rss = row[f"{name}_pid"], row[f"{name}_rss_mb"]
            if pid is None or rss is None:
                continue
            run_started.setdefault(pid, row["t"])
            if row["t"] - run_started[pid] >= WARM_UP_S:
                points.append((pid, row["t"], rss))
        slope = within_run_slope(points)
        rss_values = [row[f"{name}_rss_mb"] for row in rows if row[f"{name}_rss_mb"]]
        fds = [row[f"{name}_fds"] for row in rows if row[f"{name}_fds"]]
        figures[f"{name}_rss_slope_mb_per_h"] = round(slope * 3600, 2) if slope else None
        figures[f"{name}_rss_mb_max"] = round(max(rss_values), 1) if rss_values else None
        figures[f"{name}_rss_mb_last"] = round(rss_values[-1], 1) if rss_values else None
        figures[f"{name}_fds_max"] = max(fds) if fds else None
        figures[f"{name}_fds_last"] = fds[-1] if fds else None
        figures[f"{name}_runs"] = len(run_started)
        figures[f"{name}_longest_run_s"] = longest_run(rows, name)
    return figures


# ---- the end -----------------------------------------------------------------------------


def restart_what_is_down(pair: SyncPair) -> None:
    for agent in (pair.hub, pair.edge):
        if agent.proc is None or agent.proc.poll() is not None:
            agent.start(timeout=60)


def check_invariants(pair: SyncPair, load: Load, drones: int) -> str:
    """``"ok"``, or the first invariant that does not hold."""
    try:
        pair.wait_synced(timeout=300, minimum=drones)
        pair.check_hub_records()
        held = export(pair.edge.api)
        last = load.rounds_accepted - 1
        for index in range(drones):
            entity = held.get(f"drone-{index:04d}")
            got = entity["properties"].get("round") if entity else None
            if got != last:
                return f"drone-{index:04d}: the edge holds round {got}, the last accepted {last}"
    except AssertionError as exc:
        return str(exc)
    return "ok"


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    pair = SyncPair(workdir)
    load = Load()
    rows: list[dict[str, Any]] = []
    try:
        pair.start()
        log(f"hub {pair.hub.api}, edge {pair.edge.api}; {args.minutes} min in {workdir}")
        threads = [
            threading.Thread(target=ingest, args=(pair, load, args.drones), daemon=True),
            threading.Thread(target=query, args=(pair, load, args.drones), daemon=True),
            threading.Thread(
                target=chaos, args=(pair, load, args.kill_every, args.seed), daemon=True
            ),
        ]
        if args.flaps:
            threads.append(
                threading.Thread(target=flap, args=(pair, load, args.seed + 1), daemon=True)
            )
        started = time.monotonic()
        for thread in threads:
            thread.start()
        end = started + args.minutes * 60
        while not load.stop.is_set() and time.monotonic() < end:
            rows.append(sample(pair, started))
            if len(rows) % 6 == 0:
                last = rows[-1]
                log(
                    f"t={last['t']:.0f}s rounds={load.rounds_accepted} "
                    f"edge_rss={last['edge_rss_mb']} hub_rss={last['hub_rss_mb']} "
                    f"kills={dict(load.kills)} cuts={load.link_cuts}"
                )
            load.stop.wait(SAMPLE_EVERY_S)
        load.stop.set()
        for thread in threads:
            thread.join(timeout=120)
        elapsed = time.monotonic() - started
        pair.proxy.restore()
        restart_what_is_down(pair)
        log("load stopped; checking invariants")
        verdict = load.failures[0] if load.failures else check_invariants(pair, load, args.drones)
        rows.append(sample(pair, started))
    finally:
        pair.stop()
    if args.series:
        Path(args.series).write_text(json.dumps(rows))
    latency = {
        f"query_{quantile}_ms_{kind}": round(percentile(values, fraction) or 0.0, 2)
        for kind, values in sorted(load.query_ms.items())
        for quantile, fraction in (("p50", 0.5), ("p99", 0.99))
    }
    return {
        "bench": "soak",
        "duration_s": round(elapsed, 1),
        "drones": args.drones,
        "events_accepted": load.events_accepted,
        "events_per_s": round(load.events_accepted / elapsed, 1),
        "queries_ok": load.queries["ok"],
        "queries_unavailable": load.queries["unavailable"],
        "queries_failed": sum(n for k, n in load.queries.items() if k.startswith("http_")),
        **latency,
        "kills": dict(load.kills),
        "kills_total": sum(load.kills.values()),
        "link_cuts": load.link_cuts,
        "link_down_s": round(load.link_down_s, 1),
        **memory_figures(rows),
        "edge_wal_mb_max": round(max(row["edge_wal_mb"] for row in rows), 2),
        "hub_wal_mb_max": round(max(row["hub_wal_mb"] for row in rows), 2),
        "wire_bytes_up": rows[-1]["wire_bytes_up"],
        "wire_bytes_down": rows[-1]["wire_bytes_down"],
        "samples": len(rows),
        "invariants": verdict,
        "complete": verdict == "ok",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--drones", type=int, default=200, help="events per reading (2/s)")
    parser.add_argument("--kill-every", type=float, default=90.0, help="mean seconds between kills")
    parser.add_argument("--no-flaps", dest="flaps", action="store_false")
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--series", help="write every sample to this JSON file")
    parser.add_argument("--keep", action="store_true", help="keep the state and logs")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    try:
        figures = run(args, workdir)
    finally:
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(figures), flush=True)
    return 0 if figures["complete"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
