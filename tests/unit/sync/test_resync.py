"""The resync of an edge's share: frames and both state machines, bytes in, bytes out."""

from __future__ import annotations

import msgspec
import pytest

from edge_agent.errors import LocalProtocolError, RemoteProtocolError
from edge_agent.sync.frames import (
    MAX_SHARE_ENTITIES,
    Hello,
    Share,
    ShareAck,
    ShareEnd,
    Welcome,
    decode_frame,
    encode_frame,
)
from edge_agent.sync.protocol import SHARE_WINDOW, EdgeProtocol, HubProtocol, State
from tests.unit.sync.test_protocol import exchange


def resyncing(grant: bool = True) -> tuple[EdgeProtocol, HubProtocol]:
    edge, hub = EdgeProtocol("edge-1", "t0k3n", resync=True), HubProtocol()
    [hello] = exchange(edge, hub)
    assert isinstance(hello, Hello) and hello.resync and hub.resync_asked
    hub.accept(4, resync=grant)
    [welcome] = exchange(hub, edge)
    assert isinstance(welcome, Welcome) and welcome.resync is grant
    assert edge.resyncing is grant and edge.state == State.SYNCING
    return edge, hub


def test_a_whole_share_in_acked_chunks_then_one_end() -> None:
    edge, hub = resyncing()
    chunks = []
    for _ in range(SHARE_WINDOW):
        chunks.append(hub.send_share(3, b"x", "none"))
    assert not hub.can_share()  # the window is full until the edge acks
    shares = exchange(hub, edge)
    assert [s.chunk for s in shares if isinstance(s, Share)] == [1, 2]
    edge.ack_share(1)
    [ack] = exchange(edge, hub)
    assert ack == ShareAck(chunk=1) and hub.can_share()
    with pytest.raises(LocalProtocolError, match="unacked"):
        hub.end_share(6)
    edge.ack_share(2)
    exchange(edge, hub)
    hub.end_share(6, skipped=1)
    [end] = exchange(hub, edge)
    assert end == ShareEnd(chunks=2, entities=6, skipped=1)
    assert edge.share_end == end and not edge.resyncing and not hub.sharing


def test_batches_flow_during_a_resync() -> None:
    edge, hub = resyncing()
    hub.send_share(1, b"x", "none")
    edge.send_batch(5, 1, b"p", "none")
    exchange(hub, edge)
    [batch] = exchange(edge, hub)
    hub.ack(batch.seq)  # type: ignore[attr-defined]
    exchange(hub, edge)
    assert edge.hwm == 5


def test_an_old_hub_ignores_the_request_and_the_edge_knows() -> None:
    """A hub that does not know ``resync`` decodes the Hello (unknown field ignored)
    and answers a Welcome without it: the edge sees no resync granted."""
    edge = EdgeProtocol("edge-1", "t", resync=True)
    [data] = edge.data_to_send()
    old_hello = msgspec.msgpack.decode(data)
    assert old_hello["resync"] is True  # an old hub's decoder skips it
    old_welcome = {"t": "welcome", "accepted": True, "hwm": 0, "encoding": "none"}
    edge.receive_data(msgspec.msgpack.encode(old_welcome))
    assert edge.state == State.SYNCING and not edge.resyncing


def test_an_old_edge_is_served_without_a_resync() -> None:
    hub = HubProtocol()
    old_hello = {"t": "hello", "edge_id": "edge-1", "token": "t", "version": 2}
    hub.receive_data(msgspec.msgpack.encode(old_hello))
    [hello] = hub.events_received()
    assert isinstance(hello, Hello) and not hub.resync_asked
    with pytest.raises(LocalProtocolError, match="did not ask"):
        hub.accept(0, resync=True)
    hub.accept(0)
    assert hub.state == State.SYNCING and not hub.sharing


@pytest.mark.parametrize(
    "frame",
    [
        Share(chunk=1, encoding="none", count=1, payload=b""),
        ShareEnd(chunks=0, entities=0),
    ],
)
def test_share_frames_without_a_granted_resync_are_refused(frame: Share | ShareEnd) -> None:
    edge, _hub = resyncing(grant=False)
    with pytest.raises(RemoteProtocolError, match="without a granted resync"):
        edge.receive_data(encode_frame(frame))


def test_a_welcome_granting_what_was_not_asked_is_refused() -> None:
    edge = EdgeProtocol("edge-1", "t")
    edge.data_to_send()
    with pytest.raises(RemoteProtocolError, match="did not ask"):
        edge.receive_data(encode_frame(Welcome(accepted=True, encoding="none", resync=True)))


def test_the_edge_refuses_gaps_floods_and_early_ends() -> None:
    edge, _ = resyncing()
    with pytest.raises(RemoteProtocolError, match="expected 1"):
        edge.receive_data(encode_frame(Share(chunk=2, encoding="none", count=1, payload=b"")))
    edge, _ = resyncing()
    for chunk in range(1, SHARE_WINDOW + 1):
        edge.receive_data(encode_frame(Share(chunk=chunk, encoding="none", count=1, payload=b"")))
    with pytest.raises(RemoteProtocolError, match="unacked"):
        flood = Share(chunk=SHARE_WINDOW + 1, encoding="none", count=1, payload=b"")
        edge.receive_data(encode_frame(flood))
    edge, _ = resyncing()
    edge.receive_data(encode_frame(Share(chunk=1, encoding="none", count=1, payload=b"")))
    with pytest.raises(RemoteProtocolError, match="unacked"):
        edge.receive_data(encode_frame(ShareEnd(chunks=1, entities=1)))
    with pytest.raises(LocalProtocolError, match="no share chunk 7"):
        edge.ack_share(7)


def test_the_hub_refuses_acks_of_chunks_it_never_sent() -> None:
    _edge, hub = resyncing()
    with pytest.raises(RemoteProtocolError, match="not in flight"):
        hub.receive_data(encode_frame(ShareAck(chunk=1)))


def test_a_share_frame_is_bounded_in_entities() -> None:
    too_many = {"t": "share", "chunk": 1, "encoding": "none", "count": MAX_SHARE_ENTITIES + 1}
    with pytest.raises(RemoteProtocolError, match="malformed"):
        decode_frame(msgspec.msgpack.encode({**too_many, "payload": b""}), max_bytes=1 << 20)
    with pytest.raises(RemoteProtocolError, match="over the"):
        decode_frame(b"\x00" * 1025, max_bytes=1024)


@pytest.mark.parametrize("lacks", [False, True])
def test_a_hub_that_lost_acked_batches_asks_for_everything(lacks: bool) -> None:
    edge, hub = EdgeProtocol("edge-1", "t0k3n", acked_seq=9), HubProtocol()
    [hello] = exchange(edge, hub)
    assert isinstance(hello, Hello) and hello.acked_seq == 9
    hub.accept(9, full_resend=lacks)
    [welcome] = exchange(hub, edge)
    assert isinstance(welcome, Welcome) and welcome.full_resend is lacks
    assert edge.full_resend is lacks and edge.hwm == 9
