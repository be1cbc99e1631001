"""The embedded nats-server's own config: NKey users and TLS, and the checks at load.

Pure checks of the generated text and of the loader's refusals; the servers themselves
are run in ``tests/integration/test_embedded_nats_security.py``.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import nkeys
import pytest

from edge_agent.config import load_config_bytes
from edge_agent.config.schema import ServerTlsConfig, nkey_user_problem
from edge_agent.errors import ConfigError
from edge_agent.nats.client import nkey_public_key
from edge_agent.nats.server import EmbeddedNatsServer


def user_key() -> tuple[bytes, str]:
    """A new NKey user: (seed, public key)."""
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    return seed, nkeys.from_seed(seed).public_key.decode()


def server(tmp_path: Path, **kwargs: Any) -> EmbeddedNatsServer:
    return EmbeddedNatsServer(tmp_path, port=4333, max_file_store=1 << 30, name="e1", **kwargs)


def problems(nats: dict[str, Any]) -> list[str]:
    """What the loader says of a config with this ``nats`` section."""
    with pytest.raises(ConfigError) as caught:
        load_config_bytes(json.dumps({"nats": nats}).encode(), env={})
    return caught.value.problems


def test_without_keys_or_tls_the_config_has_neither(tmp_path: Path) -> None:
    text = server(tmp_path).config_text()
    assert "\nauthorization {" not in text
    assert "\ntls {" not in text
    assert server(tmp_path).url == "nats://127.0.0.1:4333"


def test_nkeys_become_the_only_users(tmp_path: Path) -> None:
    _, own = user_key()
    _, other = user_key()
    text = server(tmp_path, nkeys=[own, other, own]).config_text()
    block = text[text.index("authorization {") :]
    assert block == (
        "authorization {\n  users: [\n"
        f'    {{ nkey: "{own}" }}\n    {{ nkey: "{other}" }}\n'
        "  ]\n}\n"
    )


def test_server_tls_becomes_a_tls_block_and_a_tls_url(tmp_path: Path) -> None:
    tls = ServerTlsConfig(cert_file="/etc/nats/cert.pem", key_file="/etc/nats/key.pem")
    made = server(tmp_path, tls=tls)
    assert made.config_text().endswith(
        'tls {\n  cert_file: "/etc/nats/cert.pem"\n  key_file: "/etc/nats/key.pem"\n'
        "  timeout: 2\n}\n"
    )
    assert "verify" not in made.config_text()
    assert made.url == "tls://127.0.0.1:4333"


def test_a_client_ca_makes_the_server_verify_client_certificates(tmp_path: Path) -> None:
    tls = ServerTlsConfig(
        cert_file="/etc/nats/cert.pem", key_file="/etc/nats/key.pem", client_ca_file="ca.pem"
    )
    text = server(tmp_path, tls=tls).config_text()
    tls_block = text[text.index("tls {") :]
    assert f'  ca_file: "{Path("ca.pem").absolute()}"\n  verify: true\n}}\n' in tls_block


def test_the_config_file_is_written_for_its_owner_only(tmp_path: Path) -> None:
    tls = ServerTlsConfig(cert_file="c.pem", key_file="k.pem")
    path = server(tmp_path, tls=tls)._write_config()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert 'key_file: "' in path.read_text()


def test_a_server_beyond_loopback_needs_nkey_users(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^nats\.nkey_seed: required .* 0\.0\.0\.0"):
        server(tmp_path, host="0.0.0.0")
    with pytest.raises(ConfigError, match=r"nats\.nkey_seed"):
        server(tmp_path, host="192.168.1.20")
    assert server(tmp_path, host="0.0.0.0", nkeys=[user_key()[1]]).host == "0.0.0.0"
    assert server(tmp_path, host="::1").host == "::1"  # loopback needs none


def test_the_public_key_comes_from_the_seed_file(tmp_path: Path) -> None:
    seed, public = user_key()
    path = tmp_path / "agent.seed"
    path.write_bytes(seed + b"\n")
    path.chmod(0o600)
    assert nkey_public_key(str(path)) == public


def test_a_seed_file_that_is_open_or_not_a_user_seed_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "agent.seed"
    path.write_bytes(user_key()[0])
    path.chmod(0o644)
    with pytest.raises(ConfigError, match=r"^nats\.nkey_seed: .* chmod 600 it"):
        nkey_public_key(str(path))
    path.chmod(0o600)
    path.write_bytes(b"not a seed")
    with pytest.raises(ConfigError, match=r"^nats\.nkey_seed: .* holds no NKey seed"):
        nkey_public_key(str(path))
    path.write_bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_ACCOUNT))
    with pytest.raises(ConfigError, match=r"^nats\.nkey_seed: .* not a user's seed"):
        nkey_public_key(str(path))


def test_public_keys_are_checked_by_form_role_and_checksum() -> None:
    _, public = user_key()
    assert nkey_user_problem(public) is None
    mistyped = public[:-1] + ("A" if public[-1] != "A" else "B")
    assert "checksum" in (nkey_user_problem(mistyped) or "")
    account = nkeys.from_seed(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_ACCOUNT))
    assert nkey_user_problem(account.public_key.decode()) is not None  # 'A...'
    assert nkey_user_problem(user_key()[0].decode()) is not None  # a seed, not a public key


def test_the_loader_names_each_bad_authorized_nkey() -> None:
    _, good = user_key()
    # Its checksum broken: the last character changed (to one it is not already).
    broken = good[:-1] + ("Q" if good[-1] != "Q" else "R")
    found = problems(
        {"nkey_seed": "/secrets/agent.seed", "authorized_nkeys": [good, "UABC", broken]}
    )
    assert [p.split(":")[0] for p in found] == [
        "nats.authorized_nkeys[1]",
        "nats.authorized_nkeys[2]",
    ]


def test_authorized_nkeys_need_the_agents_own_seed() -> None:
    found = problems({"authorized_nkeys": [user_key()[1]]})
    assert found == [
        "nats.authorized_nkeys: needs nats.nkey_seed: the agent's own key, without which it"
        " could not connect to its own server"
    ]


def test_server_tls_needs_a_certificate_and_a_key() -> None:
    assert problems({"server_tls": {"cert_file": "/c.pem"}}) == [
        "nats.server_tls.key_file: required in nats.server_tls"
    ]
    assert problems({"server_tls": {"key_file": "/k.pem"}}) == [
        "nats.server_tls.cert_file: required in nats.server_tls"
    ]


@pytest.mark.parametrize("path", ['/x"\ninclude "/etc/evil', "C:\\certs\\k.pem", "/$HOME/k"])
def test_paths_that_could_break_out_of_the_server_config_are_refused(path: str) -> None:
    assert problems({"server_tls": {"cert_file": "/c.pem", "key_file": path}}) == [
        "nats.server_tls.key_file: must not hold quotes, backslashes, '$' or control characters"
    ]


def test_a_client_ca_needs_the_agents_own_client_certificate() -> None:
    tls = {"cert_file": "/c.pem", "key_file": "/k.pem", "client_ca_file": "/ca.pem"}
    found = problems({"server_tls": tls})
    assert len(found) == 1 and found[0].startswith(
        "nats.tls.cert_file: required with nats.server_tls.client_ca_file"
    )
    loaded = load_config_bytes(
        json.dumps(
            {"nats": {"server_tls": tls, "tls": {"cert_file": "/a.pem", "key_file": "/a.key"}}}
        ).encode(),
        env={},
    )
    assert loaded.nats.server_tls == ServerTlsConfig(**tls)


def test_server_settings_without_an_embedded_server_are_refused() -> None:
    found = problems(
        {
            "urls": ["nats://nats:4222"],
            "embedded": False,
            "nkey_seed": "/secrets/agent.seed",
            "authorized_nkeys": [user_key()[1]],
            "server_tls": {"cert_file": "/c.pem", "key_file": "/k.pem"},
        }
    )
    assert found == [
        "nats.authorized_nkeys: only used by an embedded server, and nats.embedded is false",
        "nats.server_tls: only used by an embedded server, and nats.embedded is false",
    ]
