"""The NATS cluster configs: the seed's shape, TLS and NKey only when asked, nothing
injectable, every file accepted by nats-server's own check (``-t``), and the CLI."""

from __future__ import annotations

import base64
import json
import re
import subprocess
from pathlib import Path

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from cloud_hub.cli import main
from cloud_hub.cluster import (
    ClusterNode,
    ClusterOptions,
    ClusterTLS,
    client_urls,
    default_nodes,
    hub_nats_settings,
    render_cluster_configs,
    render_node_config,
)
from edge_agent.config import load_config_bytes
from edge_agent.errors import ConfigError
from edge_agent.nats.server import nats_server_binary
from tests.certs import self_signed


def user_nkey() -> str:
    """A real NKey user public key: base32(prefix 'U' + ed25519 key + CRC-16/XMODEM)."""
    raw = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    data = bytes([20 << 3]) + raw
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021 if crc & 0x8000 else crc << 1) & 0xFFFF
    return base64.b32encode(data + crc.to_bytes(2, "little")).decode().rstrip("=")


def nats_server_accepts(text: str, path: Path) -> None:
    """nats-server's own config check (``-t``) passes on ``text``."""
    path.write_text(text)
    check = subprocess.run(
        [str(nats_server_binary()), "-t", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def routes(text: str) -> list[str]:
    block = re.search(r"routes: \[\n(.*?)\n  \]", text, re.DOTALL)
    assert block, text
    return re.findall(r'"(nats://[^"]+)"', block[1])


def test_the_seed_cluster_routes_each_node_to_the_other_two() -> None:
    texts = render_cluster_configs()
    assert len(texts) == 3
    names = [re.search(r'^server_name: "(.*)"$', text, re.M)[1] for text in texts]  # type: ignore[index]
    assert names == ["nats-1", "nats-2", "nats-3"]
    for index, text in enumerate(texts):
        others = [name for name in names if name != names[index]]
        assert routes(text) == [f"nats://{name}:6222" for name in others]
        assert text.startswith(f"# nats-server-{index + 1}.conf\n")
        assert "\nport: 4222\n" in text
        assert '  name: "semstreams-cluster"\n' in text
        assert '  listen: "0.0.0.0:6222"\n' in text
        assert '  store_dir: "/data/jetstream"\n' in text
        assert "  max_memory_store: 4GB\n  max_file_store: 100GB\n" in text
        assert "tls" not in text and "authorization" not in text and "http:" not in text


def test_the_seed_configs_pass_nats_servers_check(tmp_path: Path) -> None:
    for index, text in enumerate(render_cluster_configs()):
        nats_server_accepts(text, tmp_path / f"nats-server-{index + 1}.conf")


def test_five_nodes_on_one_host_with_their_own_ports() -> None:
    nodes = [
        ClusterNode(name=f"n{i}", host="10.0.0.9", client_port=4000 + i, cluster_port=5000 + i)
        for i in range(5)
    ]
    texts = render_cluster_configs(nodes, ClusterOptions(listen_host="10.0.0.9"))
    assert len(texts) == 5
    assert routes(texts[2]) == [f"nats://10.0.0.9:{5000 + i}" for i in (0, 1, 3, 4)]
    assert 'host: "10.0.0.9"\nport: 4002\n' in texts[2]
    assert client_urls(nodes)[4] == "nats://10.0.0.9:4004"


def test_ipv6_hosts_are_bracketed() -> None:
    nodes = [ClusterNode(name=f"n{i}", host=f"fd00::{i + 1}") for i in range(3)]
    text = render_node_config(nodes, 0, ClusterOptions(listen_host="::"))
    assert routes(text) == ["nats://[fd00::2]:6222", "nats://[fd00::3]:6222"]
    assert '  listen: "[::]:6222"\n' in text


def test_tls_blocks_appear_only_when_given(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    tls = ClusterTLS(cert_file=str(cert), key_file=str(key), ca_file=str(cert))
    options = ClusterOptions(tls=tls)
    text = render_cluster_configs(options=options)[0]
    client_tls = text[: text.index("cluster {")]
    route_tls = text[text.index("cluster {") : text.index("jetstream {")]
    assert f'tls {{\n  cert_file: "{cert}"\n  key_file: "{key}"\n  ca_file: "{cert}"\n}}' in (
        client_tls
    )
    assert "verify" not in client_tls
    assert f'  tls {{\n    cert_file: "{cert}"\n' in route_tls
    assert "    verify: true\n  }\n" in route_tls
    nats_server_accepts(text, tmp_path / "tls.conf")
    strict = msgspec.structs.replace(options, tls=msgspec.structs.replace(tls, verify_clients=True))
    assert "  verify: true\n}" in render_node_config(default_nodes(), 0, strict)
    hub = hub_nats_settings(default_nodes(), options)["nats"]
    assert hub["urls"][0] == "tls://nats-1:4222"
    assert hub["tls"] == {"ca_file": str(cert)}


def test_nkey_authorization_appears_only_when_given(tmp_path: Path) -> None:
    keys = (user_nkey(), user_nkey())
    text = render_cluster_configs(options=ClusterOptions(nkeys=keys))[1]
    assert (
        f'authorization {{\n  users = [\n    {{nkey: "{keys[0]}"}}\n    {{nkey: "{keys[1]}"}}\n'
        "  ]\n}\n"
    ) in text
    nats_server_accepts(text, tmp_path / "nkeys.conf")


HOSTILE = 'nats-1"\ninclude "/etc/passwd'


@pytest.mark.parametrize(
    ("nodes", "options", "key"),
    [
        ([ClusterNode(name=HOSTILE, host="nats-1")], {}, "nodes[0].name"),
        ([ClusterNode(name="nats-1", host="nats-1:1}\nx {")], {}, "nodes[0].host"),
        ([ClusterNode(name="nats-1", host='fe80::1%eth0"')], {}, "nodes[0].host"),
        ([ClusterNode(name="nats-1", host="nats-1", client_port=0)], {}, "nodes[0].client_port"),
        ([ClusterNode(name="a", host="a", cluster_port="6222\n")], {}, "nodes[0].cluster_port"),  # type: ignore[arg-type]
        ([ClusterNode(name="a", host="a", monitor_port=70000)], {}, "nodes[0].monitor_port"),
        ([], {"cluster_name": 'c" }\nauthorization {'}, "cluster_name"),
        ([], {"listen_host": "0.0.0.0 ; debug: true"}, "listen_host"),
        ([], {"store_dir": '/data"\njetstream {'}, "store_dir"),
        ([], {"store_dir": "/data/$HOME"}, "store_dir"),
        ([], {"max_memory": "4GB\n}\nauthorization {"}, "max_memory"),
        ([], {"max_file": "100XB"}, "max_file"),
        ([], {"max_file": -1}, "max_file"),
        ([], {"nkeys": ('UABC"}]\n',)}, "nkeys[0]"),
        ([], {"nkeys": ("U" + "A" * 55,)}, "nkeys[0]"),
        (
            [],
            {"tls": ClusterTLS(cert_file="/c.pem", key_file='/k"', ca_file="/ca.pem")},
            "tls.key_file",
        ),
    ],
)
def test_hostile_values_are_refused_naming_the_key(
    nodes: list[ClusterNode], options: dict[str, object], key: str
) -> None:
    cluster = default_nodes()
    cluster[: len(nodes)] = nodes
    with pytest.raises(ConfigError) as refused:
        render_cluster_configs(cluster, ClusterOptions(**options))  # type: ignore[arg-type]
    assert [problem.split(":")[0] for problem in refused.value.problems] == [key]


def test_duplicate_names_colliding_ports_and_too_few_nodes_are_refused() -> None:
    same = [ClusterNode(name="a", host="h", client_port=4222, cluster_port=4222)] * 3
    with pytest.raises(ConfigError) as refused:
        render_cluster_configs(same)
    problems = refused.value.problems
    assert "nodes[1].name: 'a' is already nodes[0]" in problems
    assert "nodes[0].cluster_port: h:4222 is also nodes[0].client_port" in problems
    with pytest.raises(ConfigError, match="nodes: a JetStream cluster needs at least 3"):
        render_cluster_configs(default_nodes(["nats-1", "nats-2"]))


def test_the_hub_snippet_is_a_valid_hub_config() -> None:
    snippet = hub_nats_settings(default_nodes())
    assert snippet["nats"]["urls"] == [f"nats://nats-{i}:4222" for i in (1, 2, 3)]
    config = load_config_bytes(json.dumps(snippet).encode())
    assert config.nats.urls == snippet["nats"]["urls"]
    assert config.nats.max_reconnect == -1
    assert config.nats.embedded is False
    assert config.nats.jetstream.replicas == 3


def test_cli_writes_three_configs_and_prints_the_hub_urls(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cluster" / "conf"
    assert main(["cluster-config", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    paths = [out / f"nats-server-{i}.conf" for i in (1, 2, 3)]
    assert printed.splitlines()[:3] == [str(path) for path in paths]
    assert json.loads(printed.split("\n", 3)[3])["nats"]["urls"] == [
        f"nats://nats-{i}:4222" for i in (1, 2, 3)
    ]
    for path, text in zip(paths, render_cluster_configs(), strict=True):
        assert path.read_text() == text
        assert path.stat().st_mode & 0o777 == 0o644


def test_cli_options_reach_the_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nkey = user_nkey()
    args = ["cluster-config", "--out", str(tmp_path), "--nodes", "a,b,c,d"]
    args += ["--store-dir", "/srv/js", "--max-memory", "1GB", "--max-file", "10GB"]
    args += ["--client-port", "14222", "--cluster-port", "16222", "--nkey", nkey]
    assert main(args) == 0
    hub = json.loads(capsys.readouterr().out.split("\n", 4)[4])["nats"]
    assert hub["urls"] == [f"nats://{name}:14222" for name in "abcd"]
    text = (tmp_path / "nats-server-4.conf").read_text()
    assert routes(text) == [f"nats://{name}:16222" for name in "abc"]
    assert '"/srv/js"' in text and "max_memory_store: 1GB" in text and nkey in text
    assert "max_file_store: 10GB" in text and "port: 14222" in text


def test_cli_refuses_a_hostile_node_name_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "conf"
    assert main(["cluster-config", "--out", str(out), "--nodes", "a,b\n}x,c"]) == 2
    assert "cluster-config: nodes[1].name:" in capsys.readouterr().err
    assert not out.exists()
    assert main(["cluster-config", "--out", str(out), "--tls-cert", "/c.pem"]) == 2
    assert "--tls-cert, --tls-key and --tls-ca go together" in capsys.readouterr().err
