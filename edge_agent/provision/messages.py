"""The enrolment API's messages, declared once for the device and the hub.

Binary values (keys, nonces, signatures) travel as URL-safe base64 without padding.
Requests and the challenge answer carry ``protocol`` (:data:`ENROL_PROTOCOL`); a peer
that speaks another one is refused with that reason (:func:`protocol_of`). Approved and
pending replies are signed by the hub: the signature travels in the
:data:`SIGNATURE_HEADER` of the HTTP reply, over the exact body bytes.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

__all__ = [
    "CREDENTIAL_ROTATED",
    "DEVICE_ID_PATTERN",
    "ENROL_PROTOCOL",
    "SIGNATURE_HEADER",
    "ChallengeRequest",
    "ChallengeResponse",
    "DeviceId",
    "DeviceSyncConfig",
    "EnrolRequest",
    "EnrolResponse",
    "ProvisionFile",
    "RenewRequest",
    "StoredEnrolment",
    "protocol_of",
]

#: The enrolment protocol. 1 sent the claim secret itself; 2 sends only proofs of it.
ENROL_PROTOCOL = 2
#: The HTTP header of a reply's signature (base64 of the hub's Ed25519 signature).
SIGNATURE_HEADER = "semstreams-signature"


class _Message(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class _Versioned(msgspec.Struct, frozen=True):
    protocol: int = 1  # what a peer from before protocol 2 (which sent none) speaks


def protocol_of(body: bytes) -> int:
    """The enrolment protocol a JSON message says it speaks (1 when it says none).

    Raises:
        msgspec.DecodeError, msgspec.ValidationError: not a JSON object.
    """
    return msgspec.json.decode(body or b"{}", type=_Versioned).protocol


#: A device id: 1-64 of [A-Za-z0-9_-], starting with a letter or digit. No '.', '*', '>',
#: whitespace or control characters, so an id is always one safe NATS subject token and
#: one path segment.
#: Why a hub refuses a credential it rotated away: the device then enrols again with its
#: key (which only the device holds), and gets a fresh one.
CREDENTIAL_ROTATED = "credential rotated: enrol again with the device key"

DEVICE_ID_PATTERN = r"\A[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z"
DeviceId = Annotated[str, msgspec.Meta(pattern=DEVICE_ID_PATTERN)]


class ChallengeRequest(_Message, frozen=True):
    """Device → hub, before anything secret: prove who you are against my ``nonce``.

    ``claim_id`` names the device's claim token (not its secret), so the hub can prove
    it knows the secret; ``public_key`` is the device key the proofs are bound to.
    """

    device_id: DeviceId
    nonce: str
    public_key: str
    claim_id: str = ""
    protocol: int = ENROL_PROTOCOL


class ChallengeResponse(_Message, frozen=True):
    """Hub → device: its key, its signature over the device's nonce and key, its claim
    proof, and a fresh nonce of its own (which the device's proofs answer)."""

    hub_key: str
    signature: str
    hub_nonce: str
    claim_proof: str = ""
    protocol: int = ENROL_PROTOCOL


class EnrolRequest(_Message, frozen=True):
    """Device → hub: enrol (or ask again while pending), signed with the device key.

    ``nonce`` is the device's own (the signed reply is bound to it); ``hub_nonce`` comes
    from the challenge. With a claim token, ``claim_id`` names it and ``claim_proof``
    proves the secret (:func:`~edge_agent.provision.identity.device_claim_proof`).
    """

    device_id: DeviceId
    public_key: str
    nonce: str
    hub_nonce: str
    signature: str
    hostname: str = ""
    hardware: dict[str, Any] = msgspec.field(default_factory=dict)
    claim_id: str = ""
    claim_proof: str = ""
    protocol: int = ENROL_PROTOCOL


class RenewRequest(_Message, frozen=True):
    """Device → hub, with the credential as bearer: a fresh one, by proof of possession
    (the device key's signature over the hub's nonce)."""

    device_id: DeviceId
    nonce: str
    hub_nonce: str
    signature: str
    protocol: int = ENROL_PROTOCOL


class DeviceSyncConfig(_Message, frozen=True):
    """What the hub tells an approved device about its sync link."""

    sync_url: str
    filters: dict[str, Any] = msgspec.field(default_factory=dict)
    max_bytes_per_second: int = 0


class EnrolResponse(_Message, frozen=True):
    """Hub → device: approved with a credential and config, or pending (ask again)."""

    status: Literal["approved", "pending"]
    credential: str = ""
    expires_at: int = 0
    config: DeviceSyncConfig | None = None
    retry_after: float = 5.0


class ProvisionFile(msgspec.Struct, frozen=True, kw_only=True):
    """The per-device file on the boot partition (``semstreams-provision.json``).

    Read once; its ``claim_token`` is erased after a successful enrolment. ``hub_key``
    pins the hub (its fingerprint ``sha256:...`` or its base64 public key).
    """

    claim_token: str = ""
    hub_url: str = ""
    hub_key: str = ""
    wifi: dict[str, Any] = msgspec.field(default_factory=dict)


class StoredEnrolment(msgspec.Struct, frozen=True, kw_only=True):
    """What a device keeps after enrolling (``provisioning/enrolment.json``, 0600)."""

    device_id: str
    hub_url: str
    hub_key: str
    credential: str
    expires_at: int
    config: DeviceSyncConfig
