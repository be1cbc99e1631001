"""The hub's resources under a flood, on a real hub process: sockets that never say hello,
more sockets than it takes, and an edge sending the largest batches it may. Other edges
keep getting their acks, and the hub's memory stays bounded.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Iterator

import psutil
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from edge_agent.sync.codec import encode_deltas
from edge_agent.sync.frames import (
    Ack,
    Batch,
    EntityDelta,
    Hello,
    Slow,
    Welcome,
    decode_frame,
    encode_frame,
)
from tests.helpers import AgentProcess
from tests.integration.sync_harness import hub_process, metric

pytestmark = pytest.mark.slow

TOKENS = {"edge-a": secrets.token_urlsafe(24), "edge-b": secrets.token_urlsafe(24)}
MAX_FRAME = 1 << 20
MAX_CONNECTIONS = 60
IDLE = 50
HELLO_TIMEOUT_S = 5
#: How much the hub's RSS may grow while flooded (it was ~65 MB before, idle).
RSS_GROWTH_BOUND_MB = 80


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    process = hub_process(
        tmp_path_factory.mktemp("hub"),
        sync_input={
            "devices": {edge: {"token": token} for edge, token in TOKENS.items()},
            "max_frame_bytes": MAX_FRAME,
            "max_batch_bytes": 4 * MAX_FRAME,
            "max_connections": MAX_CONNECTIONS,
            "hello_timeout": f"{HELLO_TIMEOUT_S}s",
        },
    )
    process.start()
    yield process
    process.stop()


def _connect(hub: AgentProcess) -> ClientConnection:
    url = f"ws{hub.api.removeprefix('http')}/edge-sync"
    return connect(url, compression=None, proxy=None, max_size=4 * MAX_FRAME, open_timeout=5)


def _linked(hub: AgentProcess, edge: str) -> tuple[ClientConnection, int]:
    ws = _connect(hub)
    ws.send(encode_frame(Hello(edge_id=edge, token=TOKENS[edge])))
    welcome = decode_frame(ws.recv(timeout=5), max_bytes=1 << 20)  # type: ignore[arg-type]
    assert isinstance(welcome, Welcome) and welcome.accepted
    return ws, welcome.hwm


def _acked(ws: ClientConnection, seq: int, payload: bytes) -> None:
    ws.send(encode_frame(Batch(seq=seq, encoding="none", count=0, payload=payload)))
    while isinstance(answer := decode_frame(ws.recv(timeout=30), max_bytes=1 << 20), Slow):  # type: ignore[arg-type]
        pass  # the hub asks for a smaller window while its log is ahead: fine here
    assert answer == Ack(seq=seq), answer


def _rss_mb(hub: AgentProcess) -> float:
    assert hub.proc is not None
    return psutil.Process(hub.proc.pid).memory_info().rss / 2**20


def test_a_flood_of_silent_sockets_and_maximal_batches_leaves_others_acking(
    hub: AgentProcess,
) -> None:
    before = _rss_mb(hub)
    with contextlib.ExitStack() as sockets:
        idle = [sockets.enter_context(_connect(hub)) for _ in range(IDLE)]
        good, good_hwm = _linked(hub, "edge-b")
        greedy, greedy_hwm = _linked(hub, "edge-a")
        sockets.enter_context(good)
        sockets.enter_context(greedy)
        # More sockets than max_connections: the rest are refused at the handshake.
        extra = refused = 0
        for _ in range(MAX_CONNECTIONS):
            try:
                sockets.enter_context(_connect(hub))
                extra += 1
            except InvalidStatus:
                refused += 1
        assert extra == MAX_CONNECTIONS - IDLE - 2 and refused == IDLE + 2
        assert metric(hub.api, "semstreams_sync_refused_total", 'reason="capacity"') >= refused
        # Batches just under the frame limit, uncompressed: the most a link may send.
        filler = "x" * 200
        deltas = [
            EntityDelta(f"big-{i}", "blob", 1, 1_700_000_000_000, 1, [("data", filler, 1, "t")])
            for i in range(4000)
        ]
        big, _ = encode_deltas(deltas, "none")
        assert MAX_FRAME * 0.7 < len(big) < MAX_FRAME - 4096
        peak = before
        for n in range(1, 11):
            _acked(greedy, greedy_hwm + n, big)
            _acked(good, good_hwm + n, encode_deltas(deltas[:1], "none")[0])
            peak = max(peak, _rss_mb(hub))
        # The silent ones are closed once hello_timeout passes; the linked ones are not.
        time.sleep(HELLO_TIMEOUT_S + 1)
        for ws in idle:
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=5)
            assert ws.close_code == 1008 and "no hello within" in (ws.close_reason or "")
        _acked(good, good_hwm + 11, encode_deltas(deltas[:1], "none")[0])
        peak = max(peak, _rss_mb(hub))
        print(f"hub RSS {before:.1f} MB before, {peak:.1f} MB at most under the flood")
        assert peak - before < RSS_GROWTH_BOUND_MB
        assert metric(hub.api, "semstreams_sync_refused_total", 'reason="hello_timeout"') >= IDLE
    # With the flood gone, new links are taken again.
    again, _ = _linked(hub, "edge-b")
    with again:
        assert again.close_code is None
