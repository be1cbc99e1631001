"""Config: the seed examples load, every problem names its key path, units and env work."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cloud_hub.config import HUB_COMPONENT_TYPES, HUB_INDEXES, load_hub_config
from edge_agent.config import ByteSize, Duration, load_config, load_config_bytes
from edge_agent.config.schema import SimulatorConfig, WebsocketOutputConfig
from edge_agent.errors import ConfigError
from tests.helpers import FIXTURES, make_config

SEED = sorted((FIXTURES / "seed").glob("*.json"))
SEED_ENV = {
    "JWT_SECRET": "s3cret-s3cret-s3cret-s3cret-s3cret",
    "INSTANCE_ID": "edge-7",
    "REGION": "us-west-2",
}


def problems(raw: dict[str, object], env: dict[str, str] | None = None) -> list[str]:
    """What the loader says of ``raw`` (with the hub's component types: a superset)."""
    with pytest.raises(ConfigError) as caught:
        load_config_bytes(
            json.dumps(raw).encode(), env=env or {}, component_types=HUB_COMPONENT_TYPES
        )
    return caught.value.problems


def test_every_seed_example_is_kept_as_a_fixture() -> None:
    assert len(SEED) == 14


@pytest.mark.parametrize("path", SEED, ids=lambda p: p.stem)
def test_seed_example_loads(path: Path) -> None:
    # The hub runs a superset of the edge's component types: every example loads there,
    # and every one without a websocket_input loads on the edge as well.
    config = load_hub_config(path, env=SEED_ENV)
    assert config.platform.id  # defaults to the hostname
    if "websocket_input" not in path.read_text():
        assert load_config(path, env=SEED_ENV).components == config.components


def test_the_edge_refuses_the_hubs_component_and_names_it() -> None:
    raw = {"components": [{"id": "in", "type": "websocket_input", "config": {}}]}
    with pytest.raises(ConfigError) as caught:
        load_config_bytes(json.dumps(raw).encode(), env={})
    assert caught.value.problems[0].startswith(
        "components[0].type: unknown component type 'websocket_input'"
    )


def test_seed_keys_take_effect() -> None:
    edge = load_config(FIXTURES / "seed/03-edge-raspberry-pi.json", env={})
    assert edge.platform.region == "vehicle-001"
    assert edge.graph.config.workers == 2
    assert edge.graph.config.queue_size == 500
    assert edge.graph.config.indexer.indexes.spatial is False
    output = edge.components[0].config
    assert isinstance(output, WebsocketOutputConfig)
    assert output.filters == {"priority": {"gte": 3}}
    cluster = load_config(FIXTURES / "seed/02-nats-cluster.json", env={})
    assert cluster.nats.max_reconnect == -1
    assert cluster.nats.reconnect_wait == 2.0
    scaled = load_config(FIXTURES / "seed/05-scale-by-entity-type.json", env={})
    assert scaled.graph.config.input_subject == "events.graph.entity.drone"
    logging = load_config(FIXTURES / "seed/14-logging.json", env=SEED_ENV)
    assert logging.logging.fields == {
        "service": "semstreams",
        "instance_id": "edge-7",
        "region": "us-west-2",
    }
    jwt = load_config(FIXTURES / "seed/11-jwt-auth.json", env=SEED_ENV)
    auth = jwt.services.service_manager.config.auth
    assert auth.jwt_secret == SEED_ENV["JWT_SECRET"]
    assert auth.jwt_issuer == "semstreams"
    assert auth.open_paths == ("/health", "/metrics", "/openapi.json")
    assert jwt.services.service_manager.config.tls is None


def test_misspelt_key_names_its_path() -> None:
    raw = {"graph": {"config": {"indexer": {"indexes": {"spatal": True}}}}}
    assert problems(raw) == ["graph.config.indexer.indexes.spatal: unknown key"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            {"graph": {"config": {"workers": "4"}}},
            "graph.config.workers: expected `int`, got `str`",
        ),
        ({"graph": {"config": {"workers": 0}}}, "graph.config.workers: expected `int` >= 1"),
        ({"nats": {"port": 70000}}, "nats.port: expected `int` <= 65535"),
        ({"nats": {"reconnect_wait": "soon"}}, "nats.reconnect_wait: expected a duration"),
        (
            {"nats": {"jetstream": {"max_bytes": "lots"}}},
            "nats.jetstream.max_bytes: expected a size",
        ),
        ({"telemetry": {"sample_rate": 2}}, "telemetry.sample_rate: expected `float` <= 1.0"),
        ({"nats": {"urls": ["http://x:1"]}}, "nats.urls[0]: 'http://x:1' is not a nats://"),
        (
            {"nats": {"urls": ["nats://a:1", "wss://b:443"]}},
            "nats.urls[1]: 'wss://b:443': NATS over WebSocket is not supported",
        ),
        ({"graph": {"config": {"input_subject": "x.y"}}}, "graph.config.input_subject: 'x.y' must"),
        (
            {"components": [{"id": "a", "type": "teleport"}]},
            "components[0].type: unknown component",
        ),
        (
            {"components": [{"id": "a", "type": "simulator", "config": {"entitys": 3}}]},
            "components[0].config.entitys: unknown key",
        ),
        (
            {
                "components": [
                    {
                        "id": "out",
                        "type": "websocket_output",
                        "config": {
                            "url": "wss://hub:8080/edge-sync",
                            "filters": {"priority": {"gte": 3, "around": 1}},
                        },
                    }
                ]
            },
            "components[0].config.filters.priority.around: unknown operator",
        ),
        (
            {"components": [{"id": "a", "type": "websocket_output", "config": {}}]},
            "components[0].config.url: required key is missing",
        ),
        (
            {"components": [{"id": "a", "type": "simulator"}, {"id": "a", "type": "simulator"}]},
            "components[1].id: duplicate id 'a'",
        ),
        (
            {
                "components": [
                    {
                        "id": "in",
                        "type": "websocket_input",
                        "config": {"devices": {"pi-7": {"token": ""}}},
                    }
                ]
            },
            "components[0].config.devices.pi-7.token: empty",
        ),
        (
            {"provisioning": {"interfaces": ["lo"]}},
            "provisioning.interfaces[0]: 'lo' is not an IPv4 address",
        ),
        (
            {
                "components": [
                    {"id": "o", "type": "websocket_output", "config": {"url": "http://h"}}
                ]
            },
            "components[0].config.url: 'http://h' is not a ws:// or wss:// URL",
        ),
        (
            {
                "components": [
                    {"id": "a", "type": "websocket_output", "config": {"url": "ws://h:1/s"}},
                    {"id": "b", "type": "websocket_output", "config": {"url": "ws://h:2/s"}},
                ]
            },
            "components: 2 websocket_output components; an agent has one link",
        ),
        (
            {"services": {"service-manager": {"config": {"auth": {"type": "jwt"}}}}},
            "services.service-manager.config.auth.jwt_secret: must not be empty",
        ),
        (
            {
                "services": {
                    "service-manager": {"config": {"auth": {"type": "jwt", "jwt_secret": "s"}}}
                }
            },
            "services.service-manager.config.auth.jwt_secret: too short for HS256 (1 bytes)",
        ),
        (
            {"services": {"service-manager": {"config": {"http_host": "0.0.0.0"}}}},
            "services.service-manager.config.auth.type: the API listens on '0.0.0.0', beyond"
            " this host, without auth",
        ),
        (
            {"services": {"service-manager": {"config": {"http_host": "::"}}}},
            "services.service-manager.config.auth.type: the API listens on '::'",
        ),
        (
            {
                "services": {
                    "service-manager": {
                        "config": {
                            "auth": {
                                "type": "jwt",
                                "jwt_secret": "x" * 32,
                                "allow_unauthenticated": True,
                            }
                        }
                    }
                }
            },
            "services.service-manager.config.auth.allow_unauthenticated: only meaningful with"
            " type none",
        ),
        (
            {"services": {"service-manager": {"config": {"auth": {"open_paths": ["health"]}}}}},
            "services.service-manager.config.auth.open_paths[0]: 'health' must start with /",
        ),
        (
            {"services": {"service-manager": {"config": {"tls": {"cert_file": "c.pem"}}}}},
            "services.service-manager.config.tls.key_file: required when cert_file is set",
        ),
        (
            {"services": {"service-manager": {"config": {"tls": {"key_file": "k.pem"}}}}},
            "services.service-manager.config.tls.cert_file: required when key_file is set",
        ),
        (
            {"services": {"service-manager": {"config": {"tls": {"ca_file": "ca.pem"}}}}},
            "services.service-manager.config.tls.ca_file: unknown key",
        ),
    ],
)
def test_bad_value_names_its_key(raw: dict[str, object], expected: str) -> None:
    found = problems(raw)
    assert any(p.startswith(expected) for p in found), found


def test_not_json_and_not_object() -> None:
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config_bytes(b"{nope")
    with pytest.raises(ConfigError, match="must be a JSON object"):
        load_config_bytes(b"[1]")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("2s", 2.0), ("500ms", 0.5), ("1.5s", 1.5), ("1m", 60.0), ("2h", 7200.0), (3, 3.0)],
)
def test_durations(text: object, seconds: float) -> None:
    assert Duration.parse(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "size"), [("64MB", 64_000_000), ("1GiB", 1 << 30), ("512KiB", 512 << 10), (10, 10)]
)
def test_sizes(text: object, size: int) -> None:
    assert ByteSize.parse(text) == size


def test_env_expansion_with_default() -> None:
    raw = b'{"platform": {"region": "${REGION:-nowhere}", "type": "${KIND}"}}'
    config = load_config_bytes(raw, env={"KIND": "edge-x"})
    assert config.platform.region == "nowhere"
    assert config.platform.type == "edge-x"


def test_state_dir_from_config_and_env(tmp_path: Path) -> None:
    assert load_config_bytes(b"{}", env={}).state_dir == "/var/lib/semstreams"
    raw = json.dumps({"state_dir": str(tmp_path / "a")}).encode()
    assert load_config_bytes(raw, env={}).state_dir == str(tmp_path / "a")
    overridden = load_config_bytes(raw, env={"SEMSTREAMS_STATE_DIR": str(tmp_path / "b")})
    assert overridden.state_dir == str(tmp_path / "b")


def test_component_config_is_typed() -> None:
    raw = b'{"components": [{"id": "sim", "type": "simulator", "config": {"interval": "250ms"}}]}'
    component = load_config_bytes(raw, env={}).components[0]
    assert isinstance(component.config, SimulatorConfig)
    assert component.config.interval == 0.25


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_config_cli_exit_codes(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"graph": {"config": {"indexer": {"indexes": {"spatal": true}}}}}')
    result = run_cli("check-config", str(bad))
    assert result.returncode == 2
    assert "graph.config.indexer.indexes.spatal: unknown key" in result.stderr
    good = FIXTURES / "seed/03-edge-raspberry-pi.json"
    result = run_cli("check-config", str(good))
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_run_refuses_an_invalid_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"graph": {"config": {"workers": -1}}}')
    result = run_cli("run", "--config", str(bad))
    assert result.returncode == 2
    assert "graph.config.workers" in result.stderr


def test_the_hub_keeps_all_five_indexes_unless_its_file_says_otherwise(tmp_path: Path) -> None:
    default = load_hub_config(None, env={})
    assert default.graph.config.indexer.indexes == HUB_INDEXES
    chosen = tmp_path / "hub.json"
    chosen.write_text(
        json.dumps({"graph": {"config": {"indexer": {"indexes": {"spatial": True}}}}})
    )
    indexes = load_hub_config(chosen, env={}).graph.config.indexer.indexes
    assert indexes.spatial and not indexes.temporal and not indexes.alias
    assert load_config(None, env={}).graph.config.indexer.indexes.spatial is False  # the edge's


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.53"])
def test_an_api_on_loopback_needs_no_auth(tmp_path: Path, host: str) -> None:
    settings = {"services": {"service-manager": {"config": {"http_host": host}}}}
    assert make_config(tmp_path, **settings).services.service_manager.config.http_host == host


def test_an_open_api_on_the_network_is_allowed_only_when_said_so(tmp_path: Path) -> None:
    auth = {"allow_unauthenticated": True}
    settings = {"services": {"service-manager": {"config": {"http_host": "0.0.0.0", "auth": auth}}}}
    config = make_config(tmp_path, **settings)
    assert config.services.service_manager.config.auth.allow_unauthenticated is True


@pytest.mark.parametrize(
    ("embedding", "message"),
    [
        ({"enabled": True}, "graph.config.indexer.embedding.service_url"),
        ({"enabled": True, "service_url": "ftp://semembed:8081"}, "not an http:// or https://"),
    ],
)
def test_a_bad_embedding_service_names_the_key(embedding: dict[str, object], message: str) -> None:
    raw = {"graph": {"config": {"indexer": {"embedding": embedding}}}}
    with pytest.raises(ConfigError, match=message):
        load_config_bytes(json.dumps(raw).encode())
