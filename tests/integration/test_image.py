"""The CI image, really booted: systemd starts the agent, which enrols with a hub by mDNS.

A module fixture builds the image once with ``image/build.py`` (debootstrap, the fleet's
Ansible role through the chroot connection, a disk image) into ``build/test-image``.
``image/flash`` writes it to a file with a claim token from a hub, and the boot
partition of that file is what the booted system sees at ``/boot/firmware``. Each
device is a copy of the rootfs booted with ``systemd-nspawn -b`` inside a network
namespace of a :class:`tests.netns.Lan`; the hub runs in another. No keystroke: the
test only watches (the hub's API, the agent's ``/health``, ``systemctl show`` inside).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.helpers import load_script
from tests.integration.test_fleet_inventory import plain
from tests.integration.test_zero_touch import API_PORT, http, hub_config, start, wait_until
from tests.netns import Lan, Node, cleanup_stale, netns_available

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
BUILD_DIR = REPO / "build/test-image"
AGENT_UNIT = "semstreams-edge.service"
BOOT_TO_HUB_S = 60.0


build = load_script("image/build.py", "image_build")


def _namespaces_forbidden() -> str | None:
    """Why this kernel or user cannot run the containers, or None."""
    if os.geteuid() != 0:
        return "needs root (debootstrap, chroot, systemd-nspawn)"
    if reason := netns_available():
        return f"network namespaces not permitted here: {reason}"
    probe = subprocess.run(
        ["unshare", "--mount", "--pid", "--uts", "--ipc", "--fork", "true"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        return (
            f"the kernel refuses mount/pid namespaces (systemd-nspawn needs them): {probe.stderr}"
        )
    return None


_built: dict[str, Any] = {}


@pytest.fixture(scope="module")
def image() -> dict[str, Any]:
    """Build the CI image once per session (test_rollout.py imports this fixture too);
    its build-info."""
    if reason := _namespaces_forbidden():
        pytest.skip(reason)
    if _built:
        return _built
    cleanup_stale()
    _built.update(build_image(BUILD_DIR, timeout=840))
    return _built


def build_image(build_dir: Path, *options: str, timeout: float) -> dict[str, Any]:
    """Run ``image/build.py`` into ``build_dir`` (``out/``, ``cache/``); its build-info."""
    out, cache = build_dir / "out", build_dir / "cache"
    done = subprocess.run(
        [sys.executable, REPO / "image/build.py", *options, "--out", out, "--cache", cache],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    assert done.returncode == 0, f"image/build.py failed:\n{done.stdout[-3000:]}{done.stderr}"
    info: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    print(f"image {' '.join(options)} built in {info['total_seconds']} s: {info['seconds']}")
    return info


@dataclass
class Hub:
    node: Node
    api: str

    def get(self, path: str) -> Any:
        status, body = http(self.node, f"{self.api}{path}")
        assert status == 200, f"GET {path}: {status} {body}"
        return body


@pytest.fixture(scope="module")
def lan(image: dict[str, Any]) -> Iterator[Lan]:
    with Lan() as network:
        yield network


@pytest.fixture(scope="module")
def hub(lan: Lan, tmp_path_factory: pytest.TempPathFactory) -> Hub:
    node = lan.add_node("hub")
    workdir = tmp_path_factory.mktemp("hub")
    start(node, "cloud_hub.cli", hub_config(node, workdir, "hub"), workdir)
    return Hub(node, f"http://{node.ip}:{API_PORT}")


class Device:
    """A copy of the image's rootfs booted by systemd-nspawn in a node's namespace."""

    def __init__(
        self,
        image: dict[str, Any],
        node: Node,
        workdir: Path,
        drop_ins: dict[str, str] | None = None,
        **provision: str,
    ):
        self.node = node
        self.root = workdir / "rootfs"
        self.boot = workdir / "boot"
        self.log = workdir / "nspawn.log"
        subprocess.run(["cp", "-a", image["rootfs"], self.root], check=True)
        # Unit drop-ins written into this copy only (path under /etc/systemd/system: text).
        for name, text in (drop_ins or {}).items():
            path = self.root / "etc/systemd/system" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        self._boot_partition(Path(image["image"]), workdir, provision)
        self.started = time.monotonic()
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    "systemd-nspawn", "--boot", "--register=no", "--keep-unit",
                    "--console=read-only", f"--directory={self.root}",
                    f"--machine={node.name}", f"--network-namespace-path=/run/netns/{node.ns}",
                    f"--bind={self.boot}:/boot/firmware",
                ],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            )  # fmt: skip

    def _boot_partition(self, image: Path, workdir: Path, provision: dict[str, str]) -> None:
        """Flash the image to a file (adding the provisioning file); copy out its FAT."""
        flashed = workdir / "card.img"
        options = [f"--{key.replace('_', '-')}={value}" for key, value in provision.items()]
        subprocess.run([REPO / "image/flash", image, flashed, *options], check=True)
        self.boot.mkdir()
        offset = build.BOOT_START_MIB << 20
        env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
        subprocess.run(
            ["mcopy", "-s", "-i", f"{flashed}@@{offset}", "::/*", self.boot], check=True, env=env
        )
        flashed.unlink()

    def init_pid(self) -> int | None:
        """The host pid of the container's systemd (pid 1 in its own pid namespace)."""
        done = subprocess.run(
            ["ip", "netns", "pids", self.node.ns], capture_output=True, text=True, check=False
        )
        for pid in done.stdout.split():
            with contextlib.suppress(OSError):
                status = Path(f"/proc/{pid}/status").read_text()
                nspid = next(line for line in status.splitlines() if line.startswith("NSpid:"))
                if nspid.split()[-1] == "1" and len(nspid.split()) > 2:
                    return int(pid)
        return None

    def run(self, *argv: str) -> str:
        """Run a command inside the booted system (its namespaces and root); its stdout.

        Before the system's pid 1 is up there is nothing to enter, and the answer is "".
        """
        pid = self.init_pid()
        if pid is None:
            return ""
        enter = ["nsenter", f"--target={pid}", "-m", "-u", "-i", "-n", "-p", "-r", "-w"]
        done = subprocess.run(
            [*enter, *argv], capture_output=True, text=True, check=False, timeout=30
        )
        return done.stdout

    def unit(self, unit: str = AGENT_UNIT) -> dict[str, str]:
        """``systemctl show`` of a unit inside the container."""
        props = "ActiveState,SubState,MainPID,NRestarts,StatusText,WatchdogUSec,RestartUSec"
        out = self.run("systemctl", "show", unit, f"--property={props}")
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, unit: str = AGENT_UNIT) -> str:
        return self.run("journalctl", "--no-pager", "-o", "cat", "-n", "60", "-u", unit)

    def health(self) -> int:
        """The agent's ``/health`` status, asked from the device's network namespace."""
        return http(self.node, f"http://127.0.0.1:{API_PORT}/health")[0]

    def read(self, path: str) -> bytes:
        """A file as the running system sees it."""
        return (self.root / path.lstrip("/")).read_bytes()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)


class Fleet:
    """Boots devices from the image, each in a new node of the Lan; stops them all."""

    def __init__(
        self, image: dict[str, Any], lan: Lan, workdir: Path, drop_ins: dict[str, str] | None = None
    ) -> None:
        self.image, self.lan, self.workdir, self.drop_ins = image, lan, workdir, drop_ins
        self.devices: list[Device] = []

    def boot(self, name: str, **provision: str) -> Device:
        workdir = self.workdir / name
        workdir.mkdir()
        node = self.lan.add_node(name)
        device = Device(self.image, node, workdir, self.drop_ins, **provision)
        self.devices.append(device)
        return device

    def stop(self) -> None:
        for device in self.devices:  # all shut down at once, then each waited for
            device.proc.terminate()
        for device in self.devices:
            device.stop()


@pytest.fixture(scope="module")
def drop_ins() -> dict[str, str]:
    """Unit drop-ins the booted copies get (none: the amd64 devices run the units as
    shipped; the arm64 module overrides this for what qemu-user cannot do)."""
    return {}


@pytest.fixture(scope="module")
def fleet(
    image: dict[str, Any],
    lan: Lan,
    tmp_path_factory: pytest.TempPathFactory,
    drop_ins: dict[str, str],
) -> Iterator[Fleet]:
    booted = Fleet(image, lan, tmp_path_factory.mktemp("devices"), drop_ins)
    yield booted
    booted.stop()


@pytest.fixture(scope="module")
def first(fleet: Fleet, hub: Hub) -> Device:
    """A device flashed with a claim token from the hub, booted."""
    token = http(hub.node, f"{hub.api}/claim-tokens", {"group": "ci"})[1]["token"]
    return fleet.boot("edge1", claim_token=token)


def _seconds(span: str) -> float:
    """A systemd time span as ``systemctl show`` prints it ("30s", "1min 30s", "500ms")."""
    units = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0}
    return sum(
        float(number) * units[unit] for number, unit in re.findall(r"([\d.]+)(us|ms|min|s|h)", span)
    )


def _ready(device: Device) -> bool:
    state = device.unit()
    return state.get("ActiveState") == "active" and device.health() == 200


def test_a_flashed_device_boots_enrols_and_reports_to_the_hub_with_no_keystroke(
    first: Device, hub: Hub
) -> None:
    def diagnose() -> str:
        return f"{first.unit()}\n{first.journal()}\n{first.log.read_text()[-3000:]}"

    def ready() -> bool:
        return _ready(first)

    wait_until(ready, "the agent's READY=1 and /health", BOOT_TO_HUB_S)
    ready_at = time.monotonic() - first.started
    state = first.unit()
    assert state["SubState"] == "running" and state["StatusText"], diagnose()
    firstboot = first.unit("semstreams-firstboot.service")
    # It ran once, successfully (a failed step would leave it "failed" and retry next boot).
    assert firstboot["ActiveState"] == "inactive", first.journal("semstreams-firstboot.service")

    def telemetry_arrived() -> bool:
        edges = [e for e in hub.get("/edges") if e["hwm"] > 0]
        if not edges:
            return False
        status, entity = http(hub.node, f"{hub.api}/graph/entities/{edges[0]['edge_id']}")
        return status == 200 and entity["entity_type"] == "device"

    remaining = BOOT_TO_HUB_S - (time.monotonic() - first.started)
    try:
        wait_until(telemetry_arrived, "the device entity at the hub", max(remaining, 0.1))
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{diagnose()}") from None
    arrived_at = time.monotonic() - first.started
    (device,) = hub.get("/devices")
    assert device["status"] == "approved"
    (edge,) = hub.get("/edges")
    entity = hub.get(f"/graph/entities/{edge['edge_id']}")
    assert entity["origin"] == edge["edge_id"]
    assert {"agent.version", "system.memory_total_bytes", "system.uptime_s"} <= set(
        entity["properties"]
    )
    # The seed's incident runbook, as printed, on the device itself.
    scraped = first.run(
        "sh", "-c", "curl -s http://localhost:9090/metrics | grep semstreams_queue_depth"
    )
    assert re.search(r"^semstreams_queue_depth \d+", scraped, re.M), scraped
    # The claim secret is erased once used: from the agent's copy and the boot partition.
    copy = json.loads(first.read("/var/lib/semstreams/provision.json"))
    assert copy["claim_token"] == ""
    assert "ct_" not in (first.boot / "semstreams-provision.json").read_text()
    print(f"boot: READY after {ready_at:.1f} s, telemetry at the hub after {arrived_at:.1f} s")


def test_a_wedged_agent_is_restarted_by_the_watchdog(first: Device) -> None:
    wait_until(lambda: _ready(first), "the agent to run", BOOT_TO_HUB_S)
    before = first.unit()
    watchdog_s, restart_s = _seconds(before["WatchdogUSec"]), _seconds(before["RestartUSec"])
    assert watchdog_s > 0, before
    first.run("kill", "-STOP", before["MainPID"])
    wedged = time.monotonic()

    def restarted() -> bool:
        return first.unit()["MainPID"] not in ("0", before["MainPID"])

    # The loop's last ping is up to WatchdogSec/2 old when it is wedged, so systemd kills
    # it within WatchdogSec and starts a new one RestartSec later (1 s of polling slack).
    wait_until(restarted, "systemd to restart the agent", watchdog_s + restart_s + 30)
    replaced = time.monotonic() - wedged
    wait_until(lambda: _ready(first), "the new agent's READY=1 and /health", 60)
    answering = time.monotonic() - wedged
    after = first.unit()
    journal = first.journal()
    print(
        f"watchdog: wedged pid {before['MainPID']}, new pid {after['MainPID']} after "
        f"{replaced:.1f} s, READY and /health after {answering:.1f} s "
        f"(WatchdogSec {watchdog_s:g} s + RestartSec {restart_s:g} s)"
    )
    assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1, after
    assert "watchdog timeout" in journal.lower(), journal
    assert replaced <= watchdog_s + restart_s + 1.0, journal


def _playbook(
    hub: Hub, inventory: str | Path, wheelhouse: str | Path, key: Path, **extra: Any
) -> subprocess.CompletedProcess[str]:
    """Run ansible/rollout.yml from the hub's namespace over SSH (as root, with ``key``)
    against ``inventory`` (a file, or ``"<ip>,"``)."""
    variables = {
        "semstreams_hosts": "all",
        "semstreams_wheelhouse": str(wheelhouse),
        "ansible_user": "root",
        "ansible_ssh_private_key_file": str(key),
        "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
        "ansible_python_interpreter": "/usr/bin/python3",
        "semstreams_health_timeout_s": 20,
        **extra,
    }
    playbook = Path(sys.executable).parent / "ansible-playbook"
    argv = [str(playbook), "-i", str(inventory), str(REPO / "ansible/rollout.yml")]
    # ansible/ansible.cfg applies only when run from ansible/: its pipelining, here; and
    # forks enough for a whole wave of the 8-device test at once.
    env = dict(
        os.environ,
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_HOST_KEY_CHECKING="False",
        ANSIBLE_PIPELINING="True",
        ANSIBLE_FORKS="10",
    )
    return subprocess.run(
        hub.node.argv([*argv, "-e", json.dumps(variables)]),
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
        env=env,
    )


def ssh_key(directory: Path) -> Path:
    """A fresh test-only SSH key pair (the image itself has no authorized key)."""
    key = directory / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    return key


def authorize(device: Device, key: Path) -> None:
    """Let ``key`` log in as root on ``device``."""
    ssh_dir = device.root / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    (ssh_dir / "authorized_keys").write_bytes(key.with_suffix(".pub").read_bytes())


def test_rollout_yml_reconfigures_a_device_over_ssh_and_rolls_back_a_failing_change(
    first: Device, hub: Hub, image: dict[str, Any], tmp_path: Path
) -> None:
    key = ssh_key(tmp_path)
    authorize(first, key)
    wait_until(lambda: _ready(first), "the agent to run", BOOT_TO_HUB_S)
    assert first.unit("ssh.service")["ActiveState"] == "active", first.journal("ssh.service")
    config = "/etc/semstreams/edge.json"

    started = time.monotonic()
    target, wheels = f"{first.node.ip},", image["wheelhouse"]
    good = _playbook(hub, target, wheels, key, semstreams_telemetry_interval="5s")
    good_s = time.monotonic() - started
    assert good.returncode == 0, good.stdout[-4000:]
    assert json.loads(first.read(config))["components"][0]["config"]["interval"] == "5s"
    running = first.unit()
    assert running["ActiveState"] == "active" and first.health() == 200, running

    # Port 22 passes check-config but the agent cannot bind it (no capabilities): the
    # health gate fails, and the previous config comes back.
    bad_port = {"services": {"service-manager": {"config": {"http_port": 22}}}}
    started = time.monotonic()
    bad = _playbook(
        hub,
        target,
        wheels,
        key,
        semstreams_telemetry_interval="7s",
        semstreams_config_extra=bad_port,
    )
    bad_s = time.monotonic() - started
    assert bad.returncode != 0, bad.stdout[-4000:]
    rolled_back = r"did not pass \(.*\); rolled back to \S+ in [\d.]+ s, healthy"
    assert re.search(rolled_back, bad.stdout), f"{bad.stdout[-3000:]}\n{first.journal()}"
    record = json.loads(first.read("/var/lib/semstreams/rollout-failed.json"))
    assert record["rolled_back_healthy"] is True and record["failed_task"], record
    restored = json.loads(first.read(config))
    assert restored["components"][0]["config"]["interval"] == "5s"
    assert restored["services"]["service-manager"]["config"]["http_port"] == API_PORT
    wait_until(lambda: _ready(first), "the rolled-back agent", 30)
    print(
        f"rollout.yml over SSH: a good change in {good_s:.1f} s, a rolled-back one in {bad_s:.1f} s"
    )


def test_the_mdns_inventory_lists_the_booted_device(
    first: Device, hub: Hub, image: dict[str, Any], tmp_path: Path
) -> None:
    wait_until(lambda: _ready(first), "the agent to run", BOOT_TO_HUB_S)
    inventory = Path(sys.executable).parent / "ansible-inventory"
    source = tmp_path / "lan.semstreams_fleet.yml"
    source.write_text("plugin: semstreams_fleet\n")  # no hub_url: mDNS only
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible/ansible.cfg"))
    argv = [str(inventory), "-i", str(source), "--list"]
    done = subprocess.run(
        hub.node.argv(argv), capture_output=True, text=True, check=True, timeout=60, env=env
    )
    listed = plain(json.loads(done.stdout))
    hosts = listed["_meta"]["hostvars"]
    names = [n for n, v in hosts.items() if v["ansible_host"] == first.node.ip]
    assert len(names) == 1, f"{first.node.ip} not found once in {done.stdout}"
    name = names[0]
    assert name in listed["semstreams_edges"]["hosts"]
    version = json.loads(Path(image["manifest"]).read_text())["agent"]["version"]
    assert hosts[name]["semstreams_advertised_version"] == version


def test_two_devices_from_one_image_each_get_their_own_identity(
    fleet: Fleet, first: Device
) -> None:
    second = fleet.boot("edge2")  # no provisioning file: it waits for approval
    wait_until(lambda: _ready(second), "the second device's agent", BOOT_TO_HUB_S)
    wait_until(lambda: _ready(first), "the first device's agent", BOOT_TO_HUB_S)
    identities = []
    for device in (first, second):
        machine_id = device.run("cat", "/etc/machine-id").strip()
        assert len(machine_id) == 32, machine_id
        identities.append(
            (
                machine_id,
                device.read("/etc/ssh/ssh_host_ed25519_key.pub"),
                device.read("/var/lib/semstreams/device_key.pem"),
            )
        )
    names = ("machine-id", "ssh host key", "device key")
    for what, mine, theirs in zip(names, *identities, strict=True):
        assert mine != theirs, f"two devices share a {what}"


def test_the_image_holds_no_private_key_and_no_claim_token(image: dict[str, Any]) -> None:
    rootfs, disk = Path(image["rootfs"]), Path(image["image"])
    scan = build.SecretScan()
    assert scan.scan_rootfs(rootfs) == []
    assert scan.scan_image(disk) == []
    assert not list((rootfs / "etc/ssh").glob("ssh_host_*"))
    assert not any((rootfs / "var/lib/semstreams").iterdir())
    assert (rootfs / "etc/machine-id").read_bytes() == b""

    # The scan does find what it looks for.
    planted = rootfs.parent / "planted"
    shutil.rmtree(planted, ignore_errors=True)
    (planted / "etc").mkdir(parents=True)
    key = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (planted / "etc/key.pem").write_bytes(key)
    (planted / "etc/provision.json").write_text(
        '{"claim_token": "ct_0123456789ab.%s"}' % ("x" * 32)
    )
    try:
        found = build.SecretScan().scan_rootfs(planted)
    finally:
        shutil.rmtree(planted)
    assert sorted(found) == ["/etc/key.pem: private key", "/etc/provision.json: claim token"]
