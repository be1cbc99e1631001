"""ansible/rollout.yml over a fleet of 8 booted devices: waves, health gates, rollback.

Each device is a copy of the CI image's rootfs booted by ``systemd-nspawn`` in its own
network namespace of a :class:`tests.netns.Lan` (``test_image.py``'s image fixture, built
once per session, and its Device/Fleet/Hub), enrolled with a real hub by a claim token,
so its sync link is up before the rollout. Ansible runs from the hub's namespace over
SSH. The new release is the project's wheel built again with a bumped version, beside
the same dependencies. One device runs its release from the layout of before
(``/opt/semstreams/<version>``). Two devices get a per-host config (an API port the agent cannot
bind) that makes the new release fail its gate: they must end on the old release and
healthy, a later wave must not be touched, and a run with nothing left to change must
change nothing. A poller in each device's namespace watches its ``/health``
throughout, for the downtime figures; the outputs and figures go to
``build/fleet-rollout/`` (docs/fleet.md quotes them).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_image import (
    AGENT_UNIT,
    REPO,
    Device,
    Fleet,
    Hub,
    _playbook,
    authorize,
    drop_ins,
    fleet,
    hub,
    image,
    lan,
    ssh_key,
)
from tests.integration.test_zero_touch import API_PORT, http, wait_until

__all__ = ["drop_ins", "fleet", "hub", "image", "lan"]  # fixtures, imported for pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

NAMES = [f"edge{n}" for n in range(1, 9)]
FAILING = ("edge3", "edge4")
# edge1 | edge2 edge3 edge4 | edge5 ... edge8: two of the second wave's three fail
# (67 % > 50 %), so the rollout stops there and the third wave is never touched.
WAVES: list[int | str] = [1, 3, 4]
MAX_FAIL_PERCENTAGE = 50
NEW_VERSION = "0.1.1"
GATE_TIMEOUT_S = 40
OUT = REPO / "build/fleet-rollout"
RECAP = re.compile(
    r"^(?P<host>\S+)\s+: ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+"
    r"unreachable=(?P<unreachable>\d+)\s+failed=(?P<failed>\d+)",
    re.M,
)
SWITCH = re.compile(
    r'"msg": "(?P<host>\S+): (?P<version>\S+) healthy and linked; (?P<total>[\d.]+) s in all, '
    r"(?P<gate>[\d.]+) s from the restart"
)

# Polls one device's /health (the API is bound to loopback: this runs in the device's
# namespace) and prints a JSON line [t, name, code, status, version, sync] each time the
# answer changes. Bounded: it stops by itself after argv[2] seconds, or at SIGTERM.
_POLLER = r"""
import json, sys, time, urllib.error, urllib.request
name, limit, url = sys.argv[1], float(sys.argv[2]), sys.argv[3]
end, last = time.monotonic() + limit, None

def state():
    try:
        with urllib.request.urlopen(url, timeout=1) as reply:
            code, body = reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        code, body = error.code, {}
    except (OSError, ValueError):
        return [0, None, None, None]
    sync = body.get("components", {}).get("sync", {}).get("status")
    return [code, body.get("status"), body.get("version"), sync]

while time.monotonic() < end:
    now = state()
    if now != last:
        print(json.dumps([time.monotonic(), name, *now]), flush=True)
        last = now
    time.sleep(0.2)
"""


def outages(events: list[list[Any]], host: str, start: float, end: float) -> list[float]:
    """The spans (seconds) within [start, end] in which ``host`` did not answer 200."""
    spans, down_since = [], None
    for t, name, code, *_ in events:
        if name != host or not start <= t <= end:
            continue
        if code != 200 and down_since is None:
            down_since = t
        elif code == 200 and down_since is not None:
            spans.append(t - down_since)
            down_since = None
    if down_since is not None:
        spans.append(end - down_since)
    return spans


def latest(events: list[list[Any]]) -> dict[str, list[Any]]:
    """What each device answered last: [code, status, version, sync]."""
    return {name: rest for _, name, *rest in events}


class Poller:
    """The /health poller above, one process in each device's namespace."""

    def __init__(self, devices: list[Device], out: Path) -> None:
        self.logs, self.procs = [], []
        url = f"http://127.0.0.1:{API_PORT}/health"
        for device in devices:
            log = out / f"health-{device.node.name}.jsonl"
            with log.open("wb") as stdout:
                argv = [sys.executable, "-c", _POLLER, device.node.name, "1400", url]
                self.procs.append(device.node.popen(argv, stdout=stdout))
            self.logs.append(log)

    def events(self) -> list[list[Any]]:
        """Every change seen so far, of all devices, in time order."""
        lines = [line for log in self.logs for line in log.read_text().splitlines()]
        return sorted(json.loads(line) for line in lines if line.endswith("]"))

    def linked(self, names: list[str]) -> bool:
        """Whether each of ``names`` last answered 200, ``healthy``, with its sync link up."""
        now = latest(self.events())
        answers = [now.get(name, [0, None, None, None]) for name in names]
        return all(
            code == 200 and status == "healthy" and sync == "ok"
            for code, status, _, sync in answers
        )

    def stop(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            proc.wait(timeout=10)


def release_wheelhouse(wheelhouse: Path, out: Path, version: str) -> Path:
    """``wheelhouse`` with the project's wheel rebuilt as ``version`` (a copy of the tree
    with the version bumped), beside the same dependencies."""
    tree = out / "src"
    ignore = shutil.ignore_patterns(
        ".git", ".venv", "build", "tests", "docs", "*.egg-info", "__pycache__", ".*_cache"
    )
    shutil.copytree(REPO, tree, ignore=ignore)
    for path, name in (
        (tree / "pyproject.toml", "version"),
        (tree / "edge_agent/__init__.py", "__version__"),
    ):
        line = f'{name} = "{version}"'
        text, count = re.subn(rf'(?m)^{name} = "[^"]+"$', line, path.read_text())
        assert count == 1, f"no {name} line in {path}"
        path.write_text(text)
    wheels = out / "wheelhouse"
    shutil.copytree(wheelhouse, wheels, ignore=shutil.ignore_patterns("semstreams_edge-*"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
         "--disable-pip-version-check", "--wheel-dir", wheels, tree],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    assert len(list(wheels.glob(f"semstreams_edge-{version}-*.whl"))) == 1
    return wheels


def inventory(path: Path, devices: list[Device], failing: tuple[str, ...]) -> Path:
    """An inventory of the devices by name; ``failing`` get a config the agent cannot run
    (port 22 passes check-config, but the unprivileged agent cannot bind it)."""
    bad = {"services": {"service-manager": {"config": {"http_port": 22}}}}
    hosts = {
        d.node.name: {"ansible_host": d.node.ip}
        | ({"semstreams_config_extra": bad} if d.node.name in failing else {})
        for d in devices
    }
    path.write_text(json.dumps({"all": {"hosts": hosts}}, indent=2))
    return path


def recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP's counters by host."""
    return {
        m["host"]: {k: int(v) for k, v in m.groupdict().items() if k != "host"}
        for m in RECAP.finditer(output)
    }


def release_of(device: Device) -> str:
    """The release ``/opt/semstreams/current`` points at (its version)."""
    return Path(os.readlink(device.root / "opt/semstreams/current")).name


def check_first_run(
    devices: list[Device], poller: Poller, old_version: str, untouched: dict[str, str]
) -> dict[str, float]:
    """After the first rollout: the first two waves' good devices run the new release, the
    failing two the old one again (healthy, linked, with their old config and a record of
    why), and the third wave was never touched. The failing devices' rollback times."""
    by_name = {d.node.name: d for d in devices}
    wait_until(lambda: poller.linked(NAMES), "every device healthy and linked after it", 60)
    now = latest(poller.events())
    for name in ("edge1", "edge2"):
        assert release_of(by_name[name]) == NEW_VERSION, name
        assert now[name][2] == NEW_VERSION, now[name]
    rollback_s = {}
    for name in FAILING:
        device = by_name[name]
        assert release_of(device) == old_version, name
        assert now[name][2] == old_version, now[name]
        raw = device.read("/var/lib/semstreams/rollout-failed.json")
        (OUT / f"rollout-failed-{name}.json").write_bytes(raw)
        record = json.loads(raw)
        assert record["rolled_back_healthy"] is True, record
        # Why, in the agent's own words: it may not bind port 22.
        assert any("Permission denied" in line for line in record["journal"]), record
        assert record["release"].endswith(f"/releases/{NEW_VERSION}"), record
        assert record["rolled_back_to"].endswith(f"/{old_version}"), record
        config = json.loads(device.read("/etc/semstreams/edge.json"))
        assert config["services"]["service-manager"]["config"]["http_port"] == API_PORT
        rollback_s[name] = record["rollback_seconds"]
    for name, pid in untouched.items():
        device = by_name[name]
        assert release_of(device) == old_version, name
        assert not (device.root / f"opt/semstreams/releases/{NEW_VERSION}").exists(), name
        state = device.unit()
        assert state["MainPID"] == pid, f"{name} was restarted: {state}\n{device.journal()}"
        assert now[name][2] == old_version, now[name]
    return rollback_s


def to_old_layout(device: Device, version: str) -> None:
    """Move the device's release to where releases were before ``releases/`` existed,
    ``/opt/semstreams/<version>`` (a venv's scripts name their interpreter by absolute
    path: rewritten), point ``current`` there and restart the agent from it."""
    opt = device.root / "opt/semstreams"
    old = opt / version
    (opt / "releases" / version).rename(old)
    (opt / "releases").rmdir()
    before, after = (
        f"/opt/semstreams/releases/{version}".encode(),
        f"/opt/semstreams/{version}".encode(),
    )
    for script in (old / "bin").iterdir():
        if script.is_symlink() or not script.is_file():
            continue
        with script.open("rb") as head:
            if head.read(2) != b"#!":
                continue  # a binary (nats-server, running)
        script.write_bytes(script.read_bytes().replace(before, after))
    (opt / "current").unlink()
    (opt / "current").symlink_to(f"/opt/semstreams/{version}")
    before = device.unit()["MainPID"]
    device.run("systemctl", "--no-block", "restart", AGENT_UNIT)

    def restarted() -> bool:
        return device.unit()["MainPID"] not in ("0", before)

    wait_until(restarted, f"{device.node.name}'s agent restarted", 60)
    cmdline = device.run("cat", f"/proc/{device.unit()['MainPID']}/cmdline")
    assert f"/opt/semstreams/{version}/bin/python" in cmdline, cmdline


@pytest.fixture(scope="module")
def devices(fleet: Fleet, hub: Hub) -> list[Device]:
    """Eight devices, each flashed with its own claim token and booted."""
    booted = []
    for name in NAMES:
        token = http(hub.node, f"{hub.api}/claim-tokens", {"group": "ci"})[1]["token"]
        booted.append(fleet.boot(name, claim_token=token))
    return booted


@pytest.fixture
def poller(devices: list[Device]) -> Iterator[Poller]:
    OUT.mkdir(parents=True, exist_ok=True)
    watching = Poller(devices, OUT)
    yield watching
    watching.stop()


def test_a_release_rolls_out_in_waves_and_the_failing_devices_roll_back(
    devices: list[Device],
    hub: Hub,
    image: dict[str, Any],
    poller: Poller,
    tmp_path: Path,
) -> None:
    old_version = release_of(devices[0])
    key = ssh_key(tmp_path)
    for device in devices:
        authorize(device, key)
    wheels = release_wheelhouse(Path(image["wheelhouse"]), tmp_path, NEW_VERSION)
    wait_until(lambda: poller.linked(NAMES), "all 8 devices healthy and linked", 240)
    # edge8 runs its release from where releases were before releases/ existed.
    to_old_layout(devices[-1], old_version)
    wait_until(lambda: poller.linked(NAMES), "edge8 healthy and linked from the old layout", 90)
    ready = time.monotonic()
    print(f"8 devices healthy and linked {ready - devices[0].started:.1f} s after the first boot")
    untouched = {d.node.name: d.unit()["MainPID"] for d in devices[4:]}
    common = {
        "semstreams_waves": WAVES,
        "semstreams_max_fail_percentage": MAX_FAIL_PERCENTAGE,
        "semstreams_health_timeout_s": GATE_TIMEOUT_S,
        "semstreams_health_poll_s": 1,
    }

    # 1. The rollout: edge1 alone, then edge2-4, of which two fail: stop.
    started = time.monotonic()
    first = _playbook(
        hub, inventory(tmp_path / "fleet.yml", devices, FAILING), wheels, key, **common
    )
    first_s = time.monotonic() - started
    (OUT / "rollout-1.txt").write_text(first.stdout)
    assert first.returncode != 0, first.stdout[-4000:]
    counts = recap(first.stdout)
    assert sorted(counts) == NAMES[:4], first.stdout[-4000:]  # the third wave never ran
    assert [n for n in NAMES[:4] if counts[n]["failed"]] == list(FAILING), first.stdout[-4000:]
    rollback_s = check_first_run(devices, poller, old_version, untouched)

    # 2. The two devices' config fixed, the rest of the fleet at once (one wave, for the
    # time budget of make test): the same playbook finishes the fleet.
    at_once = common | {"semstreams_waves": ["100%"]}
    started = time.monotonic()
    second = _playbook(hub, inventory(tmp_path / "fixed.yml", devices, ()), wheels, key, **at_once)
    second_s, second_end = time.monotonic() - started, time.monotonic()
    (OUT / "rollout-2.txt").write_text(second.stdout)
    assert second.returncode == 0, second.stdout[-4000:]
    assert all(release_of(d) == NEW_VERSION for d in devices)
    # The device of the old layout is on the new one, its old release kept (rollback target).
    assert (devices[-1].root / f"opt/semstreams/{old_version}/bin/edge-agent").exists()
    assert not any((d.root / "var/lib/semstreams/rollout-failed.json").exists() for d in devices)
    counts = recap(second.stdout)
    assert [n for n in NAMES if counts[n]["changed"]] == NAMES[2:]

    # 3. Nothing left to change: nothing changes, on any device.
    started = time.monotonic()
    third = _playbook(hub, tmp_path / "fixed.yml", wheels, key, **at_once)
    third_s = time.monotonic() - started
    (OUT / "rollout-3.txt").write_text(third.stdout)
    assert third.returncode == 0, third.stdout[-4000:]
    counts = recap(third.stdout)
    assert sorted(counts) == NAMES
    assert all(c["changed"] == 0 and c["failed"] == 0 for c in counts.values()), third.stdout[
        -3000:
    ]
    wait_until(lambda: poller.linked(NAMES), "every device healthy and linked at the end", 60)
    assert {latest(poller.events())[n][2] for n in NAMES} == {NEW_VERSION}

    events = poller.events()

    def switch_s(output: str, hosts: list[str]) -> dict[str, list[float]]:
        found = {m["host"]: m for m in SWITCH.finditer(output)}
        return {h: [float(found[h]["total"]), float(found[h]["gate"])] for h in hosts}

    figures = {
        "rollout_1_s (stops after the 2nd wave)": round(first_s, 1),
        "rollout_2_s (finishes the fleet)": round(second_s, 1),
        "rollout_3_s (nothing to change)": round(third_s, 1),
        "switch_s [in all, restart to gate] by host": switch_s(first.stdout, NAMES[:2])
        | switch_s(second.stdout, NAMES[2:]),
        "longest_health_gap_s by host": {
            n: round(max(outages(events, n, ready, second_end), default=0.0), 1) for n in NAMES
        },
        "rollback_s by host": rollback_s,
    }
    (OUT / "figures.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures, indent=2))
