"""JetStream stream snapshots and restores through the JetStream API.

nats-py has no helper for these, so this is the small protocol, as nats-server
(``server/jetstream_api.go``: ``jsStreamSnapshotRequest``, ``streamSnapshot``,
``jsStreamRestoreRequest``, ``processStreamRestore``) speaks it:

Snapshot:
1. Request ``$JS.API.STREAM.SNAPSHOT.<stream>`` with ``{"deliver_subject", "chunk_size",
   "window_size", "no_consumers"}``; the reply holds the stream's ``config`` and
   ``state`` at the moment of the snapshot (or an ``error``).
2. Chunks arrive on ``deliver_subject``, each with a reply subject: publishing anything
   to it is the flow-control ack that frees a slot of the window. The server stops
   (``408 No Flow Response``) when no ack comes for 5 s.
3. The last data chunk may come without a reply subject; the end is an empty message
   whose status header says how it went: ``204`` done, ``408``/``500`` failed.

Restore (the stream must not exist):
1. Request ``$JS.API.STREAM.RESTORE.<stream>`` with ``{"config", "state"}``; the reply
   names the ``deliver_subject`` to send the chunks to.
2. Each chunk is a request there; an empty reply means "go on", a JSON reply is an
   error. An empty request ends the transfer, and its reply is the stream's info (or an
   ``error``).

The message classification is pure (:func:`classify_chunk`); the two coroutines are
the shells.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

import msgspec
import nats.errors
from nats.aio.client import Client

from edge_agent.errors import NatsServerError

__all__ = [
    "CHUNK_BYTES",
    "ChunkKind",
    "SnapshotInfo",
    "classify_chunk",
    "restore_stream",
    "snapshot_stream",
]

#: Chunk size asked for (the server clamps it to 1 KiB..1 MiB); well under max_payload.
CHUNK_BYTES = 128 << 10
#: Chunks in flight: a window of a few chunks keeps memory small on a Pi.
_WINDOW_CHUNKS = 8
_API_TIMEOUT_S = 10.0
#: The server gives up on a silent receiver after 5 s; this side waits a little longer.
_CHUNK_TIMEOUT_S = 15.0
_json = msgspec.json.Decoder(dict[str, Any])


class ChunkKind(enum.Enum):
    """What one message on a snapshot's deliver subject is."""

    DATA = "data"  # bytes of the snapshot; ack it if it has a reply subject
    END = "end"  # the snapshot is complete
    FAILED = "failed"  # the server gave up; the description says why


class SnapshotInfo(msgspec.Struct, frozen=True):
    """A stream as the snapshot caught it: its config and state (JetStream's JSON)."""

    config: dict[str, Any]
    state: dict[str, Any]

    @property
    def last_seq(self) -> int:
        """The stream's last sequence at the snapshot."""
        return int(self.state.get("last_seq", 0))

    @property
    def first_seq(self) -> int:
        """The stream's first sequence at the snapshot."""
        return int(self.state.get("first_seq", 0))

    @property
    def messages(self) -> int:
        """Messages in the stream at the snapshot."""
        return int(self.state.get("messages", 0))


def classify_chunk(
    data: bytes, reply: str, headers: dict[str, str] | None
) -> tuple[ChunkKind, str]:
    """Classify a message received on a snapshot's deliver subject.

    Returns:
        (kind, the failure's description for ``FAILED``, else "").
    """
    status = (headers or {}).get("Status", "")
    if data:
        return ChunkKind.DATA, ""
    if status and status != "204":
        description = (headers or {}).get("Description", "")
        return ChunkKind.FAILED, f"{status} {description}".strip()
    if reply:  # an empty chunk that wants an ack is not the end: ack and go on
        return ChunkKind.DATA, ""
    return ChunkKind.END, ""


def _api_error(stream: str, what: str, answer: dict[str, Any]) -> NatsServerError | None:
    error = answer.get("error")
    if not error:
        return None
    description = error.get("description", error) if isinstance(error, dict) else error
    return NatsServerError(f"{what} of stream {stream}: {description}")


def _decode(stream: str, what: str, data: bytes) -> dict[str, Any]:
    try:
        return _json.decode(data)
    except msgspec.DecodeError as exc:
        raise NatsServerError(f"{what} of stream {stream}: bad answer: {exc}") from exc


async def snapshot_stream(
    nc: Client,
    stream: str,
    write: Callable[[bytes], object],
    *,
    max_bytes: int,
    consumers: bool = True,
) -> SnapshotInfo:
    """Snapshot ``stream`` through the JetStream API, passing each chunk to ``write``.

    Args:
        nc: a connected client with access to the JetStream API.
        write: called with each chunk in order (e.g. a file's ``write``).
        max_bytes: give up when the snapshot grows past this (a bound, not an estimate).
        consumers: include the stream's consumers.

    Raises:
        NatsServerError: the server refused, failed, went silent, or the snapshot is
            over ``max_bytes``.
    """
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, pending_bytes_limit=4 * _WINDOW_CHUNKS * CHUNK_BYTES)
    try:
        request = msgspec.json.encode(
            {
                "deliver_subject": inbox,
                "chunk_size": CHUNK_BYTES,
                "window_size": _WINDOW_CHUNKS * CHUNK_BYTES,
                "no_consumers": not consumers,
            }
        )
        try:
            reply = await nc.request(
                f"$JS.API.STREAM.SNAPSHOT.{stream}", request, timeout=_API_TIMEOUT_S
            )
        except (TimeoutError, nats.errors.Error) as exc:
            raise NatsServerError(f"snapshot of stream {stream}: {exc or 'no answer'}") from exc
        answer = _decode(stream, "snapshot", reply.data)
        if (error := _api_error(stream, "snapshot", answer)) is not None:
            raise error
        info = SnapshotInfo(answer.get("config") or {}, answer.get("state") or {})
        total = 0
        while True:
            try:
                msg = await sub.next_msg(timeout=_CHUNK_TIMEOUT_S)
            except TimeoutError as exc:
                raise NatsServerError(f"snapshot of stream {stream}: stalled") from exc
            kind, why = classify_chunk(msg.data, msg.reply, msg.headers)
            if kind is ChunkKind.END:
                return info
            if kind is ChunkKind.FAILED:
                raise NatsServerError(f"snapshot of stream {stream} failed: {why}")
            total += len(msg.data)
            if total > max_bytes:
                raise NatsServerError(
                    f"snapshot of stream {stream} is over the {max_bytes}-byte limit"
                )
            write(msg.data)
            if msg.reply:
                await nc.publish(msg.reply, b"")
    finally:
        await sub.unsubscribe()


async def restore_stream(
    nc: Client,
    info: SnapshotInfo,
    read: Callable[[int], bytes],
) -> dict[str, Any]:
    """Restore a stream (which must not exist) from a snapshot read with ``read(n)``.

    Args:
        info: the config and state the snapshot was taken with.
        read: returns the next up to ``n`` bytes of the snapshot, ``b""`` at its end.

    Returns:
        The restored stream's info as JetStream reports it.

    Raises:
        NatsServerError: the server refused the restore or a chunk, or went silent.
    """
    stream = str(info.config.get("name", ""))
    request = msgspec.json.encode({"config": info.config, "state": info.state})
    try:
        reply = await nc.request(
            f"$JS.API.STREAM.RESTORE.{stream}", request, timeout=_API_TIMEOUT_S
        )
        answer = _decode(stream, "restore", reply.data)
        if (error := _api_error(stream, "restore", answer)) is not None:
            raise error
        deliver = str(answer.get("deliver_subject", ""))
        if not deliver:
            raise NatsServerError(f"restore of stream {stream}: no deliver subject")
        # One chunk at a time: each reply is the server's flow control.
        while chunk := read(CHUNK_BYTES):
            reply = await nc.request(deliver, chunk, timeout=_CHUNK_TIMEOUT_S)
            if reply.data:
                failed = _api_error(stream, "restore", _decode(stream, "restore", reply.data))
                raise failed or NatsServerError(f"restore of stream {stream}: chunk refused")
        reply = await nc.request(deliver, b"", timeout=2 * _CHUNK_TIMEOUT_S)
    except (TimeoutError, nats.errors.Error) as exc:
        raise NatsServerError(f"restore of stream {stream}: {exc or 'no answer'}") from exc
    done = _decode(stream, "restore", reply.data)
    if (error := _api_error(stream, "restore", done)) is not None:
        raise error
    done.pop("type", None)  # the rest is the stream's info, as stream_info answers it
    return done
