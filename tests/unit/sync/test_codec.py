"""Batch payloads: the pre-encoded msgpack array, compression, bounded decoding."""

from __future__ import annotations

import zlib

import msgspec
import pytest

from edge_agent.errors import LocalProtocolError, RemoteProtocolError
from edge_agent.sync.codec import (
    available_encodings,
    compress,
    decode_deltas,
    encode_deltas,
    msgpack_array,
)
from edge_agent.sync.frames import EntityDelta

ENCODINGS = ["zstd", "zlib", "none"]


def deltas(n: int) -> list[EntityDelta]:
    return [
        EntityDelta(
            f"UAV-{i}",
            "drone",
            i + 1,
            1_700_000_000_000 + i,
            i % 10,
            [("battery", i % 100, 1_700_000_000_000, "sim"), ("mode", "idle", 1, "sim")],
            [("member_of", "fleet-west", 1.0, 1, "sim")] if i % 2 else [],
            ["tail"] if i % 3 == 0 else [],
            deleted=i % 7 == 6,
        )
        for i in range(n)
    ]


@pytest.mark.parametrize("n", [0, 1, 15, 16, 65_535, 65_536, 70_000])
def test_msgpack_array_of_parts_is_the_encoded_list(n: int) -> None:
    kinds = deltas(16)
    items = [kinds[i % 16] for i in range(n)]
    encoded = [msgspec.msgpack.encode(d) for d in kinds]
    joined = msgpack_array([encoded[i % 16] for i in range(n)])
    assert joined == msgspec.msgpack.encode(items)


def test_every_encoding_is_available() -> None:
    assert available_encodings() == ("zstd", "zlib", "none")


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_compress_and_decode_round_trip(encoding: str) -> None:
    items = deltas(500)
    raw = msgpack_array([msgspec.msgpack.encode(d) for d in items])
    payload = compress(raw, encoding)
    assert decode_deltas(payload, encoding, max_bytes=len(raw)) == items
    assert encode_deltas(items, encoding) == (payload, len(raw))
    if encoding == "none":
        assert payload == raw
    else:
        assert len(payload) < len(raw) / 3


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_an_empty_batch_round_trips(encoding: str) -> None:
    payload, raw = encode_deltas([], encoding)
    assert decode_deltas(payload, encoding, max_bytes=raw) == []


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_a_payload_expanding_past_max_bytes_is_refused(encoding: str) -> None:
    payload, raw = encode_deltas(deltas(100), encoding)
    assert len(decode_deltas(payload, encoding, max_bytes=raw)) == 100
    with pytest.raises(RemoteProtocolError, match=f"expands past {raw - 1} bytes"):
        decode_deltas(payload, encoding, max_bytes=raw - 1)


@pytest.mark.parametrize("encoding", ["zstd", "zlib"])
def test_a_bomb_is_refused_without_expanding_it(encoding: str) -> None:
    bomb = compress(b"\x00" * (16 << 20), encoding)
    assert len(bomb) < 1 << 20
    with pytest.raises(RemoteProtocolError, match="expands past"):
        decode_deltas(bomb, encoding, max_bytes=1 << 20)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_a_corrupt_payload_is_a_protocol_error(encoding: str) -> None:
    payload, _ = encode_deltas(deltas(50), encoding)
    damaged = [
        b"\xff" * 64,  # not the format at all
        payload[: len(payload) // 2],  # cut short
        payload[:10] + bytes(b ^ 0x5A for b in payload[10:40]) + payload[40:],  # flipped bits
    ]
    for data in damaged:
        with pytest.raises(RemoteProtocolError):
            decode_deltas(data, encoding, max_bytes=1 << 20)


def test_a_valid_stream_of_the_wrong_shape_is_a_protocol_error() -> None:
    payload = zlib.compress(msgspec.msgpack.encode({"not": "a list"}))
    with pytest.raises(RemoteProtocolError, match="malformed batch payload"):
        decode_deltas(payload, "zlib", max_bytes=1 << 20)


GOOD = EntityDelta(
    "UAV-1", "drone", 1, 1, 3, [("battery", 5, 1, "t")], [("near", "UAV-2", 1.0, 1, "t")]
)


@pytest.mark.parametrize(
    "hostile",
    [
        msgspec.structs.replace(GOOD, entity_id="sync.batches.>"),  # would split a subject
        msgspec.structs.replace(GOOD, entity_id="a b"),
        msgspec.structs.replace(GOOD, entity_id="x\n"),
        msgspec.structs.replace(GOOD, entity_id="x" * 256),
        msgspec.structs.replace(GOOD, entity_id=""),
        msgspec.structs.replace(GOOD, entity_type="drone type"),
        msgspec.structs.replace(GOOD, priority=10),
        msgspec.structs.replace(GOOD, version=-1),
        msgspec.structs.replace(GOOD, edges=[("near", "*", 1.0, 1, "t")]),
        msgspec.structs.replace(GOOD, aliases=["a" * 256]),
    ],
)
def test_ids_types_and_priorities_a_hub_stores_are_checked_while_decoding(
    hostile: EntityDelta,
) -> None:
    payload, _ = encode_deltas([GOOD, hostile], "zlib")
    with pytest.raises(RemoteProtocolError, match="malformed batch payload"):
        decode_deltas(payload, "zlib", max_bytes=1 << 20)
    good, _ = encode_deltas([GOOD, msgspec.structs.replace(GOOD, entity_type="")], "zlib")
    assert len(decode_deltas(good, "zlib", max_bytes=1 << 20)) == 2


def test_unknown_encodings_are_refused_on_both_sides() -> None:
    with pytest.raises(LocalProtocolError, match="brotli"):
        compress(b"", "brotli")
    with pytest.raises(RemoteProtocolError, match="unknown payload encoding 'brotli'"):
        decode_deltas(b"", "brotli", max_bytes=100)
