"""Keys and proofs: a device's or hub's Ed25519 identity, fingerprints, signatures, MACs.

Enrolment protocol 2 (``docs/provisioning.md``), made so that a relay between a device
and its hub learns nothing it can reuse:
- the hub signs the device's fresh nonce and key (:func:`hub_proof_message`); the device
  checks it against a pinned key, or against the hub's proof that it knows the device's
  claim secret (:func:`claim_proof`, bound to both keys);
- the device proves it knows the claim secret without sending it
  (:func:`device_claim_proof`, over the hub's nonce and both keys), and signs its
  enrolment (:func:`enrol_message`): it holds the key it enrols;
- the hub signs every reply, bound to the device's nonce and key (:func:`reply_message`),
  and the device checks that before it uses any URL or setting in it;
- a credential is bound to the device key: each use answers a hub nonce with a
  signature (:func:`possession_message`), so a copied credential alone gets nothing.

Every message is a label and length-prefixed parts, so no two can be confused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge_agent.errors import AuthError
from edge_agent.private_files import check_private

__all__ = [
    "Identity",
    "b64",
    "claim_key",
    "claim_proof",
    "device_claim_proof",
    "enrol_message",
    "fingerprint",
    "from_b64",
    "hub_proof_message",
    "possession_message",
    "reply_message",
    "split_claim",
    "verify",
]

_RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw


def b64(data: bytes) -> str:
    """URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def from_b64(text: str) -> bytes:
    """Decode :func:`b64`.

    Raises:
        ValueError: not base64.
    """
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def fingerprint(public_key: bytes) -> str:
    """``sha256:<hex>`` of a raw public key: what people compare and configs pin."""
    return "sha256:" + hashlib.sha256(public_key).hexdigest()


def _message(label: str, *parts: bytes) -> bytes:
    """``label``, a NUL, then each part prefixed by its 4-byte length."""
    framed = [label.encode(), b"\0"]
    for part in parts:
        framed += [len(part).to_bytes(4, "big"), part]
    return b"".join(framed)


def hub_proof_message(nonce: bytes, device_id: str, device_key: bytes) -> bytes:
    """What a hub signs to prove its key to the device with ``device_key`` that sent ``nonce``."""
    return _message("semstreams-hub-proof", nonce, device_id.encode(), device_key)


def enrol_message(
    nonce: bytes, hub_nonce: bytes, device_id: str, public_key: bytes, claim_id: str
) -> bytes:
    """What a device signs to prove it holds the key it enrols (at this hub, now)."""
    return _message(
        "semstreams-enrol", nonce, hub_nonce, device_id.encode(), public_key, claim_id.encode()
    )


def reply_message(nonce: bytes, device_key: bytes, body: bytes) -> bytes:
    """What a hub signs to vouch for a reply ``body`` to the request carrying ``nonce``."""
    return _message("semstreams-reply", nonce, device_key, body)


def possession_message(purpose: str, hub_nonce: bytes, device_id: str) -> bytes:
    """What a device signs to use its credential (``purpose``: ``hello``, ``renew``)."""
    return _message(f"semstreams-possession-{purpose}", hub_nonce, device_id.encode())


def split_claim(token: str) -> tuple[str, str]:
    """(id, secret) of a claim token ``ct_<id>.<secret>``.

    Raises:
        ValueError: not a claim token.
    """
    head, _, secret = token.partition(".")
    if not head.startswith("ct_") or len(head) < 4 or not secret:
        raise ValueError("malformed claim token (expected ct_<id>.<secret>)")
    return head.removeprefix("ct_"), secret


def claim_key(secret: str) -> str:
    """The key of the claim proofs: a hash of the claim secret (all the hub keeps of it)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def claim_proof(key: str, nonce: bytes, hub_key: bytes, device_key: bytes) -> bytes:
    """A hub's proof that it issued a claim token (``key`` = :func:`claim_key`), bound to
    both keys so a relay can swap neither."""
    message = _message("semstreams-claim-hub", nonce, hub_key, device_key)
    return hmac.new(key.encode(), message, "sha256").digest()


def device_claim_proof(
    key: str, hub_nonce: bytes, device_id: str, device_key: bytes, hub_key: bytes
) -> bytes:
    """A device's proof that it holds a claim secret, for this hub's nonce and this key
    only: it enrols nothing else, and the secret never leaves the device."""
    message = _message(
        "semstreams-claim-device", hub_nonce, device_id.encode(), device_key, hub_key
    )
    return hmac.new(key.encode(), message, "sha256").digest()


def verify(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """Whether ``signature`` is ``public_key``'s Ed25519 signature of ``message``."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


class Identity:
    """An Ed25519 key pair kept in one PEM file (0600, never logged).

    Args:
        private_key: the key.
    """

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self.private_key = private_key
        self.public_key = private_key.public_key().public_bytes(*_RAW)
        self.fingerprint = fingerprint(self.public_key)

    @classmethod
    def load_or_create(cls, path: Path) -> Identity:
        """The key at ``path``, made on first use (created 0600, atomically, never replaced).

        Raises:
            AuthError: the file exists but holds no Ed25519 private key.
            ConfigError: group or others may read it.
        """
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not path.exists():
            key = Ed25519PrivateKey.generate()
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass  # another process made it first: use theirs
            else:
                with os.fdopen(fd, "wb") as file:
                    file.write(pem)
                    file.flush()
                    os.fsync(file.fileno())
        check_private(path, "private key")
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(loaded, Ed25519PrivateKey):
            raise AuthError(f"{path}: not an Ed25519 private key")
        return cls(loaded)

    def sign(self, message: bytes) -> bytes:
        """The Ed25519 signature of ``message``."""
        return self.private_key.sign(message)

    def derive_secret(self, label: str) -> bytes:
        """A 32-byte secret for ``label``, derived from the private key (the same on every
        instance sharing this key; nothing to store)."""
        raw = self.private_key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        return hmac.new(raw, label.encode(), "sha256").digest()
