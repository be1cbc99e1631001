"""The arm64 (Raspberry Pi) image, built here and run under emulation (qemu-user via binfmt).

A module fixture builds it once with ``image/build.py --arch arm64`` into
``build/test-image-arm64`` (Debian's arm64 archive, raspi-firmware and the generic arm64
kernel on the FAT partition, the fleet's role through chroot with aarch64 wheels). The
amd64 image test's parts are reused as they are: its ``Device`` boots a copy of this
rootfs with ``systemd-nspawn -b`` (the aarch64 systemd, agent and nats-server run under
qemu-aarch64), its ``hub`` runs on the host's x86_64 Python in another namespace of the
same :class:`tests.netns.Lan`, and its watchdog test runs here again against this device.

The agent's own tests also run inside a copy of the rootfs, with the image's venv and
pure-Python test tools: see :func:`test_the_agent_suite_slice_passes_on_aarch64`.

Without binfmt_misc or bookworm-backports' qemu-user the module skips, saying which
command or download failed and how (the image fixture sets them up, as ``make emulation``
does: ``image/build.py --set-up-emulation``).

Opt-in as a whole (``make emulation && .venv/bin/pytest --opt-in
tests/integration/test_image_arm64.py``): from an empty cache the module took 1034 s here
(the build 793 s of it), which does not fit ``make test``'s 30 minutes on a fresh machine
next to the rest.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.integration.test_image import (  # noqa: F401 (fixtures used by name)
    Device,
    Fleet,
    Hub,
    _namespaces_forbidden,
    _ready,
    build,
    build_image,
    fleet,
    hub,
    lan,
)
from tests.integration.test_zero_touch import API_PORT, http, hub_config, start, wait_until
from tests.netns import Lan

pytestmark = [pytest.mark.slow, pytest.mark.opt_in, pytest.mark.timeout(2400)]

REPO = Path(__file__).resolve().parents[2]
BUILD_DIR = REPO / "build/test-image-arm64"
ARM64 = build.ARCHES["arm64"]
# Measured here (2 cores, shared; qemu-user 10): READY after 11.6 s, telemetry at the hub
# after 16.8 s (docs/image.md). systemd, the agent and its nats-server all run under
# qemu-user; the limit leaves room for a loaded machine (amd64's is 60 s).
BOOT_TO_HUB_S = 120.0
# The pure-Python tools the suite slice needs besides the image's own venv (with what they
# require), at the versions the host's venv runs, so both sides test with the same tools.
TEST_TOOLS = ("pytest", "pytest-asyncio", "pytest-timeout", "httpx")


def _emulation_forbidden() -> str | None:
    """Why aarch64 binaries cannot run here (the failing command and its error), or None."""
    try:
        build.set_up_emulation(ARM64)
    except build.BuildError as exc:
        return f"aarch64 emulation unavailable: {exc}"
    return None


@pytest.fixture(scope="module")
def image() -> dict[str, Any]:
    """Build the arm64 image once for this module; its build-info."""
    for reason in (_namespaces_forbidden(), _emulation_forbidden()):
        if reason:
            pytest.skip(reason)
    return build_image(BUILD_DIR, "--arch=arm64", timeout=2100)


# zeroconf's mDNS sockets set IP_MULTICAST_IF; bookworm's qemu-user 7.2 answers that
# setsockopt with ENOPROTOOPT (the agent then stops at start with "[Errno 92] Protocol not
# available"), hence backports' qemu-user, which set_up_emulation registers.
_MULTICAST_IF_PROBE = (
    "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
    "s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton('127.0.0.1'))"
)


def _qemu_user_gap(rootfs: Path) -> str | None:
    """What the agent needs that the registered qemu-user does not emulate, or None."""
    argv = ["chroot", str(rootfs), "python3", "-c", _MULTICAST_IF_PROBE]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode == 0:
        return None
    handler = (build.BINFMT / f"qemu-{ARM64.machine}").read_text()
    error = (done.stderr.strip().splitlines() or ["?"])[-1]
    return f"{handler}\ndoes not emulate setsockopt(IP_MULTICAST_IF): `{' '.join(argv)}` -> {error}"


# TEST-ONLY, written into each booted copy of the rootfs (never into the image): the two
# namespaces systemd cannot set up for a unit when it and the unit run under qemu-user.
# Seen here: "Failed to set up user namespacing: Invalid argument" (the agent's
# PrivateUsers=yes, exit 217/USER) and "Failed to set up network namespacing:
# Input/output error" (firstboot's PrivateNetwork=yes). The seccomp-based settings
# (SystemCallFilter, MemoryDenyWriteExecute, ...) need no drop-in: qemu-user does not
# offer seccomp to the emulated systemd, which then leaves them out by itself. On a Pi,
# and in qemu-system below, the shipped units run as they are.
_RELAXED = "# Test-only (tests/integration/test_image_arm64.py): qemu-user cannot.\n[Service]\n"


@pytest.fixture(scope="module")
def drop_ins() -> dict[str, str]:
    """The test-only relaxations (see above), one per unit."""
    return {
        "semstreams-edge.service.d/zz-qemu-user.conf": f"{_RELAXED}PrivateUsers=no\n",
        "semstreams-firstboot.service.d/zz-qemu-user.conf": f"{_RELAXED}PrivateNetwork=no\n",
    }


@pytest.fixture(scope="module")
def first(fleet: Fleet, hub: Hub, image: dict[str, Any]) -> Device:  # noqa: F811
    """A device flashed with a claim token from the hub, booted (as the amd64 test's)."""
    gap = _qemu_user_gap(Path(image["rootfs"]))
    assert gap is None, gap
    token = http(hub.node, f"{hub.api}/claim-tokens", {"group": "ci"})[1]["token"]
    return fleet.boot("edge1", claim_token=token)


def test_the_image_carries_aarch64_binaries_and_a_pi_boot_partition(
    image: dict[str, Any], tmp_path: Path
) -> None:
    rootfs = Path(image["rootfs"])
    machine = subprocess.run(
        ["chroot", rootfs, "python3", "-c", "import platform; print(platform.machine())"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert machine.stdout.strip() == "aarch64"
    # The link is absolute inside the image (/opt/semstreams/releases/<version>).
    venv = rootfs / os.readlink(rootfs / "opt/semstreams/current").lstrip("/")
    header = (venv / "bin/nats-server").read_bytes()[:20]
    # ELF, 64-bit, e_machine 183 (EM_AARCH64): the wheel's binary is the aarch64 one.
    assert header[:5] == b"\x7fELF\x02" and int.from_bytes(header[18:20], "little") == 183
    manifest = json.loads(Path(image["manifest"]).read_text())
    assert manifest["arch"] == "arm64"
    assert {"linux-image-arm64", "raspi-firmware"} <= set(manifest["debian"])
    # The wired network a Pi (and qemu-system below) boots with: DHCP by systemd-networkd.
    wants = rootfs / "etc/systemd/system/multi-user.target.wants"
    assert (wants / "systemd-networkd.service").exists()
    assert "DHCP=yes" in (rootfs / "etc/systemd/network/20-wired.network").read_text()

    boot = tmp_path / "boot"
    boot.mkdir()
    offset = build.BOOT_START_MIB << 20
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    subprocess.run(
        ["mcopy", "-s", "-i", f"{image['image']}@@{offset}", "::/*", boot], check=True, env=env
    )
    names = {p.name for p in boot.iterdir()}
    # The Pi 4's firmware, the kernel and initrd raspi-firmware installs, a device tree.
    assert {"start4.elf", "fixup4.dat", "config.txt", "bcm2711-rpi-4-b.dtb"} <= names, names
    (kernel,) = boot.glob("vmlinuz-*")
    (initrd,) = boot.glob("initrd.img-*")
    assert "root=LABEL=rootfs" in (boot / "cmdline.txt").read_text()
    config = (boot / "config.txt").read_text()
    assert "arm_64bit=1" in config and "enable_uart=1" in config, config  # raspi-firmware
    # The firmware loads what config.txt names: the files that are there.
    assert f"kernel={kernel.name}" in config and f"initramfs {initrd.name}" in config, config
    # The root filesystem has no second copy of what the boot partition holds.
    assert not any((rootfs / "boot/firmware").iterdir())
    assert (Path(image["image"]).parent / f"{Path(image['image']).name}.sha256").exists()


def test_an_aarch64_device_boots_finds_the_x86_hub_by_mdns_and_reports_to_it(
    first: Device,
    hub: Hub,  # noqa: F811
) -> None:
    def diagnose() -> str:
        return f"{first.unit()}\n{first.journal()}\n{first.log.read_text()[-3000:]}"

    def telemetry() -> dict[str, Any] | None:
        edges = [e for e in hub.get("/edges") if e["hwm"] > 0]
        if not edges:
            return None
        status, entity = http(hub.node, f"{hub.api}/graph/entities/{edges[0]['edge_id']}")
        if status != 200 or "platform.machine" not in entity["properties"]:
            return None
        properties: dict[str, Any] = entity["properties"]
        return properties

    try:
        wait_until(lambda: _ready(first), "the agent's READY=1 and /health", BOOT_TO_HUB_S)
        ready_at = time.monotonic() - first.started
        remaining = BOOT_TO_HUB_S - ready_at
        wait_until(lambda: telemetry() is not None, "aarch64 telemetry", max(remaining, 0.1))
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{diagnose()}") from None
    arrived_at = time.monotonic() - first.started
    properties = telemetry()
    assert properties is not None
    assert properties["platform.machine"] == "aarch64", properties
    assert first.run("uname", "-m").strip() == "aarch64"
    firstboot = first.unit("semstreams-firstboot.service")
    assert firstboot["ActiveState"] == "inactive", first.journal("semstreams-firstboot.service")
    (device,) = hub.get("/devices")
    assert device["status"] == "approved"
    print(
        f"aarch64 boot: READY after {ready_at:.1f} s, telemetry at the hub after {arrived_at:.1f} s"
    )


# The amd64 image's watchdog test, run again against this module's (aarch64) device once
# it has booted: a SIGSTOPped agent is killed by the watchdog and restarted.
from tests.integration.test_image import (  # noqa: E402
    test_a_wedged_agent_is_restarted_by_the_watchdog as test_a_wedged_aarch64_agent_is_restarted_by_the_watchdog,  # noqa: E501, F401
)


def _closure(roots: tuple[str, ...]) -> list[str]:
    """``roots`` and everything they require (no extras), as installed on the host."""
    found: set[str] = set()
    todo = list(roots)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in found:
            continue
        found.add(name)
        for line in metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return sorted(found)


def _test_wheels(cache: Path) -> Path:
    """The pure-Python test tools as wheels, at the host venv's versions (cached)."""
    pins = [f"{name}=={metadata.version(name)}" for name in _closure(TEST_TOOLS)]
    key = build.hashlib.sha256(" ".join(pins).encode()).hexdigest()[:12]
    store = cache / f"test-wheels-{key}"
    if store.exists():
        return store
    scratch = Path(build.tempfile.mkdtemp(dir=cache, prefix=".test-wheels-"))
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
         "--no-deps", "--only-binary=:all:", "--dest", scratch, *pins],
        check=True,
    )  # fmt: skip
    scratch.rename(store)
    return store


def _suite_slice() -> list[str]:
    """The agent's unit tests (those that need neither the hub nor the fleet tooling)
    plus the ingest -> graph -> PathRAG path through a running agent.

    Left out: ``tests/unit/hub``, ``tests/unit/fleet`` (Ansible, run from an operator's
    machine) and the unit files importing ``cloud_hub``, hypothesis or ansible: the image
    carries the edge's dependencies only.
    """
    host_only = ("cloud_hub", "hypothesis", "ansible")
    unit = [
        str(path.relative_to(REPO))
        for path in sorted((REPO / "tests/unit").rglob("test_*.py"))
        if not {"hub", "fleet"} & set(path.relative_to(REPO / "tests/unit").parts[:-1])
        and not any(word in path.read_text() for word in host_only)
    ]
    return [*unit, "tests/integration/test_queries.py", "tests/integration/test_agent.py"]


def test_the_agent_suite_slice_passes_on_aarch64(image: dict[str, Any], tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    subprocess.run(["cp", "-a", image["rootfs"], root], check=True)
    wheels = _test_wheels(BUILD_DIR / "cache")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "--no-deps", "--no-index", "--target", root / "opt/test-tools", *wheels.glob("*.whl")],
        check=True,
    )  # fmt: skip
    src = root / "opt/src"
    src.mkdir()
    shutil.copytree(REPO / "tests", src / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    # Some tests read the example configs (examples/edge-small.json).
    shutil.copytree(
        REPO / "examples", src / "examples", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy2(REPO / "pyproject.toml", src)
    tests = _suite_slice()
    started = time.monotonic()
    done = subprocess.run(
        [
            "systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--private-network",
            f"--directory={root}", "--chdir=/opt/src", "--setenv=PYTHONPATH=/opt/test-tools",
            "--setenv=PYTHONDONTWRITEBYTECODE=1",
            "/opt/semstreams/current/bin/python", "-m", "pytest", "-q", "-rs", "--color=no",
            "-p", "no:cacheprovider", "-o", "timeout=600", *tests,
        ],
        capture_output=True, text=True, check=False, timeout=1800,
    )  # fmt: skip
    took = time.monotonic() - started
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    assert done.returncode == 0, f"{done.stdout[-6000:]}\n{done.stderr[-3000:]}"
    assert " passed" in summary and "skipped" not in summary, summary
    print(f"aarch64 suite slice ({len(tests)} files): {summary} in {took:.0f} s")


# The whole .img in a full-system emulator (TCG): opt-in (pytest --opt-in -m image_full).
# Measured here: telemetry at the hub 66 s after power-on (docs/image.md); the limit
# leaves room for a loaded machine.
FULL_BOOT_S = 360.0
# The agent's RSS after start, from its first telemetry (psutil reading /proc in the
# guest): 52.4 MiB measured; a Pi Zero 2 W has 512 MiB in all.
AGENT_RSS_MAX = 128 << 20
QEMU_DISK_SPARE = 256 << 20


@pytest.mark.opt_in
@pytest.mark.image_full
@pytest.mark.timeout(2400)
def test_the_whole_image_boots_in_qemu_system_and_reports_to_a_hub_on_the_host(
    image: dict[str, Any], tmp_path: Path
) -> None:
    # qemu and the hub share a network namespace of their own, with no way out: the
    # guest's slirp maps 10.0.2.2 to that namespace's loopback, where the hub listens.
    with Lan() as network:
        host = network.add_node("qemu-host")
        start(host, "cloud_hub.cli", hub_config(host, tmp_path, "hub"), tmp_path)
        api = f"http://127.0.0.1:{API_PORT}"
        token = http(host, f"{api}/claim-tokens", {"group": "ci"})[1]["token"]
        card = tmp_path / "card.img"
        subprocess.run(
            [REPO / "image/flash", image["image"], card, f"--claim-token={token}",
             f"--hub-url=http://10.0.2.2:{API_PORT}"],
            check=True,
        )  # fmt: skip
        # Room for the agent's state, as a real card has (the root partition stays as built).
        with card.open("r+b") as file:
            file.truncate(card.stat().st_size + QEMU_DISK_SPARE)
        boot = tmp_path / "boot"
        boot.mkdir()
        offset = build.BOOT_START_MIB << 20
        env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
        subprocess.run(["mcopy", "-i", f"{card}@@{offset}", "::/*", boot], check=True, env=env)
        (kernel,) = boot.glob("vmlinuz-*")
        (initrd,) = boot.glob("initrd.img-*")
        console = tmp_path / "console.log"
        argv = [
            "qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a72", "-smp", "2", "-m", "1024",
            "-nographic", "-no-reboot", "-kernel", kernel, "-initrd", initrd,
            "-append", "root=LABEL=rootfs rootfstype=ext4 rootwait console=ttyAMA0 panic=10",
            "-drive", f"file={card},format=raw,if=virtio",
            "-netdev", "user,id=net0", "-device", "virtio-net-pci,netdev=net0",
        ]  # fmt: skip
        started = time.monotonic()
        with console.open("wb") as log:
            qemu = host.popen(
                [str(word) for word in argv], stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )

        def telemetry() -> dict[str, Any] | None:
            assert qemu.poll() is None, f"qemu exited:\n{console.read_text()[-4000:]}"
            status, edges = http(host, f"{api}/edges")
            for edge in edges if status == 200 else []:
                status, entity = http(host, f"{api}/graph/entities/{edge['edge_id']}")
                if status == 200 and "platform.machine" in entity["properties"]:
                    properties: dict[str, Any] = entity["properties"]
                    return properties
            return None

        try:
            wait_until(lambda: telemetry() is not None, "telemetry from the guest", FULL_BOOT_S)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{console.read_text()[-4000:]}") from None
        took = time.monotonic() - started
        properties = telemetry()
    assert properties is not None
    assert properties["platform.machine"] == "aarch64", properties
    assert 0 < properties["agent.rss_bytes"] < AGENT_RSS_MAX, properties
    print(
        f"qemu-system-aarch64 -M virt: telemetry at the hub {took:.0f} s after power-on; "
        f"agent RSS {properties['agent.rss_bytes'] / (1 << 20):.1f} MiB, nats-server RSS "
        f"{properties.get('nats.rss_bytes', 0) / (1 << 20):.1f} MiB (from /proc in the guest)"
    )
