#!/usr/bin/env python3
"""Build the CI image: an amd64 Debian rootfs with the agent, and a disk image of it.

The real appliance image is arm64 Raspberry Pi OS built by pi-gen (``ansible/image.yml``,
see docs/image.md); that needs a privileged or native builder. This is the same recipe on
what a CI machine of this kind can do, as root but without loop devices or mounts:

1. ``debootstrap --variant=minbase`` a bookworm rootfs (the downloaded packages are kept
   as a tarball in the cache dir, so later runs skip the downloads);
2. build a wheelhouse of the project and its dependencies for this host;
3. apply the fleet's Ansible role through the chroot connection (``ansible/rootfs.yml``),
   which installs the agent into ``/opt/semstreams/releases/<version>``, enables the units and
   seals the image (no SSH host keys, empty machine-id, no agent state);
4. check that no private key or claim token is left, write a package manifest;
5. assemble ``<name>.img`` with no mounts: ``mkfs.ext4 -d`` for the root partition,
   ``mkfs.vfat`` + ``mcopy`` for the boot partition, ``sfdisk`` on the file and
   ``dd conv=notrunc`` of both partitions at their offsets; then its sha256.

The rootfs directory is kept next to the image (``<out>/rootfs``) for boot tests
(``systemd-nspawn -b -D <copy of it>``). Needs root and the Debian packages debootstrap,
e2fsprogs, dosfstools, mtools and fdisk; and the project's venv with ansible.

Usage: ``python image/build.py [--out build/image] [--cache build/cache]``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from importlib import metadata
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parent.parent
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = [
    "systemd",
    "systemd-sysv",
    "dbus",
    "python3",
    "python3-venv",
    "iproute2",
    "openssh-server",
    "ca-certificates",
    # The seed's runbooks are curl lines (`curl -f http://localhost:8080/health`, ...).
    "curl",
]
HOSTNAME = "semstreams-edge"
SECTOR = 512
BOOT_START_MIB = 1
ROOT_LABEL = "rootfs"
BOOT_LABEL = "BOOTFS"
# The glibc of bookworm is 2.36; pip matches --platform tags exactly, so every manylinux
# tag an aarch64 wheel of this Python can carry is listed.
_AARCH64_WHEEL_TAGS = (
    "manylinux2014_aarch64",
    *(f"manylinux_2_{minor}_aarch64" for minor in range(17, 37)),
)


class Arch(NamedTuple):
    """What differs between the CI image (amd64) and the Raspberry Pi image (arm64)."""

    name: str  # Debian's name
    machine: str  # platform.machine() on it
    extra_packages: tuple[str, ...]  # besides PACKAGES
    components: str
    boot_size_mib: int
    wheel_tags: tuple[str, ...]  # pip --platform tags; () for the host's own


ARCHES = {
    "amd64": Arch("amd64", "x86_64", (), "main", 64, ()),
    # What Debian's own Raspberry Pi images are made of: the generic arm64 kernel and
    # raspi-firmware (non-free-firmware), which puts the firmware, the kernel, the initrd,
    # the device trees and a config.txt into /boot/firmware.
    "arm64": Arch(
        "arm64",
        "aarch64",
        ("linux-image-arm64", "raspi-firmware"),
        "main,non-free-firmware",
        512,
        _AARCH64_WHEEL_TAGS,
    ),
}
# The initrd holds only what finds and mounts the root on a Pi 3/4/5's SD card or USB disk
# and on qemu's virtio disk. initramfs-tools' default (MODULES=most, some 700 modules)
# takes 15 minutes per run under qemu-user, and the kernel's install runs it twice.
INITRAMFS_CONF = (
    "# SemStreams Edge image: see /usr/share/initramfs-tools/modules.d/semstreams\nMODULES=list\n"
)
INITRAMFS_MODULES = """\
# The SD card: Pi 4/5 (sdhci-iproc), Pi 3 (bcm2835 sdhost, sdhci)
sdhci_iproc
bcm2835
sdhci_pltfm
mmc_block
# A USB disk: the Pi 4's xhci behind the VL805 (reset_raspberrypi loads its firmware)
reset_raspberrypi
xhci_pci
xhci_plat_hcd
dwc2
usb_storage
uas
# qemu -M virt
virtio_pci
virtio_mmio
virtio_blk
# The root and boot filesystems
ext4
vfat
nls_cp437
nls_ascii
"""
FSTAB = (
    f"LABEL={ROOT_LABEL}\t/\text4\tdefaults,noatime\t0\t1\n"
    # nofail: under systemd-nspawn the boot partition is a bind mount, not a device.
    f"LABEL={BOOT_LABEL}\t/boot/firmware\tvfat\tdefaults,nofail,x-systemd.device-timeout=90s\t0\t2\n"
)
# The Debian-archive arm64 image's wired network (pi-gen's Raspberry Pi OS brings its own):
# DHCP on every Ethernet port (a Pi's end0/eth0, qemu's virtio NIC) by systemd-networkd,
# part of bookworm's systemd package. Not in a container (the nspawn tests), whose network
# the host has set up: there networkd and its wait-online are skipped by condition.
WIRED_NETWORK = """\
# SemStreams Edge image (image/build.py): DHCP on the wired ports.
[Match]
Type=ether

[Network]
DHCP=yes
"""
NETWORKD_NOT_IN_CONTAINER = """\
# SemStreams Edge image (image/build.py): a container's network is the host's doing.
[Unit]
ConditionVirtualization=!container
"""
# A private key in PEM (the armour lines with a body between: ssh and TLS libraries carry
# the first line alone as a format string), and a claim token (ct_<id>.<secret>).
PRIVATE_KEY = re.compile(
    rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----\s+[A-Za-z0-9+/=\s]{40,}?"
    rb"-----END [A-Z0-9 ]*PRIVATE KEY-----"
)
CLAIM_TOKEN = re.compile(rb"\bct_[0-9a-f]{6,}\.[A-Za-z0-9_-]{16,}")
BOOT_README = """\
SemStreams Edge boot partition (CI image).

Put the per-device provisioning file here as semstreams-provision.json:
  {"claim_token": "ct_...", "hub_url": "https://hub:8080", "hub_key": "sha256:..."}
(image/flash --claim-token ... writes it without mounting anything). On first boot
semstreams-firstboot.service reads it and the agent enrols with the hub.
"""
CONFIG_TXT = """\
# Placeholder: the Raspberry Pi firmware's config.txt lives here on the real (pi-gen)
# image. The CI image boots in systemd-nspawn and has no firmware.
"""


class BuildError(RuntimeError):
    """A build step failed; the message names the step and the cause."""


def run(argv: list[str | Path], *, quiet: bool = True, **kwargs: object) -> str:
    """Run a command; return its stdout. Raise BuildError with its output on failure."""
    words = [str(arg) for arg in argv]
    done = subprocess.run(words, capture_output=quiet, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    if done.returncode != 0:
        output = ((done.stdout or "") + (done.stderr or "")).strip()[-4000:]
        raise BuildError(f"{' '.join(words)} exited {done.returncode}:\n{output}")
    return done.stdout or ""


class Steps:
    """Times each build step and prints a line for it."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._started = time.monotonic()

    def __call__(self, name: str) -> Steps:
        self._name, self._t0 = name, time.monotonic()
        print(f"== {name}", flush=True)
        return self

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        self.seconds[self._name] = round(time.monotonic() - self._t0, 1)
        print(f"   {self.seconds[self._name]} s", flush=True)

    @property
    def total(self) -> float:
        return round(time.monotonic() - self._started, 1)


TAR = ["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls"]


def _base_key(mirror: str, arch: Arch) -> str:
    """What the base system depends on: suite, arch, mirror, components, packages."""
    inputs = f"{SUITE} {arch.name} {mirror} {[*PACKAGES, *arch.extra_packages]}"
    if arch.components != "main":
        inputs += f" {arch.components}"
    return hashlib.sha256(inputs.encode()).hexdigest()[:12]


def _role_key(base_key: str, wheels: Path) -> str:
    """What the rootfs with the role applied depends on: the base system, the role and
    playbook files, the units the role copies from ``systemd/``, and every wheel's
    contents (its members, not the zip's timestamps)."""
    digest = hashlib.sha256(base_key.encode())
    files = [*(REPO / "ansible").rglob("*"), *(REPO / "systemd").rglob("*")]
    for path in sorted(files):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(f"{path.relative_to(REPO)}\0".encode() + path.read_bytes())
    for wheel in sorted(wheels.glob("*.whl")):
        with zipfile.ZipFile(wheel) as archive:
            for member in sorted(archive.namelist()):
                digest.update(f"{wheel.name}/{member}\0".encode() + archive.read(member))
    return digest.hexdigest()[:12]


def base_and_role(
    rootfs: Path, cache: Path, mirror: str, arch: Arch, wheels: Path, *, steps: Steps
) -> None:
    """The base system with the role applied, from the cache when its inputs are unchanged.

    Under emulation the role takes minutes (every Ansible module is a Python started by
    qemu-user), so its result is kept as a tar keyed by :func:`_role_key`.
    """
    key = _role_key(_base_key(mirror, arch), wheels)
    applied = cache / f"rootfs-{SUITE}-{arch.name}-role-{key}.tar"
    if applied.exists():
        with steps("rootfs with the role (cached)"):
            rootfs.mkdir(parents=True)
            run([*TAR, "-xf", applied, "-C", rootfs])
        return
    with steps("debootstrap"):
        debootstrap(rootfs, cache, mirror, arch)
    with steps("ansible role (chroot)"):
        apply_role(rootfs, wheels)
        for stale in cache.glob(f"rootfs-{SUITE}-{arch.name}-role-*.tar"):
            stale.unlink()  # one per arch: each is the size of a rootfs
        run([*TAR, "-cf", applied.with_suffix(".partial"), "-C", rootfs, "."])
        applied.with_suffix(".partial").replace(applied)


def mounts_below(mounts: str, root: Path) -> list[Path]:
    """The mount points at or below ``root`` in a ``/proc/mounts`` text, deepest first."""
    points = []
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 2:
            continue
        # /proc/mounts writes a space, tab, newline or backslash in a path as \ooo.
        point = Path(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[1]))
        if point == root or root in point.parents:
            points.append(point)
    return sorted(points, key=lambda point: len(point.parts), reverse=True)


def unmount_below(root: Path) -> None:
    """Unmount whatever is mounted at or below ``root`` (a debootstrap can leave its /proc
    mounted: seen under qemu-user 10), so neither tar nor a removal walks into it."""
    for point in mounts_below(Path("/proc/mounts").read_text(), root.resolve()):
        run(["umount", "--lazy", point])


def debootstrap(rootfs: Path, cache: Path, mirror: str, arch: Arch) -> None:
    """A minbase rootfs for ``arch``, from the cache when it can be.

    Two things are cached, keyed by suite, arch, mirror, components and packages:
    debootstrap's own tarball of the downloaded .debs (``--make-tarball``/
    ``--unpack-tarball``), and a tar of the finished base system, which makes a repeat run
    take seconds instead of minutes. A foreign arch (arm64 on an amd64 builder) runs its
    maintainer scripts under qemu-user through binfmt_misc (see :func:`set_up_emulation`).
    """
    packages = [*PACKAGES, *arch.extra_packages]
    key = _base_key(mirror, arch)
    debs = cache / f"debootstrap-{SUITE}-{arch.name}-{key}.tgz"
    base = cache / f"rootfs-{SUITE}-{arch.name}-{key}.tar"
    if base.exists():
        rootfs.mkdir(parents=True)
        run([*TAR, "-xf", base, "-C", rootfs])
    else:
        common = ["--variant=minbase", f"--include={','.join(packages)}",
                  f"--arch={arch.name}", f"--components={arch.components}"]  # fmt: skip
        cache.mkdir(parents=True, exist_ok=True)
        if not debs.exists():
            with tempfile.TemporaryDirectory(dir=cache) as scratch:
                partial = Path(scratch) / debs.name
                run(["debootstrap", *common, f"--make-tarball={partial}", SUITE,
                     Path(scratch) / "root", mirror])  # fmt: skip
                partial.replace(debs)
        if arch.name == "arm64":
            # Not conffiles of any package: the kernel's postinst finds them in place.
            (rootfs / "etc/initramfs-tools/conf.d").mkdir(parents=True)
            (rootfs / "etc/initramfs-tools/conf.d/semstreams").write_text(INITRAMFS_CONF)
            (rootfs / "usr/share/initramfs-tools/modules.d").mkdir(parents=True)
            (rootfs / "usr/share/initramfs-tools/modules.d/semstreams").write_text(
                INITRAMFS_MODULES
            )
        run(["debootstrap", *common, f"--unpack-tarball={debs}", SUITE, rootfs, mirror])
        unmount_below(rootfs)
        # The .debs debootstrap leaves in the rootfs are in the tarball already.
        for deb in (rootfs / "var/cache/apt/archives").glob("*.deb"):
            deb.unlink()
        run([*TAR, "-cf", base.with_suffix(".partial"), "-C", rootfs, "."])
        base.with_suffix(".partial").replace(base)


def configure(rootfs: Path, arch: Arch) -> None:
    """Files the cached base and role tars must not freeze: written on every build."""
    (rootfs / "etc/hostname").write_text(f"{HOSTNAME}\n")
    (rootfs / "etc/hosts").write_text(f"127.0.0.1\tlocalhost\n127.0.1.1\t{HOSTNAME}\n")
    if arch.name != "arm64":
        return
    (rootfs / "etc/fstab").write_text(FSTAB)
    # raspi-firmware's kernel hook writes cmdline.txt from this (here, and when a kernel
    # update comes on the device).
    defaults = rootfs / "etc/default/raspi-firmware"
    lines = [line for line in defaults.read_text().splitlines() if not line.startswith("ROOTPART=")]
    defaults.write_text("\n".join([*lines, f"ROOTPART=LABEL={ROOT_LABEL}"]) + "\n")
    (rootfs / "etc/systemd/network/20-wired.network").write_text(WIRED_NETWORK)
    for unit in ("systemd-networkd.service", "systemd-networkd-wait-online.service"):
        drop_in = rootfs / f"etc/systemd/system/{unit}.d/semstreams.conf"
        drop_in.parent.mkdir(parents=True, exist_ok=True)
        drop_in.write_text(NETWORKD_NOT_IN_CONTAINER)
    run(["systemctl", f"--root={rootfs}", "--quiet", "enable", "systemd-networkd.service"])


def wheelhouse(target: Path, arch: Arch, cache: Path) -> None:
    """The project's wheel and every dependency's, for ``arch``.

    The host resolves and builds the set (the project and any sdist-only dependency are
    pure Python); for a foreign arch each binary wheel is then swapped for the same
    version's wheel for that arch, so both images carry the same versions.
    """
    shutil.rmtree(target, ignore_errors=True)
    # setuptools stages the package in <repo>/build/lib and never deletes a module from
    # there, so a module removed from the tree would still end up in the wheel.
    shutil.rmtree(REPO / "build/lib", ignore_errors=True)
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
         "--wheel-dir", target, REPO])  # fmt: skip
    if arch.wheel_tags:
        _swap_binary_wheels(target, arch, cache)


def _swap_binary_wheels(wheels: Path, arch: Arch, cache: Path) -> None:
    """Replace the host's binary wheels in ``wheels`` by ``arch``'s (cached by pins)."""
    binary = sorted(w for w in wheels.glob("*.whl") if not w.name.endswith("-none-any.whl"))
    pins = [f"{w.name.split('-')[0]}=={w.name.split('-')[1]}" for w in binary]
    inputs = f"{arch.name} {arch.wheel_tags} {pins}"
    store = cache / f"wheels-{arch.name}-{hashlib.sha256(inputs.encode()).hexdigest()[:12]}"
    if not store.exists():
        cache.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(dir=cache, prefix=".wheels-"))
        platforms = [word for tag in arch.wheel_tags for word in ("--platform", tag)]
        run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
             "--no-deps", "--only-binary=:all:", *platforms, "--python-version", "3.11",
             "--implementation", "cp", "--dest", scratch, *pins])  # fmt: skip
        scratch.rename(store)
    for wheel in binary:
        wheel.unlink()
    for wheel in store.glob("*.whl"):
        shutil.copy2(wheel, wheels)


def apply_role(rootfs: Path, wheels: Path) -> None:
    """The fleet's role, through the chroot connection, sealing the image."""
    playbook = shutil.which("ansible-playbook", path=str(Path(sys.executable).parent))
    if playbook is None:
        raise BuildError("ansible-playbook not found next to this python (pip install ansible)")
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_HOST_KEY_CHECKING="0")
    env.pop("ANSIBLE_CONFIG", None)
    run(
        [playbook, "-c", "community.general.chroot", "-i", f"{rootfs},",
         REPO / "ansible/rootfs.yml", "-e", f"semstreams_wheelhouse={wheels}"],
        env=env,
    )  # fmt: skip
    shutil.rmtree(rootfs / "root/.ansible", ignore_errors=True)
    for log in (rootfs / "var/log").rglob("*"):
        if log.is_file():
            log.write_bytes(b"")


class SecretScan:
    """Finds private keys and claim tokens in a rootfs, then in its disk image.

    A private key byte-identical to one in an unmodified file of a Debian package (as
    dpkg's md5sums say) is public: libgnutls carries self-test keys. Every other key,
    and every claim token, is a finding.
    """

    def __init__(self) -> None:
        self.findings: list[str] = []
        self.public_keys: set[bytes] = set()

    def scan_rootfs(self, rootfs: Path) -> list[str]:
        """Scan every regular file under ``rootfs``; return the findings so far."""
        shipped = _dpkg_md5sums(rootfs)
        for path in rootfs.rglob("*"):
            if path.is_symlink() or not path.is_file():
                continue
            keys, tokens = _search(path)
            where = f"/{path.relative_to(rootfs)}"
            self.findings += [f"{where}: claim token" for _ in tokens]
            if keys and shipped.get(where) == _md5(path):
                self.public_keys.update(keys)
            else:
                self.findings += [f"{where}: private key" for _ in keys]
        return self.findings

    def scan_image(self, image: Path) -> list[str]:
        """Scan a disk image's bytes (after :meth:`scan_rootfs` of its rootfs)."""
        keys, tokens = _search(image)
        self.findings += [f"{image.name}: claim token" for _ in tokens]
        self.findings += [f"{image.name}: private key" for k in keys - self.public_keys]
        return self.findings


def _search(path: Path, chunk: int = 16 << 20) -> tuple[set[bytes], set[bytes]]:
    """The private keys and claim tokens in a file (read in overlapping chunks)."""
    keys: set[bytes] = set()
    tokens: set[bytes] = set()
    tail = b""
    with path.open("rb") as file:
        while block := file.read(chunk):
            data = tail + block
            if b"PRIVATE KEY-----" in data:
                keys.update(m.group() for m in PRIVATE_KEY.finditer(data))
            if b"ct_" in data:
                tokens.update(m.group() for m in CLAIM_TOKEN.finditer(data))
            tail = data[-8192:]
    return keys, tokens


def _dpkg_md5sums(rootfs: Path) -> dict[str, str]:
    """Path -> md5 of every file the installed Debian packages shipped."""
    sums: dict[str, str] = {}
    for listing in (rootfs / "var/lib/dpkg/info").glob("*.md5sums"):
        for line in listing.read_text(errors="replace").splitlines():
            digest, _, name = line.partition("  ")
            sums[f"/{name}"] = digest
    return sums


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def manifest(rootfs: Path, arch: Arch) -> dict[str, object]:
    """The Debian packages and the venv's Python packages, with their versions."""
    debs = run(["dpkg-query", "-W", f"--admindir={rootfs}/var/lib/dpkg",
                "--showformat=${Package}\t${Version}\n"])  # fmt: skip
    # The link is absolute inside the image: /opt/semstreams/releases/<version>.
    target = os.readlink(rootfs / "opt/semstreams/current")
    venv = rootfs / target.lstrip("/")
    site = next(venv.glob("lib/python3*/site-packages"))
    wheels = {d.metadata["Name"]: d.version for d in metadata.distributions(path=[str(site)])}
    return {
        "suite": SUITE,
        "arch": arch.name,
        "agent": {"version": venv.name, "path": target},
        "debian": dict(line.split("\t", 1) for line in debs.splitlines()),
        "python": dict(sorted(wheels.items(), key=lambda kv: kv[0].lower())),
    }


def boot_files(rootfs: Path, arch: Arch, staging: Path) -> list[Path]:
    """The boot partition's files, written under ``staging``; return the top-level ones.

    On arm64 what raspi-firmware put in the rootfs's /boot/firmware (firmware, kernel,
    initrd, device trees, config.txt, cmdline.txt) moves to the partition, which the
    device mounts there (so the root filesystem does not carry a second copy).
    """
    (staging / "README.txt").write_text(BOOT_README)
    if arch.name != "arm64":
        (staging / "config.txt").write_text(CONFIG_TXT)
        return sorted(staging.iterdir())
    firmware = rootfs / "boot/firmware"
    # raspi-firmware's own kernel hook, as a kernel update on the device runs it: it
    # rewrites config.txt and cmdline.txt (root=LABEL=rootfs from
    # /etc/default/raspi-firmware, which the base system's install did not have yet).
    hook = "/etc/kernel/postinst.d/z50-raspi-firmware"
    # In a container (a bare chroot without /proc passes neither of its chroot checks).
    run(["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--private-network",
         f"--directory={rootfs}", "--setenv=DEB_MAINT_PARAMS=configure", hook])  # fmt: skip
    for pattern in ("vmlinuz-*", "initrd.img-*", "start4.elf", "config.txt"):
        if not any(firmware.glob(pattern)):
            raise BuildError(f"raspi-firmware left no {pattern} in {firmware}")
    for entry in firmware.iterdir():
        shutil.move(entry, staging / entry.name)
    return sorted(staging.iterdir())


def disk_image(rootfs: Path, out: Path, name: str, arch: Arch) -> Path:
    """``<name>.img``: a DOS label, a FAT boot partition and an ext4 root, no mounts."""
    root_img, boot_img, image = out / "root.img", out / "boot.img", out / f"{name}.img"
    for part in (root_img, boot_img, image):
        part.unlink(missing_ok=True)
    boot_mib = arch.boot_size_mib
    with tempfile.TemporaryDirectory() as scratch:
        files = boot_files(rootfs, arch, Path(scratch))
        run(["mkfs.vfat", "-n", BOOT_LABEL, "-C", boot_img, str(boot_mib * 1024)])
        env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
        run(["mcopy", "-s", "-i", boot_img, *files, "::"], env=env)

    used_mib = int(run(["du", "-s", "--block-size=1M", rootfs]).split()[0])
    root_mib = int(used_mib * 1.25) + 128
    run(["mkfs.ext4", "-q", "-F", "-L", ROOT_LABEL, "-d", rootfs, root_img, f"{root_mib}M"])

    root_start_mib = BOOT_START_MIB + boot_mib
    total_mib = root_start_mib + root_mib
    with image.open("wb") as file:
        file.truncate(total_mib << 20)
    mib = (1 << 20) // SECTOR
    table = (
        "label: dos\n"
        f"start={BOOT_START_MIB * mib}, size={boot_mib * mib}, type=c, bootable\n"
        f"start={root_start_mib * mib}, size={root_mib * mib}, type=83\n"
    )
    run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", image], input=table)
    for part, start in ((boot_img, BOOT_START_MIB), (root_img, root_start_mib)):
        run(["dd", f"if={part}", f"of={image}", "bs=1M", f"seek={start}",
             "conv=notrunc,sparse", "status=none"])  # fmt: skip
    boot_img.unlink()
    root_img.unlink()
    return image


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(8 << 20):
            digest.update(block)
    return digest.hexdigest()


BINFMT = Path("/proc/sys/fs/binfmt_misc")
# bookworm's qemu-user (7.2) does not emulate setsockopt(IP_MULTICAST_IF), which the agent's
# mDNS (zeroconf) calls at start: under it the agent exits "[Errno 92] Protocol not
# available". bookworm-backports carries qemu 10, which does. Its static qemu-<machine> is
# taken from there without touching the host's apt sources: the InRelease file verified by
# gpgv with Debian's archive keyring, then the Packages index and the .deb checked against
# the hashes the layer above gives.
QEMU_SUITE = "bookworm-backports"
QEMU_PACKAGE = "qemu-user"
QEMU_STORE = REPO / "build/qemu-user"
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
# Bounds on what is read from the mirror (today InRelease ~60 KB, Packages.xz ~300 KB, the
# .deb ~63 MB): a broken or hostile mirror cannot fill memory or the disk.
INDEX_MAX_BYTES = 16 << 20
DEB_MAX_BYTES = 512 << 20


class DebFile(NamedTuple):
    """A package's entry in a Packages index: where its .deb is and what it must hash to."""

    version: str
    filename: str
    sha256: str
    size: int


def release_entry(release: str, path: str) -> tuple[str, int]:
    """The SHA256 and size a (verified) Release text gives for the index file ``path``.

    Raises:
        BuildError: if the Release text lists no SHA256 for ``path``.
    """
    in_sha256 = False
    for line in release.splitlines():
        if not line.startswith(" "):
            in_sha256 = line.strip() == "SHA256:"
            continue
        words = line.split()
        if in_sha256 and len(words) == 3 and words[2] == path and words[1].isdigit():
            return words[0], int(words[1])
    raise BuildError(f"the Release file lists no SHA256 for {path}")


def package_entry(packages: str, name: str, deb_arch: str) -> DebFile:
    """``name``'s entry for ``deb_arch`` in a Packages index (backports carries one version).

    Raises:
        BuildError: if there is none, or it lacks a field, or its path leaves ``pool/``.
    """
    for stanza in packages.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in stanza.splitlines() if ": " in line and line[0] != " "
        )
        if fields.get("Package") != name or fields.get("Architecture") != deb_arch:
            continue
        try:
            deb = DebFile(
                fields["Version"], fields["Filename"], fields["SHA256"], int(fields["Size"])
            )
        except (KeyError, ValueError) as exc:
            raise BuildError(f"{name}'s entry in the Packages index lacks {exc}") from None
        # The version names a directory under the store, the filename a URL under the mirror.
        if not re.fullmatch(r"[0-9A-Za-z.+~:-]+", deb.version) or ".." in deb.filename:
            raise BuildError(f"{name}'s entry in the Packages index is malformed: {deb}")
        return deb
    raise BuildError(f"no {name} for {deb_arch} in the Packages index")


def binfmt_line(conf: str, interpreter: Path) -> str:
    """The package's binfmt.d line (``:name:type:offset:magic:mask:interpreter:flags``)
    with ``interpreter`` in place of the package's path.

    Raises:
        BuildError: if ``conf`` is not one such line or lacks the F flag.
    """
    fields = conf.strip().split(":")
    if len(fields) != 8 or fields[0] != "" or fields[2] != "M":
        raise BuildError(f"unexpected binfmt.d line: {conf.strip()!r}")
    # F: the kernel opens the interpreter at registration, so it runs inside a chroot or
    # container that has no qemu of its own.
    if "F" not in fields[7]:
        raise BuildError(f"the binfmt.d line lacks the F flag: {conf.strip()!r}")
    if ":" in str(interpreter) or any(c.isspace() for c in str(interpreter)):
        raise BuildError(f"binfmt_misc cannot register {interpreter} (':' or a space in it)")
    fields[6] = str(interpreter)
    return ":".join(fields)


def _download(url: str, limit: int) -> bytes:
    """``url``'s body, at most ``limit`` bytes. Raises BuildError naming the URL."""
    try:
        with urllib.request.urlopen(url, timeout=120) as answer:
            body: bytes = answer.read(limit + 1)
    except OSError as exc:
        raise BuildError(f"GET {url}: {exc}") from None
    if len(body) > limit:
        raise BuildError(f"GET {url}: more than {limit} bytes")
    return body


def _checked(body: bytes, entry: tuple[str, int], what: str) -> bytes:
    """``body`` if it has the (sha256, size) its index gives; else BuildError."""
    digest = hashlib.sha256(body).hexdigest()
    if (digest, len(body)) != entry:
        raise BuildError(f"{what}: sha256 {digest}, {len(body)} bytes; the index says {entry}")
    return body


def fetch_qemu_user(mirror: str, arch: Arch, store: Path) -> Path:
    """Backports' qemu-``arch.machine``, in ``store/<pool file name>/`` with its ``binfmt.conf``.

    Raises:
        BuildError: naming the URL, the command or the mismatch.
    """
    host = next((a.name for a in ARCHES.values() if a.machine == platform.machine()), None)
    if host is None:
        raise BuildError(f"no Debian arch known for this {platform.machine()} host")
    if not DEBIAN_KEYRING.exists():
        raise BuildError(f"{DEBIAN_KEYRING} missing (apt-get install debian-archive-keyring)")
    dists = f"{mirror}/dists/{QEMU_SUITE}"
    store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=store) as scratch:
        signed = Path(scratch) / "InRelease"
        signed.write_bytes(_download(f"{dists}/InRelease", INDEX_MAX_BYTES))
        # --output: only the text the signature covers is read further.
        release = run(["gpgv", "--keyring", DEBIAN_KEYRING, "--output", "-", signed])
        index = f"main/binary-{host}/Packages.xz"
        body = _checked(_download(f"{dists}/{index}", INDEX_MAX_BYTES),
                        release_entry(release, index), index)  # fmt: skip
        deb = package_entry(lzma.decompress(body).decode(), QEMU_PACKAGE, host)
        # The pool file's name, epoch-less: binfmt_misc's fields are split on ':'.
        target = store / Path(deb.filename).name.removesuffix(".deb")
        if (target / "binfmt.conf").exists():
            return target / f"qemu-{arch.machine}"
        package = Path(scratch) / "package.deb"
        package.write_bytes(_checked(_download(f"{mirror}/{deb.filename}", DEB_MAX_BYTES),
                                     (deb.sha256, deb.size), deb.filename))  # fmt: skip
        binary = f"usr/bin/qemu-{arch.machine}"
        conf = f"usr/share/qemu/binfmt.d/qemu-{arch.machine}.conf"
        with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", package],
                              stdout=subprocess.PIPE) as unpack:  # fmt: skip
            run(["tar", "-x", "-C", scratch, f"./{binary}", f"./{conf}"], stdin=unpack.stdout)
        if unpack.returncode != 0:
            raise BuildError(f"dpkg-deb --fsys-tarfile {deb.filename} exited {unpack.returncode}")
        unpacked = Path(scratch) / "unpacked"
        unpacked.mkdir()
        os.rename(Path(scratch) / binary, unpacked / f"qemu-{arch.machine}")
        line = binfmt_line((Path(scratch) / conf).read_text(), target / f"qemu-{arch.machine}")
        (unpacked / "binfmt.conf").write_text(line + "\n")
        shutil.rmtree(target, ignore_errors=True)
        os.rename(unpacked, target)
    return target / f"qemu-{arch.machine}"


def emulation_ready(arch: Arch, store: Path = QEMU_STORE) -> str | None:
    """None if this machine runs ``arch``'s binaries (natively, or by a qemu-user from
    ``store`` registered with the F flag), else why."""
    if arch.machine == platform.machine():
        return None
    handler = BINFMT / f"qemu-{arch.machine}"
    if not (BINFMT / "status").exists():
        return f"binfmt_misc is not mounted on {BINFMT}"
    if not handler.exists():
        return f"no {handler} handler (image/build.py --arch {arch.name} --set-up-emulation)"
    text = handler.read_text()
    if not text.startswith("enabled"):
        return f"{handler} is disabled"
    fields = dict(line.split(" ", 1) for line in text.splitlines() if " " in line)
    if "F" not in fields.get("flags:", ""):
        return f"{handler} lacks the F flag (flags: {fields.get('flags:')!r})"
    interpreter = Path(fields.get("interpreter", ""))
    if interpreter.parent.parent != store or not interpreter.exists():
        return f"{handler} runs {interpreter}, not backports' qemu from {store}"
    return None


def set_up_emulation(arch: Arch, mirror: str = MIRROR, store: Path = QEMU_STORE) -> None:
    """Mount binfmt_misc and register backports' qemu-user for ``arch`` if needed (in
    place of any other handler of that name, e.g. bookworm's qemu-user-static).

    Raises:
        BuildError: naming the command that failed and its error.
    """
    if emulation_ready(arch, store) is None:
        return
    if not (BINFMT / "status").exists():
        run(["mount", "-t", "binfmt_misc", "binfmt_misc", BINFMT])
    binary = fetch_qemu_user(mirror, arch, store)
    handler = BINFMT / f"qemu-{arch.machine}"
    try:
        if handler.exists():
            handler.write_text("-1")  # unregisters it
        (BINFMT / "register").write_text((binary.parent / "binfmt.conf").read_text())
    except OSError as exc:
        raise BuildError(f"registering {binary} in {BINFMT}: {exc}") from None
    if reason := emulation_ready(arch, store):
        raise BuildError(reason)


def build(out: Path, cache: Path, mirror: str, name: str, arch: Arch) -> dict[str, object]:
    """Build everything into ``out``; return what was built, with each step's seconds."""
    if os.geteuid() != 0:
        raise BuildError("run as root: debootstrap and chroot need it")
    missing = [t for t in ("debootstrap", "mkfs.ext4", "mkfs.vfat", "mcopy", "sfdisk", "dd")
               if shutil.which(t) is None]  # fmt: skip
    if missing:
        raise BuildError(f"missing tools: {', '.join(missing)} (see .ci/run for the packages)")
    set_up_emulation(arch, mirror)
    steps = Steps()
    rootfs = out / "rootfs"
    unmount_below(rootfs)
    shutil.rmtree(rootfs, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    with steps("wheelhouse"):
        wheelhouse(out / "wheelhouse", arch, cache)
    base_and_role(rootfs, cache, mirror, arch, out / "wheelhouse", steps=steps)
    configure(rootfs, arch)
    scan = SecretScan()
    with steps("secret scan (rootfs)"):
        if found := scan.scan_rootfs(rootfs):
            raise BuildError("per-device secrets left in the image:\n" + "\n".join(found))
    with steps("manifest"):
        document = manifest(rootfs, arch)
        (out / f"{name}.manifest.json").write_text(json.dumps(document, indent=2) + "\n")
    with steps("disk image"):
        image = disk_image(rootfs, out, name, arch)
    with steps("secret scan (image)"):
        if found := scan.scan_image(image):
            raise BuildError("per-device secrets in the disk image:\n" + "\n".join(found))
    with steps("sha256"):
        digest = sha256(image)
        (out / f"{image.name}.sha256").write_text(f"{digest}  {image.name}\n")
    info = {
        "arch": arch.name,
        "image": str(image),
        "bytes": image.stat().st_size,
        "sha256": digest,
        "rootfs": str(rootfs),
        "wheelhouse": str(out / "wheelhouse"),
        "manifest": str(out / f"{name}.manifest.json"),
        "boot_partition_offset": BOOT_START_MIB << 20,
        "seconds": steps.seconds,
        "total_seconds": steps.total,
    }
    (out / "build-info.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=sorted(ARCHES), default="amd64", help="Debian arch")
    parser.add_argument("--out", type=Path, default=None, help="output dir (build/image[-ARCH])")
    parser.add_argument("--cache", type=Path, default=REPO / "build/cache", help="cache dir")
    parser.add_argument("--mirror", default=MIRROR, help=f"Debian mirror (default {MIRROR})")
    parser.add_argument("--name", default=None, help="image file name (semstreams-edge-ARCH)")
    parser.add_argument(
        "--set-up-emulation",
        action="store_true",
        help="only mount binfmt_misc and register qemu-user for --arch; say why if it cannot",
    )
    args = parser.parse_args(argv)
    arch = ARCHES[args.arch]
    out = args.out or REPO / ("build/image" if arch.name == "amd64" else f"build/image-{arch.name}")
    try:
        if args.set_up_emulation:
            set_up_emulation(arch, args.mirror)
            print(f"{arch.name}: binaries run here ({platform.machine()} host)")
            return 0
        info = build(
            out.resolve(),
            args.cache.resolve(),
            args.mirror,
            args.name or f"semstreams-edge-{arch.name}",
            arch,
        )
    except BuildError as exc:
        print(f"image/build.py: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
