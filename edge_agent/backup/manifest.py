"""The backup's manifest: what a backup holds, and whether it may be restored here.

A backup is a directory: ``manifest.json`` and the files it lists (SQLite copies,
JetStream stream snapshots, and with ``--include-secrets`` the secret files), each with
its size and sha256. Everything read from a backup is hostile until checked: the
manifest is bounded in size and decoded into these Structs (unknown fields are
refused), every path must be one of the plain relative names below (no ``..``, no
absolute path, no directory outside the backup), and every file must have exactly its
recorded size and checksum before anything of the state directory is touched.

No I/O here: the shells in :mod:`edge_agent.backup.take` and
:mod:`edge_agent.backup.restore` read and write the files.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Final, Literal

import msgspec

from edge_agent.errors import SemStreamsError

__all__ = [
    "FORMAT",
    "MAX_MANIFEST_BYTES",
    "BackupError",
    "FileEntry",
    "Kind",
    "Manifest",
    "StreamEntry",
    "an",
    "check_file",
    "check_manifest",
    "decode_manifest",
    "encode_manifest",
]

#: The backup format this code writes and reads; a newer one is refused.
FORMAT: Final = 1
#: The most a manifest may weigh: it lists a handful of files.
MAX_MANIFEST_BYTES: Final = 1 << 20
Kind = Literal["edge", "hub"]
# A path inside the backup: one of its three folders, then a plain file name.
_PATH = r"^(sqlite|streams|secrets)/[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_SHA256 = r"^[0-9a-f]{64}$"
_Count = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]


def an(kind: Kind) -> str:
    """``kind`` with its article, for messages: "an edge", "a hub"."""
    return "an edge" if kind == "edge" else "a hub"


class BackupError(SemStreamsError):
    """A backup cannot be taken, or is refused for restore; the message says why."""


class FileEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One file of the backup: its path inside it, its size and its sha256 (hex)."""

    path: Annotated[str, msgspec.Meta(pattern=_PATH)]
    size: _Count
    sha256: Annotated[str, msgspec.Meta(pattern=_SHA256)]


class StreamEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One JetStream stream's snapshot: its file, the stream's sequences and message
    count at the snapshot, when the stream was made, and its config and state as
    JetStream reported them (passed back as they are on restore)."""

    name: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    path: Annotated[str, msgspec.Meta(pattern=_PATH)]
    first_seq: _Count
    last_seq: _Count
    messages: _Count
    created: str
    config: dict[str, Any]
    state: dict[str, Any]


class Manifest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a backup holds.

    Attributes:
        format: the backup format (:data:`FORMAT` when written by this code).
        kind: ``edge`` or ``hub``: a backup restores into the same kind only.
        id: the edge's (device's) or hub's id; restore refuses another one.
        version: the software version that took it.
        created_at: when it was taken (RFC 3339, UTC).
        files: every file, with size and checksum (streams and secrets included).
        streams: the stream snapshots among them.
        positions: where the state stood, read from the SQLite copies: each consumer's
            applied stream sequence (``consumer:<name>``), the edge's sync position
            (``sync:acked_seq``, ``sync:next_seq``), the hub's per-edge batch seq
            (``edge:<id>``).
        secrets: whether secret files are included.
    """

    format: Annotated[int, msgspec.Meta(ge=1)]
    kind: Kind
    id: Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
    version: str
    created_at: str
    files: list[FileEntry]
    streams: list[StreamEntry] = msgspec.field(default_factory=list)
    positions: dict[str, int] = msgspec.field(default_factory=dict)
    secrets: bool = False

    def file(self, path: str) -> FileEntry | None:
        """The entry of ``path``, if the backup lists it."""
        return next((entry for entry in self.files if entry.path == path), None)


_encoder = msgspec.json.Encoder()


def encode_manifest(manifest: Manifest) -> bytes:
    """The manifest as indented JSON (people read it)."""
    return msgspec.json.format(_encoder.encode(manifest), indent=2) + b"\n"


def decode_manifest(data: bytes) -> Manifest:
    """Decode a manifest read from a backup.

    Raises:
        BackupError: too large, not JSON, or not a manifest (the cause named).
    """
    if len(data) > MAX_MANIFEST_BYTES:
        raise BackupError(f"manifest.json is over {MAX_MANIFEST_BYTES} bytes")
    # A newer format may carry fields this one refuses: say "newer", not "unknown field".
    try:
        head = msgspec.json.decode(data, type=dict[str, Any])
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise BackupError(f"manifest.json is damaged: {exc}") from exc
    found = head.get("format")
    if isinstance(found, int) and found > FORMAT:
        raise BackupError(
            f"backup format {found} is newer than this version reads ({FORMAT}): "
            "restore it with the version that took it, or a newer one"
        )
    try:
        return msgspec.json.decode(data, type=Manifest)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise BackupError(f"manifest.json is damaged: {exc}") from exc


def check_manifest(manifest: Manifest, *, kind: Kind, service_id: str) -> None:
    """Refuse a backup that belongs elsewhere: another kind, another id, a newer format,
    or a listing that contradicts itself.

    Raises:
        BackupError: the reason, naming both sides.
    """
    if manifest.format > FORMAT:
        raise BackupError(f"backup format {manifest.format} is newer than {FORMAT}")
    if manifest.kind != kind:
        raise BackupError(f"this is {an(manifest.kind)} backup; it cannot restore {an(kind)}")
    if manifest.id != service_id:
        raise BackupError(
            f"this backup is of {manifest.kind} {manifest.id!r}, not of {service_id!r}"
        )
    paths = [entry.path for entry in manifest.files]
    if len(set(paths)) != len(paths):
        raise BackupError("manifest.json lists a file twice")
    for stream in manifest.streams:
        if manifest.file(stream.path) is None:
            raise BackupError(f"manifest.json: stream {stream.name}'s {stream.path} is not listed")
        if stream.config.get("name") != stream.name:
            raise BackupError(f"manifest.json: stream {stream.name}'s config names another")


_SHA = re.compile(_SHA256)


def check_file(entry: FileEntry, size: int | None, sha256: str) -> None:
    """Compare a file of the backup with its entry.

    Args:
        size: the file's size, ``None`` when it is missing.
        sha256: its checksum (hex), as read.

    Raises:
        BackupError: missing, truncated or grown, or its content differs.
    """
    if size is None:
        raise BackupError(f"{entry.path} is missing from the backup")
    if size != entry.size:
        change = "truncated" if size < entry.size else "longer than recorded"
        raise BackupError(f"{entry.path} is {change} ({size} bytes, {entry.size} recorded)")
    if not _SHA.match(sha256) or sha256 != entry.sha256:
        raise BackupError(f"{entry.path} is damaged: its sha256 differs from the manifest's")
