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
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

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
BOOT_SIZE_MIB = 64
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


def debootstrap(rootfs: Path, cache: Path, mirror: str) -> None:
    """A minbase rootfs, from the cache when it can be.

    Two things are cached, keyed by suite, mirror and packages: debootstrap's own tarball
    of the downloaded .debs (``--make-tarball``/``--unpack-tarball``), and a tar of the
    finished base system, which makes a repeat run take seconds instead of a minute.
    """
    key = hashlib.sha256(f"{SUITE} amd64 {mirror} {PACKAGES}".encode()).hexdigest()[:12]
    debs = cache / f"debootstrap-{SUITE}-amd64-{key}.tgz"
    base = cache / f"rootfs-{SUITE}-amd64-{key}.tar"
    tar = ["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls"]
    if base.exists():
        rootfs.mkdir(parents=True)
        run([*tar, "-xf", base, "-C", rootfs])
    else:
        common = ["--variant=minbase", f"--include={','.join(PACKAGES)}", "--arch=amd64"]
        cache.mkdir(parents=True, exist_ok=True)
        if not debs.exists():
            with tempfile.TemporaryDirectory(dir=cache) as scratch:
                partial = Path(scratch) / debs.name
                run(["debootstrap", *common, f"--make-tarball={partial}", SUITE,
                     Path(scratch) / "root", mirror])  # fmt: skip
                partial.replace(debs)
        run(["debootstrap", *common, f"--unpack-tarball={debs}", SUITE, rootfs, mirror])
        # The .debs debootstrap leaves in the rootfs are in the tarball already.
        for deb in (rootfs / "var/cache/apt/archives").glob("*.deb"):
            deb.unlink()
        run([*tar, "-cf", base.with_suffix(".partial"), "-C", rootfs, "."])
        base.with_suffix(".partial").replace(base)
    (rootfs / "etc/hostname").write_text(f"{HOSTNAME}\n")
    (rootfs / "etc/hosts").write_text(f"127.0.0.1\tlocalhost\n127.0.1.1\t{HOSTNAME}\n")


def wheelhouse(target: Path) -> None:
    """The project's wheel and every dependency's, for this host (the CI image's arch)."""
    shutil.rmtree(target, ignore_errors=True)
    # setuptools stages the package in <repo>/build/lib and never deletes a module from
    # there, so a module removed from the tree would still end up in the wheel.
    shutil.rmtree(REPO / "build/lib", ignore_errors=True)
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
         "--wheel-dir", target, REPO])  # fmt: skip


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


def manifest(rootfs: Path) -> dict[str, object]:
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
        "arch": "amd64",
        "agent": {"version": venv.name, "path": target},
        "debian": dict(line.split("\t", 1) for line in debs.splitlines()),
        "python": dict(sorted(wheels.items(), key=lambda kv: kv[0].lower())),
    }


def disk_image(rootfs: Path, out: Path, name: str) -> Path:
    """``<name>.img``: a DOS label, a FAT boot partition and an ext4 root, no mounts."""
    root_img, boot_img, image = out / "root.img", out / "boot.img", out / f"{name}.img"
    for part in (root_img, boot_img, image):
        part.unlink(missing_ok=True)
    used_mib = int(run(["du", "-s", "--block-size=1M", rootfs]).split()[0])
    root_mib = int(used_mib * 1.25) + 128
    run(["mkfs.ext4", "-q", "-F", "-L", "rootfs", "-d", rootfs, root_img, f"{root_mib}M"])

    run(["mkfs.vfat", "-n", "BOOTFS", "-C", boot_img, str(BOOT_SIZE_MIB * 1024)])
    with tempfile.TemporaryDirectory() as scratch:
        files = {"README.txt": BOOT_README, "config.txt": CONFIG_TXT}
        for filename, text in files.items():
            (Path(scratch) / filename).write_text(text)
        env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
        run(["mcopy", "-i", boot_img, *(Path(scratch) / f for f in files), "::"], env=env)

    root_start_mib = BOOT_START_MIB + BOOT_SIZE_MIB
    total_mib = root_start_mib + root_mib
    with image.open("wb") as file:
        file.truncate(total_mib << 20)
    mib = (1 << 20) // SECTOR
    table = (
        "label: dos\n"
        f"start={BOOT_START_MIB * mib}, size={BOOT_SIZE_MIB * mib}, type=c, bootable\n"
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


def build(out: Path, cache: Path, mirror: str, name: str) -> dict[str, object]:
    """Build everything into ``out``; return what was built, with each step's seconds."""
    if os.geteuid() != 0:
        raise BuildError("run as root: debootstrap and chroot need it")
    missing = [t for t in ("debootstrap", "mkfs.ext4", "mkfs.vfat", "mcopy", "sfdisk", "dd")
               if shutil.which(t) is None]  # fmt: skip
    if missing:
        raise BuildError(f"missing tools: {', '.join(missing)} (see .ci/run for the packages)")
    steps = Steps()
    rootfs = out / "rootfs"
    shutil.rmtree(rootfs, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    with steps("debootstrap"):
        debootstrap(rootfs, cache, mirror)
    with steps("wheelhouse"):
        wheelhouse(out / "wheelhouse")
    with steps("ansible role (chroot)"):
        apply_role(rootfs, out / "wheelhouse")
    scan = SecretScan()
    with steps("secret scan (rootfs)"):
        if found := scan.scan_rootfs(rootfs):
            raise BuildError("per-device secrets left in the image:\n" + "\n".join(found))
    with steps("manifest"):
        (out / f"{name}.manifest.json").write_text(json.dumps(manifest(rootfs), indent=2) + "\n")
    with steps("disk image"):
        image = disk_image(rootfs, out, name)
    with steps("secret scan (image)"):
        if found := scan.scan_image(image):
            raise BuildError("per-device secrets in the disk image:\n" + "\n".join(found))
    with steps("sha256"):
        digest = sha256(image)
        (out / f"{image.name}.sha256").write_text(f"{digest}  {image.name}\n")
    info = {
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
    parser.add_argument("--out", type=Path, default=REPO / "build/image", help="output dir")
    parser.add_argument("--cache", type=Path, default=REPO / "build/cache", help="cache dir")
    parser.add_argument("--mirror", default=MIRROR, help=f"Debian mirror (default {MIRROR})")
    parser.add_argument("--name", default="semstreams-edge-amd64", help="image file name")
    args = parser.parse_args(argv)
    try:
        info = build(args.out.resolve(), args.cache.resolve(), args.mirror, args.name)
    except BuildError as exc:
        print(f"image/build.py: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
