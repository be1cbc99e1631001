"""The demo: a cloud hub with its dashboard, and simulated edges, each with its own NATS.

``make demo`` runs it. The hub listens on 127.0.0.1:8080 (dashboard at ``/``, API, and
the edges' sync path). Three edges (8081-8083) simulate 20 drones each and report their
own health (``system_telemetry``); so that every status shows on the dashboard:

- ``demo-edge-1`` stays online;
- ``demo-edge-2`` goes away for 40 s every 2 minutes (offline, then back);
- ``demo-edge-3`` sends every reading (``mode: events``) through a 300 B/s link it
  cannot keep up with (degraded: its outbox backlog rises, then its lag);
- ``demo-edge-new`` (8084) asks to enrol without a claim token and waits (pending)
  until someone approves it on the dashboard's Enrolment page.

The edges also write maintenance notes and incident reports; the hub indexes them for
GraphRAG search with the shipped embedding service (``cloud-hub embed-server`` on
8090: the seed's 8081 is an edge's here).

Per-run device tokens are written to ``.demo-state/tokens`` (0600) and never printed.
Everything binds to 127.0.0.1 (mDNS is off). Ctrl-C stops everything.
"""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path
from typing import Any

from edge_agent.private_files import write_private

STATE = Path(".demo-state")
HUB_PORT = 8080
EMBED_PORT = 8090
#: Edge id: (API port, NATS port, first drone number, link cap).
EDGES = {
    "demo-edge-1": (8081, 4223, 0, "32KB"),
    "demo-edge-2": (8082, 4224, 20, "32KB"),
    "demo-edge-3": (8083, 4225, 40, "300B"),
}
PENDING = ("demo-edge-new", 8084, 4226, 60)
FLAKY = "demo-edge-2"
SLOW = "demo-edge-3"
FLAKY_UP_S, FLAKY_DOWN_S = 80.0, 40.0
LOGGING = {"level": "INFO", "format": "text", "output": "stderr"}


def _hub_config(tokens: dict[str, str]) -> dict[str, Any]:
    return {
        "state_dir": str(STATE / "hub"),
        "platform": {"type": "cloud-hub", "region": "demo", "id": "demo-hub"},
        "nats": {"port": 4222},
        "graph": {
            "config": {
                "indexer": {
                    "embedding": {
                        "enabled": True,
                        "service_url": f"http://127.0.0.1:{EMBED_PORT}",
                    }
                }
            }
        },
        "provisioning": {"enabled": True, "advertise": False},
        "components": [
            {
                "id": "receive-from-edges",
                "type": "websocket_input",
                "config": {
                    "port": HUB_PORT,
                    "path": "/edge-sync",
                    "devices": {edge: {"token": token} for edge, token in tokens.items()},
                },
            },
            {
                "id": "dashboard",
                "type": "dashboard",
                "config": {"offline_after": "15s", "sample_interval": "2s"},
            },
        ],
        "services": {"service-manager": {"config": {"http_port": HUB_PORT}}},
        "logging": LOGGING,
    }


def _edge_config(edge: str, api: int, nats: int, first: int) -> dict[str, Any]:
    return {
        "state_dir": str(STATE / edge),
        "platform": {"type": "edge", "region": "demo", "id": edge},
        "nats": {"port": nats},
        "components": [
            {
                "id": "drones",
                "type": "simulator",
                "config": {
                    "entities": 20,
                    "interval": "1s",
                    "first": first,
                    "seed": first + 1,
                    # Maintenance notes and incident reports: text for the hub's search.
                    "reports_every": 3,
                },
            },
            {"id": "health", "type": "system_telemetry", "config": {"interval": "5s"}},
        ],
        "services": {"service-manager": {"config": {"http_port": api}}},
        "logging": LOGGING,
    }


def _synced_edge(edge: str, api: int, nats: int, first: int, cap: str) -> dict[str, Any]:
    """An edge with a static device token (written 0600, given by file)."""
    config = _edge_config(edge, api, nats, first)
    link = {
        "url": f"ws://127.0.0.1:{HUB_PORT}/edge-sync",
        "token_file": str(STATE / "tokens" / edge),
        "max_bytes_per_second": cap,
        "mode": "events" if edge == SLOW else "state",
    }
    config["components"].append({"id": "edge-to-cloud", "type": "websocket_output", "config": link})
    return config


def _enrolling_edge() -> dict[str, Any]:
    """A device that asks the hub to enrol it, with no claim token: it waits, pending."""
    edge, api, nats, first = PENDING
    boot = STATE / f"{edge}-provision.json"
    boot_file = {"claim_token": "", "hub_url": f"http://127.0.0.1:{HUB_PORT}"}
    write_private(boot, json.dumps(boot_file).encode())
    config = _edge_config(edge, api, nats, first)
    config["provisioning"] = {
        "enabled": True,
        "advertise": False,
        "file": str(boot),
        "retry": {"initial": "1s", "max": "5s"},
    }
    return config


def _start(program: str, config: dict[str, Any], name: str) -> subprocess.Popen[bytes]:
    path = STATE / f"{name}.json"
    write_private(path, json.dumps(config, indent=2).encode())
    binary = Path(sysconfig.get_path("scripts")) / program
    return subprocess.Popen([str(binary), "run", "--config", str(path)])


def _start_embed_server() -> subprocess.Popen[bytes]:
    binary = Path(sysconfig.get_path("scripts")) / "cloud-hub"
    return subprocess.Popen([str(binary), "embed-server", "--port", str(EMBED_PORT)])


def _wait_healthy(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"demo: nothing healthy on port {port} after {timeout:.0f}s")


def main() -> int:
    """Start the hub and the edges, print where to look, stop all on Ctrl-C."""
    tokens = {edge: secrets.token_urlsafe(24) for edge in EDGES}
    processes = {"embed-server": _start_embed_server()}
    processes["hub"] = _start("cloud-hub", _hub_config(tokens), "hub")
    try:
        _wait_healthy(EMBED_PORT, timeout=120)
        _wait_healthy(HUB_PORT)
        for edge, (api, nats, first, cap) in EDGES.items():
            write_private(STATE / "tokens" / edge, tokens[edge].encode())
            processes[edge] = _start("edge-agent", _synced_edge(edge, api, nats, first, cap), edge)
        processes[PENDING[0]] = _start("edge-agent", _enrolling_edge(), PENDING[0])
        for api in [*(e[0] for e in EDGES.values()), PENDING[1]]:
            _wait_healthy(api)
        print(
            f"\nDashboard: http://127.0.0.1:{HUB_PORT}/\n\n"
            "Demo up: a hub and three edges, 20 simulated drones each; demo-edge-2 goes\n"
            f"offline for {FLAKY_DOWN_S:.0f} s every {FLAKY_UP_S + FLAKY_DOWN_S:.0f} s,"
            " demo-edge-3 lags behind a 300 B/s link,\n"
            "demo-edge-new waits for approval (Enrolment page).\n"
            f"  Hub API: http://127.0.0.1:{HUB_PORT}/edges  /graph/stats  /graph/types"
            "  /graph/shared  /graph/entities/fleet-west?provenance=1  /metrics\n"
            f"  Search:  curl -s http://127.0.0.1:{HUB_PORT}/graph/query/search"
            ' -d \'{"query": "lithium pack puffed up"}\'\n'
            "  Edges:   http://127.0.0.1:8081/graph/stats (8082, 8083, 8084)\n"
            f"  State:   ./{STATE} (configs, JetStream stores, graph.db files)\n"
            "Ctrl-C stops everything.\n",
            flush=True,
        )
        _flap(processes)
    except KeyboardInterrupt:
        pass
    finally:
        # Ctrl-C again while stopping must not leave children behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stuck = _stop_all(processes)
    return 1 if stuck else 0


def _stop_all(processes: dict[str, subprocess.Popen[bytes]]) -> list[str]:
    """SIGTERM every process, newest first; kill those still running after 30 s. Their
    names."""
    for process in reversed(processes.values()):
        process.terminate()
    stuck = []
    for name, process in processes.items():
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            stuck.append(name)
            process.kill()
            process.wait()
            print(f"demo: {name} did not stop within 30 s of SIGTERM; killed", flush=True)
    return stuck


def _flap(processes: dict[str, subprocess.Popen[bytes]]) -> None:
    """Take the flaky edge away and bring it back, until interrupted."""
    api, nats, first, cap = EDGES[FLAKY]
    while True:
        time.sleep(FLAKY_UP_S)
        processes[FLAKY].terminate()
        processes[FLAKY].wait(30)
        time.sleep(FLAKY_DOWN_S)
        processes[FLAKY] = _start("edge-agent", _synced_edge(FLAKY, api, nats, first, cap), FLAKY)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)
    sys.exit(main())
