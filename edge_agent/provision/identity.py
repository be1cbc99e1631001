"""Keys and proofs: a device's or hub's Ed25519 identity, fingerprints, signatures.

mDNS tells a device where a hub might be; only these proofs make it trust one:
- the hub signs the device's fresh nonce with its key (:func:`hub_proof_message`), and
  the device checks it against a pinned key, or
- the hub proves it knows the device's claim secret (:func:`claim_proof`), which only
  the hub that issued the claim token can.
The device in turn signs its enrolment (:func:`enrol_message`): it holds the key it enrols.
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
    "enrol_message",
    "fingerprint",
    "from_b64",
    "hub_proof_message",
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


def hub_proof_message(nonce: bytes, device_id: str) -> bytes:
    """What a hub signs to prove its key to a device that sent ``nonce``."""
    return b"semstreams-hub-proof\0" + nonce + device_id.encode()


def enrol_message(nonce: bytes, device_id: str, public_key: bytes) -> bytes:
    """What a device signs to prove it holds the key it enrols."""
    return b"semstreams-enrol\0" + nonce + device_id.encode() + b"\0" + public_key


def claim_key(secret: str) -> str:
    """The key of the claim proof: a hash of the claim secret (all the hub keeps of it)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def claim_proof(key: str, nonce: bytes, hub_key: bytes) -> bytes:
    """A hub's proof that it issued a claim token (``key`` = :func:`claim_key`), bound to
    its own public key so a relay cannot swap keys."""
    return hmac.new(key.encode(), b"semstreams-claim\0" + nonce + hub_key, "sha256").digest()


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
