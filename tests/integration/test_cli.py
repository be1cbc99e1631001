"""The edge-agent CLI against a running agent: publish from a file and stdin, stats,
stream-info."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from pathlib import Path

import pytest

from edge_agent.app import Agent
from tests.helpers import FIXTURES, cli, config_dict, free_port, wait_for


async def test_publish_file_then_stats(agent: Agent) -> None:
    assert agent.nats_server is not None
    events = str(FIXTURES / "events/good.ndjson")
    code, out, err = await cli("publish", events, "--nats-url", agent.nats_server.url)
    assert code == 0, err
    assert json.loads(out) == {"accepted": 3, "rejected": 0, "errors": []}

    async def applied() -> bool:
        return (await asyncio.to_thread(agent.store.stats))["entities"] == 3

    await wait_for(applied, what="published events applied")
    code, out, err = await cli("stats", "--url", f"http://127.0.0.1:{agent.http_port}")
    assert code == 0, err
    stats = json.loads(out)
    assert stats["entities"] == 3
    assert stats["by_type"]["sensor"] == 1


async def test_stream_info_shows_the_stream_and_its_consumer_after_a_publish(
    agent: Agent,
) -> None:
    assert agent.nats_server is not None
    url = agent.nats_server.url
    code, _, err = await cli("publish", str(FIXTURES / "events/good.ndjson"), "--nats-url", url)
    assert code == 0, err

    async def acked() -> bool:
        return (await asyncio.to_thread(agent.store.stats))["entities"] == 3

    await wait_for(acked, what="published events applied")
    code, out, err = await cli("stream-info", "GRAPH_ENTITIES", "--nats-url", url)
    assert code == 0, err
    assert out.startswith("Information for Stream GRAPH_ENTITIES created ")
    assert "Retention: workqueue\n" in out
    # A work queue holds only what the graph has not applied yet.
    assert "Messages: 0\n" in out
    assert "Last Sequence: 3\n" in out
    assert "Acknowledged Floor: 3\n" in out
    assert f"Consumer {agent.processor.consumer}:" in out
    assert "Unprocessed Messages: 0\n" in out

    code, out, err = await cli("stream-info", "--nats-url", url)
    assert code == 0, err
    listed = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert listed["GRAPH_ENTITIES"][1:3] == ["events.graph.entity.>", "0"]
    assert "GRAPH_DEAD_LETTERS" in listed


async def test_stream_info_names_a_missing_stream(agent: Agent) -> None:
    assert agent.nats_server is not None
    code, _, err = await cli("stream-info", "NO_SUCH", "--nats-url", agent.nats_server.url)
    assert code == 1
    assert "no stream named NO_SUCH" in err


async def test_publish_from_stdin_reports_refused_lines(agent: Agent) -> None:
    assert agent.nats_server is not None
    lines = b'{"entity_id": "ok-1", "entity_type": "t", "properties": {}}\nnot json\n'
    code, out, _ = await cli("publish", "-", "--nats-url", agent.nats_server.url, stdin=lines)
    assert code == 1
    result = json.loads(out)
    assert (result["accepted"], result["rejected"]) == (1, 1)
    assert result["errors"][0]["reason"] == "not_json"
    assert result["errors"][0]["line"] == 2


async def test_publish_without_a_server_fails_clearly() -> None:
    code, _, err = await cli("publish", "-", "--nats-url", "nats://127.0.0.1:1", stdin=b"{}")
    assert code == 1
    assert "cannot connect to NATS at nats://127.0.0.1:1" in err


async def test_stats_without_an_agent_fails_clearly() -> None:
    code, _, err = await cli("stats", "--url", "http://127.0.0.1:1")
    assert code == 1
    assert "cannot reach" in err


async def test_sigterm_while_waiting_for_an_external_nats(tmp_path: Path) -> None:
    config = config_dict(
        tmp_path / "state", nats={"urls": ["nats://127.0.0.1:1"], "embedded": False}
    )
    path = tmp_path / "agent.json"
    path.write_text(json.dumps(config))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edge_agent.cli",
        "run",
        "--config",
        str(path),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    await asyncio.sleep(2)
    assert proc.returncode is None  # still trying to reach NATS
    proc.terminate()
    await asyncio.wait_for(proc.wait(), 10)
    assert proc.returncode == 0


async def test_no_embedded_server_and_no_urls_is_a_config_error(tmp_path: Path) -> None:
    config = config_dict(tmp_path / "state", nats={"embedded": False})
    path = tmp_path / "agent.json"
    path.write_text(json.dumps(config))
    code, _, err = await cli("check-config", str(path))
    assert code == 2
    assert "nats.urls: must name a server when nats.embedded is false" in err


@pytest.mark.parametrize("program", ["edge_agent.cli", "cloud_hub.cli"])
async def test_an_open_api_on_the_network_refuses_to_start(tmp_path: Path, program: str) -> None:
    # Never binds: the refusal comes before any listener (tests bind loopback only).
    service = {"service-manager": {"config": {"http_port": free_port(), "http_host": "0.0.0.0"}}}
    config = config_dict(tmp_path / "state", services=service)
    path = tmp_path / "open.json"
    path.write_text(json.dumps(config))
    code, _, err = await cli("run", "--config", str(path), program=program)
    assert code == 2
    assert "services.service-manager.config.auth.type: the API listens on '0.0.0.0'" in err
    assert not (tmp_path / "state").exists() or not any((tmp_path / "state").iterdir())


async def test_stats_with_a_missing_token_file_fails_clearly(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-token")
    code, _, err = await cli("stats", "--url", "http://127.0.0.1:1", "--token-file", missing)
    assert code == 1
    assert "No such file" in err
    assert "Traceback" not in err


async def test_an_agent_refuses_a_token_file_others_can_read(tmp_path: Path) -> None:
    token_file = tmp_path / "hub-token"
    token_file.write_text("a-device-credential")
    token_file.chmod(0o644)
    output = {"url": "ws://127.0.0.1:1/edge-sync", "token_file": str(token_file)}
    config = config_dict(
        tmp_path / "state",
        components=[{"id": "to-hub", "type": "websocket_output", "config": output}],
    )
    path = tmp_path / "agent.json"
    path.write_text(json.dumps(config))
    code, _, err = await cli("run", "--config", str(path))
    assert code != 0
    assert "token_file" in err and "chmod 600 it" in err
    assert "a-device-credential" not in err


async def test_a_taken_api_port_stops_the_agent_naming_the_address(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        service = {"service-manager": {"config": {"http_port": port}}}
        path = tmp_path / "agent.json"
        path.write_text(json.dumps(config_dict(tmp_path / "state", services=service)))
        code, _, err = await cli("run", "--config", str(path))
    assert code != 0
    assert f"cannot bind 127.0.0.1:{port}: Address already in use" in err, err[-2000:]
