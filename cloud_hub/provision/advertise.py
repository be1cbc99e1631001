"""The hub's mDNS advertisement: ``_semstreams-hub._tcp.local.`` with what a device needs.

TXT: ``v`` (sync protocol version), ``sync`` (sync path), ``enrol`` (enrolment path),
``fp`` (the hub key's fingerprint, for people and pinned images to compare). It is only
a hint: a device trusts the hub once it proves its key or the device's claim.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cloud_hub.provision.api import ENROL_PATH
from edge_agent.config.schema import ProvisioningConfig
from edge_agent.provision.mdns import HUB_SERVICE, Advertiser
from edge_agent.sync.frames import PROTOCOL_VERSION

if TYPE_CHECKING:
    from cloud_hub.app import Hub

__all__ = ["hub_advertiser"]


def hub_advertiser(hub: Hub, settings: ProvisioningConfig) -> Advertiser:
    """An advertiser of ``hub`` on ``settings.interfaces`` (all when empty)."""
    assert hub.enrolment is not None
    properties = {
        "v": str(PROTOCOL_VERSION),
        "sync": hub.sync_path,
        "enrol": ENROL_PATH,
        "fp": hub.enrolment.identity.fingerprint,
    }
    if hub.sync_port is not None:
        properties["sync_port"] = str(hub.sync_port)
    return Advertiser(
        HUB_SERVICE,
        hub.config.platform.id,
        hub.http_port,
        properties,
        interfaces=settings.interfaces or None,
    )
