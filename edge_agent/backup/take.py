"""Take a backup of a running service: SQLite online backups and JetStream snapshots.

Runs beside the service (the ``backup`` command's own process), which keeps running:
the SQLite files are read through a read-only connection (WAL: the service's writer
is not held up) and the streams through the JetStream API of the service's NATS. The
backup is written to a hidden directory beside ``DEST`` and renamed to ``DEST`` only
when complete and synced, so ``DEST`` is a whole backup or absent.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

from nats.aio.client import Client

from edge_agent import __version__
from edge_agent.backup.files import copy_private, create_private, fsync_tree, measure
from edge_agent.backup.manifest import (
    FORMAT,
    BackupError,
    FileEntry,
    Manifest,
    StreamEntry,
    encode_manifest,
)
from edge_agent.backup.plan import StatePlan
from edge_agent.graph.positions import copy_database
from edge_agent.nats.snapshot import snapshot_stream

__all__ = ["MANIFEST", "take_backup"]

MANIFEST = "manifest.json"


def _prepare(dest: Path) -> Path:
    """The work directory beside ``dest`` (0700); ``dest`` must not hold anything."""
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BackupError(f"{dest} exists and is not an empty directory")
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = dest.parent / f".{dest.name}.partial-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(mode=0o700)
    for part in ("sqlite", "streams", "secrets"):
        (work / part).mkdir(mode=0o700)
    return work


async def _snapshot_streams(plan: StatePlan, nc: Client, work: Path) -> list[StreamEntry]:
    js = nc.jetstream()
    entries = []
    for name in plan.streams:
        try:
            created = str((await js.stream_info(name)).created)
        except Exception as exc:  # nats-py raises several unrelated types here
            raise BackupError(f"stream {name}: {exc or type(exc).__name__}") from exc
        path = f"streams/{name}.snapshot"
        create_private(work / path)
        with (work / path).open("wb") as file:
            # Without consumers: each service makes its consumers again at start, from
            # the positions in its SQLite file.
            info = await snapshot_stream(
                nc, name, file.write, max_bytes=2 * plan.stream_bytes, consumers=False
            )
        entries.append(
            StreamEntry(
                name=name,
                path=path,
                first_seq=info.first_seq,
                last_seq=info.last_seq,
                messages=info.messages,
                created=created,
                config=info.config,
                state=info.state,
            )
        )
    return entries


async def _copy_databases(plan: StatePlan, work: Path) -> dict[str, int]:
    positions: dict[str, int] = {}
    for name in (*plan.sqlite, *plan.optional_sqlite):
        source = plan.state_dir / name
        if not source.exists():
            if name in plan.optional_sqlite:
                continue
            raise BackupError(f"{source} does not exist: is state_dir right?")
        copied = await asyncio.to_thread(
            copy_database, source, work / "sqlite" / name, plan.extra_positions
        )
        positions.update(copied)
    return positions


def _copy_secrets(plan: StatePlan, work: Path) -> None:
    for name, relative in plan.secrets:
        source = plan.state_dir / relative
        if source.is_file():
            copy_private(source, work / "secrets" / name)


async def take_backup(
    plan: StatePlan,
    nc: Client,
    dest: Path,
    *,
    include_secrets: bool = False,
    now: datetime | None = None,
) -> Manifest:
    """Back up the service described by ``plan`` into the new directory ``dest``.

    Args:
        nc: a client of the service's NATS (for the stream snapshots).
        include_secrets: copy the secret files too (the backup is 0700/0600 always).
        now: the time recorded in the manifest (default: the clock).

    Returns:
        The manifest written to ``dest/manifest.json``.

    Raises:
        BackupError: ``dest`` is not empty, a file is missing or unreadable.
        NatsServerError: a stream snapshot failed.
    """
    work = _prepare(dest)
    try:
        streams: list[StreamEntry] = []
        if plan.streams_first:
            streams = await _snapshot_streams(plan, nc, work)
        positions = await _copy_databases(plan, work)
        if not plan.streams_first:
            streams = await _snapshot_streams(plan, nc, work)
        if include_secrets:
            _copy_secrets(plan, work)
        files = []
        for part in ("sqlite", "streams", "secrets"):
            for path in sorted((work / part).iterdir()):
                size, digest = await asyncio.to_thread(measure, path)
                assert size is not None  # just written by us
                files.append(FileEntry(f"{part}/{path.name}", size, digest))
        manifest = Manifest(
            format=FORMAT,
            kind=plan.kind,
            id=plan.service_id,
            version=__version__,
            created_at=(now or datetime.now(UTC)).isoformat(timespec="seconds"),
            files=files,
            streams=streams,
            positions=positions,
            secrets=include_secrets,
        )
        create_private(work / MANIFEST)
        (work / MANIFEST).write_bytes(encode_manifest(manifest))
        await asyncio.to_thread(fsync_tree, work)
        if dest.exists():
            dest.rmdir()  # empty, checked above
        os.replace(work, dest)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return manifest
