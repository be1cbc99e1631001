"""The hub's own nonces: fresh, bound to one device key, checked without any state.

A nonce is its issue time, 16 random bytes and a MAC over both and the device's id and
key, made with a secret derived from the hub key. Any instance holding that key checks
it; none has to remember what it gave out, and a flood of challenges costs no memory.
"""

from __future__ import annotations

import hmac
import os

from edge_agent.errors import AuthError

__all__ = ["HubNonces"]

_TIME, _RANDOM, _MAC = 8, 16, 16


class HubNonces:
    """Issue and check nonces.

    Args:
        secret: the MAC key (from :meth:`~edge_agent.provision.identity.Identity.derive_secret`).
        ttl_s: how long a nonce may be answered.
    """

    def __init__(self, secret: bytes, ttl_s: float) -> None:
        self._secret = secret
        self.ttl_s = ttl_s

    def issue(self, device_id: str, device_key: bytes, now: float) -> bytes:
        """A new nonce for the device with ``device_key``."""
        head = int(now).to_bytes(_TIME, "big") + os.urandom(_RANDOM)
        return head + self._mac(head, device_id, device_key)

    def check(self, nonce: bytes, device_id: str, device_key: bytes, now: float) -> None:
        """Refuse a nonce this hub did not issue to this device key, or too old to answer.

        Raises:
            AuthError: the reason.
        """
        head, mac = nonce[: _TIME + _RANDOM], nonce[_TIME + _RANDOM :]
        if len(nonce) != _TIME + _RANDOM + _MAC or not hmac.compare_digest(
            mac, self._mac(head, device_id, device_key)
        ):
            raise AuthError("hub nonce not issued by this hub for this device key")
        issued = int.from_bytes(head[:_TIME], "big")
        if not issued - 5 <= now <= issued + self.ttl_s:
            raise AuthError("hub nonce expired: ask for a new challenge")

    def _mac(self, head: bytes, device_id: str, device_key: bytes) -> bytes:
        message = head + len(device_id).to_bytes(2, "big") + device_id.encode() + device_key
        return hmac.new(self._secret, message, "sha256").digest()[:_MAC]
