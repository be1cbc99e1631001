"""Filters for the ``nats_cluster`` and ``semstreams_hub`` roles: the seed's NATS cluster.

The config text comes from the installed package (``cloud_hub.cluster``), which
validates every value before it reaches a file, so the roles hold no second copy of
the cluster's shape. Run Ansible with the Python that has ``semstreams-edge`` installed.

    nodes: "{{ groups['nats_cluster'] | semstreams_nats_nodes(hostvars) }}"
    text:  "{{ nodes | semstreams_nats_config(index, options) }}"
    nats:  "{{ nodes | semstreams_hub_nats(options) }}"
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from ansible.errors import AnsibleFilterError


def _cluster() -> Any:
    try:
        from cloud_hub import cluster
    except ImportError as exc:
        raise AnsibleFilterError(
            f"the semstreams-edge package is not importable by this Python; run Ansible"
            f" from its venv ({exc})"
        ) from None
    return cluster


def _convert(nodes: Sequence[Mapping[str, Any]], options: Mapping[str, Any]) -> Any:
    """The nodes and options as ``cloud_hub.cluster`` Structs; a wrong type names its key."""
    import msgspec

    cluster = _cluster()
    try:
        # Through JSON: Ansible hands over its own (tagged) str and dict subclasses,
        # which msgspec.convert takes for other types.
        plain_nodes, plain_options = json.loads(json.dumps([list(nodes), dict(options)]))
        return (
            msgspec.convert(plain_nodes, list[cluster.ClusterNode]),
            msgspec.convert(plain_options, cluster.ClusterOptions),
        )
    except TypeError as exc:
        raise AnsibleFilterError(f"nats_cluster: not JSON-like data: {exc}") from None
    except msgspec.ValidationError as exc:
        raise AnsibleFilterError(f"nats_cluster: {exc}") from None


def semstreams_nats_nodes(
    hosts: Sequence[str],
    hostvars: Mapping[str, Any],
    client_port: int = 4222,
    cluster_port: int = 6222,
    monitor_port: int | None = 8222,
) -> list[dict[str, Any]]:
    """The cluster's nodes, one per host of the group: ``nats_cluster_server_name`` (default the
    inventory name) and ``nats_cluster_address`` (default ``ansible_host``, else the
    inventory name) from each host's variables."""
    nodes = []
    for host in hosts:
        own = hostvars[host]
        nodes.append(
            {
                "name": str(own.get("nats_cluster_server_name") or host),
                "host": str(own.get("nats_cluster_address") or own.get("ansible_host") or host),
                "client_port": int(client_port),
                "cluster_port": int(cluster_port),
                "monitor_port": None if monitor_port is None else int(monitor_port),
            }
        )
    return nodes


def semstreams_nats_config(
    nodes: Sequence[Mapping[str, Any]], index: int, options: Mapping[str, Any]
) -> str:
    """The ``nats-server.conf`` text of node ``index`` (0-based) of ``nodes``."""
    cluster = _cluster()
    converted, settings = _convert(nodes, options)
    try:
        return str(cluster.render_node_config(converted, int(index), settings))
    except cluster.ConfigError as exc:
        raise AnsibleFilterError("nats_cluster: " + "; ".join(exc.problems)) from None
    except IndexError as exc:
        raise AnsibleFilterError(f"nats_cluster: {exc}") from None


def semstreams_hub_nats(
    nodes: Sequence[Mapping[str, Any]], options: Mapping[str, Any]
) -> dict[str, Any]:
    """The hub config's ``nats`` section for this cluster."""
    converted, settings = _convert(nodes, options)
    return dict(_cluster().hub_nats_settings(converted, settings)["nats"])


class FilterModule:
    """The filters this file gives Ansible."""

    def filters(self) -> dict[str, Any]:
        """Name → function."""
        return {
            "semstreams_nats_nodes": semstreams_nats_nodes,
            "semstreams_nats_config": semstreams_nats_config,
            "semstreams_hub_nats": semstreams_hub_nats,
        }
