"""The open enrolment endpoint against a hostile LAN neighbour, on a real hub process.

Each test plays the attacker with signed requests of its own (a fresh Ed25519 key, as any
device would have): ids that would escape a NATS subject, the hub's own id, squatting on
an id before its real device comes, flooding the pending queue, and hammering ``/enrol``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.provision.client import challenge_request, enrol_request
from edge_agent.provision.identity import Identity, from_b64, split_claim
from tests.helpers import AgentProcess, cli, http_json
from tests.integration.sync_harness import hub_process

pytestmark = pytest.mark.slow

MAX_PENDING = 3
PENDING_TTL_S = 3


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    provisioning = {
        "enabled": True,
        "advertise": False,
        "max_pending": MAX_PENDING,
        "pending_ttl": f"{PENDING_TTL_S}s",
        "enrol_requests_per_minute": 6000,
    }
    process = hub_process(tmp_path_factory.mktemp("hub"), provisioning=provisioning)
    process.start()
    yield process
    process.stop()


def enrol(hub: AgentProcess, device_id: str, key: Identity, claim: str = "") -> tuple[int, Any]:
    """A correctly signed enrolment of ``device_id`` with ``key`` (protocol 2: a challenge
    for the hub's nonce, then the enrolment answering it)."""
    challenge, _ = challenge_request(key, device_id)
    status, answer = http_json(f"{hub.api}/enrol/challenge", msgspec.json.encode(challenge))
    if status != 200:
        return status, answer
    hub_key, hub_nonce = from_b64(answer["hub_key"]), from_b64(answer["hub_nonce"])
    parts = split_claim(claim) if claim else None
    request, _ = enrol_request(key, device_id, hub_key, hub_nonce, parts)
    return http_json(f"{hub.api}/enrol", msgspec.json.encode(request))


def new_key() -> Identity:
    return Identity(Ed25519PrivateKey.generate())


def claim_token(hub: AgentProcess) -> str:
    status, body = http_json(f"{hub.api}/claim-tokens", json.dumps({"group": "g"}).encode())
    assert status == 201, body
    return str(body["token"])


def devices(hub: AgentProcess) -> dict[str, dict[str, Any]]:
    return {d["id"]: d for d in http_json(f"{hub.api}/devices")[1]}


@pytest.mark.parametrize(
    "device_id",
    ["edge.west", "fleet.*", "a>", "two words", "tab\there", "nl\n", "x" * 65, "", "-lead"],
)
def test_ids_that_could_escape_a_subject_or_a_path_are_refused(
    hub: AgentProcess, device_id: str
) -> None:
    key = new_key()
    status, body = enrol(hub, device_id, key)
    assert status == 400 and "bad challenge" in body["error"]
    # Straight to /enrol (no hub nonce to answer) is refused as well, for the id.
    request, _ = enrol_request(key, device_id, key.public_key, bytes(40))
    status, body = http_json(f"{hub.api}/enrol", msgspec.json.encode(request))
    assert status == 400 and "bad enrolment" in body["error"]
    assert device_id not in devices(hub)


def test_no_device_may_take_the_hubs_own_id(hub: AgentProcess) -> None:
    status, body = enrol(hub, "hub", new_key(), claim_token(hub))
    assert status == 403 and "the hub's own" in body["error"]


def test_a_valid_claim_takes_an_id_a_squatter_holds_pending(hub: AgentProcess) -> None:
    squatter, owner = new_key(), new_key()
    assert enrol(hub, "pi-kitchen", squatter)[0] == 202  # waits, pending
    # Without a claim the owner cannot take it either...
    status, body = enrol(hub, "pi-kitchen", owner)
    assert status == 409 and "another key" in body["error"]
    # ...with a valid claim it can, and the squatter's record is gone.
    status, body = enrol(hub, "pi-kitchen", owner, claim_token(hub))
    assert status == 200 and body["status"] == "approved"
    assert devices(hub)["pi-kitchen"]["fingerprint"] == owner.fingerprint
    # Now approved, the id is the owner's: the squatter gets nothing, even with a claim.
    status, _ = enrol(hub, "pi-kitchen", squatter, claim_token(hub))
    assert status == 409


def test_pending_records_are_capped_expire_and_can_be_deleted(hub: AgentProcess) -> None:
    time.sleep(PENDING_TTL_S + 1)  # what earlier tests left pending has expired
    for number in range(MAX_PENDING):
        assert enrol(hub, f"flood-{number}", new_key())[0] == 202
    status, body = enrol(hub, "flood-last", new_key())
    assert status == 429 and "wait for approval" in body["error"]
    # A device with a valid claim is never held back by the queue.
    assert enrol(hub, "claimed-1", new_key(), claim_token(hub))[0] == 200
    # An operator removes one (API and CLI alike); the queue has room again.
    status, body = http_json(f"{hub.api}/devices/flood-0", method="DELETE")
    assert status == 200 and body == {"deleted": "flood-0"}
    assert http_json(f"{hub.api}/devices/flood-0", method="DELETE")[0] == 404
    assert enrol(hub, "flood-last", new_key())[0] == 202
    # Unclaimed records expire: after the TTL the queue is empty of them.
    time.sleep(PENDING_TTL_S + 1)
    assert enrol(hub, "late", new_key())[0] == 202
    assert [d for d in devices(hub) if d.startswith("flood-")] == []


async def test_the_cli_deletes_a_device(hub: AgentProcess) -> None:
    assert enrol(hub, "retired-pi", new_key())[0] == 202
    code, out, err = await cli(
        "devices", "delete", "retired-pi", "--url", hub.api, program="cloud_hub.cli"
    )
    assert code == 0, err
    assert json.loads(out) == {"deleted": "retired-pi"}
    assert "retired-pi" not in devices(hub)


def test_one_address_cannot_hammer_enrolment(tmp_path: Any) -> None:
    provisioning = {"enabled": True, "advertise": False, "enrol_requests_per_minute": 60}
    hub = hub_process(tmp_path, provisioning=provisioning)
    hub.start()
    try:
        statuses = [enrol(hub, f"noisy-{n}", new_key())[0] for n in range(40)]
        # The burst is a quarter of a minute's rate: 15 requests, two per enrolment.
        assert statuses[:7] == [202] * 7
        assert statuses.count(429) >= 20
        refused = http_json(f"{hub.api}/enrol/challenge", b'{"device_id": "x", "nonce": "AA"}')
        assert refused[0] == 429 and "retry in" in refused[1]["error"]
        # Other routes are not slowed by it.
        assert http_json(f"{hub.api}/health")[0] == 200
    finally:
        hub.stop()
