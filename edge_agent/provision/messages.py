"""The enrolment API's messages, declared once for the device and the hub.

Binary values (keys, nonces, signatures) travel as URL-safe base64 without padding.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

__all__ = [
    "CREDENTIAL_ROTATED",
    "DEVICE_ID_PATTERN",
    "ChallengeRequest",
    "ChallengeResponse",
    "DeviceId",
    "DeviceSyncConfig",
    "EnrolRequest",
    "EnrolResponse",
    "ProvisionFile",
    "StoredEnrolment",
]


class _Message(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


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
    it knows the secret.
    """

    device_id: DeviceId
    nonce: str
    claim_id: str = ""


class ChallengeResponse(_Message, frozen=True):
    """Hub → device: its public key, its signature of the nonce, and the claim proof."""

    hub_key: str
    signature: str
    claim_proof: str = ""


class EnrolRequest(_Message, frozen=True):
    """Device → hub: enrol (or ask again while pending), signed with the device key."""

    device_id: DeviceId
    public_key: str
    nonce: str
    signature: str
    hostname: str = ""
    hardware: dict[str, Any] = msgspec.field(default_factory=dict)
    claim_token: str = ""


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
