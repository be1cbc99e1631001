"""The demo: a cloud hub and two simulated edges, each with its own embedded NATS.

``make demo`` runs it. The hub listens on 127.0.0.1:8080 (API, dashboard-to-be and the
edges' sync path), the edges on 8081 and 8082; each edge simulates 20 drones and syncs
them to the hub. Per-run device tokens are written to ``.demo-state/tokens`` (0600) and
never printed. Ctrl-C stops everything.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path
from typing import Any

STATE = Path(".demo-state")
HUB_PORT = 8080
EDGES = {"demo-edge-1": (8081, 4223, 0), "demo-edge-2": (8082, 4224, 20)}
LOGGING = {"level": "INFO", "format": "text", "output": "stderr"}


def _write_private(path: Path, data: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(data)


def _hub_config(tokens: dict[str, str]) -> dict[str, Any]:
    return {
        "state_dir": str(STATE / "hub"),
        "platform": {"type": "cloud-hub", "region": "demo", "id": "demo-hub"},
        "nats": {"port": 4222},
        "components": [
            {
                "id": "receive-from-edges",
                "type": "websocket_input",
                "config": {
                    "port": HUB_PORT,
                    "path": "/edge-sync",
                    "devices": {edge: {"token": token} for edge, token in tokens.items()},
                },
            }
        ],
        "services": {"service-manager": {"config": {"http_port": HUB_PORT}}},
        "logging": LOGGING,
    }


def _edge_config(edge: str, api: int, nats: int, first: int, token_file: Path) -> dict[str, Any]:
    return {
        "state_dir": str(STATE / edge),
        "platform": {"type": "edge", "region": "demo", "id": edge},
        "nats": {"port": nats},
        "components": [
            {
                "id": "drones",
                "type": "simulator",
                "config": {"entities": 20, "interval": "1s", "first": first, "seed": first + 1},
            },
            {
                "id": "edge-to-cloud",
                "type": "websocket_output",
                "config": {
                    "url": f"ws://127.0.0.1:{HUB_PORT}/edge-sync",
                    "token_file": str(token_file),
                    "max_bytes_per_second": "32KB",
                },
            },
        ],
        "services": {"service-manager": {"config": {"http_port": api}}},
        "logging": LOGGING,
    }


def _start(program: str, config: dict[str, Any], name: str) -> subprocess.Popen[bytes]:
    path = STATE / f"{name}.json"
    _write_private(path, json.dumps(config, indent=2))
    binary = Path(sysconfig.get_path("scripts")) / program
    return subprocess.Popen([str(binary), "run", "--config", str(path)])


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
    processes = [_start("cloud-hub", _hub_config(tokens), "hub")]
    try:
        _wait_healthy(HUB_PORT)
        for edge, (api, nats, first) in EDGES.items():
            token_file = STATE / "tokens" / edge
            _write_private(token_file, tokens[edge])
            processes.append(
                _start("edge-agent", _edge_config(edge, api, nats, first, token_file), edge)
            )
            _wait_healthy(api)
        print(
            "\nDemo up: a hub and two edges, 20 simulated drones each.\n"
            f"  Hub:    http://127.0.0.1:{HUB_PORT}/edges  /graph/stats  /graph/types"
            "  /graph/shared  /graph/entities/fleet-west?provenance=1  /metrics\n"
            "  Edges:  http://127.0.0.1:8081/graph/stats  http://127.0.0.1:8082/graph/stats\n"
            f"  State:  ./{STATE} (configs, JetStream stores, graph.db files)\n"
            "Ctrl-C stops everything.\n",
            flush=True,
        )
        while True:
            signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            process.wait(30)
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)
    sys.exit(main())
