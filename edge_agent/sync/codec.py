"""Batch payloads: a list of entity deltas as msgpack, compressed (zstd, else zlib).

Decompression is bounded, so a small hostile payload cannot expand into gigabytes.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import msgspec

from edge_agent.errors import LocalProtocolError, RemoteProtocolError
from edge_agent.sync.frames import EntityDelta

try:  # zstandard is optional on the edge; zlib is always there.
    import zstandard
except ImportError:  # pragma: no cover - exercised where zstandard is absent
    zstandard = None  # type: ignore[assignment]

__all__ = [
    "available_encodings",
    "compress",
    "decode_deltas",
    "decode_payload",
    "encode_deltas",
    "msgpack_array",
]

_CORRUPT: tuple[type[Exception], ...] = (zlib.error, ValueError)
if zstandard is not None:
    _CORRUPT += (zstandard.ZstdError,)

_encoder = msgspec.msgpack.Encoder()
_zstd = zstandard.ZstdCompressor(level=3) if zstandard is not None else None
_decoder = msgspec.msgpack.Decoder(list[EntityDelta])


def available_encodings() -> tuple[str, ...]:
    """The encodings this side can read and write, most preferred first."""
    return ("zstd", "zlib", "none") if zstandard is not None else ("zlib", "none")


def encode_deltas(deltas: Sequence[EntityDelta], encoding: str) -> tuple[bytes, int]:
    """Encode and compress deltas.

    Returns:
        (payload, uncompressed size in bytes).

    Raises:
        LocalProtocolError: ``encoding`` is not available here.
    """
    raw = _encoder.encode(list(deltas))
    return compress(raw, encoding), len(raw)


def msgpack_array(parts: Sequence[bytes]) -> bytes:
    """A msgpack array of already-encoded items: what ``encode`` of the list would give."""
    n = len(parts)
    if n < 16:
        head = bytes([0x90 | n])
    elif n < 1 << 16:
        head = b"\xdc" + n.to_bytes(2, "big")
    else:
        head = b"\xdd" + n.to_bytes(4, "big")
    return head + b"".join(parts)


def compress(raw: bytes, encoding: str) -> bytes:
    """Compress a payload with ``encoding``.

    Raises:
        LocalProtocolError: ``encoding`` is not available here.
    """
    if encoding == "zstd" and _zstd is not None:
        return _zstd.compress(raw)
    if encoding == "zlib":
        return zlib.compress(raw, 6)
    if encoding == "none":
        return raw
    raise LocalProtocolError(f"encoding {encoding!r} is not available")


def decode_deltas(payload: bytes, encoding: str, *, max_bytes: int) -> list[EntityDelta]:
    """Decompress (at most ``max_bytes``) and decode a batch payload.

    Raises:
        RemoteProtocolError: unknown encoding, corrupt data, or over ``max_bytes``.
    """
    return decode_payload(payload, encoding, max_bytes=max_bytes)[0]


def decode_payload(
    payload: bytes, encoding: str, *, max_bytes: int
) -> tuple[list[EntityDelta], int]:
    """:func:`decode_deltas`, and the payload's size before compression.

    Raises:
        RemoteProtocolError: unknown encoding, corrupt data, or over ``max_bytes``.
    """
    raw = _decompress(payload, encoding, max_bytes)
    try:
        return _decoder.decode(raw), len(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise RemoteProtocolError(f"malformed batch payload: {exc}") from exc


def _decompress(payload: bytes, encoding: str, max_bytes: int) -> bytes:
    try:
        if encoding == "none":
            raw = payload
        elif encoding == "zlib":
            inflater = zlib.decompressobj()
            raw = inflater.decompress(payload, max_bytes + 1)
        elif encoding == "zstd" and zstandard is not None:
            reader = zstandard.ZstdDecompressor().stream_reader(payload)
            raw = reader.read(max_bytes + 1)
        else:
            raise RemoteProtocolError(f"unknown payload encoding {encoding!r}")
    except _CORRUPT as exc:
        raise RemoteProtocolError(f"corrupt {encoding} payload: {exc}") from exc
    if len(raw) > max_bytes:
        raise RemoteProtocolError(f"batch payload expands past {max_bytes} bytes")
    return raw
