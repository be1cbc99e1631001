"""Enrolment against a real hub process on loopback (mDNS off: the hub URL is given).

Discovery over real mDNS runs in network namespaces: see ``test_zero_touch.py``.
"""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import connect

from edge_agent.provision.identity import Identity
from edge_agent.sync.frames import Hello, Welcome, decode_frame, encode_frame
from tests.certs import self_signed
from tests.helpers import (
    AgentProcess,
    config_dict,
    free_port,
    http_json,
    post_oversized,
    renew,
    sync_hello,
)
from tests.integration.sync_harness import hub_process, metric

pytestmark = pytest.mark.slow
# Short, so the renewal test sees a renewal; every edge here renews every 6 s.
CREDENTIAL_TTL = "9s"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    process = hub_process(
        tmp_path_factory.mktemp("hub"),
        # Every device here enrols from 127.0.0.1; the rate limit has its own test.
        provisioning={
            "enabled": True,
            "advertise": False,
            "credential_ttl": CREDENTIAL_TTL,
            "enrol_requests_per_minute": 100_000,
        },
    )
    process.start()
    yield process
    process.stop()


def claim_token(hub: AgentProcess, ttl: str = "10m") -> str:
    status, body = http_json(
        f"{hub.api}/claim-tokens", json.dumps({"group": "test", "ttl": ttl}).encode()
    )
    assert status == 201, body
    return str(body["token"])


def devices(hub: AgentProcess) -> dict[str, dict[str, Any]]:
    return {d["id"]: d for d in http_json(f"{hub.api}/devices")[1]}


EdgeFactory = Callable[..., AgentProcess]


@pytest.fixture
def edge(tmp_path: Path, hub: AgentProcess) -> Iterator[EdgeFactory]:
    started: list[AgentProcess] = []

    def make(
        name: str,
        *,
        claim: str = "",
        hub_key: str = "",
        platform_id: str | None = None,
        state: Path | None = None,
        hub_url: str | None = None,
        mdns: dict[str, Any] | None = None,
    ) -> AgentProcess:
        boot = tmp_path / f"{name}-provision.json"
        hub_url = hub.api if hub_url is None else hub_url
        boot.write_text(json.dumps({"claim_token": claim, "hub_url": hub_url, "hub_key": hub_key}))
        config = config_dict(
            state or tmp_path / f"{name}-state",
            platform={"id": platform_id if platform_id is not None else name},
            provisioning={
                "enabled": True,
                "advertise": False,
                "file": str(boot),
                "retry": {"initial": "200ms", "max": "1s"},
                **(mdns or {}),
            },
            components=[
                {"id": "sim", "type": "simulator", "config": {"entities": 3, "interval": "300ms"}}
            ],
        )
        process = AgentProcess(config, tmp_path, name=name)
        process.start()
        started.append(process)
        return process

    yield make
    for process in started:
        process.stop()


def wait_until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def provisioning_status(edge: AgentProcess) -> str:
    return str(http_json(f"{edge.api}/health")[1]["components"]["provisioning"]["status"])


def synced(hub: AgentProcess, device_id: str) -> bool:
    """Some of the device's batches are in the hub's graph (not only acked into its log)."""
    links = {e["edge_id"]: e for e in http_json(f"{hub.api}/edges")[1]}
    return links.get(device_id, {}).get("batches_applied", 0) > 0


def test_a_claim_token_enrols_at_once_is_burnt_and_the_device_syncs(
    hub: AgentProcess, edge: EdgeFactory, tmp_path: Path
) -> None:
    token = claim_token(hub)
    device = edge("claimed", claim=token)
    wait_until(lambda: devices(hub).get("claimed", {}).get("status") == "approved", "approval")
    wait_until(lambda: synced(hub, "claimed"), "sync")
    assert http_json(f"{hub.api}/graph/entities/UAV-000")[1]["origin"] == "claimed"
    # The secret left the boot file; the key and the enrolment are the owner's alone.
    boot = json.loads((tmp_path / "claimed-provision.json").read_text())
    assert boot["claim_token"] == "" and boot["hub_url"] == hub.api
    state = tmp_path / "claimed-state"
    for private in (state / "device_key.pem", state / "provisioning" / "enrolment.json"):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600, private
    log = device.log_path.read_text()
    assert "PRIVATE KEY" not in log and token.split(".")[1] not in log
    enrolled = devices(hub)["claimed"]
    # A restart reuses the enrolment: no new enrolment, and syncing goes on.
    device.stop()
    device.start()
    wait_until(lambda: provisioning_status(device) == "enrolled", "reuse")
    assert devices(hub)["claimed"]["updated_at"] == enrolled["updated_at"]
    wait_until(lambda: metric(device.api, "semstreams_sync_connected") == 1, "relink")


def test_a_replayed_claim_token_is_refused_with_409(hub: AgentProcess, edge: EdgeFactory) -> None:
    token = claim_token(hub)
    edge("first", claim=token)
    wait_until(lambda: devices(hub).get("first", {}).get("status") == "approved", "approval")
    second = edge("second", claim=token)
    wait_until(lambda: "409" in provisioning_status(second), "refusal")
    assert "claim token already used" in provisioning_status(second)
    assert "second" not in devices(hub)


def test_an_expired_claim_token_is_refused_with_401(hub: AgentProcess, edge: EdgeFactory) -> None:
    token = claim_token(hub, ttl="1s")
    time.sleep(1.5)
    late = edge("late", claim=token)
    wait_until(lambda: "401" in provisioning_status(late), "refusal")
    assert "claim token expired" in provisioning_status(late)
    assert "late" not in devices(hub)


def _hub_fingerprint(hub: AgentProcess) -> str:
    log = hub.log_path.read_text()
    start = log.index("provisioning: hub key ") + len("provisioning: hub key ")
    return log[start : start + 71]


def test_without_a_token_a_device_waits_pending_until_approved(
    hub: AgentProcess, edge: EdgeFactory
) -> None:
    device = edge("waiting", hub_key=_hub_fingerprint(hub))
    wait_until(lambda: devices(hub).get("waiting", {}).get("status") == "pending", "pending")
    wait_until(lambda: "pending approval" in provisioning_status(device), "pending status")
    time.sleep(1)
    assert not synced(hub, "waiting")
    status, approved = http_json(f"{hub.api}/devices/waiting/approve", b"{}")
    assert status == 200 and approved["status"] == "approved"
    wait_until(lambda: synced(hub, "waiting"), "sync after approval")


def test_a_hub_that_does_not_match_the_pinned_key_gets_nothing(
    hub: AgentProcess, edge: EdgeFactory
) -> None:
    token = claim_token(hub)
    wary = edge("wary", claim=token, hub_key="sha256:" + "0" * 64)
    wait_until(lambda: "is not the pinned one" in provisioning_status(wary), "refusal")
    assert "wary" not in devices(hub)
    # The token never left the device, so it is still good for another.
    edge("other", claim=token)
    wait_until(lambda: devices(hub).get("other", {}).get("status") == "approved", "approval")


def _hello(
    hub: AgentProcess, device_id: str, credential: str, key: Identity | None = None
) -> Welcome:
    return sync_hello(f"ws{hub.api.removeprefix('http')}/edge-sync", device_id, credential, key)


def test_tampered_and_revoked_credentials_are_refused_and_revoke_cuts_the_link(
    hub: AgentProcess, edge: EdgeFactory, tmp_path: Path
) -> None:
    device = edge("doomed", claim=claim_token(hub))
    wait_until(lambda: synced(hub, "doomed"), "sync")
    enrolment = tmp_path / "doomed-state" / "provisioning" / "enrolment.json"
    credential = json.loads(enrolment.read_text())["credential"]
    head, payload, signature = credential.split(".")
    tampered = f"{head}.{payload}.{'A' if signature[0] != 'A' else 'B'}{signature[1:]}"
    welcome = _hello(hub, "doomed", tampered)
    assert not welcome.accepted and welcome.reason.startswith("bad credential")
    assert not _hello(hub, "someone-else", credential).accepted  # scoped to one device

    revoked_at = time.monotonic()
    status, _ = http_json(f"{hub.api}/devices/doomed/revoke", b"{}")
    assert status == 200
    links = lambda: {e["edge_id"]: e for e in http_json(f"{hub.api}/edges")[1]}  # noqa: E731
    wait_until(lambda: not links()["doomed"]["connected"], "the live link to close", 60)
    assert time.monotonic() - revoked_at < 60
    welcome = _hello(hub, "doomed", credential)
    assert (welcome.accepted, welcome.reason) == (False, "device revoked")
    wait_until(
        lambda: metric(device.api, "semstreams_sync_refused_total", 'reason="welcome"') > 0,
        "the device to be refused",
    )


def test_a_rotated_credential_is_refused_and_the_device_gets_a_new_one_with_its_key(
    hub: AgentProcess, edge: EdgeFactory, tmp_path: Path
) -> None:
    edge("rotating", claim=claim_token(hub))
    wait_until(lambda: synced(hub, "rotating"), "sync")
    enrolment = tmp_path / "rotating-state" / "provisioning" / "enrolment.json"
    old = json.loads(enrolment.read_text())["credential"]
    key = Identity.load_or_create(tmp_path / "rotating-state" / "device_key.pem")
    assert _hello(hub, "rotating", old, key).accepted
    time.sleep(1.1)  # credentials carry whole seconds: the rotation is after this one
    status, device = http_json(f"{hub.api}/devices/rotating/rotate", b"{}")
    assert status == 200 and device["credentials_after"] > 0
    # The old credential is refused at hello and at renewal, even with the device key...
    welcome = _hello(hub, "rotating", old, key)
    assert (welcome.accepted, welcome.reason) == (
        False,
        "credential rotated: enrol again with the device key",
    )
    status, body = renew(hub.api, "rotating", old, key)
    assert (status, body["error"]) == (401, "credential rotated: enrol again with the device key")
    # ...while the device, which holds its key, enrols again and syncs on.
    wait_until(
        lambda: json.loads(enrolment.read_text())["credential"] != old, "a new credential", 30
    )
    applied = lambda: {e["edge_id"]: e for e in http_json(f"{hub.api}/edges")[1]}  # noqa: E731
    before = applied()["rotating"]["batches_applied"]
    wait_until(lambda: applied()["rotating"]["batches_applied"] > before, "sync after rotation")


def test_devices_from_one_state_template_get_distinct_identities(
    hub: AgentProcess, edge: EdgeFactory, tmp_path: Path
) -> None:
    template = tmp_path / "template"
    (template / "provisioning").mkdir(parents=True)
    host = socket.gethostname()
    clones = []
    for name in ("clone-a", "clone-b"):
        state = tmp_path / f"{name}-state"
        shutil.copytree(template, state)
        clones.append(edge(name, claim=claim_token(hub), platform_id=host, state=state))
    wait_until(lambda: len([d for d in devices(hub) if d.startswith(f"{host}-")]) == 2, "both")
    mine = [d for d in devices(hub).values() if d["id"].startswith(f"{host}-")]
    assert len({d["id"] for d in mine}) == 2
    assert len({d["fingerprint"] for d in mine}) == 2
    assert secrets.compare_digest(mine[0]["status"], "approved")


def test_credentials_renew_before_expiry_and_the_link_outlives_the_first_one(
    hub: AgentProcess, edge: EdgeFactory, tmp_path: Path
) -> None:
    device = edge("renewing", claim=claim_token(hub))
    wait_until(lambda: synced(hub, "renewing"), "sync")
    enrolment = tmp_path / "renewing-state" / "provisioning" / "enrolment.json"
    first = json.loads(enrolment.read_text())
    wait_until(
        lambda: json.loads(enrolment.read_text())["credential"] != first["credential"],
        "a renewed credential",
    )
    renewed = json.loads(enrolment.read_text())
    assert renewed["expires_at"] > first["expires_at"]
    while time.time() < first["expires_at"] + 1:
        time.sleep(0.2)
    # Past the first credential's expiry, a new link is accepted with the renewed one.
    device.stop()
    device.start()
    wait_until(lambda: metric(device.api, "semstreams_sync_connected") == 1, "relink")
    health = http_json(f"{device.api}/health")[1]["components"]["provisioning"]
    assert health["hub_key"].startswith("sha256:") and health["device_key"].startswith("sha256:")


def devices_cli(hub: AgentProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """``cloud-hub devices <args> --url <hub>``, run to completion."""
    return subprocess.run(
        [sys.executable, "-m", "cloud_hub.cli", "devices", *args, "--url", hub.api],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_the_devices_cli_drives_the_same_api(hub: AgentProcess, edge: EdgeFactory) -> None:
    def cli(*args: str) -> Any:
        done = devices_cli(hub, *args)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    token = cli("claim-token", "create", "--group", "north", "--ttl", "5m")
    assert token["group"] == "north" and token["token"].startswith("ct_")
    edge("by-cli", hub_key=_hub_fingerprint(hub))
    wait_until(lambda: devices(hub).get("by-cli", {}).get("status") == "pending", "pending")
    assert {d["id"]: d["status"] for d in cli("list")}["by-cli"] == "pending"
    assert cli("reject", "by-cli")["status"] == "rejected"
    assert cli("approve", "by-cli")["status"] == "approved"
    assert cli("revoke", "by-cli")["status"] == "revoked"
    done = devices_cli(hub, "approve", "nobody")
    assert done.returncode == 1 and "404" in done.stderr


@pytest.mark.parametrize("path", ["/enrol/challenge", "/enrol", "/enrol/renew", "/claim-tokens"])
def test_enrolment_bodies_are_capped(hub: AgentProcess, path: str) -> None:
    for declared in (1 << 20, None):  # a declared length, and a chunked body counted as read
        status, body = post_oversized(f"{hub.api}{path}", declared=declared)
        assert status == 413 and "request body over" in body["error"]


def test_peers_of_the_old_protocols_are_told_to_update(hub: AgentProcess) -> None:
    # Sync protocol 1: a hello without the proof of possession that version 2 adds.
    with connect(f"ws{hub.api.removeprefix('http')}/edge-sync", proxy=None) as ws:
        ws.send(encode_frame(Hello(edge_id="old-edge", token="jwt", version=1)))
        welcome = decode_frame(ws.recv(timeout=5), max_bytes=1 << 20)  # type: ignore[arg-type]
    assert welcome == Welcome(
        accepted=False,
        reason="sync protocol version 1 not supported: this hub speaks 2; update the edge",
    )
    # Enrolment protocol 1 sent the claim secret itself: refused, and nothing is used.
    old = {"device_id": "old-pi", "public_key": "AA", "nonce": "AA", "signature": "AA"}
    status, body = http_json(
        f"{hub.api}/enrol", json.dumps({**old, "claim_token": "ct_ab.cd"}).encode()
    )
    assert status == 400 and body["error"].startswith("enrolment protocol 1 is not supported")
    assert "old-pi" not in devices(hub)


def test_over_https_a_device_enrols_and_gets_a_wss_link_on_the_hubs_own_sync_port(
    tmp_path: Path,
) -> None:
    cert, key = self_signed(tmp_path)
    api_port, sync_port = free_port(), free_port()
    hub = hub_process(
        tmp_path,
        port=api_port,
        state_dir=tmp_path / "tls-hub-state",
        sync_input={"port": sync_port},
        tls=(cert, key),
        provisioning={"enabled": True, "advertise": False},
    )
    hub.start()
    trusting = untrusting = None
    try:
        status, body = http_json(
            f"{hub.api}/claim-tokens", b'{"group": "tls"}', context=hub.context
        )
        assert status == 201, body

        def device(name: str, ca_file: str) -> AgentProcess:
            boot = tmp_path / f"{name}-provision.json"
            boot.write_text(json.dumps({"claim_token": body["token"], "hub_url": hub.api}))
            settings = {"enabled": True, "advertise": False, "file": str(boot)}
            config = config_dict(
                tmp_path / f"{name}-state",
                platform={"id": name},
                provisioning={**settings, "ca_file": ca_file, "retry": {"max": "1s"}},
                components=[{"id": "sim", "type": "simulator", "config": {"entities": 2}}],
            )
            process = AgentProcess(config, tmp_path, name=name)
            process.start()
            return process

        # Without the hub's CA the device does not talk to it (the claim is still unused).
        untrusting = device("untrusting", "")
        wait_until(lambda: "CERTIFICATE_VERIFY_FAILED" in provisioning_status(untrusting), "tls")
        trusting = device("trusting", str(cert))
        enrolment = tmp_path / "trusting-state" / "provisioning" / "enrolment.json"
        wait_until(enrolment.exists, "enrolment over https")
        sync_url = json.loads(enrolment.read_text())["config"]["sync_url"]
        assert sync_url == f"wss://127.0.0.1:{sync_port}/edge-sync"
        wait_until(lambda: metric(trusting.api, "semstreams_sync_connected") == 1, "wss link")
    finally:
        for process in (trusting, untrusting, hub):
            if process is not None:
                process.stop()


#: An address on no interface here (TEST-NET-1): zeroconf cannot bind its sockets to it,
#: as on a host whose kernel or emulator refuses a multicast socket option.
NO_MULTICAST = {"advertise": True, "interfaces": ["192.0.2.77"], "discovery_timeout": "1s"}


def test_a_device_where_mdns_cannot_run_still_enrols_and_syncs(
    hub: AgentProcess, edge: EdgeFactory
) -> None:
    device = edge("nomdns", claim=claim_token(hub), mdns=NO_MULTICAST)
    wait_until(lambda: synced(hub, "nomdns"), "sync without mDNS")
    health = http_json(f"{device.api}/health")[1]
    assert health["status"] == "healthy", health
    advertising = health["components"]["provisioning"]["advertising"]
    assert advertising.startswith("failed: mDNS cannot run here: [Errno"), advertising
    assert metric(device.api, "semstreams_errors_total", 'reason="mdns_error"') == 1
    assert "not advertised by mDNS, running on without it" in device.log_path.read_text()


def test_without_a_hub_url_failed_discovery_is_retried_not_fatal(
    hub: AgentProcess, edge: EdgeFactory
) -> None:
    device = edge("lost", claim=claim_token(hub), hub_url="", mdns=NO_MULTICAST)
    wait_until(
        lambda: provisioning_status(device).startswith("mDNS discovery failed: [Errno"),
        "the discovery failure in /health",
    )
    time.sleep(2)  # several rounds of retries: the agent stays up and answers
    assert device.proc is not None and device.proc.poll() is None
    assert http_json(f"{device.api}/health")[1]["status"] == "healthy"
    assert "lost" not in devices(hub)
