"""The device's side of enrolment: find a hub, make it prove itself, enrol, keep the result.

On first start a device without a stored enrolment reads its boot-partition file once,
finds the hub (a configured URL, else mDNS), asks it to sign a fresh nonce and the
device key, and trusts it only if the key is pinned, or the hub proves it issued the
device's claim token, or (nothing pinned, no claim) on first use, recording its
fingerprint. The claim secret never leaves the device: it enrols with a proof of it over
the hub's nonce and its own key, and uses no reply the hub's key did not sign. A pending
device asks again until approved. The enrolment is stored (0600) and reused on every
later start; the boot file's claim secret is erased. Renewing proves the device key too.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import re
import socket
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import jwt
import msgspec

from edge_agent.config.schema import ProvisioningConfig
from edge_agent.errors import ConfigError, SemStreamsError
from edge_agent.private_files import check_private, write_private
from edge_agent.provision.hardware import hardware_facts
from edge_agent.provision.identity import (
    Identity,
    b64,
    claim_key,
    claim_proof,
    device_claim_proof,
    enrol_message,
    fingerprint,
    from_b64,
    hub_proof_message,
    possession_message,
    reply_message,
    split_claim,
    verify,
)
from edge_agent.provision.mdns import HUB_SERVICE, browse
from edge_agent.provision.messages import (
    ENROL_PROTOCOL,
    SIGNATURE_HEADER,
    ChallengeRequest,
    ChallengeResponse,
    EnrolRequest,
    EnrolResponse,
    ProvisionFile,
    RenewRequest,
    StoredEnrolment,
    protocol_of,
)
from edge_agent.sync.pacing import Backoff

__all__ = [
    "ProvisionError",
    "Provisioner",
    "challenge_request",
    "device_id_for",
    "enrol_request",
    "renew_request",
]

log = logging.getLogger(__name__)
_HTTP_TIMEOUT_S = 10.0
_ENROLMENT_FILE = "provisioning/enrolment.json"


class ProvisionError(SemStreamsError):
    """A hub was refused, or refused this device; the message says why."""


def device_id_for(settings: ProvisioningConfig, platform_id: str, identity: Identity) -> str:
    """The id a device enrols under.

    ``provisioning.device_id`` if set; else ``platform.id``, suffixed with the key
    fingerprint's first 8 hex digits when it is only the hostname, so devices cloned
    from one image (same hostname) still differ (the hostname made a valid device id).
    """
    if settings.device_id:
        return settings.device_id
    if platform_id == socket.gethostname():
        # A host name may hold dots ("pi.lan"), which no device id may: they become "-".
        host = re.sub(r"[^A-Za-z0-9_-]", "-", platform_id)[:55].lstrip("-_") or "device"
        return f"{host}-{identity.fingerprint.removeprefix('sha256:')[:8]}"
    return platform_id


def _post(
    url: str, body: Any, bearer: str = "", context: ssl.SSLContext | None = None
) -> tuple[int, bytes, str]:
    """(status, body, the hub's signature header) of a JSON POST."""
    headers = {"content-type": "application/json"}
    if bearer:
        headers["authorization"] = f"Bearer {bearer}"
    request = urllib.request.Request(url, data=msgspec.json.encode(body), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=_HTTP_TIMEOUT_S, context=context) as reply:
            return reply.status, reply.read(1 << 20), reply.headers.get(SIGNATURE_HEADER, "")
    except urllib.error.HTTPError as error:
        return error.code, error.read(1 << 20), ""


def challenge_request(
    identity: Identity, device_id: str, claim_id: str = ""
) -> tuple[ChallengeRequest, bytes]:
    """A challenge for a hub, and the fresh nonce in it (the hub's proofs answer it)."""
    nonce = os.urandom(32)
    request = ChallengeRequest(
        device_id=device_id,
        nonce=b64(nonce),
        public_key=b64(identity.public_key),
        claim_id=claim_id,
    )
    return request, nonce


def enrol_request(
    identity: Identity,
    device_id: str,
    hub_key: bytes,
    hub_nonce: bytes,
    claim: tuple[str, str] | None = None,
) -> tuple[EnrolRequest, bytes]:
    """An enrolment answering ``hub_nonce``, signed with the device key, with a proof of
    the claim secret (``claim`` = (id, secret)) but never the secret; and its nonce (the
    hub's signed reply is bound to it)."""
    nonce = os.urandom(32)
    claim_id, proof = "", b""
    if claim is not None:
        claim_id = claim[0]
        proof = device_claim_proof(
            claim_key(claim[1]), hub_nonce, device_id, identity.public_key, hub_key
        )
    message = enrol_message(nonce, hub_nonce, device_id, identity.public_key, claim_id)
    request = EnrolRequest(
        device_id=device_id,
        public_key=b64(identity.public_key),
        nonce=b64(nonce),
        hub_nonce=b64(hub_nonce),
        signature=b64(identity.sign(message)),
        hostname=socket.gethostname(),
        hardware=hardware_facts(),
        claim_id=claim_id,
        claim_proof=b64(proof) if proof else "",
    )
    return request, nonce


def renew_request(
    identity: Identity, device_id: str, hub_nonce: bytes
) -> tuple[RenewRequest, bytes]:
    """A renewal proving the device key over ``hub_nonce``, and its nonce."""
    nonce = os.urandom(32)
    proof = identity.sign(possession_message("renew", hub_nonce, device_id))
    request = RenewRequest(
        device_id=device_id, nonce=b64(nonce), hub_nonce=b64(hub_nonce), signature=b64(proof)
    )
    return request, nonce


def _claim(token: str) -> tuple[str, str] | None:
    """(id, secret) of the boot file's claim token; ``None`` without a usable one."""
    if not token:
        return None
    try:
        return split_claim(token)
    except ValueError as exc:
        log.warning("provisioning: ignoring the claim token: %s", exc)
        return None


def _reason(body: bytes) -> str:
    try:
        return str(json.loads(body).get("error", body[:200]))
    except (ValueError, AttributeError):
        return body[:200].decode(errors="replace")


class Provisioner:
    """Enrols this device once and keeps the result in the state directory.

    Args:
        settings: ``provisioning``.
        state_dir: the agent's state directory.
        device_id: the id to enrol under (see :func:`device_id_for`).
        identity: the device key.
    """

    def __init__(
        self, settings: ProvisioningConfig, state_dir: Path, device_id: str, identity: Identity
    ) -> None:
        self.settings = settings
        self.device_id = device_id
        self.identity = identity
        self.path = state_dir / _ENROLMENT_FILE
        self.status = "not enrolled"
        #: The fingerprint of the hub this device trusts, once it does.
        self.hub_fingerprint = ""
        try:
            self._tls = ssl.create_default_context(cafile=settings.ca_file or None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError([f"provisioning.ca_file: cannot load: {exc}"]) from exc

    def stored(self) -> StoredEnrolment | None:
        """The enrolment kept from an earlier start, if any."""
        if not self.path.exists():
            return None
        check_private(self.path, "enrolment (credential)")
        return msgspec.json.decode(self.path.read_bytes(), type=StoredEnrolment)

    def save(self, enrolment: StoredEnrolment) -> None:
        """Keep ``enrolment`` (0600): it holds the credential."""
        write_private(self.path, msgspec.json.encode(enrolment))

    async def enrolment(self) -> StoredEnrolment:
        """The stored enrolment, or enrol now (retrying with backoff until it works)."""
        stored = self.stored()
        if stored is not None:
            self.status = "enrolled"
            self.hub_fingerprint = fingerprint(from_b64(stored.hub_key))
            return stored
        boot = self._read_boot_file()
        retry = self.settings.retry
        backoff = Backoff(retry.initial, retry.max, retry.multiplier, retry.jitter)
        while True:
            for url in await self._candidates(boot):
                try:
                    enrolment = await self._enrol_at(url, boot)
                except (OSError, ValueError, msgspec.DecodeError, ProvisionError) as exc:
                    self.status = f"enrolment at {url} failed: {exc}"
                    log.warning("provisioning: %s", self.status)
                    continue
                self.save(enrolment)
                self._erase_claim(boot)
                self.status = "enrolled"
                self.hub_fingerprint = fingerprint(from_b64(enrolment.hub_key))
                log.info("provisioning: enrolled as %s at %s", self.device_id, url)
                return enrolment
            await asyncio.sleep(backoff.next())

    # ---- the steps -----------------------------------------------------------------------

    def _read_boot_file(self) -> ProvisionFile:
        path = Path(self.settings.file)
        if not path.is_file():
            return ProvisionFile()
        try:
            return msgspec.json.decode(path.read_bytes(), type=ProvisionFile)
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("provisioning: ignoring unreadable %s: %s", path, exc)
            return ProvisionFile()

    def _erase_claim(self, boot: ProvisionFile) -> None:
        """Remove the used claim secret from the boot file, keeping the rest."""
        path = Path(self.settings.file)
        if not boot.claim_token or not path.is_file():
            return
        kept = msgspec.structs.replace(boot, claim_token="")
        try:
            write_private(path, msgspec.json.encode(kept))
        except OSError as exc:
            log.warning("provisioning: could not erase the claim token in %s: %s", path, exc)
            return
        log.info("provisioning: claim token erased from %s", path)

    async def _candidates(self, boot: ProvisionFile) -> list[str]:
        url = boot.hub_url or self.settings.hub_url
        if url:
            return [url.rstrip("/")]
        try:
            found = await browse(
                HUB_SERVICE,
                timeout=self.settings.discovery_timeout,
                interfaces=self.settings.interfaces or None,
            )
        except OSError as exc:  # no multicast here: the next round tries again
            self.status = f"mDNS discovery failed: {exc}"
            log.warning("provisioning: %s", self.status)
            return []
        urls = [f"http://{hub.addresses[0]}:{hub.port}" for hub in found if hub.addresses]
        self.status = f"discovered {len(urls)} hub(s)" if urls else "no hub found"
        log.info("provisioning: %s", self.status)
        return urls

    async def _enrol_at(self, url: str, boot: ProvisionFile) -> StoredEnrolment:
        claim = _claim(boot.claim_token)
        pinned = boot.hub_key or self.settings.hub_key
        while True:
            hub_key, hub_nonce = await self._challenge(url, claim, pinned)
            pinned = b64(hub_key)  # it proved itself: hold it to that key from now on
            request, nonce = enrol_request(self.identity, self.device_id, hub_key, hub_nonce, claim)
            answer = await self._signed_post(
                f"{url}/enrol", request, nonce, hub_key, what="enrolment"
            )
            if answer.status == "approved" and answer.config is not None:
                return StoredEnrolment(
                    device_id=self.device_id,
                    hub_url=url,
                    hub_key=b64(hub_key),
                    credential=answer.credential,
                    expires_at=answer.expires_at,
                    config=answer.config,
                )
            self.status = f"pending approval at {url} (device key {self.identity.fingerprint})"
            log.info("provisioning: %s", self.status)
            await asyncio.sleep(answer.retry_after)

    async def _challenge(
        self, url: str, claim: tuple[str, str] | None, pinned: str
    ) -> tuple[bytes, bytes]:
        """Challenge the hub at ``url``; its key and its nonce, if it proves itself.

        Raises:
            ProvisionError: the hub speaks another enrolment protocol, its signature or
                claim proof is wrong, or its key is not the pinned one.
        """
        request, nonce = challenge_request(self.identity, self.device_id, claim[0] if claim else "")
        status, body, _ = await asyncio.to_thread(
            _post, f"{url}/enrol/challenge", request, "", self._tls
        )
        if status != 200:
            raise ProvisionError(f"no challenge answer ({status}): {_reason(body)}")
        if (protocol := protocol_of(body)) != ENROL_PROTOCOL:
            raise ProvisionError(
                f"hub speaks enrolment protocol {protocol}; this device needs {ENROL_PROTOCOL}"
            )
        try:
            answer = msgspec.json.decode(body, type=ChallengeResponse)
            hub_key, signature = from_b64(answer.hub_key), from_b64(answer.signature)
            hub_nonce, hub_claim_proof = from_b64(answer.hub_nonce), from_b64(answer.claim_proof)
        except (msgspec.DecodeError, ValueError) as exc:
            raise ProvisionError(f"malformed challenge answer: {exc}") from exc
        device_key = self.identity.public_key
        if not verify(hub_key, signature, hub_proof_message(nonce, self.device_id, device_key)):
            raise ProvisionError("hub signature does not verify")
        if pinned:
            if pinned not in (fingerprint(hub_key), answer.hub_key):
                raise ProvisionError(f"hub key {fingerprint(hub_key)} is not the pinned one")
        elif claim is not None:
            expected = claim_proof(claim_key(claim[1]), nonce, hub_key, device_key)
            if not hmac.compare_digest(hub_claim_proof, expected):
                raise ProvisionError("hub cannot prove it issued this device's claim token")
        else:
            log.warning(
                "provisioning: nothing pinned and no claim token: trusting hub %s on first use",
                fingerprint(hub_key),
            )
        return hub_key, hub_nonce

    async def _signed_post(
        self, url: str, request: Any, nonce: bytes, hub_key: bytes, *, what: str, bearer: str = ""
    ) -> EnrolResponse:
        """POST ``request``; the answer, once the hub's signature over it (bound to
        ``nonce`` and this device key) verifies.

        Raises:
            ProvisionError: refused, or not signed by ``hub_key`` (changed on the way).
        """
        status, body, signature = await asyncio.to_thread(_post, url, request, bearer, self._tls)
        if status not in (200, 202):
            raise ProvisionError(f"hub refused {what} ({status}): {_reason(body)}")
        signed = reply_message(nonce, self.identity.public_key, body)
        try:
            genuine = verify(hub_key, from_b64(signature), signed)
            answer = msgspec.json.decode(body, type=EnrolResponse)
        except (msgspec.DecodeError, ValueError) as exc:
            raise ProvisionError(f"malformed {what} reply: {exc}") from exc
        if not genuine:
            raise ProvisionError(f"{what} reply is not signed by the hub's key: not used")
        return answer

    def prove_hello(self, nonce: bytes) -> bytes:
        """The answer to a hub's sync Challenge: the device key's signature over ``nonce``."""
        return self.identity.sign(possession_message("hello", nonce, self.device_id))

    @staticmethod
    def renewal_due(enrolment: StoredEnrolment) -> float:
        """When to renew (epoch s): two thirds of the way from issue to expiry."""
        claims = jwt.decode(enrolment.credential, options={"verify_signature": False})
        issued = float(claims.get("iat", time.time()))
        return issued + (enrolment.expires_at - issued) * 2 / 3

    async def enrol_again(self, enrolment: StoredEnrolment) -> StoredEnrolment:
        """A fresh credential after the hub rotated the old one away: enrol again at the
        same hub (pinned to the key it proved before), proving the device key.

        Raises:
            ProvisionError: the hub refused, or is not the hub this device enrolled at.
            OSError: the hub is unreachable.
        """
        pinned = ProvisionFile(hub_key=enrolment.hub_key)
        renewed = await self._enrol_at(enrolment.hub_url, pinned)
        self.save(renewed)
        return renewed

    async def renew(self, enrolment: StoredEnrolment) -> StoredEnrolment:
        """A fresh credential from the hub, by proof of the device key; stored.

        Raises:
            ProvisionError: the hub refused (e.g. the device was revoked), or its answer
                is not signed by the hub this device enrolled at.
            OSError: the hub is unreachable.
        """
        hub_key = from_b64(enrolment.hub_key)
        _, hub_nonce = await self._challenge(enrolment.hub_url, None, enrolment.hub_key)
        request, nonce = renew_request(self.identity, self.device_id, hub_nonce)
        answer = await self._signed_post(
            f"{enrolment.hub_url}/enrol/renew",
            request,
            nonce,
            hub_key,
            what="renewal",
            bearer=enrolment.credential,
        )
        renewed = msgspec.structs.replace(
            enrolment,
            credential=answer.credential,
            expires_at=answer.expires_at,
            config=answer.config or enrolment.config,
        )
        self.save(renewed)
        return renewed
