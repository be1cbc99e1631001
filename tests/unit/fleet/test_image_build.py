"""image/build.py's pure parts: reading Debian's Release and Packages indexes (backports'
qemu-user is fetched through them), the binfmt_misc line, and /proc/mounts below a path.

Operator-side tooling, like the rest of this directory: not run inside the arm64 rootfs.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.helpers import load_script

build = load_script("image/build.py", "image_build")

RELEASE = """\
Origin: Debian Backports
Suite: bookworm-backports
MD5Sum:
 0123456789abcdef0123456789abcdef   300424 main/binary-amd64/Packages.xz
SHA256:
 96f7a1dd  1906411 main/binary-amd64/Packages
 b74b5bbc   300424 main/binary-amd64/Packages.xz
 15ea2d47   63339 main/binary-arm64/Packages.xz
"""

PACKAGES = """\
Package: qemu-user
Version: 1:10.0.2+ds-2+deb13u1~bpo12+1
Architecture: arm64
Description: the arm64 build
 (a continuation line: Package: not-this-one)
Filename: pool/main/q/qemu/qemu-user_10.0.2+ds-2+deb13u1~bpo12+1_arm64.deb
Size: 60000000
SHA256: aaaa

Package: qemu-user-static
Version: 1:10.0.2+ds-2+deb13u1~bpo12+1
Architecture: amd64
Filename: pool/main/q/qemu/qemu-user-static_10.0.2+ds-2+deb13u1~bpo12+1_amd64.deb
Size: 53184
SHA256: bbbb

Package: qemu-user
Version: 1:10.0.2+ds-2+deb13u1~bpo12+1
Architecture: amd64
Filename: pool/main/q/qemu/qemu-user_10.0.2+ds-2+deb13u1~bpo12+1_amd64.deb
Size: 62834188
SHA256: 10a2dec99f2b2d0b1097ff0375aea35b89322d6631fc96700511b02e05bf6fef
"""

CONF = (
    r":qemu-aarch64:M::\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00"
    r"\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff"
    r"\xfe\xff\xff\xff:/usr/libexec/qemu-binfmt/aarch64-binfmt-P:OPF"
    "\n"
)


def test_the_release_file_gives_the_sha256_and_size_of_the_index_asked_for() -> None:
    entry = build.release_entry(RELEASE, "main/binary-amd64/Packages.xz")
    assert entry == ("b74b5bbc", 300424)
    # The MD5Sum section lists the same path: only SHA256's line counts.
    with pytest.raises(build.BuildError, match="no SHA256 for main/binary-i386"):
        build.release_entry(RELEASE, "main/binary-i386/Packages.xz")


def test_the_packages_index_gives_the_entry_for_the_package_and_arch() -> None:
    deb = build.package_entry(PACKAGES, "qemu-user", "amd64")
    assert deb == build.DebFile(
        "1:10.0.2+ds-2+deb13u1~bpo12+1",
        "pool/main/q/qemu/qemu-user_10.0.2+ds-2+deb13u1~bpo12+1_amd64.deb",
        "10a2dec99f2b2d0b1097ff0375aea35b89322d6631fc96700511b02e05bf6fef",
        62834188,
    )
    with pytest.raises(build.BuildError, match="no qemu-user for riscv64"):
        build.package_entry(PACKAGES, "qemu-user", "riscv64")


@pytest.mark.parametrize(
    ("field", "bad", "error"),
    [
        ("Size: 62834188", "Size: lots", "lacks"),
        ("SHA256: 10a2", "Checksum: 10a2", "lacks 'SHA256'"),
        ("Version: 1:10.0.2+ds-2+deb13u1~bpo12+1\nArchitecture: amd64",
         "Version: ../../x\nArchitecture: amd64", "malformed"),
        ("Filename: pool/", "Filename: pool/../../", "malformed"),
    ],
)  # fmt: skip
def test_a_malformed_entry_is_refused_naming_it(field: str, bad: str, error: str) -> None:
    # Only the amd64 stanza (the last) is changed.
    head, tail = PACKAGES.rsplit("\n\n", 1)
    assert field in tail
    with pytest.raises(build.BuildError, match=error):
        build.package_entry(f"{head}\n\n{tail.replace(field, bad)}", "qemu-user", "amd64")


def test_the_binfmt_line_runs_the_fetched_qemu_with_the_packages_magic_and_flags() -> None:
    line = build.binfmt_line(CONF, Path("/srv/qemu-user/v10/qemu-aarch64"))
    assert line == CONF.strip().replace(
        "/usr/libexec/qemu-binfmt/aarch64-binfmt-P", "/srv/qemu-user/v10/qemu-aarch64"
    )


@pytest.mark.parametrize(
    ("conf", "interpreter", "error"),
    [
        (CONF, "/srv/qemu-user/1:10.0/qemu-aarch64", "':' or a space"),
        (CONF, "/srv/qemu user/qemu-aarch64", "':' or a space"),
        (CONF.replace(":OPF", ":OP"), "/srv/q", "lacks the F flag"),
        (":qemu-aarch64:E::x::/usr/bin/q:F", "/srv/q", "unexpected binfmt.d line"),
        ("qemu-aarch64 magic", "/srv/q", "unexpected binfmt.d line"),
    ],
)
def test_a_binfmt_line_binfmt_misc_would_refuse_or_misread_is_refused(
    conf: str, interpreter: str, error: str
) -> None:
    with pytest.raises(build.BuildError, match=error):
        build.binfmt_line(conf, Path(interpreter))


def test_checked_refuses_a_body_unlike_its_index_entry() -> None:
    body = b"the index"
    entry = (hashlib.sha256(body).hexdigest(), len(body))
    assert build._checked(body, entry, "Packages.xz") == body
    with pytest.raises(build.BuildError, match=r"Packages\.xz: sha256"):
        build._checked(body + b"!", entry, "Packages.xz")


def test_mounts_below_a_root_deepest_first_with_escaped_names() -> None:
    mounts = (
        "proc /build/root\\040fs/proc proc rw 0 0\n"
        "devpts /build/root\\040fs/dev/pts devpts rw 0 0\n"
        "tmpfs /build/root\\040fs/dev tmpfs rw 0 0\n"
        "proc /build/root\\040fsx/proc proc rw 0 0\n"
        "/dev/vda / ext4 rw 0 0\n"
    )
    assert build.mounts_below(mounts, Path("/build/root fs")) == [
        Path("/build/root fs/dev/pts"),
        Path("/build/root fs/proc"),
        Path("/build/root fs/dev"),
    ]
    assert build.mounts_below(mounts, Path("/elsewhere")) == []
