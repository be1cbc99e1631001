"""Device credentials: JWTs (EdDSA) signed by the hub's key, scoped to one device.

A credential names its device (``sub``), the hub (``iss``, its key fingerprint), the
device key it was issued to (``cnf``), and expires. The hub verifies its own signature
and then asks the registry whether the device is still approved, so revoking takes
effect at once, whatever the expiry.
"""

from __future__ import annotations

import secrets
from typing import Any

import jwt

from edge_agent.errors import AuthError
from edge_agent.provision.identity import Identity

__all__ = ["issue_credential", "verify_credential"]

_ALGORITHM = "EdDSA"
_SCOPE = "sync"


def issue_credential(
    hub: Identity, device_id: str, device_fingerprint: str, *, ttl_s: float, now: float
) -> tuple[str, int]:
    """A credential for ``device_id``; (token, expiry in epoch seconds)."""
    expires = int(now + ttl_s)
    claims = {
        "sub": device_id,
        "iss": hub.fingerprint,
        "iat": int(now),
        "exp": expires,
        "jti": secrets.token_hex(8),
        "scope": _SCOPE,
        "cnf": device_fingerprint,
    }
    return jwt.encode(claims, hub.private_key, algorithm=_ALGORITHM), expires


def verify_credential(hub: Identity, token: str, device_id: str, *, now: float) -> dict[str, Any]:
    """The claims of a credential this hub issued to ``device_id``.

    Raises:
        AuthError: bad signature (tampered or another hub's), expired, or for another
            device; the reason says which and never quotes the token.
    """
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            hub.private_key.public_key(),
            algorithms=[_ALGORITHM],
            issuer=hub.fingerprint,
            options={"require": ["sub", "exp", "iss"], "verify_exp": False},
        )
    except jwt.InvalidTokenError as exc:
        raise AuthError(f"bad credential: {type(exc).__name__}") from exc
    if claims["exp"] <= now:
        raise AuthError("credential expired")
    if claims["sub"] != device_id or claims.get("scope") != _SCOPE:
        raise AuthError("credential is for another device")
    return claims
