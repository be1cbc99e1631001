"""The edge against a hostile hub: a WebSocket server on loopback that speaks the sync
protocol just far enough to ask for a full resend at every link.

A real agent links to it again and again. It queues its whole graph once; every later
ask within the window is deferred and counted, so the hub cannot make it resend its
graph on every link.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.sync.server import Server, ServerConnection, serve

from edge_agent.sync.frames import Hello, Welcome, decode_frame, encode_frame
from tests.helpers import AgentProcess, config_dict, wait_until
from tests.integration.sync_harness import metric

pytestmark = pytest.mark.slow


class ResendAskingHub:
    """Welcomes any edge with ``full_resend`` and closes the link soon after."""

    def __init__(self) -> None:
        self.links = 0
        self.server: Server = serve(self._link, "127.0.0.1", 0)
        self.port = self.server.socket.getsockname()[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def _link(self, ws: ServerConnection) -> None:
        hello = decode_frame(ws.recv(timeout=5), max_bytes=1 << 20)  # type: ignore[arg-type]
        assert isinstance(hello, Hello)
        self.links += 1
        ws.send(encode_frame(Welcome(accepted=True, hwm=0, full_resend=True)))
        with contextlib.suppress(TimeoutError):
            ws.recv(timeout=0.3)  # whatever the edge sends first; then cut the link
        ws.close()

    def stop(self) -> None:
        self.server.shutdown()
        self._thread.join(5)


@pytest.fixture
def hostile_hub() -> Iterator[ResendAskingHub]:
    hub = ResendAskingHub()
    yield hub
    hub.stop()


def test_a_hub_asking_for_a_full_resend_at_every_link_gets_one(
    tmp_path: Path, hostile_hub: ResendAskingHub
) -> None:
    output = {
        "url": f"ws://127.0.0.1:{hostile_hub.port}/edge-sync",
        "token": "t" * 32,
        "reconnect": {"initial": "100ms", "max": "200ms"},
    }
    config = config_dict(
        tmp_path / "state",
        components=[
            {"id": "sim", "type": "simulator", "config": {"entities": 5, "interval": "100ms"}},
            {"id": "to-hub", "type": "websocket_output", "config": output},
        ],
    )
    edge = AgentProcess(config, tmp_path, name="edge")
    edge.start()
    try:
        wait_until(lambda: hostile_hub.links >= 5, "five links to the hostile hub", timeout=30)
        deferred = metric(edge.api, "semstreams_sync_full_resends_deferred_total")
        assert metric(edge.api, "semstreams_sync_full_resends_total") == 1
        assert deferred >= hostile_hub.links - 2, (deferred, hostile_hub.links)
        assert "asks for a full resend again" in edge.log_path.read_text()
    finally:
        edge.stop()
