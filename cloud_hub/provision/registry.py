"""The hub's device registry and claim tokens, in their own SQLite file (``registry.db``).

Claim tokens are ``ct_<id>.<secret>``; only a hash of the secret is kept (the key of the
claim proofs), so a copy of the registry enrols nothing, and the secret itself never
reaches the hub again: a device proves it (:class:`ClaimProof`). A token is single-use,
expiring, and scoped to a group; using it burns it in the same transaction that
approves the device.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import secrets
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import msgspec

from edge_agent.errors import AuthError
from edge_agent.graph.database import Database
from edge_agent.graph.integrity import refuse_if_damaged
from edge_agent.graph.migrations import Migration
from edge_agent.provision.identity import claim_key
from edge_agent.provision.messages import EnrolRequest

__all__ = ["ClaimError", "ClaimProof", "Device", "Registry", "Status", "seen_fields"]

log = logging.getLogger(__name__)

Status = Literal["pending", "approved", "rejected", "revoked"]

# IF NOT EXISTS: registries made before migrations were recorded already hold them.
_R001_INITIAL = """
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY,
    public_key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    hostname TEXT NOT NULL,
    hardware TEXT NOT NULL,
    status TEXT NOT NULL,
    device_group TEXT NOT NULL,
    enrolled_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS claim_tokens (
    id TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL,
    device_group TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at INTEGER,
    used_by TEXT
);
"""

# Credentials issued at or before this second are refused (rotated away).
_R002_ROTATION = """
ALTER TABLE devices ADD COLUMN credentials_after INTEGER NOT NULL DEFAULT 0;
"""

# What the device's last sync link showed: its agent's version, the address it came
# from, when (for the fleet inventory: ansible/inventory_plugins/semstreams_fleet.py).
_R003_SEEN = """
ALTER TABLE devices ADD COLUMN agent_version TEXT NOT NULL DEFAULT '';
ALTER TABLE devices ADD COLUMN address TEXT NOT NULL DEFAULT '';
ALTER TABLE devices ADD COLUMN last_seen INTEGER NOT NULL DEFAULT 0;
"""

#: The registry's schema, as named migrations (the graph store's machinery).
REGISTRY_MIGRATIONS: list[Migration] = [
    ("registry_001_initial", _R001_INITIAL),
    ("registry_002_rotation", _R002_ROTATION),
    ("registry_003_seen", _R003_SEEN),
]

# An agent version as a sync link's User-Agent carries it (PEP 440 and local labels).
_VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+!_-]{0,63}", re.ASCII)
_AGENT_PREFIX = "semstreams-edge/"


class ClaimError(AuthError):
    """A claim token is refused; ``status`` is the HTTP status to answer with."""

    def __init__(self, reason: str, status: int) -> None:
        super().__init__(reason)
        self.status = status


class Device(msgspec.Struct, frozen=True):
    """One device as the API and the dashboard show it."""

    id: str
    public_key: str
    fingerprint: str
    hostname: str
    hardware: dict[str, Any]
    status: Status
    group: str
    enrolled_at: int
    updated_at: int
    #: Credentials issued at or before this epoch second are refused (rotated away).
    credentials_after: int = 0
    #: The agent version its last sync link announced ("" until it linked).
    version: str = ""
    #: The IP address its last sync link came from, as this hub saw it ("" until then).
    address: str = ""
    #: When its last sync link was accepted (epoch second; 0: never).
    last_seen: int = 0


def seen_fields(user_agent: str, peer_host: str) -> tuple[str, str]:
    """(version, address) of a sync link, from its User-Agent and peer host; "" for a
    part that is missing or malformed (both come from the peer: never trusted as is).

    >>> seen_fields("semstreams-edge/0.4.0", "10.0.0.7")
    ('0.4.0', '10.0.0.7')
    >>> seen_fields("curl/8", "not an address")
    ('', '')
    """
    version = ""
    if user_agent.startswith(_AGENT_PREFIX):
        candidate = user_agent[len(_AGENT_PREFIX) :].split(" ", 1)[0]
        version = candidate if _VERSION.fullmatch(candidate) else ""
    try:
        address = str(ipaddress.ip_address(peer_host))
    except ValueError:
        address = ""
    return version, address


@dataclass(frozen=True)
class ClaimProof:
    """A device's proof of a claim token's secret: the token's id, and a check that takes
    the token's proof key (see :func:`~edge_agent.provision.identity.claim_key`)."""

    claim_id: str
    proves: Callable[[str], bool]


_DAMAGED_REMEDY = (
    "restore it from a backup, or move it (with its -wal and -shm files) aside to start"
    " with no enrolled devices, which then enrol again"
)


class Registry:
    """Devices and claim tokens; safe to call from any thread (writers take turns).

    Raises:
        GraphError: the file cannot be opened, or SQLite refused a write.
    """

    def __init__(self, path: Path) -> None:
        # Enrolments are nowhere else: a damaged registry is refused, never replaced.
        refuse_if_damaged(path, "device registry", _DAMAGED_REMEDY)
        self._db = Database(path, REGISTRY_MIGRATIONS, what="device registry")

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    # ---- claim tokens ------------------------------------------------------------------

    def create_claim_token(self, group: str, ttl_s: float, now: float) -> tuple[str, int]:
        """A new single-use token for ``group``; (token, expiry in epoch seconds)."""
        token_id, secret = secrets.token_hex(6), secrets.token_urlsafe(24)
        expires = int(now + ttl_s)
        self._db.transaction(
            lambda db: db.execute(
                "INSERT INTO claim_tokens VALUES (?, ?, ?, ?, NULL, NULL)",
                (token_id, claim_key(secret), group, expires),
            )
        )
        return f"ct_{token_id}.{secret}", expires

    def claim_key(self, token_id: str) -> str | None:
        """The proof key of a token this hub issued (see :func:`claim_key`), or ``None``.

        Used and expired tokens too: the hub proves it issued them, then refuses them at
        enrolment with the reason (409 used, 401 expired).
        """
        with self._db.reader() as db:
            row = db.execute(
                "SELECT secret_hash FROM claim_tokens WHERE id = ?", (token_id,)
            ).fetchone()
        return str(row[0]) if row else None

    # ---- devices -----------------------------------------------------------------------

    def enrol(
        self,
        request: EnrolRequest,
        fingerprint: str,
        now: float,
        *,
        claim: ClaimProof | None = None,
        max_pending: int = 1000,
        pending_ttl_s: float = 86400.0,
    ) -> Device:
        """Record a device; approve it at once with a valid ``claim`` (the token burns).

        A device that asks again with the same key gets its record back (pending ones
        may bring a claim now). Pending records older than ``pending_ttl_s`` are
        forgotten first. An id held *pending* by another key goes to the device that
        presents a valid claim token for it (the squatter's record is dropped).

        Raises:
            ClaimError: the claim token is unknown, used or expired (401, 409); the id is
                approved, rejected or revoked under another key (409); or ``max_pending``
                devices already wait (429).
        """
        return self._db.transaction(
            _enrol,
            request,
            fingerprint,
            now,
            claim=claim,
            max_pending=max_pending,
            pending_ttl_s=pending_ttl_s,
        )

    def delete(self, device_id: str) -> bool:
        """Forget a device (it may enrol again); whether it was known."""

        def delete(db: sqlite3.Connection) -> bool:
            return bool(db.execute("DELETE FROM devices WHERE id = ?", (device_id,)).rowcount)

        return self._db.transaction(delete)

    def set_status(self, device_id: str, status: Status, now: float) -> Device | None:
        """Approve, reject or revoke a device; ``None`` when it is unknown."""

        def update(db: sqlite3.Connection) -> Device | None:
            db.execute(
                "UPDATE devices SET status = ?, updated_at = ? WHERE id = ?",
                (status, int(now), device_id),
            )
            return _get(db, device_id)

        return self._db.transaction(update)

    def rotate(self, device_id: str, now: float) -> Device | None:
        """Refuse the device's credentials issued until ``now``; ``None`` when unknown."""

        def update(db: sqlite3.Connection) -> Device | None:
            db.execute(
                "UPDATE devices SET credentials_after = ?, updated_at = ? WHERE id = ?",
                (int(now), int(now), device_id),
            )
            return _get(db, device_id)

        return self._db.transaction(update)

    def seen(self, device_id: str, version: str, address: str, now: float) -> bool:
        """Record a device's accepted sync link (see :func:`seen_fields`); whether the
        device is in the registry (edges of the static config are not)."""

        def update(db: sqlite3.Connection) -> bool:
            cursor = db.execute(
                "UPDATE devices SET agent_version = ?, address = ?, last_seen = ? WHERE id = ?",
                (version, address, int(now), device_id),
            )
            return bool(cursor.rowcount)

        return self._db.transaction(update)

    def get(self, device_id: str) -> Device | None:
        """One device, or ``None``."""
        with self._db.reader() as db:
            return _get(db, device_id)

    def devices(self) -> list[Device]:
        """Every device, by id."""
        with self._db.reader() as db:
            rows = db.execute("SELECT * FROM devices ORDER BY id").fetchall()
        return [_device(row) for row in rows]


def _check_claim(db: sqlite3.Connection, claim: ClaimProof, now: float) -> tuple[str, str]:
    row = db.execute(
        "SELECT secret_hash, device_group, expires_at, used_at FROM claim_tokens WHERE id = ?",
        (claim.claim_id,),
    ).fetchone()
    if row is None or not claim.proves(row[0]):
        raise ClaimError("unknown claim token, or its proof is wrong", 401)
    if row[3] is not None:
        raise ClaimError("claim token already used", 409)
    if row[2] <= now:
        raise ClaimError("claim token expired", 401)
    return claim.claim_id, row[1]


def _enrol(
    db: sqlite3.Connection,
    request: EnrolRequest,
    fingerprint: str,
    now: float,
    *,
    claim: ClaimProof | None,
    max_pending: int,
    pending_ttl_s: float,
) -> Device:
    device_id = request.device_id
    db.execute(
        "DELETE FROM devices WHERE status = 'pending' AND enrolled_at < ?",
        (int(now - pending_ttl_s),),
    )
    known = _get(db, device_id)
    same_key = known is not None and known.public_key == request.public_key
    if known is not None and same_key and (known.status != "pending" or claim is None):
        return known
    claimed = _check_claim(db, claim, now) if claim is not None else None
    if known is not None and not same_key:
        if known.status != "pending" or claimed is None:
            raise ClaimError(f"device id {device_id!r} is enrolled with another key", 409)
        log.warning(
            "enrolment: %s was held pending by key %s; a valid claim token gives it to %s",
            device_id,
            known.fingerprint,
            fingerprint,
        )
        db.execute("DELETE FROM devices WHERE id = ?", (device_id,))
        known = None
    if claimed is None and known is None and _pending(db) >= max_pending:
        raise ClaimError(f"{max_pending} devices already wait for approval; try later", 429)
    status: Status = "pending"
    group = ""
    if claimed is not None:
        token_id, group = claimed
        db.execute(
            "UPDATE claim_tokens SET used_at = ?, used_by = ? WHERE id = ?",
            (int(now), device_id, token_id),
        )
        status = "approved"
    db.execute(
        "INSERT OR REPLACE INTO devices (id, public_key, fingerprint, hostname, hardware,"
        " status, device_group, enrolled_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            device_id,
            request.public_key,
            fingerprint,
            request.hostname,
            msgspec.json.encode(request.hardware).decode(),
            status,
            group,
            known.enrolled_at if known else int(now),
            int(now),
        ),
    )
    device = _get(db, device_id)
    assert device is not None
    return device


def _pending(db: sqlite3.Connection) -> int:
    (count,) = db.execute("SELECT count(*) FROM devices WHERE status = 'pending'").fetchone()
    return int(count)


def _get(db: sqlite3.Connection, device_id: str) -> Device | None:
    row = db.execute("SELECT * FROM devices WHERE id = ?", (device_id,)).fetchone()
    return _device(row) if row else None


def _device(row: tuple[Any, ...]) -> Device:
    return Device(
        row[0],
        row[1],
        row[2],
        row[3],
        msgspec.json.decode(row[4]),
        row[5],
        row[6],
        row[7],
        row[8],
        *row[9:13],
    )
