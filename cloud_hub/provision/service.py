"""The hub's enrolment service: challenge, enrol, renew, approve, reject, revoke.

Enrolment protocol 2 (see :mod:`edge_agent.provision.identity`): the claim secret never
arrives here, only a device's proof of it; every proof is bound to the device key and a
nonce; credentials are bound to the device key and used with proof of possession.
No I/O of its own beyond the registry: the HTTP views and the sync link call it.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from cloud_hub.provision.credentials import issue_credential, verify_credential
from cloud_hub.provision.nonces import HubNonces
from cloud_hub.provision.registry import (
    ClaimError,
    ClaimProof,
    Device,
    Registry,
    Status,
    seen_fields,
)
from edge_agent.api.security import RateLimiter
from edge_agent.config.schema import ProvisioningConfig
from edge_agent.errors import AuthError
from edge_agent.provision.identity import (
    Identity,
    b64,
    claim_proof,
    device_claim_proof,
    enrol_message,
    fingerprint,
    from_b64,
    hub_proof_message,
    possession_message,
    reply_message,
    verify,
)
from edge_agent.provision.messages import (
    CREDENTIAL_ROTATED,
    ChallengeRequest,
    ChallengeResponse,
    DeviceSyncConfig,
    EnrolRequest,
    EnrolResponse,
    RenewRequest,
)

__all__ = ["Enrolment", "SignedReply", "check_possession", "device_key"]

_PENDING_RETRY_S = 2.0
#: How long a device may take to answer the hub's nonce (one enrol or renew request).
_NONCE_TTL_S = 120.0
_MIN_NONCE_BYTES = 16


@dataclass(frozen=True)
class SignedReply:
    """An enrol or renew answer as sent: its status, JSON body and the hub's signature."""

    status: str
    body: bytes
    signature: str


def device_key(text: str) -> bytes:
    """A device's raw Ed25519 public key from its base64.

    Raises:
        ValueError: not base64 of 32 bytes.
    """
    key = from_b64(text)
    if len(key) != 32:
        raise ValueError("public_key: not an Ed25519 public key (32 bytes)")
    return key


def _device_nonce(text: str) -> bytes:
    nonce = from_b64(text)
    if not _MIN_NONCE_BYTES <= len(nonce) <= 64:
        raise ValueError(f"nonce: {_MIN_NONCE_BYTES} to 64 bytes")
    return nonce


class Enrolment:
    """Devices enrol here and get credentials; operators approve, reject and revoke.

    Args:
        settings: ``provisioning`` of the hub's config.
        identity: the hub's key.
        registry: devices and claim tokens.
        on_revoke: called with a device id when it is revoked, rejected or deleted (the
            sync link closes its live connection).
        hub_id: the hub's own id, which no device may take.
    """

    def __init__(
        self,
        settings: ProvisioningConfig,
        identity: Identity,
        registry: Registry,
        *,
        on_revoke: Callable[[str], None],
        hub_id: str = "",
    ) -> None:
        self.settings = settings
        self.identity = identity
        self.registry = registry
        self.hub_id = hub_id
        #: Enrolment requests per source address (they are open to anyone on the LAN).
        self.limiter = RateLimiter.per_minute(
            settings.enrol_requests_per_minute, max(1, settings.enrol_requests_per_minute // 4)
        )
        self.nonces = HubNonces(identity.derive_secret("semstreams-hub-nonce"), _NONCE_TTL_S)
        self._on_revoke = on_revoke

    def challenge(self, request: ChallengeRequest, now: float) -> ChallengeResponse:
        """Prove this hub to a device: sign its nonce and key; prove its claim token if
        named; give it a nonce of this hub's to answer.

        Raises:
            ValueError: the nonce or key is malformed.
        """
        key, nonce = device_key(request.public_key), _device_nonce(request.nonce)
        signature = self.identity.sign(hub_proof_message(nonce, request.device_id, key))
        proof = ""
        if request.claim_id:
            secret_key = self.registry.claim_key(request.claim_id)
            if secret_key is not None:
                proof = b64(claim_proof(secret_key, nonce, self.identity.public_key, key))
        return ChallengeResponse(
            hub_key=b64(self.identity.public_key),
            signature=b64(signature),
            hub_nonce=b64(self.nonces.issue(request.device_id, key, now)),
            claim_proof=proof,
        )

    def enrol(self, request: EnrolRequest, sync_url: str, now: float) -> SignedReply:
        """Record the device; an approved one gets its credential and config.

        Raises:
            ValueError: a nonce or the key is malformed.
            AuthError: the hub nonce is stale or another's, or the device's signature does
                not verify (it does not hold the key).
            ClaimError: the claim proof is wrong or its token used or expired, the id
                belongs to another key, or the device is rejected or revoked (403).
        """
        key, hub_nonce = device_key(request.public_key), from_b64(request.hub_nonce)
        nonce = _device_nonce(request.nonce)
        self.nonces.check(hub_nonce, request.device_id, key, now)
        message = enrol_message(nonce, hub_nonce, request.device_id, key, request.claim_id)
        if not verify(key, from_b64(request.signature), message):
            raise AuthError("enrolment signature does not verify")
        if request.device_id == self.hub_id:
            raise ClaimError(f"device id {request.device_id!r} is the hub's own", 403)
        device = self.registry.enrol(
            request,
            fingerprint(key),
            now,
            claim=self._claim(request, key, hub_nonce),
            max_pending=self.settings.max_pending,
            pending_ttl_s=float(self.settings.pending_ttl),
        )
        return self._signed(self._answer(device, sync_url, now), nonce, key)

    def _claim(self, request: EnrolRequest, key: bytes, hub_nonce: bytes) -> ClaimProof | None:
        if not request.claim_id:
            return None
        given = from_b64(request.claim_proof)
        hub_key = self.identity.public_key

        def proves(secret_key: str) -> bool:
            expected = device_claim_proof(secret_key, hub_nonce, request.device_id, key, hub_key)
            return hmac.compare_digest(expected, given)

        return ClaimProof(request.claim_id, proves)

    def renew(
        self, request: RenewRequest, credential: str, sync_url: str, now: float
    ) -> SignedReply:
        """A fresh credential for a device that holds a valid one and its key.

        Raises:
            ValueError: a nonce is malformed.
            AuthError: the credential or the proof of possession is refused (the reason
                says why).
        """
        nonce = _device_nonce(request.nonce)
        key = self.authenticate(request.device_id, credential, now)
        hub_nonce = from_b64(request.hub_nonce)
        self.nonces.check(hub_nonce, request.device_id, key, now)
        signature = from_b64(request.signature)
        check_possession(key, "renew", hub_nonce, request.device_id, signature)
        device = self.registry.get(request.device_id)
        assert device is not None
        return self._signed(self._answer(device, sync_url, now), nonce, key)

    def authenticate(self, device_id: str, credential: str, now: float) -> bytes:
        """Check a device's credential and that it is still approved; the device key it
        is bound to (whose proof of possession the caller then checks).

        Raises:
            AuthError: bad signature, expired, another device's or key's, or not approved.
        """
        claims = verify_credential(self.identity, credential, device_id, now=now)
        device = self.registry.get(device_id)
        if device is None or device.status != "approved":
            raise AuthError(f"device {(device.status if device else 'unknown')}")
        if int(claims.get("iat", 0)) <= device.credentials_after:
            raise AuthError(CREDENTIAL_ROTATED)
        if claims.get("cnf") != device.fingerprint:
            raise AuthError("credential is bound to another device key")
        return from_b64(device.public_key)

    def linked(self, device_id: str, user_agent: str, peer_host: str) -> bool:
        """Record a device's accepted sync link: its agent version (from the link's
        User-Agent) and address, now. Whether it is in the registry (blocking: SQLite)."""
        version, address = seen_fields(user_agent, peer_host)
        return self.registry.seen(device_id, version, address, time.time())

    def delete(self, device_id: str) -> bool:
        """Forget a device (a squatter, a retired Pi) and cut its link; whether it was known."""
        deleted = self.registry.delete(device_id)
        if deleted:
            self._on_revoke(device_id)
        return deleted

    def rotate(self, device_id: str, now: float) -> Device | None:
        """Retire the device's credentials now and cut its link: it enrols again with its
        key (a copied credential alone gets nothing more). ``None`` when unknown."""
        device = self.registry.rotate(device_id, now)
        if device is not None:
            self._on_revoke(device_id)
        return device

    def set_status(self, device_id: str, status: Status, now: float) -> Device | None:
        """Approve, reject or revoke; a rejected or revoked device is cut off at once."""
        device = self.registry.set_status(device_id, status, now)
        if device is not None and status in ("rejected", "revoked"):
            self._on_revoke(device_id)
        return device

    def _signed(self, answer: EnrolResponse, nonce: bytes, key: bytes) -> SignedReply:
        """``answer`` as JSON, signed for the device with ``key`` that sent ``nonce``."""
        body = msgspec.json.encode(answer)
        signature = self.identity.sign(reply_message(nonce, key, body))
        return SignedReply(answer.status, body, b64(signature))

    def _answer(self, device: Device, sync_url: str, now: float) -> EnrolResponse:
        if device.status == "pending":
            return EnrolResponse(status="pending", retry_after=_PENDING_RETRY_S)
        if device.status != "approved":
            raise ClaimError(f"device {device.status}", 403)
        credential, expires = issue_credential(
            self.identity,
            device.id,
            device.fingerprint,
            ttl_s=self.settings.credential_ttl,
            now=max(now, device.credentials_after + 1),  # newer than the rotation
        )
        config = DeviceSyncConfig(
            sync_url=self.settings.sync_url or sync_url,
            filters=self.settings.filters,
            max_bytes_per_second=int(self.settings.max_bytes_per_second),
        )
        return EnrolResponse(
            status="approved", credential=credential, expires_at=expires, config=config
        )


def check_possession(
    key: bytes, purpose: str, nonce: bytes, device_id: str, signature: bytes
) -> None:
    """Refuse a use of a credential whose user does not hold the device key it is bound to.

    Raises:
        AuthError: the signature over ``nonce`` is not ``key``'s.
    """
    if not verify(key, signature, possession_message(purpose, nonce, device_id)):
        raise AuthError("no proof of possession: the credential is bound to another key")
