"""Every playbook in ansible/ passes ``ansible-playbook --syntax-check`` (with the
project's ansible.cfg: its inventory and filter plugins), and the check does catch a
broken one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
ANSIBLE = REPO / "ansible"
PLAYBOOKS = sorted(ANSIBLE.glob("*.yml"))


def _syntax_check(playbook: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, ANSIBLE_CONFIG=str(ANSIBLE / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    argv = [str(Path(sys.executable).parent / "ansible-playbook"), "--syntax-check"]
    return subprocess.run(
        [*argv, "-i", "localhost,", str(playbook)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env=env,
    )


def test_the_playbooks_are_all_there() -> None:
    assert {"site.yml", "rollout.yml", "rootfs.yml", "image.yml"} <= {p.name for p in PLAYBOOKS}


@pytest.mark.parametrize("playbook", PLAYBOOKS, ids=[p.name for p in PLAYBOOKS])
def test_a_playbook_passes_the_syntax_check(playbook: Path) -> None:
    done = _syntax_check(playbook)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_syntax_check_catches_an_unknown_module_and_a_missing_role(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "- name: Broken\n  hosts: all\n  tasks:\n"
        "    - name: No such module\n      ansible.builtin.no_such_module: {}\n"
    )
    done = _syntax_check(broken)
    assert done.returncode != 0 and "no_such_module" in done.stderr, done.stderr
    broken.write_text("- name: Broken\n  hosts: all\n  roles:\n    - no_such_role\n")
    done = _syntax_check(broken)
    assert done.returncode != 0 and "no_such_role" in done.stderr, done.stderr
