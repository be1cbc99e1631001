"""``edge-agent firstboot`` on a scratch root: host keys, machine-id, provisioning file, marker.

Runs the real ``ssh-keygen -A -f ROOT`` and ``systemd-machine-id-setup --root=ROOT``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
from pathlib import Path

import pytest

from edge_agent.systemd.firstboot import MARKER, FirstBoot, FirstbootError
from tests.helpers import cli

pytestmark = pytest.mark.skipif(
    not (shutil.which("ssh-keygen") and shutil.which("systemd-machine-id-setup")),
    reason="needs ssh-keygen (openssh-client) and systemd-machine-id-setup (systemd)",
)

#: A service user in the scratch root's passwd; chown to it needs root.
UID = GID = 4242
AS_ROOT = os.geteuid() == 0
PROVISION = b'{"claim_token": "ct_abc.secret", "hub_url": "https://hub:8443"}\n'


def image_root(root: Path) -> Path:
    """What a flashed card looks like: /etc/ssh without keys, an empty machine-id."""
    (root / "etc/ssh").mkdir(parents=True)
    (root / "etc/machine-id").write_text("")
    user = f"semstreams:x:{UID}:{GID}::/var/lib/semstreams:/usr/sbin/nologin\n"
    (root / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n" + (user if AS_ROOT else ""))
    boot = root / "boot/firmware/semstreams-provision.json"
    boot.parent.mkdir(parents=True)
    boot.write_bytes(PROVISION)
    return root


def test_first_boot_makes_the_identity_and_copies_the_provisioning_file(tmp_path: Path) -> None:
    root = image_root(tmp_path)
    lines = FirstBoot(root).run()
    assert "ssh host keys: generated" in lines
    assert "machine-id: generated" in lines

    assert (root / "etc/ssh/ssh_host_ed25519_key").is_file()
    assert re.fullmatch(r"[0-9a-f]{32}", (root / "etc/machine-id").read_text().strip())

    state = root / "var/lib/semstreams"
    copy = state / "provision.json"
    assert copy.read_bytes() == PROVISION
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    if AS_ROOT:
        assert (copy.stat().st_uid, copy.stat().st_gid) == (UID, GID)
        assert state.stat().st_uid == UID
    assert (state / MARKER).is_file()
    assert set(state.iterdir()) == {copy, state / MARKER}  # no temporary file left
    # The boot partition keeps the hub URL but no longer the secret.
    boot = json.loads((root / "boot/firmware/semstreams-provision.json").read_text())
    assert boot == {"claim_token": "", "hub_url": "https://hub:8443"}


def test_a_second_run_changes_nothing(tmp_path: Path) -> None:
    root = image_root(tmp_path)
    FirstBoot(root).run()
    keys = (root / "etc/ssh/ssh_host_ed25519_key").read_bytes()
    machine_id = (root / "etc/machine-id").read_text()
    copy = root / "var/lib/semstreams/provision.json"
    copy.write_bytes(b'{"claim_token": ""}')  # the agent erased the used claim

    assert FirstBoot(root).run() == [f"already done ({root}/var/lib/semstreams/{MARKER} exists)"]
    assert (root / "etc/ssh/ssh_host_ed25519_key").read_bytes() == keys
    assert (root / "etc/machine-id").read_text() == machine_id
    assert copy.read_bytes() == b'{"claim_token": ""}'


def test_existing_identity_is_kept_and_no_boot_file_is_fine(tmp_path: Path) -> None:
    root = image_root(tmp_path)
    (root / "boot/firmware/semstreams-provision.json").unlink()
    (root / "etc/ssh/ssh_host_ed25519_key").write_text("kept")
    (root / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    lines = FirstBoot(root).run()
    assert lines[:2] == ["ssh host keys: present", "machine-id: present"]
    assert lines[2].startswith("provisioning file: none at ")
    assert (root / "etc/ssh/ssh_host_ed25519_key").read_text() == "kept"
    assert not (root / "var/lib/semstreams/provision.json").exists()
    assert (root / "var/lib/semstreams" / MARKER).is_file()


def test_a_failed_step_leaves_no_marker_but_the_others_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = image_root(tmp_path / "root")
    monkeypatch.setenv("PATH", str(tmp_path / "no-tools"))
    with pytest.raises(FirstbootError, match=r"ssh host keys: ssh-keygen -A -f .* failed"):
        FirstBoot(root).run()
    assert (root / "var/lib/semstreams/provision.json").read_bytes() == PROVISION
    assert not (root / "var/lib/semstreams" / MARKER).exists()  # retried on the next boot


async def test_the_cli_command(tmp_path: Path) -> None:
    root = image_root(tmp_path / "root")
    boot_file = tmp_path / "elsewhere.json"
    boot_file.write_bytes(b"{}")
    code, out, err = await cli(
        "firstboot", "--root", str(root), "--boot-file", str(boot_file), "--user", "nobody"
    )
    assert code == 0, err
    assert "edge-agent firstboot: ssh host keys: generated" in out
    assert (root / "var/lib/semstreams/provision.json").read_bytes() == b"{}"
    # Nobody in the scratch passwd: the copy stays root's.
    assert (root / "var/lib/semstreams/provision.json").stat().st_uid == os.geteuid()

    (root / "var/lib/semstreams" / MARKER).unlink()
    shutil.rmtree(root / "etc/ssh")
    (root / "etc/ssh").write_text("not a directory")
    code, out, err = await cli("firstboot", "--root", str(root), "--boot-file", str(boot_file))
    assert code == 0, err
    assert "ssh host keys: no /etc/ssh, skipped" in out
