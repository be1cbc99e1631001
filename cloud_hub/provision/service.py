"""The hub's enrolment service: challenge, enrol, renew, approve, reject, revoke.

No I/O of its own beyond the registry: the HTTP views and the sync link call it.
"""

from __future__ import annotations

from collections.abc import Callable

from cloud_hub.provision.credentials import issue_credential, verify_credential
from cloud_hub.provision.registry import ClaimError, Device, Registry, Status, split_claim_token
from edge_agent.api.security import RateLimiter
from edge_agent.config.schema import ProvisioningConfig
from edge_agent.errors import AuthError
from edge_agent.provision.identity import (
    Identity,
    b64,
    claim_proof,
    enrol_message,
    fingerprint,
    from_b64,
    hub_proof_message,
    verify,
)
from edge_agent.provision.messages import (
    CREDENTIAL_ROTATED,
    ChallengeRequest,
    ChallengeResponse,
    DeviceSyncConfig,
    EnrolRequest,
    EnrolResponse,
)

__all__ = ["Enrolment"]

_PENDING_RETRY_S = 2.0


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
        self._on_revoke = on_revoke

    def challenge(self, request: ChallengeRequest) -> ChallengeResponse:
        """Prove this hub to a device: sign its nonce; prove its claim token if named."""
        nonce = from_b64(request.nonce)
        signature = self.identity.sign(hub_proof_message(nonce, request.device_id))
        proof = ""
        if request.claim_id:
            key = self.registry.claim_key(request.claim_id)
            if key is not None:
                proof = b64(claim_proof(key, nonce, self.identity.public_key))
        return ChallengeResponse(
            hub_key=b64(self.identity.public_key), signature=b64(signature), claim_proof=proof
        )

    def enrol(self, request: EnrolRequest, sync_url: str, now: float) -> EnrolResponse:
        """Record the device; an approved one gets its credential and config.

        Raises:
            AuthError: the device's signature does not verify (it does not hold the key).
            ClaimError: the claim token is refused, the id belongs to another key, or the
                device is rejected or revoked (403).
        """
        public_key = from_b64(request.public_key)
        message = enrol_message(from_b64(request.nonce), request.device_id, public_key)
        if not verify(public_key, from_b64(request.signature), message):
            raise AuthError("enrolment signature does not verify")
        if request.device_id == self.hub_id:
            raise ClaimError(f"device id {request.device_id!r} is the hub's own", 403)
        if request.claim_token:
            split_claim_token(request.claim_token)
        device = self.registry.enrol(
            request,
            fingerprint(public_key),
            now,
            max_pending=self.settings.max_pending,
            pending_ttl_s=float(self.settings.pending_ttl),
        )
        return self._answer(device, sync_url, now)

    def renew(self, device_id: str, credential: str, sync_url: str, now: float) -> EnrolResponse:
        """A fresh credential for a device that holds a valid one.

        Raises:
            AuthError: the credential is refused (the reason says why).
        """
        self.authenticate(device_id, credential, now)
        device = self.registry.get(device_id)
        assert device is not None
        return self._answer(device, sync_url, now)

    def authenticate(self, device_id: str, credential: str, now: float) -> None:
        """Check a device's credential and that it is still approved.

        Raises:
            AuthError: bad signature, expired, another device's, or not approved.
        """
        claims = verify_credential(self.identity, credential, device_id, now=now)
        device = self.registry.get(device_id)
        if device is None or device.status != "approved":
            raise AuthError(f"device {(device.status if device else 'unknown')}")
        if int(claims.get("iat", 0)) <= device.credentials_after:
            raise AuthError(CREDENTIAL_ROTATED)

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
