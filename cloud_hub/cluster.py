"""Configuration for the hub's NATS cluster: the seed's three JetStream servers.

The hub scales past one machine on a real NATS cluster, never a home-made one
(ARCHITECTURE §6). This module renders one ``nats-server.conf`` per node in the shape
of the seed's ``nats-server-1.conf``: a client port, a ``cluster`` block named
``semstreams-cluster`` that listens on the cluster port and routes to every other
node, and a ``jetstream`` block. Each node also gets a unique ``server_name``, which
JetStream clustering requires. The seed's ``max_memory`` is not a key nats-server
knows (2.15 refuses the file: ``unknown field "max_memory"``), so the limits are written
under their real names, ``max_memory_store`` and ``max_file_store``. TLS (client and
route) and NKey user authorization are added only when asked for.

Everything here is pure: the caller writes the text where it belongs. Every value that
reaches the text is checked against a strict pattern first and written quoted, so a
hostile node name or path cannot add a directive; a bad value raises
:class:`~edge_agent.errors.ConfigError` listing each key at fault.

Example::

    nodes = default_nodes()
    for index, text in enumerate(render_cluster_configs(nodes), start=1):
        Path(f"nats-server-{index}.conf").write_text(text)
"""

from __future__ import annotations

import base64
import ipaddress
import re
from collections.abc import Sequence
from typing import Any

import msgspec

from edge_agent.errors import ConfigError

__all__ = [
    "DEFAULT_CLUSTER_NAME",
    "DEFAULT_NODE_NAMES",
    "MIN_CLUSTER_SIZE",
    "ClusterNode",
    "ClusterOptions",
    "ClusterTLS",
    "client_urls",
    "default_nodes",
    "hub_nats_settings",
    "render_cluster_configs",
    "render_node_config",
    "validate_cluster",
]

#: The seed's cluster name.
DEFAULT_CLUSTER_NAME = "semstreams-cluster"
#: The seed's three servers.
DEFAULT_NODE_NAMES = ("nats-1", "nats-2", "nats-3")
#: JetStream's meta group keeps a quorum through the loss of one server only from three on.
MIN_CLUSTER_SIZE = 3

# A server or cluster name: letters, digits, '-' and '_', starting with a letter or digit.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}", re.ASCII)
# A DNS name (RFC 1123 labels); IPv4 and IPv6 literals are checked with ``ipaddress``.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*", re.ASCII)
# A file path without quotes, backslashes, spaces, '$' or control characters.
_PATH = re.compile(r"[A-Za-z0-9_./@+,:=~-]{1,4096}", re.ASCII)
# A size as nats-server's config parser reads it: an integer with an optional unit
# (it silently ignores a unit it does not know, so only known ones pass here).
_SIZE = re.compile(r"[1-9][0-9]{0,14}(?:[KMGTP](?:B|I|IB)?)?", re.ASCII | re.IGNORECASE)
# An NKey user public key: 'U' and 55 base32 characters.
_USER_NKEY = re.compile(r"U[A-Z2-7]{55}", re.ASCII)


class ClusterNode(msgspec.Struct, frozen=True, kw_only=True):
    """One server of the cluster.

    Attributes:
        name: the unique ``server_name`` (``nats-1``).
        host: the address other servers and clients reach it at (``nats-1``, an IP).
        client_port: the port clients connect to.
        cluster_port: the port the other servers route to.
        monitor_port: the HTTP monitoring port (``/healthz``, ``/jsz``); none if unset.
    """

    name: str
    host: str
    client_port: int = 4222
    cluster_port: int = 6222
    monitor_port: int | None = None


class ClusterTLS(msgspec.Struct, frozen=True, kw_only=True):
    """TLS for clients and for routes between the servers.

    The same paths are written on every node: each machine keeps its own certificate
    (valid for its host) at that path, all signed by the CA in ``ca_file``. Routes
    verify the peer's certificate both ways; clients are not asked for one unless
    ``verify_clients`` is set.

    Attributes:
        cert_file: the server's certificate (PEM).
        key_file: its private key (PEM).
        ca_file: the CA that signs the servers' (and clients') certificates.
        verify_clients: also require a client certificate signed by ``ca_file``.
    """

    cert_file: str
    key_file: str
    ca_file: str
    verify_clients: bool = False


class ClusterOptions(msgspec.Struct, frozen=True, kw_only=True):
    """Settings shared by every node's config.

    Attributes:
        cluster_name: the ``cluster { name }`` every node must agree on.
        store_dir: JetStream's store directory on each node.
        max_memory: JetStream's memory limit, as nats-server reads it (``4GB``).
        max_file: JetStream's file store limit (``100GB``).
        listen_host: the address the client, cluster and monitoring ports bind to.
        tls: client and route TLS; none if unset.
        nkeys: NKey user public keys allowed to connect; anyone may connect if empty.
    """

    cluster_name: str = DEFAULT_CLUSTER_NAME
    store_dir: str = "/data/jetstream"
    max_memory: str | int = "4GB"
    max_file: str | int = "100GB"
    listen_host: str = "0.0.0.0"
    tls: ClusterTLS | None = None
    nkeys: tuple[str, ...] = ()


def default_nodes(
    names: Sequence[str] = DEFAULT_NODE_NAMES,
    *,
    client_port: int = 4222,
    cluster_port: int = 6222,
) -> list[ClusterNode]:
    """Nodes reached at their own names, all on the same ports (one per machine).

    Args:
        names: the server names, each also its host name.
        client_port: every node's client port.
        cluster_port: every node's cluster port.

    Returns:
        One :class:`ClusterNode` per name, in order.
    """
    return [
        ClusterNode(name=name, host=name, client_port=client_port, cluster_port=cluster_port)
        for name in names
    ]


def validate_cluster(nodes: Sequence[ClusterNode], options: ClusterOptions) -> None:
    """Check every node and option that reaches a config file.

    Args:
        nodes: the cluster's servers.
        options: the settings shared by all of them.

    Raises:
        ConfigError: one problem per bad key, such as ``nodes[1].name: ...``.
    """
    problems: list[str] = []
    _check_nodes(problems, nodes)
    _check_name(problems, "cluster_name", options.cluster_name)
    _check_host(problems, "listen_host", options.listen_host)
    _check_path(problems, "store_dir", options.store_dir)
    _check_size(problems, "max_memory", options.max_memory)
    _check_size(problems, "max_file", options.max_file)
    if options.tls is not None:
        for field in ("cert_file", "key_file", "ca_file"):
            _check_path(problems, f"tls.{field}", getattr(options.tls, field))
    for index, nkey in enumerate(options.nkeys):
        if not (isinstance(nkey, str) and _USER_NKEY.fullmatch(nkey)):
            problems.append(f"nkeys[{index}]: not an NKey user public key ('U' + 55 base32)")
        elif not _nkey_checksum_ok(nkey):
            problems.append(f"nkeys[{index}]: the key's checksum is wrong (mistyped?)")
    if problems:
        raise ConfigError(problems)


def render_node_config(
    nodes: Sequence[ClusterNode], index: int, options: ClusterOptions | None = None
) -> str:
    """The ``nats-server.conf`` of one node: routes to every other node.

    Args:
        nodes: the cluster's servers (all of them, this one included).
        index: which of ``nodes`` this config is for (0-based).
        options: the shared settings; the seed's if unset.

    Returns:
        The config text, ending with a newline.

    Raises:
        ConfigError: a node or option is invalid (see :func:`validate_cluster`).
        IndexError: ``index`` names no node.
    """
    options = options or ClusterOptions()
    validate_cluster(nodes, options)
    if not 0 <= index < len(nodes):
        raise IndexError(f"node index {index} is not in 0..{len(nodes) - 1}")
    node = nodes[index]
    tls = options.tls
    listen = options.listen_host
    lines = [
        f"# nats-server-{index + 1}.conf",
        f"server_name: {_quote(node.name)}",
    ]
    if listen != "0.0.0.0":
        lines.append(f"host: {_quote(listen)}")
    lines.append(f"port: {node.client_port}")
    if node.monitor_port is not None:
        lines.append(f"http: {_quote(_address(listen, node.monitor_port))}")
    if tls is not None:
        lines += ["tls {", *_tls_lines(tls, verify=tls.verify_clients, indent="  "), "}"]
    if options.nkeys:
        lines += ["authorization {", "  users = ["]
        lines += [f"    {{nkey: {_quote(nkey)}}}" for nkey in options.nkeys]
        lines += ["  ]", "}"]
    routes = [
        _quote(f"nats://{_address(peer.host, peer.cluster_port)}")
        for other, peer in enumerate(nodes)
        if other != index
    ]
    lines += [
        "cluster {",
        f"  name: {_quote(options.cluster_name)}",
        f"  listen: {_quote(_address(listen, node.cluster_port))}",
        "  routes: [",
        ",\n".join(f"    {route}" for route in routes),
        "  ]",
    ]
    if tls is not None:
        lines += ["  tls {", *_tls_lines(tls, verify=True, indent="    "), "  }"]
    lines += [
        "}",
        "jetstream {",
        f"  store_dir: {_quote(options.store_dir)}",
        f"  max_memory_store: {options.max_memory}",
        f"  max_file_store: {options.max_file}",
        "}",
    ]
    return "\n".join(lines) + "\n"


def render_cluster_configs(
    nodes: Sequence[ClusterNode] | None = None, options: ClusterOptions | None = None
) -> list[str]:
    """Every node's ``nats-server.conf``, in the order of ``nodes``.

    Args:
        nodes: the cluster's servers; the seed's ``nats-1``..``nats-3`` if unset.
        options: the shared settings; the seed's if unset.

    Returns:
        One config text per node (write the first as ``nats-server-1.conf``, ...).

    Raises:
        ConfigError: a node or option is invalid (see :func:`validate_cluster`).
    """
    nodes = default_nodes() if nodes is None else list(nodes)
    options = options or ClusterOptions()
    validate_cluster(nodes, options)
    return [render_node_config(nodes, index, options) for index in range(len(nodes))]


def client_urls(nodes: Sequence[ClusterNode], *, tls: bool = False) -> list[str]:
    """The client URLs of the nodes, for a client's server list.

    Args:
        nodes: the cluster's servers.
        tls: ``tls://`` URLs (the servers require TLS) instead of ``nats://``.

    Returns:
        One URL per node, in order.
    """
    scheme = "tls" if tls else "nats"
    return [f"{scheme}://{_address(node.host, node.client_port)}" for node in nodes]


def hub_nats_settings(
    nodes: Sequence[ClusterNode], options: ClusterOptions | None = None
) -> dict[str, Any]:
    """The hub config's ``nats`` section for this cluster (the seed's snippet).

    The hub connects to every node, reconnects forever, never starts a server of its
    own, and keeps its streams on three replicas. With NKey authorization the hub still
    needs its own ``nkey_seed``, which is a secret and not written here.

    Args:
        nodes: the cluster's servers.
        options: the shared settings (for TLS); the seed's if unset.

    Returns:
        ``{"nats": {...}}``, ready to merge into a hub config.
    """
    options = options or ClusterOptions()
    nats: dict[str, Any] = {
        "urls": client_urls(nodes, tls=options.tls is not None),
        "max_reconnect": -1,
        "reconnect_wait": "2s",
        "embedded": False,
        "jetstream": {"replicas": min(3, len(nodes))},
    }
    if options.tls is not None:
        nats["tls"] = {"ca_file": options.tls.ca_file}
    return {"nats": nats}


def _tls_lines(tls: ClusterTLS, *, verify: bool, indent: str) -> list[str]:
    lines = [
        f"{indent}cert_file: {_quote(tls.cert_file)}",
        f"{indent}key_file: {_quote(tls.key_file)}",
        f"{indent}ca_file: {_quote(tls.ca_file)}",
    ]
    if verify:
        lines.append(f"{indent}verify: true")
    return lines


def _quote(value: str) -> str:
    # Only values that passed validate_cluster get here: no quote, backslash or control
    # character can end the string early.
    return f'"{value}"'


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _is_port(port: object) -> bool:
    return isinstance(port, int) and not isinstance(port, bool) and 1 <= port <= 65535


def _check_nodes(problems: list[str], nodes: Sequence[ClusterNode]) -> None:
    if len(nodes) < MIN_CLUSTER_SIZE:
        problems.append(
            f"nodes: a JetStream cluster needs at least {MIN_CLUSTER_SIZE} servers "
            f"to survive the loss of one, got {len(nodes)}"
        )
    names: dict[str, int] = {}
    bound: dict[tuple[str, int], str] = {}
    for index, node in enumerate(nodes):
        key = f"nodes[{index}]"
        _check_name(problems, f"{key}.name", node.name)
        if node.name in names:
            problems.append(f"{key}.name: {node.name!r} is already nodes[{names[node.name]}]")
        names.setdefault(node.name, index)
        _check_host(problems, f"{key}.host", node.host)
        ports = {"client_port": node.client_port, "cluster_port": node.cluster_port}
        if node.monitor_port is not None:
            ports["monitor_port"] = node.monitor_port
        for field, port in ports.items():
            if not _is_port(port):
                problems.append(f"{key}.{field}: {port!r} is not a TCP port (1-65535)")
                continue
            where = (node.host, port)
            if where in bound:
                problems.append(f"{key}.{field}: {node.host}:{port} is also {bound[where]}")
            bound.setdefault(where, f"{key}.{field}")


def _nkey_checksum_ok(nkey: str) -> bool:
    # An NKey is base32(prefix byte + 32-byte key + CRC-16/XMODEM of both, little-endian).
    raw = base64.b32decode(nkey)
    crc = 0
    for byte in raw[:-2]:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021 if crc & 0x8000 else crc << 1) & 0xFFFF
    return crc == int.from_bytes(raw[-2:], "little")


def _check_name(problems: list[str], key: str, value: object) -> None:
    if not (isinstance(value, str) and _NAME.fullmatch(value)):
        problems.append(
            f"{key}: {value!r} is not a name (letters, digits, '-' and '_', at most 63)"
        )


def _check_host(problems: list[str], key: str, value: object) -> None:
    # No IPv6 zone ("fe80::1%eth0"): ipaddress accepts any text after the '%'.
    if isinstance(value, str) and "%" not in value:
        try:
            ipaddress.ip_address(value)
            return
        except ValueError:
            if _HOSTNAME.fullmatch(value):
                return
    problems.append(f"{key}: {value!r} is not a host name or IP address")


def _check_path(problems: list[str], key: str, value: object) -> None:
    if not (isinstance(value, str) and _PATH.fullmatch(value)):
        problems.append(
            f"{key}: {value!r} is not a plain path (letters, digits and _./@+,:=~- only)"
        )


def _check_size(problems: list[str], key: str, value: object) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return
    if isinstance(value, str) and _SIZE.fullmatch(value):
        return
    problems.append(f'{key}: {value!r} is not a size such as "4GB" or "512MB"')
