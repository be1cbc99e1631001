"""The fleet as an Ansible inventory: from the hub's device registry, or from mDNS.

Pure logic for ``ansible/inventory_plugins/semstreams_fleet.py``, which is the thin
shell (options, the token, the HTTP call, the mDNS browse). The hub's ``GET /devices``
answer is hostile input like any peer's: :func:`read_bounded` caps its size and the time
it may take, :func:`parse_devices` validates every field the inventory uses, and a
device with a bad field fails the whole answer with the field's path (no half-trusted
inventory).

Groups: every host is in :data:`EDGES_GROUP`; a registry device is also in the group
named after its registry group, and in ``semstreams_version_<x_y_z>`` and
``semstreams_status_<status>``. Names go through :func:`group_name`.
"""

from __future__ import annotations

import bisect
import re
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from typing import Annotated, Any, Literal

import msgspec

from edge_agent.provision.messages import DEVICE_ID_PATTERN

__all__ = [
    "EDGES_GROUP",
    "Advertised",
    "HubDevice",
    "HubUnreachable",
    "InventoryError",
    "Listing",
    "from_mdns",
    "from_registry",
    "group_name",
    "parse_devices",
    "read_bounded",
]

#: Every edge the inventory lists is in this group (``site.yml``'s default hosts).
EDGES_GROUP = "semstreams_edges"
#: The largest ``GET /devices`` answer read (a registry of ~10,000 devices fits).
DEFAULT_MAX_BYTES = 16 << 20

_Short = Annotated[str, msgspec.Meta(max_length=64)]


class InventoryError(Exception):
    """The hub's answer is refused (a status, too large, too slow, malformed); the message
    says why."""


class HubUnreachable(InventoryError):
    """No answer from the hub at all (refused, no route, timed out): the caller may
    fall back to mDNS."""


class HubDevice(msgspec.Struct, frozen=True):
    """The fields of one ``GET /devices`` entry the inventory uses (others are ignored)."""

    id: Annotated[str, msgspec.Meta(pattern=f"^{DEVICE_ID_PATTERN}$")]
    status: Literal["pending", "approved", "rejected", "revoked"]
    group: _Short = ""
    version: _Short = ""
    address: Annotated[str, msgspec.Meta(max_length=45)] = ""
    last_seen: Annotated[int, msgspec.Meta(ge=0)] = 0


class Advertised(msgspec.Struct, frozen=True):
    """One edge found by mDNS: its TXT ``id``, ``version`` and ``api_port``, its address."""

    id: str
    address: str
    version: str = ""
    api_port: int = 0


class Listing(msgspec.Struct):
    """An inventory: each host's variables, each group's hosts (sorted)."""

    hostvars: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)
    groups: dict[str, list[str]] = msgspec.field(default_factory=dict)

    def add(self, name: str, hostvars: dict[str, Any], groups: Iterable[str]) -> None:
        """Add a host to :data:`EDGES_GROUP` and ``groups`` (empty names are skipped)."""
        self.hostvars[name] = hostvars
        for group in (EDGES_GROUP, *groups):
            if not group:
                continue
            # Kept sorted as it grows: a bisect, not a sort per host (fleets of thousands).
            hosts = self.groups.setdefault(group, [])
            at = bisect.bisect_left(hosts, name)
            if at == len(hosts) or hosts[at] != name:
                hosts.insert(at, name)

    def to_json(self) -> dict[str, Any]:
        """What an Ansible dynamic inventory script prints for ``--list``."""
        listed: dict[str, Any] = {group: {"hosts": hosts} for group, hosts in self.groups.items()}
        listed["_meta"] = {"hostvars": self.hostvars}
        return listed


def group_name(text: str) -> str:
    """An Ansible group name for a registry group or a version ("0.4.0" → "0_4_0")."""
    return re.sub(r"\W", "_", text, flags=re.ASCII)


def parse_devices(body: bytes) -> list[HubDevice]:
    """The devices in a ``GET /devices`` answer.

    Raises:
        InventoryError: not JSON, not a list, or a device with a missing or bad field
            (the message names it, e.g. ``$[3].address``).
    """
    try:
        return msgspec.json.decode(body, type=list[HubDevice])
    except msgspec.ValidationError as exc:
        raise InventoryError(f"the hub's device list is refused: {exc}") from None
    except msgspec.DecodeError as exc:
        raise InventoryError(f"the hub's device list is not JSON: {exc}") from None


def from_registry(devices: Sequence[HubDevice], statuses: Iterable[str]) -> Listing:
    """The inventory of the registry's devices whose status is in ``statuses``.

    A device that never linked has no address: it is listed under its id (Ansible then
    resolves the id as a host name), with ``semstreams_address`` empty.
    """
    wanted = set(statuses)
    listing = Listing()
    for device in devices:
        if device.status not in wanted:
            continue
        hostvars: dict[str, Any] = {
            "semstreams_device_id": device.id,
            "semstreams_group": device.group,
            "semstreams_status": device.status,
            "semstreams_advertised_version": device.version,
            "semstreams_address": device.address,
            "semstreams_last_seen": device.last_seen,
            "semstreams_inventory_source": "hub",
        }
        if device.address:
            hostvars["ansible_host"] = device.address
        groups = [group_name(device.group), f"semstreams_status_{device.status}"]
        if device.version:
            groups.append(f"semstreams_version_{group_name(device.version)}")
        listing.add(device.id, hostvars, groups)
    return listing


def from_mdns(found: Sequence[Advertised]) -> Listing:
    """The inventory of the edges found by mDNS (the first one per id wins)."""
    listing = Listing()
    for edge in found:
        if edge.id in listing.hostvars or not re.fullmatch(DEVICE_ID_PATTERN, edge.id):
            continue
        hostvars: dict[str, Any] = {
            "ansible_host": edge.address,
            "semstreams_device_id": edge.id,
            "semstreams_advertised_version": edge.version,
            "semstreams_api_port": edge.api_port,
            "semstreams_inventory_source": "mdns",
        }
        groups = [f"semstreams_version_{group_name(edge.version)}"] if edge.version else []
        listing.add(edge.id, hostvars, groups)
    return listing


def read_bounded(
    url: str,
    *,
    token: str,
    cafile: str | None = None,
    timeout: float = 10.0,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> bytes:
    """``GET url`` with a bearer token; its body, read within ``timeout`` seconds in all
    and at most ``max_bytes`` long.

    Raises:
        HubUnreachable: no connection or no answer within ``timeout``.
        InventoryError: refused (the status and the start of the reason), too slow, or
            too large. The token is never in the message.
    """
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    context = ssl.create_default_context(cafile=cafile) if cafile else None
    deadline = time.monotonic() + timeout
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as reply:
            return _read_until(reply, url, deadline, timeout, max_bytes)
    except urllib.error.HTTPError as exc:
        reason = exc.read(200).decode("utf-8", "replace")
        raise InventoryError(f"{url} answered {exc.code}: {reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise HubUnreachable(f"cannot reach {url}: {exc}") from None


def _read_until(reply: Any, url: str, deadline: float, timeout: float, max_bytes: int) -> bytes:
    """The body in chunks: each read waits at most the socket timeout, and the deadline
    is checked between them (a trickling peer cannot hold the inventory)."""
    declared = reply.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise InventoryError(f"{url}: the answer is {declared} bytes, more than {max_bytes}")
    chunks, size = [], 0
    while chunk := reply.read(64 << 10):
        size += len(chunk)
        if size > max_bytes:
            raise InventoryError(f"{url}: the answer is more than {max_bytes} bytes")
        if time.monotonic() > deadline:
            raise InventoryError(f"{url}: the answer took more than {timeout:g} s")
        chunks.append(chunk)
    return b"".join(chunks)
