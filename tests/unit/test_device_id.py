"""The id a device enrols under always fits the one device id pattern the hub accepts."""

from __future__ import annotations

import re

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.config.schema import ProvisioningConfig
from edge_agent.provision import client
from edge_agent.provision.identity import Identity
from edge_agent.provision.messages import DEVICE_ID_PATTERN


@pytest.mark.parametrize(
    ("hostname", "start"),
    [
        ("raspberrypi", "raspberrypi-"),
        ("pi.lan", "pi-lan-"),
        (".hidden", "hidden-"),
        ("*", "device-"),
    ],
)
def test_a_hostname_becomes_a_valid_device_id(
    monkeypatch: pytest.MonkeyPatch, hostname: str, start: str
) -> None:
    monkeypatch.setattr(client.socket, "gethostname", lambda: hostname)
    key = Identity(Ed25519PrivateKey.generate())
    device_id = client.device_id_for(ProvisioningConfig(), hostname, key)
    assert re.fullmatch(DEVICE_ID_PATTERN, device_id), device_id
    assert device_id.startswith(start) and len(device_id) == len(start) + 8


def test_a_configured_id_is_kept_as_given() -> None:
    key = Identity(Ed25519PrivateKey.generate())
    assert client.device_id_for(ProvisioningConfig(device_id="west-7"), "x", key) == "west-7"
