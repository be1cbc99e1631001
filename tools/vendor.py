"""Vendor the dashboard's pinned front-end libraries from the npm registry.

What: for each package in ``cloud_hub/dashboard/vendor.lock.json`` (name, exact
version, the registry's ``dist.integrity`` for its tarball, the files to take and the
directory they go to), download the tarball from the npm registry, check its sha512
against the lock, and write only the named files, plus the package's own licence
file, into that directory. Anything else in the directory is removed, so it holds
exactly what the lock names.

Why: the hub's dashboard is hand-written HTML, CSS and JS modules with a few small
libraries (uPlot, Cytoscape.js) committed inside the Python package, so installing
the hub needs no Node toolchain and no network. This script makes those committed
bytes reproducible and checkable: the same lock always gives the same files, a
tarball that is not the one the lock pinned is refused, and ``--check`` tells
whether what is committed is what the lock says. The browser tests' axe-core is
vendored the same way into ``tests/browser/vendor/`` (test-only, not shipped).

Usage (from the repository root; stdlib only)::

    python tools/vendor.py           # (re)write the vendored files from the lock
    python tools/vendor.py --check   # download again, compare with the committed files

To pin another version, change ``version`` and ``integrity`` in the lock, taking the
integrity from the registry (``npm view uplot@1.6.32 dist.integrity``, or
``dist.integrity`` in ``https://registry.npmjs.org/uplot/1.6.32``), run this script
and commit the lock with the files it wrote.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import io
import json
import re
import sys
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "cloud_hub" / "dashboard" / "vendor.lock.json"
DEFAULT_REGISTRY = "https://registry.npmjs.org"
#: A package's own licence file at the top of its tarball (npm's usual names).
LICENSE_NAME = re.compile(r"^(licen[cs]e|copying)(\.(md|txt|markdown))?$", re.IGNORECASE)
TIMEOUT = 60


class VendorError(Exception):
    """A lock entry that cannot be honoured; the message says which and why."""


@dataclass(frozen=True)
class Package:
    """One lock entry: where its files come from and where they go."""

    name: str
    version: str
    integrity: str
    dest: str
    #: path inside the package (as npm unpacks it, without ``package/``) -> file name in dest
    files: dict[str, str]

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"

    def tarball_url(self, registry: str) -> str:
        # npm's layout: <registry>/<name>/-/<name without @scope/>-<version>.tgz
        return f"{registry.rstrip('/')}/{self.name}/-/{self.name.split('/')[-1]}-{self.version}.tgz"

    def dest_dir(self) -> Path:
        relative = PurePosixPath(self.dest)
        if relative.is_absolute() or ".." in relative.parts or "vendor" not in relative.parts:
            raise VendorError(
                f"{self.label}: dest {self.dest!r} must be a path inside the repository "
                "with a 'vendor' directory in it (everything else there is deleted)"
            )
        return ROOT.joinpath(*relative.parts)


def load_lock(path: Path) -> tuple[str, list[Package]]:
    """The registry and the packages of the lock at ``path``."""
    try:
        lock = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise VendorError(f"cannot read the lock {path}: {exc}") from exc
    packages = []
    try:
        for entry in lock["packages"]:
            files = {str(source): str(target) for source, target in entry["files"].items()}
            for target in files.values():
                if "/" in target or target in {"", ".", ".."}:
                    raise VendorError(f"{entry['name']}: target {target!r} must be a file name")
            packages.append(
                Package(
                    name=str(entry["name"]),
                    version=str(entry["version"]),
                    integrity=str(entry["integrity"]),
                    dest=str(entry["dest"]),
                    files=files,
                )
            )
        registry = str(lock.get("registry", DEFAULT_REGISTRY))
    except (KeyError, TypeError, AttributeError) as exc:
        raise VendorError(
            f"{path}: each package needs name, version, integrity, dest and files ({exc!r})"
        ) from exc
    return registry, packages


def download(url: str) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "semstreams-vendor/1"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            data: bytes = response.read()
    except (urllib.error.URLError, TimeoutError) as exc:
        raise VendorError(f"cannot download {url}: {exc}") from exc
    return data


def verify_integrity(package: Package, url: str, data: bytes) -> None:
    """Refuse ``data`` unless its sha512 is the one the lock pinned (SRI form)."""
    expected = [
        item.removeprefix("sha512-")
        for item in package.integrity.split()
        if item.startswith("sha512-")
    ]
    if not expected:
        raise VendorError(
            f"{package.label}: the lock's integrity {package.integrity!r} has no sha512 "
            "value; take it from the registry (npm view "
            f"{package.label} dist.integrity)"
        )
    actual = base64.b64encode(hashlib.sha512(data).digest()).decode()
    if not any(hmac.compare_digest(actual, value) for value in expected):
        raise VendorError(
            f"{package.label}: integrity mismatch, refusing to vendor it.\n"
            f"  tarball:  {url}\n"
            f"  lock:     sha512-{expected[0]}\n"
            f"  download: sha512-{actual}\n"
            "Either the lock is wrong (compare with `npm view "
            f"{package.label} dist.integrity`) or this is not the tarball the registry "
            "published for that version."
        )


def unpack(package: Package, data: bytes) -> dict[str, bytes]:
    """The files ``package`` takes from its tarball, by target name, with its licence."""
    members: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            if not member.isfile():
                continue
            # npm strips the tarball's first directory ("package/" as a rule).
            parts = PurePosixPath(member.name).parts[1:]
            handle = tar.extractfile(member)
            if parts and handle is not None:
                members["/".join(parts)] = handle.read()
    wanted: dict[str, bytes] = {}
    for source, target in package.files.items():
        if source not in members:
            raise VendorError(
                f"{package.label}: the tarball has no {source!r}; it has: "
                + ", ".join(sorted(members))
            )
        wanted[target] = members[source]
    licences = sorted(name for name in members if LICENSE_NAME.match(name))
    if not licences:
        raise VendorError(f"{package.label}: no licence file at the top of the tarball")
    if licences[0] not in package.files:
        wanted.setdefault(licences[0], members[licences[0]])
    return wanted


def fetch(package: Package, registry: str) -> dict[str, bytes]:
    url = package.tarball_url(registry)
    data = download(url)
    verify_integrity(package, url, data)
    return unpack(package, data)


def write(package: Package, files: dict[str, bytes]) -> None:
    dest = package.dest_dir()
    dest.mkdir(parents=True, exist_ok=True)
    for stale in sorted(dest.iterdir()):
        if stale.name not in files:
            if stale.is_dir():
                raise VendorError(f"{package.label}: unexpected directory {stale}; remove it")
            stale.unlink()
            print(f"  removed {stale.relative_to(ROOT)}")
    for name, content in sorted(files.items()):
        path = dest / name
        if not path.is_file() or path.read_bytes() != content:
            path.write_bytes(content)
            path.chmod(0o644)
        print(f"  {path.relative_to(ROOT)} ({len(content)} bytes)")


def differences(package: Package, files: dict[str, bytes]) -> list[str]:
    """How the committed directory differs from what the lock gives (empty: it does not)."""
    dest = package.dest_dir()
    problems = []
    for name, content in sorted(files.items()):
        path = dest / name
        if not path.is_file():
            problems.append(f"missing {path.relative_to(ROOT)}")
        elif path.read_bytes() != content:
            problems.append(f"differs from the tarball: {path.relative_to(ROOT)}")
    if dest.is_dir():
        problems.extend(
            f"not in the lock: {extra.relative_to(ROOT)}"
            for extra in sorted(dest.iterdir())
            if extra.name not in files
        )
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--check",
        action="store_true",
        help="download again and compare with the committed files; exit 1 if they differ",
    )
    parser.add_argument("--lock", type=Path, default=LOCK, help=f"default: {LOCK}")
    args = parser.parse_args(argv)
    try:
        registry, packages = load_lock(args.lock)
        # Every tarball is downloaded and verified before anything is written.
        fetched = [(package, fetch(package, registry)) for package in packages]
        failed = []
        for package, files in fetched:
            if args.check:
                problems = differences(package, files)
                status = "ok" if not problems else "MISMATCH"
                print(f"{package.label}: {status} ({package.dest})")
                for problem in problems:
                    print(f"  {problem}")
                if problems:
                    failed.append(package.label)
            else:
                print(f"{package.label} -> {package.dest}")
                write(package, files)
    except VendorError as exc:
        print(f"vendor: {exc}", file=sys.stderr)
        return 1
    if failed:
        print(
            f"vendor --check: {', '.join(failed)} differ from the lock; "
            "run `make vendor` and commit the result",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
