"""The seed guide's runbook commands, as printed, against a running agent.

Each command is copied from the seed guide, ``production-deployment-patterns.md`` (kept
beside the seed configs in ``tests/fixtures/seed``; the test first checks that the
command is there, word for word) and run by ``sh`` with curl against a real
``edge-agent run`` process. Only the addresses change: the test's free loopback ports
for ``localhost:8080``, ``localhost:9090`` and ``primary:8080``; and the Go ``nats`` CLI,
which an appliance does not ship, becomes ``edge-agent stream-info``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import FIXTURES, AgentProcess, config_dict, free_port, ndjson, wait_until

SEED = FIXTURES / "seed/production-deployment-patterns.md"
DRONES = [
    {"entity_id": f"UAV-{n:03d}", "entity_type": "drone", "properties": {"battery": 90 - n}}
    for n in range(5)
] + [{"entity_id": "base-1", "entity_type": "base", "properties": {}}]


@pytest.fixture(scope="module")
def seed_text() -> str:
    return SEED.read_text()


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentProcess]:
    metrics_port = free_port()
    config = config_dict(
        tmp_path / "state",
        services={
            "service-manager": {"config": {"http_port": free_port()}},
            "metrics": {"enabled": True, "config": {"port": metrics_port}},
        },
    )
    process = AgentProcess(config, tmp_path)
    process.start()
    yield process
    if process.proc is not None and process.proc.poll() is None:
        process.proc.kill()
        process.proc.wait(10)


def run_as_printed(
    seed_text: str, command: str, agent: AgentProcess, cwd: Path
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` (which must appear in the seed verbatim) against ``agent``."""
    assert command in seed_text, f"not in the seed guide: {command}"
    api = agent.api.removeprefix("http://")
    metrics = f"127.0.0.1:{agent.config['services']['metrics']['config']['port']}"
    edge_agent = f"{sys.executable} -m edge_agent.cli"
    script = (
        command.replace("localhost:8080", api)
        .replace("primary:8080", api)
        .replace("localhost:9090", metrics)
        .replace("nats stream info", f"{edge_agent} stream-info --nats-url {agent.nats_url}")
        .replace("systemctl start semstreams", "echo systemctl start semstreams")
    )
    return subprocess.run(
        ["sh", "-c", script], capture_output=True, text=True, timeout=60, cwd=cwd, check=False
    )


def publish(agent: AgentProcess) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "publish", "-", "--nats-url", agent.nats_url],
        input=ndjson(DRONES),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    wait_until(lambda: agent.stats()["entities"] == len(DRONES), "the events applied")


def test_incident_runbook(seed_text: str, agent: AgentProcess, tmp_path: Path) -> None:
    publish(agent)
    queue = run_as_printed(
        seed_text,
        "curl http://localhost:9090/metrics | grep semstreams_queue_depth",
        agent,
        tmp_path,
    )
    assert queue.returncode == 0, queue.stderr
    assert "semstreams_queue_depth 0.0" in queue.stdout

    stream = run_as_printed(seed_text, "nats stream info GRAPH_ENTITIES", agent, tmp_path)
    assert stream.returncode == 0, stream.stderr
    assert "Information for Stream GRAPH_ENTITIES" in stream.stdout
    assert f"Last Sequence: {len(DRONES)}" in stream.stdout

    scale = run_as_printed(
        seed_text,
        "curl -X POST http://localhost:8080/admin/config \\\n  -d '{\"graph.workers\": 16}'",
        agent,
        tmp_path,
    )
    assert scale.returncode == 0, scale.stderr
    assert json.loads(scale.stdout)["settings"]["graph.workers"] == 16


def test_deployment_and_recovery_health_checks(
    seed_text: str, agent: AgentProcess, tmp_path: Path
) -> None:
    publish(agent)
    healthy = run_as_printed(
        seed_text, "curl -f http://localhost:8080/health || exit 1", agent, tmp_path
    )
    assert healthy.returncode == 0, healthy.stderr
    assert json.loads(healthy.stdout)["status"] == "healthy"
    stats = run_as_printed(seed_text, "curl http://localhost:8080/graph/stats", agent, tmp_path)
    assert json.loads(stats.stdout)["by_type"] == {"drone": 5, "base": 1}

    health_check = seed_text.split("# health-check.sh\n", 1)[1].split("```", 1)[0]
    quiet = run_as_printed(seed_text, health_check, agent, tmp_path)
    assert (quiet.returncode, quiet.stdout) == (0, "")

    assert agent.proc is not None
    agent.proc.kill()
    agent.proc.wait(10)
    failed = run_as_printed(seed_text, health_check, agent, tmp_path)
    assert "Primary failed, promoting standby..." in failed.stdout
    assert "systemctl start semstreams" in failed.stdout
    down = run_as_printed(
        seed_text, "curl -f http://localhost:8080/health || exit 1", agent, tmp_path
    )
    assert down.returncode != 0


def test_graph_export_and_import_as_printed(
    seed_text: str, agent: AgentProcess, tmp_path: Path
) -> None:
    publish(agent)
    exported = run_as_printed(
        seed_text,
        "curl -X POST http://localhost:8080/admin/export \\\n"
        '  -H "Content-Type: application/json" \\\n'
        '  -d \'{"entity_type": "drone", "format": "jsonl"}\' \\\n'
        "  -o backup-drones.jsonl",
        agent,
        tmp_path,
    )
    assert exported.returncode == 0, exported.stderr
    lines = (tmp_path / "backup-drones.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["entity_id"] for line in lines) == [
        f"UAV-{n:03d}" for n in range(5)
    ]

    imported = run_as_printed(
        seed_text,
        "curl -X POST http://localhost:8080/admin/import \\\n"
        '  -H "Content-Type: application/x-ndjson" \\\n'
        "  --data-binary @backup-drones.jsonl",
        agent,
        tmp_path,
    )
    assert imported.returncode == 0, imported.stderr
    # The same records again: each sets its entity exactly, so nothing changes.
    answer = json.loads(imported.stdout)
    assert answer == {"applied": 0, "unchanged": 5, "rejected": 0, "errors": []}
    assert agent.stats()["by_type"] == {"drone": 5, "base": 1}
