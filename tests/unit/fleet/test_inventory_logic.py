"""The fleet inventory's pure logic: registry devices and mDNS answers to Ansible hosts
and groups; the filters that render the NATS cluster's config for the roles."""

from __future__ import annotations

import json
from types import ModuleType

import pytest

from cloud_hub.cluster import DEFAULT_NODE_NAMES, ClusterNode, ClusterOptions, render_node_config
from cloud_hub.provision.inventory import (
    Advertised,
    InventoryError,
    from_mdns,
    from_registry,
    parse_devices,
)
from tests.helpers import load_script


def _filters() -> ModuleType:
    return load_script("ansible/filter_plugins/semstreams_cluster.py", "semstreams_cluster")


def test_registry_devices_become_hosts_in_their_groups() -> None:
    devices = parse_devices(
        json.dumps(
            [
                {"id": "e1", "status": "approved", "group": "west", "version": "0.2.0",
                 "address": "10.0.0.1", "hardware": {"model": "Pi 5"}},
                {"id": "e2", "status": "approved", "group": "west-2", "version": ""},
                {"id": "e3", "status": "pending", "group": "west"},
            ]
        ).encode()
    )  # fmt: skip
    listing = from_registry(devices, ["approved"])
    assert set(listing.hostvars) == {"e1", "e2"}
    assert listing.hostvars["e1"]["ansible_host"] == "10.0.0.1"
    assert "ansible_host" not in listing.hostvars["e2"]  # never linked: by its name
    assert listing.groups == {
        "semstreams_edges": ["e1", "e2"],
        "west": ["e1"],
        "west_2": ["e2"],
        "semstreams_status_approved": ["e1", "e2"],
        "semstreams_version_0_2_0": ["e1"],
    }
    everyone = from_registry(devices, ["approved", "pending"])
    assert everyone.groups["west"] == ["e1", "e3"]
    listed = listing.to_json()
    assert listed["_meta"]["hostvars"]["e1"]["semstreams_group"] == "west"
    assert listed["west"] == {"hosts": ["e1"]}


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (b'[{"id": "e1"}]', "missing required field `status`"),
        (b'[{"id": "-x", "status": "approved"}]', "$[0].id"),
        (b'[{"id": "e1", "status": "approved", "version": 7}]', "$[0].version"),
        (b'[{"id": "e1", "status": "approved", "last_seen": -1}]', "$[0].last_seen"),
        (b"[", "not JSON"),
    ],
)
def test_a_bad_device_list_is_refused_naming_the_field(body: bytes, where: str) -> None:
    with pytest.raises(InventoryError) as refused:
        parse_devices(body)
    assert where in str(refused.value)


def test_mdns_answers_become_hosts_once_each_and_bad_ids_are_dropped() -> None:
    listing = from_mdns(
        [
            Advertised(id="e1", address="10.0.0.1", version="0.2.0", api_port=8080),
            Advertised(id="e1", address="10.0.0.9", version="0.2.0", api_port=8080),
            Advertised(id="bad id;", address="10.0.0.2"),
            Advertised(id="e2", address="10.0.0.3"),
        ]
    )
    assert {name: v["ansible_host"] for name, v in listing.hostvars.items()} == {
        "e1": "10.0.0.1",
        "e2": "10.0.0.3",
    }
    assert listing.groups["semstreams_version_0_2_0"] == ["e1"]
    assert listing.groups["semstreams_edges"] == ["e1", "e2"]


def test_the_role_filters_render_what_cloud_hub_cluster_renders() -> None:
    filters = _filters()
    hostvars = {
        "nats-1": {"ansible_host": "10.0.0.1"},
        "nats-2": {"nats_cluster_address": "nats-2.lan", "ansible_host": "10.0.0.2"},
        "nats-3": {"nats_cluster_server_name": "third"},
    }
    nodes = filters.semstreams_nats_nodes(list(DEFAULT_NODE_NAMES), hostvars, 4222, 6222, None)
    assert [(n["name"], n["host"]) for n in nodes] == [
        ("nats-1", "10.0.0.1"),
        ("nats-2", "nats-2.lan"),
        ("third", "nats-3"),
    ]
    text = filters.semstreams_nats_config(nodes, 0, {"store_dir": "/srv/js"})
    built = [ClusterNode(name=n["name"], host=n["host"]) for n in nodes]
    assert text == render_node_config(built, 0, ClusterOptions(store_dir="/srv/js"))
    assert 'routes: [\n    "nats://nats-2.lan:6222",\n    "nats://nats-3:6222"' in text
    hub = filters.semstreams_hub_nats(nodes, {})
    assert hub["urls"][0] == "nats://10.0.0.1:4222" and hub["embedded"] is False


def test_a_bad_cluster_setting_is_an_ansible_error_naming_the_key() -> None:
    from ansible.errors import AnsibleFilterError

    filters = _filters()
    nodes = filters.semstreams_nats_nodes(["a", "b", "c"], {h: {} for h in "abc"})
    with pytest.raises(AnsibleFilterError, match=r"store_dir: .* is not a plain path"):
        filters.semstreams_nats_config(nodes, 0, {"store_dir": "/data/js\ninclude /etc/x"})
    with pytest.raises(AnsibleFilterError, match=r"nodes: a JetStream cluster needs at least 3"):
        filters.semstreams_nats_config(nodes[:2], 0, {})
    with pytest.raises(AnsibleFilterError, match=r"max_memory"):
        filters.semstreams_nats_config(nodes, 0, {"max_memory": ["4GB"]})
