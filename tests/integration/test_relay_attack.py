"""A relay on the LAN between a device and its real hub, in network namespaces this test makes.

The device is told the relay's address as its hub (as mDNS spoofing or a hostile router
would arrange). The relay forwards everything faithfully and records it, or rewrites the
hub's answers. Enrolment protocol 2 and the sync link's proof of possession must leave
it with nothing: no claim secret, no enrolment of its own, no use of the credential it
saw, and no changed sync URL slipped to the device.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.lan_agents import API_PORT, edge_config, http, hub_config, start, synced, wait_until
from tests.netns import Lan, Node

pytest_plugins = ["tests.lan_agents"]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
RELAY_PORT = 9000


def relay(node: Node, hub: Node, records: Path, *swap: str) -> Any:
    """Start the relay in ``node``, forwarding its port to the hub's API and sync port."""
    argv = [sys.executable, "-m", "tests.relay", "forward", str(RELAY_PORT), hub.ip]
    process = node.popen([*argv, str(API_PORT), str(records), *swap])
    wait_until(lambda: http(node, f"http://127.0.0.1:{RELAY_PORT}/health")[0] == 200, "relay")
    return process


def test_a_relay_learns_no_secret_gets_no_enrolment_and_cannot_use_what_it_saw(
    lan: Lan, tmp_path: Path
) -> None:
    hub, middle, device = lan.add_node("hub"), lan.add_node("relay"), lan.add_node("pi")
    start(hub, "cloud_hub.cli", hub_config(hub, tmp_path, "hub"), tmp_path)
    hub_api = f"http://{hub.ip}:{API_PORT}"
    token = http(hub, f"{hub_api}/claim-tokens", {"group": "west"})[1]["token"]
    records = tmp_path / "relay"
    relay(middle, hub, records)
    boot = {"claim_token": token, "hub_url": f"http://{middle.ip}:{RELAY_PORT}"}
    start(device, "edge_agent.cli", edge_config(device, tmp_path, 0, boot), tmp_path)

    # Through the relay, faithfully forwarded: the device enrols and syncs.
    wait_until(lambda: "pi" in synced(hub, hub_api), "the device to sync through the relay")
    seen = (records / "up").read_bytes() + (records / "down").read_bytes()
    assert b"POST /enrol HTTP" in seen and b"/edge-sync" in seen  # it saw it all...
    secret = token.split(".", 1)[1]
    assert secret.encode() not in seen  # ...but never the claim secret

    outcome = json.loads(
        middle.run([sys.executable, "-m", "tests.relay", "attack", hub_api, str(records)]).stdout
    )
    # Its own key with the device's claim proof: refused, for any nonce.
    for attempt in ("enrol_own_key_own_nonce", "enrol_own_key_seen_nonce"):
        status, body = outcome[attempt]
        assert status == 401, (attempt, body)
    # A replay of the device's own enrolment (within the hub nonce's 120 s) enrols
    # nothing new: the device's key, already approved; its credential is the device's.
    status, body = outcome["replay_enrolment"]
    assert status == 200 and body["status"] == "approved"
    # The credentials it saw or got: refused at hello without the device key, and at
    # renewal.
    refused = "no proof of possession: the credential is bound to another key"
    assert outcome["hello_no_proof"] == [False, refused]
    assert outcome["hello_own_key"] == [False, refused]
    assert outcome["hello_replayed_credential"] == [False, refused]
    assert outcome["renew"] == [401, {"error": refused}]

    devices = http(hub, f"{hub_api}/devices")[1]
    assert [(d["id"], d["status"]) for d in devices] == [("pi", "approved")]
    assert synced(hub, hub_api) == {"pi"}
    status, entity = http(hub, f"{hub_api}/graph/entities/UAV-000")
    assert status == 200 and entity["origin"] == "pi"


def test_a_relay_that_rewrites_the_hubs_answers_is_not_believed(lan: Lan, tmp_path: Path) -> None:
    hub, middle, device = lan.add_node("hub"), lan.add_node("relay"), lan.add_node("pi")
    start(hub, "cloud_hub.cli", hub_config(hub, tmp_path, "hub"), tmp_path)
    hub_api = f"http://{hub.ip}:{API_PORT}"
    token = http(hub, f"{hub_api}/claim-tokens", {"group": "west"})[1]["token"]
    # The sync URL in the enrol reply would point the device at a place of its choosing.
    rewriting = relay(middle, hub, tmp_path / "relay", "/edge-sync", "/evil-sync")
    boot = {"claim_token": token, "hub_url": f"http://{middle.ip}:{RELAY_PORT}"}
    start(device, "edge_agent.cli", edge_config(device, tmp_path, 0, boot), tmp_path)
    log = tmp_path / "pi.log"
    wait_until(
        lambda: "enrolment reply is not signed by the hub's key: not used" in log.read_text(),
        "the device to refuse the rewritten reply",
    )
    enrolment = tmp_path / "pi-state" / "provisioning" / "enrolment.json"
    assert not enrolment.exists()

    # Once the path is honest again, the same device (same key) enrols and syncs.
    rewriting.terminate()
    rewriting.wait(10)
    relay(middle, hub, tmp_path / "relay-honest")
    wait_until(enrolment.exists, "the enrolment")
    stored = json.loads(enrolment.read_text())
    assert stored["config"]["sync_url"].endswith(f"{middle.ip}:{RELAY_PORT}/edge-sync")
    wait_until(lambda: "pi" in synced(hub, hub_api), "the device to sync")
