"""The README's first command: ``make demo`` (``examples/demo.py``) brings up a hub with its
dashboard and simulated edges that sync to it, one waiting for approval, and stops
cleanly on SIGTERM.

The demo listens on its fixed ports (8080-8084, 8090, 4222-4226, all on 127.0.0.1), below the
ephemeral range the other tests draw their ports from.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import http_json

pytestmark = pytest.mark.slow

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo.py"
HUB = "http://127.0.0.1:8080"
EDGES = ("demo-edge-1", "demo-edge-2", "demo-edge-3")
PENDING = "demo-edge-new"


def _hub(path: str) -> Any:
    try:
        status, body = http_json(f"{HUB}{path}", timeout=2)
    except OSError:
        return None
    return body if status == 200 else None


def _synced() -> bool:
    stats = _hub("/graph/stats") or {}
    fleet = _hub("/dashboard/fleet") or {"edges": []}
    status = {row["edge_id"]: row["status"] for row in fleet["edges"]}
    return (
        stats.get("by_type", {}).get("drone") == 20 * len(EDGES)
        and status.get("demo-edge-1") == "online"
        and status.get(PENDING) == "pending"
    )


def _searched(query: str) -> bool:
    try:
        status, answer = http_json(
            f"{HUB}/graph/query/search", json.dumps({"query": query}).encode(), timeout=5
        )
    except OSError:
        return False
    types = {hit["entity_type"] for hit in answer.get("results", [])} if status == 200 else set()
    return not answer.get("degraded", True) and bool(
        types & {"maintenance_note", "incident_report"}
    )


def test_the_demo_syncs_its_edges_shows_a_pending_one_and_stops_on_sigterm(tmp_path: Path) -> None:
    demo = subprocess.Popen(
        [sys.executable, str(DEMO)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while not _synced():
            assert demo.poll() is None, demo.communicate()[0].decode()[-3000:]
            assert time.monotonic() < deadline, "the demo's drones never reached the hub"
            time.sleep(0.5)
        # The fleets every edge reports are shared reference entities, not conflicts
        # (demo-edge-3's slow link may not have brought its own copy yet).
        shared = {row["entity_id"]: row["edges"] for row in _hub("/graph/shared")}
        assert {"demo-edge-1", "demo-edge-2"} <= set(shared["fleet-west"])
        assert _hub("/graph/conflicts") == []
        # The edges' notes and reports are searchable on the hub, by meaning too (the
        # demo runs the shipped embedding service).
        while not _searched("an inspection found something wrong with a drone"):
            assert time.monotonic() < deadline + 60, "no GraphRAG search answer with vectors"
            time.sleep(1)
        demo.send_signal(signal.SIGTERM)
        output = demo.communicate(timeout=60)[0].decode()
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
    assert demo.returncode == 0, output[-3000:]
    assert output.index("Dashboard: http://127.0.0.1:8080/") < output.index("Demo up")
    for edge in EDGES:
        token_file = tmp_path / ".demo-state" / "tokens" / edge
        assert token_file.stat().st_mode & 0o777 == 0o600
        assert token_file.read_text() not in output, "a device token reached the logs"
