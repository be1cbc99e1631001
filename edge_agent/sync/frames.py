"""Sync frames: tagged msgspec Structs, encoded as msgpack, one per WebSocket message.

Compatibility rules: a new field gets a default, a tag is never reused, and decoders
ignore unknown fields, so an edge and a hub one version apart still understand each
other.
"""

from __future__ import annotations

from typing import Annotated, Final

import msgspec

from edge_agent.errors import RemoteProtocolError
from edge_agent.model import (
    MAX_ID_LENGTH,
    EntityIdText,
    EntityTypeText,
    Priority,
    Scalar,
    Weight,
)

__all__ = [
    "ENCODINGS",
    "MAX_SHARE_ENTITIES",
    "PROTOCOL_VERSION",
    "Ack",
    "Batch",
    "Challenge",
    "EntityDelta",
    "Frame",
    "Hello",
    "Nack",
    "Proof",
    "Share",
    "ShareAck",
    "ShareEnd",
    "Slow",
    "Welcome",
    "decode_frame",
    "encode_frame",
]

#: 2: an enrolled edge answers the hub's Challenge with a Proof of its device key.
PROTOCOL_VERSION: Final = 2
#: Entities in one Share frame at most (the frame's bytes are bounded by the link's
#: frame limit as well).
MAX_SHARE_ENTITIES: Final = 512
#: Payload encodings, most preferred first.
ENCODINGS: Final = ("zstd", "zlib", "none")


class _Frame(msgspec.Struct, frozen=True, kw_only=True, tag_field="t", tag=str.lower):
    """Base of every frame; the tag ``t`` is the lower-case class name."""


class Hello(_Frame, frozen=True):
    """Edge → hub, first frame: who I am, my credential, what I have had acked."""

    edge_id: str
    token: str = ""
    version: int = PROTOCOL_VERSION
    acked_seq: int = 0
    encodings: tuple[str, ...] = ENCODINGS
    #: Ask for a full resync of this edge's share (its store was lost or replaced).
    #: Added in version 2 without a version bump: a hub that does not know it ignores
    #: it and answers a Welcome without ``resync``, which tells the edge.
    resync: bool = False


class Challenge(_Frame, frozen=True):
    """Hub → edge, after a Hello whose credential is bound to a device key: sign this."""

    nonce: Annotated[bytes, msgspec.Meta(min_length=16, max_length=64)]


class Proof(_Frame, frozen=True):
    """Edge → hub: the device key's signature over the Challenge's nonce
    (:func:`~edge_agent.provision.identity.possession_message`, purpose ``hello``)."""

    signature: Annotated[bytes, msgspec.Meta(max_length=128)]


class Welcome(_Frame, frozen=True):
    """Hub → edge: accepted with the hub's high-water mark and limits, or refused."""

    accepted: bool
    hwm: int = 0
    reason: str = ""
    max_batch_bytes: int = 1 << 20
    max_bytes_per_second: int = 0
    encoding: str = "zstd"
    #: The hub will stream this edge's share (Share frames, then one ShareEnd).
    resync: bool = False
    #: The hub lacks batches this edge had acked (it was restored from a backup, or
    #: rebuilt from a log that had lost them): the edge queues everything it wrote again.
    full_resend: bool = False


class Batch(_Frame, frozen=True):
    """Edge → hub: ``count`` entity deltas, compressed, under a monotonic ``seq``."""

    seq: int
    encoding: str
    count: int
    payload: bytes


class Ack(_Frame, frozen=True):
    """Hub → edge: batch ``seq`` is durable on the hub."""

    seq: int


class Nack(_Frame, frozen=True):
    """Hub → edge: batch ``seq`` was not taken; send it again after ``retry_after`` s."""

    seq: int
    reason: str
    retry_after: float = 1.0


class Slow(_Frame, frozen=True):
    """Hub → edge: back-pressure; keep at most ``window`` batches in flight."""

    window: int = 1
    max_bytes_per_second: int = 0


class Share(_Frame, frozen=True):
    """Hub → edge, during a resync: ``count`` entities of the edge's own share, as whole
    (``replace``) deltas, compressed like a batch payload; chunks are numbered from 1."""

    chunk: int
    encoding: str
    count: Annotated[int, msgspec.Meta(ge=0, le=MAX_SHARE_ENTITIES)]
    payload: bytes


class ShareAck(_Frame, frozen=True):
    """Edge → hub: share ``chunk`` is applied; the hub may send the next."""

    chunk: int


class ShareEnd(_Frame, frozen=True):
    """Hub → edge: the share is complete after ``chunks`` chunks holding ``entities``;
    ``skipped`` entities were too large for one frame and are not in it."""

    chunks: Annotated[int, msgspec.Meta(ge=0)]
    entities: Annotated[int, msgspec.Meta(ge=0)]
    skipped: Annotated[int, msgspec.Meta(ge=0)] = 0


Frame = (
    Hello | Challenge | Proof | Welcome | Batch | Ack | Nack | Slow | Share | ShareAck | ShareEnd
)


_Alias = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_LENGTH)]
# What an SQLite INTEGER holds: a larger version or stamp would fail every hub's apply.
_Int64 = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]


class EntityDelta(msgspec.Struct, frozen=True, array_like=True):
    """What changed in one entity since the hub last acked it (array-encoded: compact).

    ``triples`` are (predicate, value, timestamp ms, source); ``edges`` are
    (predicate, object, weight, timestamp ms, source). A deleted entity has none; a
    ``replace`` delta carries the whole entity, which replaces the hub's copy (it was
    deleted and made again since the hub last heard of it).
    """

    entity_id: EntityIdText
    entity_type: EntityTypeText
    version: _Int64
    updated_at: _Int64
    priority: Priority
    triples: list[tuple[str, Scalar, _Int64, str]] = msgspec.field(default_factory=list)
    edges: list[tuple[str, EntityIdText, Weight, _Int64, str]] = msgspec.field(default_factory=list)
    aliases: list[_Alias] = msgspec.field(default_factory=list)
    deleted: bool = False
    replace: bool = False


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Frame)


def encode_frame(frame: Frame) -> bytes:
    """One frame as the bytes of one binary WebSocket message."""
    return _encoder.encode(frame)


def decode_frame(data: bytes, *, max_bytes: int) -> Frame:
    """Decode one frame.

    Raises:
        RemoteProtocolError: the frame is over ``max_bytes``, malformed or unknown.
    """
    if len(data) > max_bytes:
        raise RemoteProtocolError(f"frame of {len(data)} bytes is over the {max_bytes} limit")
    try:
        frame: Frame = _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise RemoteProtocolError(f"malformed frame: {exc}") from exc
    return frame
