"""Real mDNS between network namespaces: a hub advertises, edges browse.

Every program runs inside a namespace of a private :class:`~tests.netns.Lan` the test
made (veth pairs on a bridge), so no mDNS ever leaves through the machine's real
interface. Skipped, with the reason, where namespaces cannot be made.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.provision.mdns import HUB_SERVICE
from tests.netns import Lan, Node, cleanup_stale, netns_available

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parents[2]
HUB_TXT = {"v": "1", "sync": "/edge-sync", "enrol": "/enrol", "fp": "sha256:abc"}

# argv: instance name, TXT as JSON. Prints "ready" once registered; then each stdin
# line is a new TXT as JSON (answered "updated"), and EOF or an empty line stops it.
ADVERTISE = """
import asyncio, json, sys
from edge_agent.provision.mdns import HUB_SERVICE, Advertiser

async def main():
    advertiser = Advertiser(HUB_SERVICE, sys.argv[1], 8080, json.loads(sys.argv[2]))
    await advertiser.start()
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    while line := (await loop.run_in_executor(None, sys.stdin.readline)).strip():
        await advertiser.update(json.loads(line))
        print("updated", flush=True)
    await advertiser.stop()
    print("stopped", flush=True)

asyncio.run(main())
"""

# argv: browse timeout in seconds. Prints what it found as a JSON list.
BROWSE = """
import asyncio, dataclasses, json, sys
from edge_agent.provision.mdns import HUB_SERVICE, browse

found = asyncio.run(browse(HUB_SERVICE, timeout=float(sys.argv[1])))
print(json.dumps([dataclasses.asdict(item) for item in found]))
"""


@pytest.fixture(scope="module", autouse=True)
def _namespaces_permitted() -> None:
    reason = netns_available()
    if reason is not None:
        pytest.skip(reason)
    cleanup_stale()


@pytest.fixture
def lan() -> Iterator[Lan]:
    with Lan() as lan:
        yield lan


def python(node: Node, code: str, *args: str, **kwargs: Any) -> subprocess.Popen[str]:
    """Run ``python -c code args...`` inside ``node``, from the repository root."""
    return node.popen(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kwargs,
    )


def expect_line(proc: subprocess.Popen[str], expected: str) -> None:
    """Wait for the next stdout line of ``proc`` and check it is ``expected``."""
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if line != expected:
        proc.kill()
        _, err = proc.communicate(timeout=5)
        pytest.fail(f"expected {expected!r}, got {line!r}; stderr:\n{err}")


class Hub:
    """An advertiser process in a node: starts, updates its TXT, stops."""

    def __init__(self, node: Node, txt: dict[str, str] = HUB_TXT) -> None:
        self.node = node
        self.proc = python(node, ADVERTISE, node.name, json.dumps(txt), stdin=subprocess.PIPE)

    def wait_ready(self) -> None:
        expect_line(self.proc, "ready")

    def update(self, txt: dict[str, str]) -> None:
        self._send(json.dumps(txt))
        expect_line(self.proc, "updated")

    def stop(self) -> None:
        self._send("")
        expect_line(self.proc, "stopped")
        assert self.proc.wait(timeout=10) == 0

    def _send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()


def start_hubs(*nodes: Node) -> list[Hub]:
    """Start an advertiser in each node (concurrently) and wait until all are ready."""
    hubs = [Hub(node) for node in nodes]
    for hub in hubs:
        hub.wait_ready()
    return hubs


def start_browse(node: Node, timeout: float) -> subprocess.Popen[str]:
    return python(node, BROWSE, str(timeout))


def results(proc: subprocess.Popen[str]) -> list[dict[str, Any]]:
    """What a browse program found, once it has finished."""
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    found: list[dict[str, Any]] = json.loads(out)
    return found


def browse_from(node: Node, timeout: float) -> list[dict[str, Any]]:
    return results(start_browse(node, timeout))


def expected(node: Node, txt: dict[str, str] = HUB_TXT) -> dict[str, Any]:
    return {
        "name": f"{node.name}.{HUB_SERVICE}",
        "addresses": [node.ip],
        "port": 8080,
        "properties": txt,
    }


def test_edges_find_the_hub_with_its_address_port_and_txt(lan: Lan) -> None:
    hub, a, b = (lan.add_node(name) for name in ("hub", "a", "b"))
    start_hubs(hub)

    browsers = [start_browse(node, timeout=3) for node in (a, b)]

    for browser in browsers:
        assert results(browser) == [expected(hub)]


def test_a_second_advertiser_is_found_too_with_its_own_address(lan: Lan) -> None:
    hub, rogue, a = (lan.add_node(name) for name in ("hub", "rogue", "a"))
    start_hubs(hub, rogue)

    found = browse_from(a, timeout=1.5)

    assert sorted(found, key=lambda item: str(item["name"])) == [expected(hub), expected(rogue)]


def test_updates_are_seen_and_a_stopped_advertiser_is_gone(lan: Lan) -> None:
    hub_node, a = lan.add_node("hub"), lan.add_node("a")
    (hub,) = start_hubs(hub_node)
    assert browse_from(a, timeout=1.5) == [expected(hub_node)]

    new_txt = {**HUB_TXT, "fp": "sha256:def"}
    hub.update(new_txt)
    assert browse_from(a, timeout=1.5) == [expected(hub_node, new_txt)]

    hub.stop()
    assert browse_from(a, timeout=1.5) == []


# argv: instance name. Prints the advertiser's status after start_or_report, then how
# many times it called its on_failure, then stops.
START_OR_REPORT = """
import asyncio, sys
from edge_agent.provision.mdns import HUB_SERVICE, Advertiser, start_or_report

async def main():
    advertiser = Advertiser(HUB_SERVICE, sys.argv[1], 8080, {})
    failures = []
    await start_or_report(advertiser, lambda: failures.append(1))
    print(advertiser.status, len(failures), sep="\\n", flush=True)
    await advertiser.stop()

asyncio.run(main())
"""


def test_a_neighbour_answering_for_the_name_costs_discovery_not_the_program(lan: Lan) -> None:
    squatter, hub = lan.add_node("squatter"), lan.add_node("hub")
    taken = python(squatter, ADVERTISE, "hub", json.dumps(HUB_TXT), stdin=subprocess.PIPE)
    expect_line(taken, "ready")
    try:
        out, err = python(hub, START_OR_REPORT, "hub").communicate(timeout=30)
        status, failures = out.splitlines()
        assert status == f"failed: another host answers for hub.{HUB_SERVICE}", err
        assert failures == "1", out
        assert "not advertised by mDNS, running on without it" in err
    finally:
        taken.kill()
        taken.wait(5)
