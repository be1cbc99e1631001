"""First boot of a freshly flashed device: its own SSH host keys, machine-id and provisioning.

Every card flashed from one image starts with the same bytes, so the image ships without
SSH host keys or a machine-id, and this step (``semstreams-firstboot.service``, as root,
before the agent) makes them. It also copies the per-device provisioning file from the
boot partition into the agent's state directory, where the sandboxed agent can read it
and erase the used claim token (the boot partition stays read-only to the agent).

Each step runs only when needed, so a second run does nothing. The marker that stops
systemd from running it again is written only when every step succeeded; a failed step
is retried on the next boot, and the agent starts regardless.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from edge_agent.errors import SemStreamsError

__all__ = ["MARKER", "FirstBoot", "FirstbootError"]

log = logging.getLogger(__name__)

#: The file whose presence tells the unit (``ConditionPathExists=!``) that it is done.
MARKER = ".firstboot-done"
_BOOT_FILE = "boot/firmware/semstreams-provision.json"
_STATE_DIR = "var/lib/semstreams"
_MACHINE_ID = re.compile(r"[0-9a-f]{32}\Z")


class FirstbootError(SemStreamsError):
    """A first-boot step failed; the message names the step and the cause."""


@dataclass(frozen=True)
class FirstBoot:
    """The first-boot steps for the system under ``root``.

    Args:
        root: the system's root directory (``/`` on the device; a temp dir or an image's
            rootfs elsewhere). Every default path is under it.
        boot_file: the provisioning file; default
            ``<root>/boot/firmware/semstreams-provision.json``.
        state_dir: the agent's state directory; default ``<root>/var/lib/semstreams``.
        user: who owns the state directory and the copied file, if ``<root>/etc/passwd``
            has that user (else they stay root's).
    """

    root: Path = Path("/")
    boot_file: Path | None = None
    state_dir: Path | None = None
    user: str = "semstreams"

    @property
    def provision_source(self) -> Path:
        """The boot partition's provisioning file."""
        return self.boot_file or self.root / _BOOT_FILE

    @property
    def state(self) -> Path:
        """The agent's state directory."""
        return self.state_dir or self.root / _STATE_DIR

    @property
    def marker(self) -> Path:
        """The marker file written when every step succeeded."""
        return self.state / MARKER

    def run(self) -> list[str]:
        """Run each step that is needed, then write the marker; nothing if it exists.

        Once marked, a second run changes nothing: in particular it does not copy the
        boot file again over the agent's copy, whose used claim token has been erased.
        Remove the marker to provision again.

        Returns:
            One line per step, saying what it did.

        Raises:
            FirstbootError: a step failed (the others still ran; no marker written).
        """
        if self.marker.exists():
            return [f"already done ({self.marker} exists)"]
        done: list[str] = []
        failures: list[str] = []
        for step in (self.ensure_ssh_host_keys, self.ensure_machine_id, self.copy_provision):
            try:
                done.append(step())
            except FirstbootError as exc:
                log.error("firstboot: %s", exc)
                failures.append(str(exc))
        if failures:
            raise FirstbootError("; ".join(failures))
        self._make_state_dir()
        self.marker.write_text("done\n")
        done.append(f"marked done: {self.marker}")
        return done

    def ensure_ssh_host_keys(self) -> str:
        """Generate SSH host keys (``ssh-keygen -A``) if ``/etc/ssh`` exists without any."""
        ssh = self.root / "etc/ssh"
        if not ssh.is_dir():
            return "ssh host keys: no /etc/ssh, skipped"
        if any(ssh.glob("ssh_host_*_key")):
            return "ssh host keys: present"
        self._run(["ssh-keygen", "-A", *self._prefix("-f")], "ssh host keys")
        return "ssh host keys: generated"

    def ensure_machine_id(self) -> str:
        """Set ``/etc/machine-id`` (``systemd-machine-id-setup``) if it is missing or empty."""
        path = self.root / "etc/machine-id"
        try:
            current = path.read_text().strip()
        except FileNotFoundError:
            current = ""
        except OSError as exc:
            raise FirstbootError(f"machine-id: cannot read {path}: {exc}") from exc
        if _MACHINE_ID.match(current):
            return "machine-id: present"
        self._run(["systemd-machine-id-setup", *self._prefix("--root")], "machine-id")
        return "machine-id: generated"

    def copy_provision(self) -> str:
        """Copy the boot partition's provisioning file to ``<state>/provision.json`` (0600)."""
        source = self.provision_source
        if not source.is_file():
            return f"provisioning file: none at {source}"
        target = self.state / "provision.json"
        try:
            data = source.read_bytes()
            self._make_state_dir()
            partial = target.with_name(f".{target.name}.tmp")
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            self._give(partial)
            partial.replace(target)
            erased = _erase_claim(source, data)
        except OSError as exc:
            raise FirstbootError(f"provisioning file: cannot copy {source}: {exc}") from exc
        suffix = "; claim token erased from the boot partition" if erased else ""
        return f"provisioning file: copied to {target}{suffix}"

    # ---- helpers ------------------------------------------------------------------------

    def _prefix(self, option: str) -> list[str]:
        return [] if self.root == Path("/") else [option, str(self.root)]

    def _run(self, command: list[str], step: str) -> None:
        try:
            subprocess.run(command, check=True, capture_output=True, text=True, timeout=120)
        except subprocess.CalledProcessError as exc:
            cause = exc.stderr.strip() or f"exit {exc.returncode}"
            raise FirstbootError(f"{step}: {' '.join(command)} failed: {cause}") from exc
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise FirstbootError(f"{step}: {' '.join(command)} failed: {exc}") from exc

    def _make_state_dir(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._give(self.state)

    def _give(self, path: Path) -> None:
        """Hand ``path`` to the service user, if the system has one."""
        owner = _lookup_user(self.root / "etc/passwd", self.user)
        if owner is not None:
            os.chown(path, *owner)


def _erase_claim(source: Path, data: bytes) -> bool:
    """Blank the claim token in the boot partition's file, keeping the rest.

    The secret then lives on only in the 0600 copy, which the agent erases once it has
    enrolled; the boot partition is readable by anyone holding the card.
    """
    try:
        content = json.loads(data)
    except ValueError:
        return False  # not ours to rewrite: the agent reports it when it reads the copy
    if not isinstance(content, dict) or not content.get("claim_token"):
        return False
    content["claim_token"] = ""
    partial = source.with_name(f".{source.name}.tmp")
    partial.write_text(json.dumps(content))
    partial.replace(source)
    return True


def _lookup_user(passwd: Path, name: str) -> tuple[int, int] | None:
    """(uid, gid) of ``name`` in a passwd file; read directly so ``root`` may be an image."""
    try:
        lines = passwd.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split(":")
        if len(fields) >= 4 and fields[0] == name:  # name:password:uid:gid:...
            try:
                return int(fields[2]), int(fields[3])
            except ValueError:
                return None
    return None
