"""The backup manifest's checks (pure: no files, no servers)."""

from __future__ import annotations

import msgspec
import pytest

from edge_agent.backup.manifest import (
    FORMAT,
    BackupError,
    FileEntry,
    Manifest,
    StreamEntry,
    check_file,
    check_manifest,
    decode_manifest,
    encode_manifest,
)
from edge_agent.nats.snapshot import ChunkKind, classify_chunk

SHA = "ab" * 32


def manifest(**changes: object) -> Manifest:
    base = Manifest(
        format=FORMAT,
        kind="edge",
        id="edge-1",
        version="0.1.0",
        created_at="2026-12-05T01:00:00+00:00",
        files=[
            FileEntry("sqlite/graph.db", 4096, SHA),
            FileEntry("streams/GRAPH_ENTITIES.snapshot", 182, SHA),
        ],
        streams=[
            StreamEntry(
                name="GRAPH_ENTITIES",
                path="streams/GRAPH_ENTITIES.snapshot",
                first_seq=1,
                last_seq=10,
                messages=0,
                created="2026-12-05 01:00:00+00:00",
                config={"name": "GRAPH_ENTITIES"},
                state={"last_seq": 10},
            )
        ],
        positions={"consumer:graph-edge-1-all": 10},
    )
    return msgspec.structs.replace(base, **changes)


def test_a_manifest_round_trips_and_passes_its_own_checks() -> None:
    written = manifest()
    read = decode_manifest(encode_manifest(written))
    assert read == written
    check_manifest(read, kind="edge", service_id="edge-1")


@pytest.mark.parametrize(
    ("changes", "kind", "service_id", "reason"),
    [
        ({}, "hub", "edge-1", "this is an edge backup; it cannot restore a hub"),
        ({}, "edge", "edge-2", "this backup is of edge 'edge-1', not of 'edge-2'"),
        ({"kind": "hub", "id": "hub"}, "edge", "hub", "this is a hub backup"),
        ({"files": [FileEntry("sqlite/graph.db", 1, SHA)] * 2}, "edge", "edge-1", "twice"),
        ({"files": [FileEntry("sqlite/graph.db", 1, SHA)]}, "edge", "edge-1", "is not listed"),
    ],
)
def test_a_manifest_of_something_else_is_refused_with_the_reason(
    changes: dict[str, object], kind: str, service_id: str, reason: str
) -> None:
    with pytest.raises(BackupError, match=reason):
        check_manifest(manifest(**changes), kind=kind, service_id=service_id)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"not json", "damaged"),
        (b'{"format": 2, "whatever": true}', "backup format 2 is newer than this version reads"),
        (b'{"format": 1}', "damaged"),
        (b" " * ((1 << 20) + 1), "over"),
    ],
)
def test_a_damaged_or_newer_manifest_is_refused(data: bytes, reason: str) -> None:
    with pytest.raises(BackupError, match=reason):
        decode_manifest(data)


@pytest.mark.parametrize(
    "path",
    ["../graph.db", "/etc/passwd", "sqlite/../../x", "sqlite/", "other/graph.db", "sqlite/a/b"],
)
def test_a_path_out_of_the_backup_is_refused(path: str) -> None:
    raw = msgspec.json.decode(encode_manifest(manifest()))
    raw["files"][0]["path"] = path
    with pytest.raises(BackupError, match="damaged"):
        decode_manifest(msgspec.json.encode(raw))


def test_a_file_must_have_its_size_and_checksum() -> None:
    entry = FileEntry("sqlite/graph.db", 4096, SHA)
    check_file(entry, 4096, SHA)
    with pytest.raises(BackupError, match="missing"):
        check_file(entry, None, "")
    with pytest.raises(BackupError, match=r"truncated \(4000 bytes, 4096 recorded\)"):
        check_file(entry, 4000, SHA)
    with pytest.raises(BackupError, match="longer than recorded"):
        check_file(entry, 5000, SHA)
    with pytest.raises(BackupError, match="damaged"):
        check_file(entry, 4096, "cd" * 32)


@pytest.mark.parametrize(
    ("data", "reply", "headers", "kind"),
    [
        (b"chunk", "$JS.SNAPSHOT.ACK.S.x.5.1", None, ChunkKind.DATA),
        (b"last", "", None, ChunkKind.DATA),  # the last chunk may come without a reply
        (b"", "", {"Status": "204"}, ChunkKind.END),
        (b"", "", None, ChunkKind.END),  # an empty stream's snapshot
        (b"", "", {"Status": "408", "Description": "No Flow Response"}, ChunkKind.FAILED),
        (b"", "", {"Status": "500", "Description": "boom"}, ChunkKind.FAILED),
    ],
)
def test_snapshot_messages_are_classified(
    data: bytes, reply: str, headers: dict[str, str] | None, kind: ChunkKind
) -> None:
    found, why = classify_chunk(data, reply, headers)
    assert found is kind
    assert (why != "") == (kind is ChunkKind.FAILED)
