"""The sync protocol without sockets: frames, codec, filters, both state machines."""

from __future__ import annotations

import ast
import zlib
from pathlib import Path

import msgspec
import pytest

from edge_agent.errors import LocalProtocolError, RemoteProtocolError
from edge_agent.sync.codec import decode_deltas, encode_deltas
from edge_agent.sync.filters import compile_filter
from edge_agent.sync.frames import (
    PROTOCOL_VERSION,
    Ack,
    Batch,
    Challenge,
    EntityDelta,
    Hello,
    Nack,
    Proof,
    Slow,
    Welcome,
    decode_frame,
    encode_frame,
)
from edge_agent.sync.protocol import EdgeProtocol, HubProtocol, State

SYNC = Path(__file__).resolve().parents[3] / "edge_agent" / "sync"


def exchange(src: EdgeProtocol | HubProtocol, dst: EdgeProtocol | HubProtocol) -> list[object]:
    """Deliver everything ``src`` has to send to ``dst``; return what ``dst`` received."""
    for chunk in src.data_to_send():
        dst.receive_data(chunk)
    return list(dst.events_received())


def connected(hwm: int = 0, window: int = 3) -> tuple[EdgeProtocol, HubProtocol]:
    edge, hub = EdgeProtocol("edge-1", "t0k3n", window=window), HubProtocol()
    [hello] = exchange(edge, hub)
    assert isinstance(hello, Hello) and hello.token == "t0k3n"
    hub.accept(hwm)
    [welcome] = exchange(hub, edge)
    assert isinstance(welcome, Welcome) and welcome.accepted
    return edge, hub


def delta(entity_id: str = "UAV-1", **fields: object) -> EntityDelta:
    base = {
        "entity_id": entity_id,
        "entity_type": "drone",
        "version": 3,
        "updated_at": 1_700_000_000_000,
        "priority": 5,
        "triples": [("battery", 80.5, 1_700_000_000_000, "sim"), ("geo.lat", 37.7, 1, "sim")],
        "edges": [("member_of", "fleet-west", 1.0, 1, "sim")],
        **fields,
    }
    return EntityDelta(**base)  # type: ignore[arg-type]


def test_the_sync_core_does_no_io() -> None:
    banned = {"asyncio", "socket", "websockets", "nats", "sqlite3", "threading"}
    # output.py is the asyncio shell around this core; everything else stays pure.
    for path in set(SYNC.glob("*.py")) - {SYNC / "output.py"}:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            assert not {n.split(".")[0] for n in names} & banned, path.name


@pytest.mark.parametrize(
    "frame",
    [
        Hello(edge_id="e", token="t", acked_seq=7),
        Challenge(nonce=bytes(range(32))),
        Proof(signature=b"\x01" * 64),
        Welcome(accepted=True, hwm=9, encoding="zlib"),
        Welcome(accepted=False, reason="bad credential"),
        Batch(seq=3, encoding="zstd", count=2, payload=b"\x00\x01"),
        Ack(seq=3),
        Nack(seq=4, reason="busy", retry_after=2.5),
        Slow(window=1, max_bytes_per_second=8000),
    ],
)
def test_frames_round_trip(frame: object) -> None:
    assert decode_frame(encode_frame(frame), max_bytes=1 << 20) == frame  # type: ignore[arg-type]


def test_unknown_fields_are_tolerated_for_mixed_versions() -> None:
    newer = msgspec.msgpack.encode({"t": "ack", "seq": 5, "added_in_v2": [1, 2]})
    assert decode_frame(newer, max_bytes=100) == Ack(seq=5)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xc1garbage", "malformed frame"),
        (msgspec.msgpack.encode({"t": "teleport"}), "malformed frame"),
        (msgspec.msgpack.encode({"t": "ack"}), "malformed frame"),
        (b"x" * 101, "over the 100 limit"),
    ],
)
def test_bad_frames(data: bytes, message: str) -> None:
    with pytest.raises(RemoteProtocolError, match=message):
        decode_frame(data, max_bytes=100)


@pytest.mark.parametrize("encoding", ["zstd", "zlib", "none"])
def test_codec_round_trip(encoding: str) -> None:
    deltas = [delta(f"UAV-{i}") for i in range(50)] + [delta("gone", deleted=True, triples=[])]
    payload, raw = encode_deltas(deltas, encoding)
    assert decode_deltas(payload, encoding, max_bytes=raw) == deltas
    if encoding != "none":
        assert len(payload) < raw / 3


def test_codec_refuses_bombs_and_garbage() -> None:
    bomb = zlib.compress(b"\x00" * 10_000_000)
    with pytest.raises(RemoteProtocolError, match="expands past"):
        decode_deltas(bomb, "zlib", max_bytes=1 << 20)
    with pytest.raises(RemoteProtocolError, match="corrupt zlib"):
        decode_deltas(b"not zlib", "zlib", max_bytes=1 << 20)
    with pytest.raises(RemoteProtocolError, match="corrupt zstd"):
        decode_deltas(b"not zstd", "zstd", max_bytes=1 << 20)
    with pytest.raises(RemoteProtocolError, match="unknown payload encoding"):
        decode_deltas(b"", "brotli", max_bytes=1 << 20)
    with pytest.raises(RemoteProtocolError, match="malformed batch"):
        decode_deltas(b"\x93\x01\x02\x03", "none", max_bytes=1 << 20)


def test_handshake_resume_and_window() -> None:
    edge, hub = connected(hwm=10, window=2)
    assert edge.state == hub.state == State.SYNCING
    assert edge.hwm == 10
    with pytest.raises(LocalProtocolError, match="at/below"):
        edge.send_batch(10, 1, b"")
    edge.send_batch(11, 1, b"a")
    edge.send_batch(12, 1, b"b")
    assert not edge.can_send()
    with pytest.raises(LocalProtocolError, match="window of 2"):
        edge.send_batch(13, 1, b"c")
    received = exchange(edge, hub)
    assert [b.seq for b in received] == [11, 12]  # type: ignore[attr-defined]
    hub.ack(11)
    hub.nack(12, "store busy", retry_after=3)
    answers = exchange(hub, edge)
    assert answers == [Ack(seq=11), Nack(seq=12, reason="store busy", retry_after=3)]
    assert edge.in_flight == set() and edge.hwm == 11 and hub.hwm == 11
    assert edge.can_send()


def _batch(seq: int) -> bytes:
    return encode_frame(Batch(seq=seq, encoding="none", count=0, payload=b""))


def test_hub_acks_a_resend_itself_and_hands_the_shell_only_the_next_batch() -> None:
    _, hub = connected(hwm=5)
    hub.receive_data(_batch(5))
    assert hub.events_received() == [] and hub.duplicates == 1
    assert [decode_frame(d, max_bytes=1 << 20) for d in hub.data_to_send()] == [Ack(seq=5)]
    hub.receive_data(_batch(6))
    assert [b.seq for b in hub.events_received()] == [6]  # type: ignore[attr-defined]


def test_hub_nacks_a_batch_past_a_gap_without_the_shell() -> None:
    _, hub = connected(hwm=5)
    hub.receive_data(_batch(8))
    assert hub.events_received() == [] and hub.gaps == 1
    (nack,) = [decode_frame(d, max_bytes=1 << 20) for d in hub.data_to_send()]
    assert isinstance(nack, Nack) and nack.seq == 8 and "expected batch 6" in nack.reason


def test_after_a_nack_what_was_sent_behind_it_is_nacked_until_it_comes_again() -> None:
    _, hub = connected(hwm=5)
    hub.receive_data(_batch(6))
    hub.receive_data(_batch(7))
    assert [b.seq for b in hub.events_received()] == [6, 7]  # type: ignore[attr-defined]
    assert hub.ready(6)
    hub.nack(6, "not durable: store busy")
    assert not hub.ready(7)  # taken before 6 failed: never made durable around the gap
    hub.data_to_send()
    hub.receive_data(_batch(6))
    assert [b.seq for b in hub.events_received()] == [6]  # type: ignore[attr-defined]
    assert hub.ready(6)
    hub.ack(6)
    assert hub.hwm == 6 and hub.expected == 7


def test_hub_asks_to_slow_once_per_crossing_of_its_threshold() -> None:
    edge, hub = connected(window=4)
    hub.backlog(20, threshold=16)
    hub.backlog(30, threshold=16)
    assert exchange(hub, edge) == [Slow(window=1)] and edge.window == 1
    hub.backlog(10, threshold=16)  # still above half: no new crossing
    hub.backlog(7, threshold=16)
    hub.backlog(17, threshold=16)
    assert exchange(hub, edge) == [Slow(window=1)]


def test_slow_only_shrinks_the_window() -> None:
    edge, hub = connected(window=4)
    hub.slow(window=1)
    exchange(hub, edge)
    assert edge.window == 1
    hub.slow(window=8)
    exchange(hub, edge)
    assert edge.window == 1


def test_refusal_closes_without_reading_batches() -> None:
    edge, hub = EdgeProtocol("edge-1", "wrong"), HubProtocol()
    exchange(edge, hub)
    hub.refuse("bad credential")
    exchange(hub, edge)
    assert edge.state == hub.state == State.CLOSED
    assert edge.refusal == "bad credential"
    with pytest.raises(RemoteProtocolError, match="unexpected Batch frame while closed"):
        hub.receive_data(encode_frame(Batch(seq=1, encoding="none", count=0, payload=b"")))


@pytest.mark.parametrize(
    "frame",
    [
        Batch(seq=1, encoding="none", count=0, payload=b""),  # before Welcome
        Ack(seq=1),  # a hub frame sent to the hub
    ],
)
def test_out_of_protocol_frames_on_the_hub(frame: object) -> None:
    hub = HubProtocol()
    with pytest.raises(RemoteProtocolError, match="unexpected"):
        hub.receive_data(encode_frame(frame))  # type: ignore[arg-type]


def test_hub_refuses_replays_and_second_hello() -> None:
    edge, hub = connected()
    edge.send_batch(1, 0, b"")
    [data] = edge.data_to_send()
    hub.receive_data(data)
    with pytest.raises(RemoteProtocolError, match="sent twice"):
        hub.receive_data(data)
    other = HubProtocol()
    hello = encode_frame(Hello(edge_id="e"))
    other.receive_data(hello)
    with pytest.raises(RemoteProtocolError, match="second Hello"):
        other.receive_data(hello)


def test_edge_refuses_acks_for_unknown_batches() -> None:
    edge, _ = connected()
    with pytest.raises(RemoteProtocolError, match="not in flight"):
        edge.receive_data(encode_frame(Ack(seq=99)))


def test_hub_cannot_ack_what_it_never_got() -> None:
    _, hub = connected()
    with pytest.raises(LocalProtocolError, match="no batch 4"):
        hub.ack(4)


def test_filters_select_entities_and_predicates() -> None:
    spec = {
        "priority": {"gte": 3},
        "entity_type": {"in": ["drone"]},
        "entity_id": {"prefix": "UAV-"},
        "properties.battery": {"lt": 90},
        "predicate": {"ne": "geo.lat"},
    }
    rule = compile_filter(spec)
    kept = rule.apply(delta(), {"battery": 80.5})
    assert kept is not None
    assert [t[0] for t in kept.triples] == ["battery"]
    assert [e[0] for e in kept.edges] == ["member_of"]
    assert rule.apply(delta(priority=2), {"battery": 80.5}) is None
    assert rule.apply(delta(entity_type="fleet"), {"battery": 1}) is None
    assert rule.apply(delta("X-1"), {"battery": 1}) is None
    assert rule.apply(delta(), {"battery": 95}) is None
    assert rule.apply(delta(), {}) is None  # a missing property never matches
    assert rule.apply(delta(), {"battery": "low"}) is None  # nor a value of another type
    assert compile_filter({}).apply(delta(), {}) == delta()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"colour": {"eq": 1}}, "filters.colour: unknown field"),
        ({"priority": {"greater": 1}}, "filters.priority.greater: unknown operator"),
        ({"priority": 3}, "filters.priority: expected an object"),
        ({"entity_type": {"in": "drone"}}, "filters.entity_type.in: expected a list"),
        ({"entity_id": {"prefix": 1}}, "filters.entity_id.prefix: expected a string"),
    ],
)
def test_bad_filters_name_the_key(spec: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        compile_filter(spec)


def _signer(nonce: bytes) -> bytes:
    return b"signed:" + nonce


def test_a_challenged_edge_proves_its_key_before_the_welcome() -> None:
    edge, hub = EdgeProtocol("edge-1", "jwt", prove=_signer), HubProtocol()
    [hello] = exchange(edge, hub)
    assert isinstance(hello, Hello) and hello.token == "jwt"
    hub.challenge(b"n" * 32)
    assert exchange(hub, edge) == []  # the protocol answers the Challenge itself
    [proof] = exchange(edge, hub)
    assert proof == Proof(signature=b"signed:" + b"n" * 32)
    assert hub.state == edge.state == State.HANDSHAKE
    hub.accept(0)
    [welcome] = exchange(hub, edge)
    assert isinstance(welcome, Welcome) and welcome.accepted and edge.state == State.SYNCING


def test_an_edge_without_a_key_answers_with_an_empty_proof() -> None:
    edge, hub = EdgeProtocol("edge-1", "stolen-jwt"), HubProtocol()
    exchange(edge, hub)
    hub.challenge(b"n" * 32)
    exchange(hub, edge)
    assert exchange(edge, hub) == [Proof(signature=b"")]


def test_challenges_and_proofs_out_of_order_are_refused() -> None:
    hub = HubProtocol()
    with pytest.raises(LocalProtocolError, match="after the Hello"):
        hub.challenge(b"n" * 32)
    hub.receive_data(encode_frame(Hello(edge_id="e")))
    with pytest.raises(RemoteProtocolError, match="Proof without a Challenge"):
        hub.receive_data(encode_frame(Proof(signature=b"x")))
    hub.challenge(b"n" * 32)
    with pytest.raises(LocalProtocolError, match="challenge once"):
        hub.challenge(b"m" * 32)
    hub.receive_data(encode_frame(Proof(signature=b"x")))
    with pytest.raises(RemoteProtocolError, match="Proof without a Challenge"):
        hub.receive_data(encode_frame(Proof(signature=b"x")))
    edge = EdgeProtocol("e", "t", prove=_signer)
    edge.receive_data(encode_frame(Challenge(nonce=b"n" * 32)))
    with pytest.raises(RemoteProtocolError, match="second Challenge"):
        edge.receive_data(encode_frame(Challenge(nonce=b"n" * 32)))
    connected_edge, _ = connected()
    with pytest.raises(RemoteProtocolError, match="unexpected Challenge frame while syncing"):
        connected_edge.receive_data(encode_frame(Challenge(nonce=b"n" * 32)))


def test_an_edge_of_another_protocol_version_is_refused_in_a_welcome() -> None:
    edge, hub = EdgeProtocol("old-edge", "t"), HubProtocol()
    hub.receive_data(encode_frame(Hello(edge_id="old-edge", version=PROTOCOL_VERSION - 1)))
    assert hub.events_received() == [] and hub.state == State.CLOSED
    exchange(hub, edge)
    assert edge.state == State.CLOSED
    assert edge.refusal == (
        f"sync protocol version {PROTOCOL_VERSION - 1} not supported: this hub speaks"
        f" {PROTOCOL_VERSION}; update the edge"
    )


def test_a_failed_shell_nacks_everything_it_held_and_the_edge_sends_it_again() -> None:
    edge, hub = connected(hwm=0, window=3)
    for seq in (1, 2, 3):
        edge.send_batch(seq, 1, b"x")
    assert [b.seq for b in exchange(edge, hub)] == [1, 2, 3]  # type: ignore[attr-defined]
    hub.ack(1)
    assert hub.nack_all("not durable: hub error, send again") == [2, 3]
    exchange(hub, edge)
    assert edge.in_flight == set() and edge.hwm == 1
    assert HubProtocol().nack_all("nothing held before a welcome") == []
