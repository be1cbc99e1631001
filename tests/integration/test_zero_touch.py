"""Zero-touch provisioning over real mDNS, in network namespaces this test makes.

A hub, a rogue hub advertising the same service, and three edges, each in its own
namespace on a private bridge. Two edges carry a claim token, one only the pinned hub
key; none is told where the hub is. No keystroke: they discover, prove the hub, enrol
and sync; the pinned one waits pending until approved. The rogue gets nothing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.lan_agents import (
    API_PORT,
    edge_config,
    http,
    hub_config,
    hub_fingerprint,
    start,
    synced,
    wait_until,
)
from tests.netns import Lan, Node

pytest_plugins = ["tests.lan_agents"]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def test_edges_discover_enrol_and_sync_with_no_keystroke_and_the_rogue_gets_nothing(
    lan: Lan, tmp_path: Path
) -> None:
    hub, rogue = lan.add_node("hub"), lan.add_node("rogue")
    edges = [lan.add_node(name) for name in ("e1", "e2", "e3")]
    start(hub, "cloud_hub.cli", hub_config(hub, tmp_path, "hub"), tmp_path)
    # Named to be found first, so every edge really challenges it.
    start(rogue, "cloud_hub.cli", hub_config(rogue, tmp_path, "a-rogue-hub"), tmp_path)
    hub_api = f"http://{hub.ip}:{API_PORT}"
    # Open on its LAN by explicit choice (auth.allow_unauthenticated): /health says so.
    api_health = http(hub, f"{hub_api}/health")[1]["components"]["api"]
    assert "without auth" in api_health["warning"]
    tokens = [http(hub, f"{hub_api}/claim-tokens", {"group": "west"})[1]["token"] for _ in range(2)]
    fingerprint = hub_fingerprint(tmp_path / "hub.log")

    boots = [{"claim_token": tokens[0]}, {"claim_token": tokens[1]}, {"hub_key": fingerprint}]
    for index, (node, boot) in enumerate(zip(edges, boots, strict=True)):
        start(node, "edge_agent.cli", edge_config(node, tmp_path, index * 10, boot), tmp_path)

    def devices() -> dict[str, str]:
        return {d["id"]: d["status"] for d in http(hub, f"{hub_api}/devices")[1]}

    wait_until(lambda: {"e1", "e2"} <= synced(hub, hub_api), "the claimed edges to sync")
    wait_until(lambda: devices().get("e3") == "pending", "the unclaimed edge to wait")
    assert "e3" not in synced(hub, hub_api)
    assert http(hub, f"{hub_api}/devices/e3/approve", {})[0] == 200
    wait_until(lambda: "e3" in synced(hub, hub_api), "the approved edge to sync")
    assert devices() == {"e1": "approved", "e2": "approved", "e3": "approved"}
    for first in (0, 10, 20):
        status, entity = http(hub, f"{hub_api}/graph/entities/UAV-{first:03d}")
        assert status == 200 and entity["origin"] in {"e1", "e2", "e3"}

    rogue_api = f"http://{rogue.ip}:{API_PORT}"
    assert http(rogue, f"{rogue_api}/devices")[1] == []
    assert http(rogue, f"{rogue_api}/graph/stats")[1]["entities"] == 0
    assert http(rogue, f"{rogue_api}/edges")[1] == []
    for index, node in enumerate(edges[:2]):
        boot = json.loads((tmp_path / f"{node.name}-provision.json").read_text())
        assert boot["claim_token"] == "", "the claim secret is erased after enrolment"
        assert tokens[index].split(".")[1] not in (tmp_path / f"{node.name}.log").read_text()

    refusals = [(tmp_path / f"{node.name}.log").read_text() for node in edges]
    assert "hub cannot prove it issued this device's claim token" in refusals[0]
    assert "is not the pinned one" in refusals[2]

    # Each edge advertises itself for the fleet inventory.
    found = _browse_edges(hub)
    assert {"e1", "e2", "e3"} <= {entry["properties"]["id"] for entry in found}


_BROWSE = """
import asyncio, dataclasses, json
from edge_agent.provision.mdns import EDGE_SERVICE, browse
found = asyncio.run(browse(EDGE_SERVICE, timeout=2.0))
print(json.dumps([dataclasses.asdict(f) for f in found]))
"""


def _browse_edges(node: Node) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = json.loads(node.run([sys.executable, "-c", _BROWSE]).stdout)
    return result
