"""Enrolment protocol 2 without sockets: the hub's nonces, and what each proof binds."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_hub.provision.nonces import HubNonces
from cloud_hub.provision.service import check_possession
from edge_agent.errors import AuthError
from edge_agent.provision.identity import (
    Identity,
    claim_key,
    claim_proof,
    device_claim_proof,
    enrol_message,
    possession_message,
    reply_message,
    split_claim,
)

NOW = 1_800_000_000.0


def key() -> Identity:
    return Identity(Ed25519PrivateKey.generate())


def test_a_hub_nonce_answers_only_for_its_device_key_and_only_while_fresh() -> None:
    hub, device, other = key(), key(), key()
    nonces = HubNonces(hub.derive_secret("semstreams-hub-nonce"), ttl_s=120)
    nonce = nonces.issue("pi-1", device.public_key, NOW)
    nonces.check(nonce, "pi-1", device.public_key, NOW + 119)
    with pytest.raises(AuthError, match="not issued by this hub for this device key"):
        nonces.check(nonce, "pi-1", other.public_key, NOW)  # a relay's own key
    with pytest.raises(AuthError, match="not issued"):
        nonces.check(nonce, "pi-2", device.public_key, NOW)
    with pytest.raises(AuthError, match="expired"):
        nonces.check(nonce, "pi-1", device.public_key, NOW + 121)
    tampered = bytes([nonce[0] ^ 1]) + nonce[1:]  # an older issue time
    with pytest.raises(AuthError, match="not issued"):
        nonces.check(tampered, "pi-1", device.public_key, NOW)
    another_hub = HubNonces(key().derive_secret("semstreams-hub-nonce"), ttl_s=120)
    with pytest.raises(AuthError, match="not issued"):
        another_hub.check(nonce, "pi-1", device.public_key, NOW)
    with pytest.raises(AuthError, match="not issued"):
        nonces.check(b"short", "pi-1", device.public_key, NOW)


def test_instances_sharing_a_hub_key_check_each_others_nonces() -> None:
    hub, device = key(), key()
    first = HubNonces(hub.derive_secret("semstreams-hub-nonce"), ttl_s=120)
    second = HubNonces(hub.derive_secret("semstreams-hub-nonce"), ttl_s=120)
    second.check(first.issue("pi-1", device.public_key, NOW), "pi-1", device.public_key, NOW)
    assert hub.derive_secret("a") != hub.derive_secret("b")


def test_claim_proofs_bind_both_keys_and_the_nonce() -> None:
    secret = claim_key("s3cret")
    hub, device, relay = key(), key(), key()
    nonce = b"n" * 32
    proof = device_claim_proof(secret, nonce, "pi-1", device.public_key, hub.public_key)
    assert proof != device_claim_proof(secret, nonce, "pi-1", relay.public_key, hub.public_key)
    assert proof != device_claim_proof(secret, nonce, "pi-1", device.public_key, relay.public_key)
    assert proof != device_claim_proof(secret, b"m" * 32, "pi-1", device.public_key, hub.public_key)
    assert proof != device_claim_proof(secret, nonce, "pi-2", device.public_key, hub.public_key)
    assert proof != device_claim_proof(
        claim_key("other"), nonce, "pi-1", device.public_key, hub.public_key
    )
    hub_side = claim_proof(secret, nonce, hub.public_key, device.public_key)
    assert hub_side != claim_proof(secret, nonce, relay.public_key, device.public_key)
    assert hub_side != claim_proof(secret, nonce, hub.public_key, relay.public_key)
    assert hub_side != proof  # the two directions never stand in for each other


def test_messages_are_unambiguous() -> None:
    # Length-prefixed parts: moving a byte from one part to the next changes the message.
    assert enrol_message(b"ab", b"c", "d", b"k", "") != enrol_message(b"a", b"bc", "d", b"k", "")
    assert reply_message(b"n", b"k", b"{}") != reply_message(b"n", b"k{", b"}")
    assert possession_message("hello", b"n", "pi") != possession_message("renew", b"n", "pi")


def test_a_possession_proof_holds_for_its_key_purpose_and_nonce_only() -> None:
    device, relay = key(), key()
    signature = device.sign(possession_message("hello", b"n" * 32, "pi-1"))
    check_possession(device.public_key, "hello", b"n" * 32, "pi-1", signature)
    for args in [
        (relay.public_key, "hello", b"n" * 32, "pi-1"),
        (device.public_key, "renew", b"n" * 32, "pi-1"),
        (device.public_key, "hello", b"m" * 32, "pi-1"),
        (device.public_key, "hello", b"n" * 32, "pi-2"),
    ]:
        with pytest.raises(AuthError, match="no proof of possession"):
            check_possession(*args, signature)
    with pytest.raises(AuthError, match="no proof of possession"):
        check_possession(device.public_key, "hello", b"n" * 32, "pi-1", b"")


@pytest.mark.parametrize("token", ["", "ct_", "ct_abc", "xx_abc.secret", "ct_.secret"])
def test_malformed_claim_tokens_are_refused(token: str) -> None:
    with pytest.raises(ValueError, match="malformed claim token"):
        split_claim(token)


def test_a_claim_token_splits_into_id_and_secret() -> None:
    assert split_claim("ct_0a1b.s3cr.et") == ("0a1b", "s3cr.et")
