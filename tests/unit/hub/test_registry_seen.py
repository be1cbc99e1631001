"""The registry records each device's last sync link: agent version, address, when."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from cloud_hub.provision.registry import Registry, seen_fields
from edge_agent.provision.messages import EnrolRequest


def _request(device_id: str) -> EnrolRequest:
    return EnrolRequest(
        device_id=device_id, public_key="k", nonce="n", hub_nonce="h", signature="s"
    )


@pytest.mark.parametrize(
    ("agent", "host", "expected"),
    [
        ("semstreams-edge/0.4.0", "10.0.0.7", ("0.4.0", "10.0.0.7")),
        ("semstreams-edge/1.2.3rc1+local.5 extra", "fd00::1", ("1.2.3rc1+local.5", "fd00::1")),
        ("Python/3.11 websockets/13", "10.0.0.7", ("", "10.0.0.7")),
        ('semstreams-edge/1.0"; rm -rf /', "10.0.0.7", ("", "10.0.0.7")),
        ("semstreams-edge/" + "9" * 65, "10.0.0.7", ("", "10.0.0.7")),
        ("semstreams-edge/0.4.0", "hub.example; x", ("0.4.0", "")),
        ("", "", ("", "")),
    ],
)
def test_only_well_formed_versions_and_ip_addresses_are_kept(
    agent: str, host: str, expected: tuple[str, str]
) -> None:
    assert seen_fields(agent, host) == expected


def test_a_link_updates_a_known_device_and_ignores_an_unknown_one(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry.db")
    registry.enrol(_request("edge-1"), "fp", 1000.0)
    assert registry.get("edge-1") is not None
    assert (registry.get("edge-1").version, registry.get("edge-1").last_seen) == ("", 0)  # type: ignore[union-attr]

    assert registry.seen("edge-1", "0.4.0", "10.0.0.7", 2000.5)
    assert not registry.seen("static-edge", "0.4.0", "10.0.0.8", 2000.5)
    device = registry.get("edge-1")
    assert device is not None
    assert (device.version, device.address, device.last_seen) == ("0.4.0", "10.0.0.7", 2000)
    assert [d.id for d in registry.devices()] == ["edge-1"]
    registry.close()


def test_a_registry_from_before_the_columns_is_migrated_and_keeps_its_devices(
    tmp_path: Path,
) -> None:
    path = tmp_path / "registry.db"
    registry = Registry(path)
    registry.enrol(_request("edge-1"), "fp", 1000.0)
    registry.close()
    # Take the file back to the schema of registry_002 (as an older hub left it).
    with sqlite3.connect(path) as db:
        for column in ("agent_version", "address", "last_seen"):
            db.execute(f"ALTER TABLE devices DROP COLUMN {column}")
        db.execute("DELETE FROM schema_migrations WHERE name = 'registry_003_seen'")
    registry = Registry(path)
    device = registry.get("edge-1")
    assert device is not None and (device.status, device.version, device.last_seen) == (
        "pending",
        "",
        0,
    )
    registry.close()
