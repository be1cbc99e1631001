"""The device's side of enrolment: find a hub, make it prove itself, enrol, keep the result.

On first start a device without a stored enrolment reads its boot-partition file once,
finds the hub (a configured URL, else mDNS), asks it to sign a fresh nonce, and trusts
it only if the key is pinned, or the hub proves it issued the device's claim token, or
(nothing pinned, no claim, exactly one hub answering) on first use, recording its
fingerprint. Only then does the claim token leave the device. A pending device asks
again until approved. The enrolment is stored (0600) and reused on every later start;
the boot file's claim secret is erased.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import jwt
import msgspec

from edge_agent.config.schema import ProvisioningConfig
from edge_agent.errors import SemStreamsError
from edge_agent.private_files import check_private, write_private
from edge_agent.provision.hardware import hardware_facts
from edge_agent.provision.identity import (
    Identity,
    b64,
    claim_key,
    claim_proof,
    enrol_message,
    fingerprint,
    from_b64,
    hub_proof_message,
    verify,
)
from edge_agent.provision.mdns import HUB_SERVICE, browse
from edge_agent.provision.messages import (
    ChallengeRequest,
    ChallengeResponse,
    EnrolRequest,
    EnrolResponse,
    ProvisionFile,
    StoredEnrolment,
)
from edge_agent.sync.pacing import Backoff

__all__ = ["ProvisionError", "Provisioner", "device_id_for"]

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


def _post(url: str, body: Any, bearer: str = "") -> tuple[int, bytes]:
    headers = {"content-type": "application/json"}
    if bearer:
        headers["authorization"] = f"Bearer {bearer}"
    request = urllib.request.Request(url, data=msgspec.json.encode(body), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=_HTTP_TIMEOUT_S) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


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
        found = await browse(
            HUB_SERVICE,
            timeout=self.settings.discovery_timeout,
            interfaces=self.settings.interfaces or None,
        )
        urls = [f"http://{hub.addresses[0]}:{hub.port}" for hub in found if hub.addresses]
        self.status = f"discovered {len(urls)} hub(s)" if urls else "no hub found"
        log.info("provisioning: %s", self.status)
        return urls

    async def _enrol_at(self, url: str, boot: ProvisionFile) -> StoredEnrolment:
        hub_key = await self._trusted_hub_key(url, boot)
        while True:
            nonce = os.urandom(32)
            message = enrol_message(nonce, self.device_id, self.identity.public_key)
            request = EnrolRequest(
                device_id=self.device_id,
                public_key=b64(self.identity.public_key),
                nonce=b64(nonce),
                signature=b64(self.identity.sign(message)),
                hostname=socket.gethostname(),
                hardware=hardware_facts(),
                claim_token=boot.claim_token,
            )
            status, body = await asyncio.to_thread(_post, f"{url}/enrol", request)
            if status not in (200, 202):
                raise ProvisionError(f"hub refused enrolment ({status}): {_reason(body)}")
            answer = msgspec.json.decode(body, type=EnrolResponse)
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

    async def _trusted_hub_key(self, url: str, boot: ProvisionFile) -> bytes:
        """Challenge the hub at ``url``; its key if it proves itself.

        Raises:
            ProvisionError: the hub's signature or claim proof is wrong, or its key is not
                the pinned one.
        """
        nonce = os.urandom(32)
        claim_id, _, secret = boot.claim_token.removeprefix("ct_").partition(".")
        request = ChallengeRequest(device_id=self.device_id, nonce=b64(nonce), claim_id=claim_id)
        status, body = await asyncio.to_thread(_post, f"{url}/enrol/challenge", request)
        if status != 200:
            raise ProvisionError(f"no challenge answer ({status}): {_reason(body)}")
        answer = msgspec.json.decode(body, type=ChallengeResponse)
        hub_key = from_b64(answer.hub_key)
        if not verify(
            hub_key, from_b64(answer.signature), hub_proof_message(nonce, self.device_id)
        ):
            raise ProvisionError("hub signature does not verify")
        pinned = boot.hub_key or self.settings.hub_key
        if pinned:
            if pinned not in (fingerprint(hub_key), answer.hub_key):
                raise ProvisionError(f"hub key {fingerprint(hub_key)} is not the pinned one")
            return hub_key
        if secret:
            expected = claim_proof(claim_key(secret), nonce, hub_key)
            if not answer.claim_proof or from_b64(answer.claim_proof) != expected:
                raise ProvisionError("hub cannot prove it issued this device's claim token")
            return hub_key
        log.warning(
            "provisioning: nothing pinned and no claim token: trusting hub %s on first use",
            fingerprint(hub_key),
        )
        return hub_key

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
        """A fresh credential from the hub, stored.

        Raises:
            ProvisionError: the hub refused (e.g. the device was revoked).
            OSError: the hub is unreachable.
        """
        status, body = await asyncio.to_thread(
            _post,
            f"{enrolment.hub_url}/enrol/renew",
            {"device_id": self.device_id},
            enrolment.credential,
        )
        if status != 200:
            raise ProvisionError(f"renewal refused ({status}): {_reason(body)}")
        answer = msgspec.json.decode(body, type=EnrolResponse)
        renewed = msgspec.structs.replace(
            enrolment,
            credential=answer.credential,
            expires_at=answer.expires_at,
            config=answer.config or enrolment.config,
        )
        self.save(renewed)
        return renewed
