"""``ansible/site.yml`` installs the seed's NATS cluster and the hub on booted machines.

Stand-in for three servers: three copies of the CI appliance rootfs (the image
``tests/integration/test_image.py`` builds and boots, reused here through its fixtures'
helpers), each booted with ``systemd-nspawn`` in a network namespace of a private LAN.
The edge agent the image carries is stopped and removed first, so each is a bare Debian
machine with systemd, python3-venv and sshd. The hub shares the first machine with
``nats-1`` (the seed draws it on machines of its own; co-locating saves a boot). From
another namespace, ``ansible-playbook site.yml`` runs over SSH with an inventory of
groups ``nats_cluster`` (3 hosts) and ``semstreams_hub`` (1); its edge play
(``rollout.yml``) matches no host here.

Checked from outside the machines: every nats-server has routes to the other two, the
JetStream meta group has a leader and three members (``/jsz``, ``/routez`` on the
monitoring port), the hub answers ``/health`` and its sync log is a stream of three
replicas on that cluster, and a second run changes nothing.

Left out of ``make test`` (marked ``opt_in``): ``pytest --opt-in`` runs it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration import test_image
from tests.integration.test_image import BUILD_DIR, REPO, Device, Fleet
from tests.lan_agents import http, wait_until
from tests.netns import Lan, Node

# Opt-in (--opt-in): three boots, a full install and a second run took 148 s on the
# 2-core machine with little else running and 314 s under the load of parallel test
# runs, past this work's share of make test (~3 min, of which the inventory tests take 1).
pytestmark = [pytest.mark.slow, pytest.mark.opt_in, pytest.mark.timeout(900)]

NATS_NAMES = ("nats-1", "nats-2", "nats-3")
MONITOR_PORT = 8222
HUB_PORT = 8080
JWT_SECRET = "fleet-roles-test-secret-0123456789abcdef"
_SOURCES = ("edge_agent", "cloud_hub", "ansible", "image", "systemd", "pyproject.toml")


def _newest_source() -> float:
    """The mtime of the newest file the image is built from (bytecode aside: importing
    a module writes it at any time)."""
    newest = 0.0
    for name in _SOURCES:
        path = REPO / name
        files = [path] if path.is_file() else path.rglob("*")
        mtimes = (f.stat().st_mtime for f in files if f.is_file() and f.suffix != ".pyc")
        newest = max([newest, *mtimes])
    return newest


@pytest.fixture(scope="module")
def image() -> dict[str, Any]:
    """The CI image: the one test_image.py built earlier in this run when it is newer
    than every source (pytest runs that module first), else built now the same way."""
    info = BUILD_DIR / "out/build-info.json"
    if info.exists() and info.stat().st_mtime > _newest_source():
        built: dict[str, Any] = json.loads(info.read_text())
        if Path(built["rootfs"]).is_dir():
            return built
    return test_image.image.__wrapped__()  # type: ignore[attr-defined, no-any-return]


@pytest.fixture(scope="module")
def lan(image: dict[str, Any]) -> Iterator[Lan]:
    with Lan() as network:
        yield network


@pytest.fixture(scope="module")
def hub_wheelhouse(image: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The image's wheelhouse plus the ``hub`` extra's wheels (the project's own wheel is
    the image's: nothing is rebuilt)."""
    target = tmp_path_factory.mktemp("wheelhouse-hub")
    wheel = next(Path(image["wheelhouse"]).glob("semstreams_edge-*.whl"))
    version = wheel.name.split("-")[1]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
         "--wheel-dir", target, "--find-links", image["wheelhouse"],
         f"semstreams-edge[hub]=={version}"],
        check=True, timeout=300, capture_output=True,
    )  # fmt: skip
    return target


def _bare(device: Device, key: Path) -> None:
    """Booted, the image's agent stopped and removed, sshd up with the test's key."""

    def booted() -> bool:
        state = device.run("systemctl", "is-system-running").strip()
        return state in ("running", "degraded")

    wait_until(booted, f"{device.node.name} to boot", 120)
    units = ("semstreams-edge.service", "semstreams-firstboot.service")
    device.run("systemctl", "disable", *units)
    # Killed, not stopped: a clean stop of an agent still starting can outlast nsenter's
    # 30 s on a loaded machine, and nothing of it is kept.
    device.run("systemctl", "kill", "--signal=SIGKILL", *units)
    device.run("systemctl", "stop", "--no-block", *units)

    def agent_gone() -> bool:
        return device.unit().get("ActiveState") in ("inactive", "failed")

    wait_until(agent_gone, f"the image's agent on {device.node.name} to stop", 60)
    device.run("rm", "-rf", "/opt/semstreams", "/etc/semstreams", "/var/lib/semstreams")
    ssh_dir = device.root / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    (ssh_dir / "authorized_keys").write_bytes(key.with_suffix(".pub").read_bytes())
    wait_until(lambda: device.unit("ssh.service").get("ActiveState") == "active", "sshd", 60)


@pytest.fixture(scope="module")
def servers(
    image: dict[str, Any], lan: Lan, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[list[Device], Path]]:
    workdir = tmp_path_factory.mktemp("servers")
    key = workdir / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    fleet = Fleet(image, lan, workdir)
    try:
        devices = [fleet.boot(name.replace("-", "")) for name in NATS_NAMES]
        for device in devices:
            _bare(device, key)
        yield devices, key
    finally:
        fleet.stop()


def _inventory(devices: list[Device], key: Path, path: Path) -> Path:
    hosts = {name: {"ansible_host": d.node.ip} for name, d in zip(NATS_NAMES, devices, strict=True)}
    inventory = {
        "all": {
            "vars": {
                "ansible_user": "root",
                "ansible_ssh_private_key_file": str(key),
                "ansible_ssh_common_args": (
                    "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"
                ),
                "ansible_python_interpreter": "/usr/bin/python3",
            },
            "children": {
                "nats_cluster": {"hosts": hosts},
                "semstreams_hub": {"hosts": {NATS_NAMES[0]: {}}},
            },
        }
    }
    path.write_text(json.dumps(inventory))  # JSON is YAML
    return path


def _site(ops: Node, inventory: Path, variables: dict[str, Any]) -> Any:
    playbook = Path(sys.executable).parent / "ansible-playbook"
    argv = [str(playbook), "-i", str(inventory), str(REPO / "ansible/site.yml")]
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_HOST_KEY_CHECKING="False")
    env["ANSIBLE_CONFIG"] = str(REPO / "ansible/ansible.cfg")
    return subprocess.run(
        ops.argv([*argv, "-e", json.dumps(variables)]),
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
        env=env,
    )


def _recap(stdout: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP: host → {ok, changed, unreachable, failed, ...}."""
    found = {}
    for host, counts in re.findall(r"^(\S+)\s+:\s+(ok=.*)$", stdout, re.MULTILINE):
        found[host] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", counts)}
    return found


def test_site_yml_installs_a_three_node_nats_cluster_and_the_hub_on_it(
    servers: tuple[list[Device], Path],
    lan: Lan,
    image: dict[str, Any],
    hub_wheelhouse: Path,
    tmp_path: Path,
) -> None:
    devices, key = servers
    ops = lan.add_node("ops")
    inventory = _inventory(devices, key, tmp_path / "hosts.yml")
    variables = {
        "nats_cluster_wheelhouse": image["wheelhouse"],
        "nats_cluster_max_memory": "256MB",
        "nats_cluster_max_file": "1GB",
        "semstreams_hub_wheelhouse": str(hub_wheelhouse),
        "semstreams_hub_jwt_secret": JWT_SECRET,
    }

    started = time.monotonic()
    first = _site(ops, inventory, variables)
    first_s = time.monotonic() - started
    assert first.returncode == 0, first.stdout[-6000:] + first.stderr[-2000:]
    assert JWT_SECRET not in first.stdout + first.stderr

    for name, device in zip(NATS_NAMES, devices, strict=True):
        monitor = f"http://{device.node.ip}:{MONITOR_PORT}"
        status, jsz = http(ops, f"{monitor}/jsz")
        assert status == 200, jsz
        meta = jsz["meta_cluster"]
        assert meta["leader"] in NATS_NAMES and meta["cluster_size"] == 3, (name, meta)
        routes = http(ops, f"{monitor}/routez")[1]
        assert routes["num_routes"] >= 2, (name, routes)
        assert {r["remote_name"] for r in routes["routes"]} == set(NATS_NAMES) - {name}
        varz = http(ops, f"{monitor}/varz")[1]
        assert varz["server_name"] == name and varz["jetstream"]["config"]["store_dir"]

    hub = devices[0]
    status, health = http(ops, f"http://{hub.node.ip}:{HUB_PORT}/health")
    assert status == 200, f"{health}\n{hub.journal('semstreams-hub.service')}"
    assert http(ops, f"http://{hub.node.ip}:{HUB_PORT}/devices")[0] == 401  # auth is on
    # The hub's sync log lives on the cluster, on three replicas.
    streams = http(
        ops, f"http://{hub.node.ip}:{MONITOR_PORT}/jsz?accounts=true&streams=true&config=true"
    )[1]
    replicas = {
        stream["name"]: stream["config"]["num_replicas"]
        for account in streams["account_details"]
        for stream in account.get("stream_detail", [])
    }
    assert replicas.get("SYNC_BATCHES") == 3, replicas
    assert json.loads(hub.read("/etc/semstreams/hub.json"))["nats"]["embedded"] is False

    started = time.monotonic()
    second = _site(ops, inventory, variables)
    second_s = time.monotonic() - started
    assert second.returncode == 0, second.stdout[-6000:]
    recap = _recap(second.stdout)
    assert set(recap) == set(NATS_NAMES), second.stdout[-3000:]
    assert all(counts["changed"] == 0 for counts in recap.values()), recap
    print(f"site.yml: first run {first_s:.1f} s, second (no change) {second_s:.1f} s")
