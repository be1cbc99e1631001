"""The README's first command: ``make demo`` (``examples/demo.py``) brings up a hub and two
simulated edges that sync to it, and stops cleanly on SIGTERM.

The demo listens on its fixed ports (8080-8082, 4222-4224, all on 127.0.0.1), below the
ephemeral range the other tests draw their ports from.
"""

from __future__ import annotations

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
EDGES = ("demo-edge-1", "demo-edge-2")


def _hub(path: str) -> Any:
    try:
        status, body = http_json(f"{HUB}{path}", timeout=2)
    except OSError:
        return None
    return body if status == 200 else None


def _synced() -> bool:
    stats = _hub("/graph/stats") or {}
    edges = _hub("/edges") or []
    linked = {e["edge_id"] for e in edges if e.get("connected")}
    return stats.get("by_type", {}).get("drone") == 40 and linked == set(EDGES)


def test_the_demo_syncs_two_edges_to_the_hub_and_stops_on_sigterm(tmp_path: Path) -> None:
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
            assert time.monotonic() < deadline, "the demo's 40 drones never reached the hub"
            time.sleep(0.5)
        # The fleets both edges report are shared reference entities, not conflicts.
        shared = {row["entity_id"]: row["edges"] for row in _hub("/graph/shared")}
        assert shared["fleet-west"] == list(EDGES)
        assert _hub("/graph/conflicts") == []
        demo.send_signal(signal.SIGTERM)
        output = demo.communicate(timeout=60)[0].decode()
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
    assert demo.returncode == 0, output[-3000:]
    assert "Demo up" in output
    for edge in EDGES:
        token_file = tmp_path / ".demo-state" / "tokens" / edge
        assert token_file.stat().st_mode & 0o777 == 0o600
        assert token_file.read_text() not in output, "a device token reached the logs"
