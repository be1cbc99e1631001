"""Agents and hubs as real processes in the network namespaces of a :class:`~tests.netns.Lan`.

Each node runs its program with the test's Python; HTTP calls are made from inside a
node's namespace (the test's own namespace has no route to the LAN).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import helpers
from tests.netns import Lan, Node, cleanup_stale, netns_available

API_PORT = 8080
_HTTP = """
import json, sys, urllib.error, urllib.request
url, data = sys.argv[1], (sys.argv[2].encode() if len(sys.argv) > 2 else None)
request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
try:
    with urllib.request.urlopen(request, timeout=5) as reply:
        print(json.dumps([reply.status, json.loads(reply.read() or b"null")]))
except urllib.error.HTTPError as error:
    print(json.dumps([error.code, json.loads(error.read() or b"null")]))
except OSError as error:
    print(json.dumps([0, str(error)]))
"""


def http(node: Node, url: str, body: Any = None) -> tuple[int, Any]:
    """An HTTP call made from inside ``node``'s namespace."""
    argv = [sys.executable, "-c", _HTTP, url] + ([json.dumps(body)] if body is not None else [])
    status, answer = json.loads(node.run(argv).stdout)
    return int(status), answer


def wait_until(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """:func:`tests.helpers.wait_until` at the LAN's pace: a look often runs a process in
    a namespace."""
    helpers.wait_until(check, what, timeout, interval=0.5)


@pytest.fixture
def lan() -> Iterator[Lan]:
    """A private LAN of network namespaces (the test is skipped where they are not
    permitted). A test module uses it with ``pytest_plugins = ["tests.lan_agents"]``."""
    reason = netns_available()
    if reason is not None:
        pytest.skip(f"network namespaces not permitted here: {reason}")
    cleanup_stale()
    with Lan() as network:
        yield network


def start(node: Node, program: str, config: dict[str, Any], workdir: Path) -> None:
    path = workdir / f"{node.name}.json"
    path.write_text(json.dumps(config))
    log = (workdir / f"{node.name}.log").open("wb")
    node.popen(
        [sys.executable, "-m", program, "run", "--config", str(path)], stdout=log, stderr=log
    )
    wait_until(lambda: http(node, f"http://127.0.0.1:{API_PORT}/health")[0] == 200, node.name, 30)


def hub_config(node: Node, workdir: Path, name: str) -> dict[str, Any]:
    return {
        "state_dir": str(workdir / f"{node.name}-state"),
        "platform": {"id": name, "type": "cloud-hub"},
        "services": {
            "service-manager": {
                "config": {
                    "http_port": API_PORT,
                    "http_host": "0.0.0.0",
                    # A LAN of network namespaces this test made; nothing else reaches it.
                    "auth": {"allow_unauthenticated": True},
                }
            }
        },
        "provisioning": {"enabled": True, "interfaces": [node.ip]},
        "components": [{"id": "in", "type": "websocket_input", "config": {"port": API_PORT}}],
        "logging": {"output": "stderr"},
    }


def edge_config(node: Node, workdir: Path, first: int, boot: dict[str, str]) -> dict[str, Any]:
    boot_file = workdir / f"{node.name}-provision.json"
    boot_file.write_text(json.dumps(boot))
    return {
        "state_dir": str(workdir / f"{node.name}-state"),
        "platform": {"id": node.name},
        "services": {"service-manager": {"config": {"http_port": API_PORT}}},
        "provisioning": {
            "enabled": True,
            "file": str(boot_file),
            "interfaces": [node.ip],
            "discovery_timeout": "2s",
            "retry": {"initial": "500ms", "max": "2s"},
        },
        "components": [
            {
                "id": "sim",
                "type": "simulator",
                "config": {"entities": 3, "interval": "500ms", "first": first},
            }
        ],
        "logging": {"output": "stderr"},
    }


def hub_fingerprint(log: Path) -> str:
    """The hub key's fingerprint (``sha256:…``), as the hub logs it at start."""
    marker = "provisioning: hub key "
    helpers.wait_until(lambda: marker in log.read_text(), "the hub key in the hub's log", 10)
    text = log.read_text()
    start_at = text.index(marker) + len(marker)
    return text[start_at : start_at + 71]


def synced(node: Node, hub_api: str) -> set[str]:
    """The edges whose batches are in the hub's graph (not only acked into its log)."""
    edges = http(node, f"{hub_api}/edges")[1]
    return {e["edge_id"] for e in edges if e.get("batches_applied", 0) > 0}
