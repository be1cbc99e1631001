"""The unit files under ``systemd/``: ``systemd-analyze verify`` and ``security``.

``verify`` checks that ExecStart= binaries exist and resolves every dependency, so it
runs with ``--root`` on a scratch root holding the units where the role installs them,
stub executables at ``/opt/semstreams/current/bin/``, and a copy of this host's own
system units (``sysinit.target`` and friends). It exits 0 on unknown keys, so the test
requires an empty stderr.
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from cloud_hub import cli as hub_cli
from edge_agent import cli as edge_cli
from edge_agent.systemd.firstboot import MARKER

UNITS = Path(__file__).resolve().parents[2] / "systemd"
SERVICES = ["semstreams-edge.service", "semstreams-hub.service", "semstreams-firstboot.service"]
HOST_UNITS = Path("/usr/lib/systemd/system")
MAX_EXPOSURE = 2.0

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed (Debian package systemd)",
)


def make_root(root: Path, *, gpio: bool = False) -> Path:
    """A root for ``systemd-analyze --root``: host units, ours, stub executables."""
    shutil.copytree(HOST_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    system = root / "etc/systemd/system"
    system.mkdir(parents=True)
    for unit in SERVICES:
        shutil.copy(UNITS / unit, system / unit)
    if gpio:
        shutil.copytree(UNITS / "semstreams-edge.service.d", system / "semstreams-edge.service.d")
    bin_dir = root / "opt/semstreams/current/bin"
    bin_dir.mkdir(parents=True)
    for program in ("edge-agent", "cloud-hub"):
        stub = bin_dir / program
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
    return root


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_root(tmp_path_factory.mktemp("root"))


@pytest.fixture(scope="module")
def gpio_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_root(tmp_path_factory.mktemp("gpio-root"), gpio=True)


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", *args], capture_output=True, text=True, timeout=60, check=False
    )


def exposure(root: Path, unit: str) -> float:
    """The "Overall exposure level" of ``unit``."""
    result = analyze("security", "--offline=true", f"--root={root}", "--no-pager", unit)
    found = re.search(rf"Overall exposure level for {re.escape(unit)}: ([0-9.]+)", result.stdout)
    assert found, result.stdout[-2000:] + result.stderr
    return float(found.group(1))


def unit_value(unit: str, key: str) -> str:
    """The (last) value of ``key`` in a unit file; systemd's own parsing is tested above."""
    values = [
        line.split("=", 1)[1]
        for line in (UNITS / unit).read_text().splitlines()
        if line.startswith(f"{key}=")
    ]
    assert values, f"{unit} has no {key}="
    return values[-1]


@pytest.mark.parametrize("unit", SERVICES)
def test_verify_prints_nothing(root: Path, unit: str) -> None:
    result = analyze("verify", f"--root={root}", unit)
    assert (result.returncode, result.stderr) == (0, "")


def test_verify_with_the_gpio_drop_in(gpio_root: Path) -> None:
    result = analyze("verify", f"--root={gpio_root}", "semstreams-edge.service")
    assert (result.returncode, result.stderr) == (0, "")


def test_verify_would_catch_a_typo(tmp_path: Path) -> None:
    """The empty-stderr check has teeth: an unknown key exits 0 but is reported."""
    root = make_root(tmp_path)
    unit = root / "etc/systemd/system/semstreams-edge.service"
    unit.write_text(unit.read_text().replace("WatchdogSec=", "WatchdogSecs="))
    result = analyze("verify", f"--root={root}", "semstreams-edge.service")
    assert result.returncode == 0
    assert "Unknown key 'WatchdogSecs'" in result.stderr


@pytest.mark.parametrize("unit", ["semstreams-edge.service", "semstreams-hub.service"])
def test_security_exposure_is_low(root: Path, unit: str) -> None:
    assert exposure(root, unit) <= MAX_EXPOSURE


def test_security_exposure_with_gpio_stays_low(gpio_root: Path) -> None:
    assert exposure(gpio_root, "semstreams-edge.service") <= MAX_EXPOSURE


@pytest.mark.parametrize("unit", SERVICES)
def test_exec_start_is_a_command_the_cli_has(unit: str, monkeypatch: pytest.MonkeyPatch) -> None:
    argv = shlex.split(unit_value(unit, "ExecStart"))
    cli = {"edge-agent": edge_cli, "cloud-hub": hub_cli}[Path(argv[0]).name]
    called: list[argparse.Namespace] = []

    def handler(args: argparse.Namespace) -> int:
        called.append(args)
        return 0

    monkeypatch.setattr(cli, f"cmd_{argv[1]}", handler)
    assert cli.main(argv[1:]) == 0  # argparse exits 2 on an unknown command or option
    assert len(called) == 1


def test_the_firstboot_condition_names_the_marker_the_step_writes() -> None:
    condition = unit_value("semstreams-firstboot.service", "ConditionPathExists")
    assert condition == f"!/var/lib/semstreams/{MARKER}"


def test_the_agent_is_told_where_its_state_directory_is() -> None:
    for unit in ("semstreams-edge.service", "semstreams-hub.service"):
        assert unit_value(unit, "StateDirectory") == "semstreams"
        assert unit_value(unit, "Environment") == "SEMSTREAMS_STATE_DIR=%S/semstreams"
        assert unit_value(unit, "Type") == "notify"
