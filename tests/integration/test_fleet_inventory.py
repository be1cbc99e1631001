"""The ``semstreams_fleet`` inventory plugin, run by the real ``ansible-inventory``.

In network namespaces this test makes: a hub with JWT auth on its API and two edges
that enrol with claim tokens of two groups and sync. The plugin lists them from the
hub's registry (id, group, status, version, the address their sync link came from),
with the admin token read from a 0600 file and never printed; with the hub killed
(SIGKILL), it lists them from mDNS. On loopback, a stand-in hub (a real HTTP server
answering what a broken or hostile hub would) gets each bad answer refused with a
clear error and no inventory.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent import __version__
from tests import helpers
from tests.lan_agents import API_PORT, edge_config, hub_config, start, wait_until
from tests.netns import Lan, Node

pytest_plugins = ["tests.lan_agents"]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _inventory_file(workdir: Path, **options: Any) -> Path:
    path = workdir / "fleet.semstreams_fleet.yml"
    path.write_text(json.dumps({"plugin": "semstreams_fleet", **options}))  # JSON is YAML
    return path


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEMSTREAMS_")}
    env.update(ANSIBLE_CONFIG=str(REPO / "ansible/ansible.cfg"), ANSIBLE_NOCOLOR="1", **extra)
    return env


def plain(value: Any) -> Any:
    """``value`` without Ansible's unsafe wrapping: what came from the hub or mDNS is
    listed as ``{"__ansible_unsafe": ...}`` (never templated), which the test unwraps."""
    if isinstance(value, dict):
        if set(value) == {"__ansible_unsafe"}:
            return value["__ansible_unsafe"]
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value


def _list(
    inventory: Path, env: dict[str, str], node: Node | None = None, what: str = "--list"
) -> Any:
    """``ansible-inventory --list`` (or ``what``), inside ``node``'s namespace if given."""
    argv = [str(BIN / "ansible-inventory"), "-i", str(inventory), what]
    return subprocess.run(
        node.argv(argv) if node else argv,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env=env,
    )


def _cli(node: Node, token_file: Path, *args: str) -> Any:
    """``cloud-hub devices ...`` against the hub, with the admin token from its file."""
    argv = [sys.executable, "-m", "cloud_hub.cli", "devices", *args]
    argv += ["--url", f"http://{node.ip}:{API_PORT}", "--token-file", str(token_file)]
    return json.loads(node.run(argv).stdout)


def _hub_with_two_edges(lan: Lan, tmp_path: Path) -> tuple[Node, Any, Path, list[Node]]:
    """A hub with JWT auth, and edges e1 (group west) and e2 (east) enrolled by claim
    tokens and linked; (hub node, hub process, admin token file, edge nodes)."""
    hub = lan.add_node("hub")
    edges = [lan.add_node(name) for name in ("e1", "e2")]
    config = hub_config(hub, tmp_path, "hub")
    auth = {"type": "jwt", "jwt_secret": helpers.JWT_SECRET}
    config["services"]["service-manager"]["config"]["auth"] = auth
    start(hub, "cloud_hub.cli", config, tmp_path)
    hub_proc = lan.processes[-1]
    token_file = tmp_path / "admin.token"
    token_file.write_text(helpers.token(helpers.JWT_SECRET, ttl=600))
    token_file.chmod(0o600)
    for node, group in zip(edges, ("west", "east"), strict=True):
        claim = _cli(hub, token_file, "claim-token", "create", "--group", group)["token"]
        boot = edge_config(node, tmp_path, 0, {"claim_token": claim})
        start(node, "edge_agent.cli", boot, tmp_path)

    def linked() -> bool:
        devices = _cli(hub, token_file, "list")
        return len(devices) == 2 and all(d["address"] for d in devices)

    wait_until(linked, "both edges enrolled and linked", 90)
    return hub, hub_proc, token_file, edges


def test_the_inventory_lists_the_registry_and_falls_back_to_mdns_when_the_hub_is_down(
    lan: Lan, tmp_path: Path
) -> None:
    hub, hub_proc, token_file, edges = _hub_with_two_edges(lan, tmp_path)
    ops = lan.add_node("ops")
    admin = token_file.read_text()

    inventory = _inventory_file(
        tmp_path, hub_url=f"http://{hub.ip}:{API_PORT}", token_file=str(token_file)
    )
    started = time.monotonic()
    done = _list(inventory, _env(), ops)
    from_hub_s = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    listed = plain(json.loads(done.stdout))
    hosts = listed["_meta"]["hostvars"]
    assert set(hosts) == {"e1", "e2"}
    for node, group in zip(edges, ("west", "east"), strict=True):
        found = hosts[node.name]
        assert found["ansible_host"] == node.ip
        assert found["semstreams_advertised_version"] == __version__
        assert found["semstreams_status"] == "approved"
        assert found["semstreams_inventory_source"] == "hub"
        assert listed[group]["hosts"] == [node.name]
    assert sorted(listed["semstreams_edges"]["hosts"]) == ["e1", "e2"]
    assert admin not in done.stdout + done.stderr
    graph = _list(inventory, _env(), ops, "--graph")
    print(graph.stdout)
    assert "@west:\n  |  |--e1" in graph.stdout or "@west:\n  |--e1" in graph.stdout, graph.stdout

    # The token from the environment variable works too; a wrong one is a clear error.
    by_env = _inventory_file(tmp_path, hub_url=f"http://{hub.ip}:{API_PORT}")
    assert _list(by_env, _env(SEMSTREAMS_HUB_TOKEN=admin), ops).returncode == 0
    wrong = helpers.token("another-secret-0123456789abcdef01234567")
    refused = _list(by_env, _env(SEMSTREAMS_HUB_TOKEN=wrong), ops)
    assert refused.returncode != 0 and "answered 401" in refused.stderr, refused.stderr
    assert wrong not in refused.stdout + refused.stderr

    hub_proc.kill()
    hub_proc.wait(timeout=10)
    started = time.monotonic()
    fallback = _list(inventory, _env(SEMSTREAMS_MDNS_TIMEOUT="3"), ops)
    from_mdns_s = time.monotonic() - started
    assert fallback.returncode == 0, fallback.stderr
    assert "listing the edges found by mDNS" in fallback.stderr
    listed = plain(json.loads(fallback.stdout))
    hosts = listed["_meta"]["hostvars"]
    assert {name: hosts[name]["ansible_host"] for name in hosts} == {
        node.name: node.ip for node in edges
    }
    assert all(v["semstreams_inventory_source"] == "mdns" for v in hosts.values())
    assert all(v["semstreams_advertised_version"] == __version__ for v in hosts.values())
    print(f"inventory: from the hub in {from_hub_s:.1f} s, from mDNS in {from_mdns_s:.1f} s")


# ---- a hub that answers badly (loopback) -----------------------------------------------


class _Answers(http.server.BaseHTTPRequestHandler):
    """Answers ``GET /devices`` with whatever the test put in ``server.answer``."""

    def do_GET(self) -> None:
        answer: Callable[[_Answers], None] = self.server.answer  # type: ignore[attr-defined]
        self.server.seen.append(self.headers.get("Authorization", ""))  # type: ignore[attr-defined]
        answer(self)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def bad_hub() -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answers)
    server.daemon_threads = True
    server.seen = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _body(data: bytes, status: int = 200) -> Callable[[_Answers], None]:
    def answer(handler: _Answers) -> None:
        handler.send_response(status)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    return answer


def _trickle(handler: _Answers) -> None:
    handler.send_response(200)
    handler.end_headers()
    for _ in range(40):  # one byte every 0.25 s: never idle long, never done
        handler.wfile.write(b" ")
        handler.wfile.flush()
        time.sleep(0.25)


def _endless(handler: _Answers) -> None:
    handler.send_response(200)  # no Content-Length: the reader must count
    handler.end_headers()
    chunk = b"[" + b" " * (64 << 10)
    for _ in range(64):
        handler.wfile.write(chunk)


_DEVICE = {"id": "e1", "status": "approved", "group": "west", "version": "0.1.0"}


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (_body(b"<html>proxy error</html>"), "not JSON"),
        (_body(json.dumps({"devices": []}).encode()), "Expected `array`, got `object`"),
        (_body(json.dumps([{**_DEVICE, "id": "../../etc"}]).encode()), "$[0].id"),
        (_body(json.dumps([{**_DEVICE, "address": "x" * 200}]).encode()), "$[0].address"),
        (_body(json.dumps([{**_DEVICE, "status": "owned"}]).encode()), "$[0].status"),
        (_body(b"[]" + b" " * (2 << 20)), "more than 1048576"),
        (_endless, "more than 1048576 bytes"),
        (_trickle, "took more than 3 s"),
        (_body(b'{"detail": "forbidden"}', 403), "answered 403"),
    ],
    ids=[
        "html",
        "object",
        "bad-id",
        "long-address",
        "bad-status",
        "declared-size",
        "endless",
        "trickle",
        "403",
    ],
)
def test_a_bad_hub_answer_is_a_clear_error_and_no_inventory(
    bad_hub: http.server.ThreadingHTTPServer,
    tmp_path: Path,
    answer: Callable[[_Answers], None],
    error: str,
) -> None:
    bad_hub.answer = answer  # type: ignore[attr-defined]
    url = f"http://127.0.0.1:{bad_hub.server_address[1]}"
    inventory = _inventory_file(tmp_path, hub_url=url, timeout=3, max_bytes=1 << 20)
    done = _list(inventory, _env(SEMSTREAMS_HUB_TOKEN="s3cret-admin-token"))
    assert done.returncode != 0, done.stdout
    assert "semstreams_fleet:" in done.stderr and error in done.stderr, done.stderr
    assert "listing the edges found by mDNS" not in done.stderr  # refused, not unreachable
    assert bad_hub.seen == ["Bearer s3cret-admin-token"]  # type: ignore[attr-defined]
    assert "s3cret-admin-token" not in done.stdout + done.stderr


def test_a_token_file_open_to_others_is_refused_and_not_sent(
    bad_hub: http.server.ThreadingHTTPServer, tmp_path: Path
) -> None:
    bad_hub.answer = _body(json.dumps([_DEVICE]).encode())  # type: ignore[attr-defined]
    token_file = tmp_path / "admin.token"
    token_file.write_text("s3cret-admin-token\n")
    token_file.chmod(0o644)
    url = f"http://127.0.0.1:{bad_hub.server_address[1]}"
    inventory = _inventory_file(tmp_path, hub_url=url, token_file=str(token_file))
    done = _list(inventory, _env())
    assert done.returncode != 0 and "chmod 600" in done.stderr, done.stderr
    assert bad_hub.seen == []  # type: ignore[attr-defined]

    token_file.chmod(0o600)
    done = _list(inventory, _env())
    assert done.returncode == 0, done.stderr
    assert plain(json.loads(done.stdout))["west"]["hosts"] == ["e1"]
    assert bad_hub.seen == ["Bearer s3cret-admin-token"]  # type: ignore[attr-defined]
