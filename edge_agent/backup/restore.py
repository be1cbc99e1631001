"""Restore a backup into a stopped service's state directory.

Two steps, so that a refused backup touches nothing:

1. :func:`read_backup` checks everything first: the manifest (size, format, kind, id),
   that every file is one the plan knows and is there with its recorded size and
   sha256, and that the plan's required parts are all present.
2. :func:`restore_backup` checks the service is stopped and its state directory holds
   none of the files it would write, then copies the SQLite files and secrets in,
   and restores each stream through the JetStream API of a nats-server it runs on the
   state directory for the purpose (the project's :class:`EmbeddedNatsServer`, on a
   free loopback port). JetStream stamps a restored stream with a new creation time,
   so the graph's positions are re-keyed to it; and where the graph applied events
   past the end of the stream's snapshot (:attr:`StatePlan.follow_position`), the
   stream's next sequence is moved past them. If any of it fails, what it wrote is
   removed again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
from pathlib import Path

import msgspec
import nats
from nats.aio.client import Client

from edge_agent.backup.files import copy_private, fsync_tree, measure
from edge_agent.backup.manifest import (
    MAX_MANIFEST_BYTES,
    BackupError,
    Manifest,
    an,
    check_file,
    check_manifest,
    decode_manifest,
)
from edge_agent.backup.plan import StatePlan
from edge_agent.backup.take import MANIFEST
from edge_agent.graph.positions import applied_seq, rekey_stream
from edge_agent.nats.client import port_answers
from edge_agent.nats.server import EmbeddedNatsServer
from edge_agent.nats.snapshot import SnapshotInfo, restore_stream

__all__ = ["read_backup", "restore_backup"]


def read_backup(src: Path, plan: StatePlan, service_id: str | None = None) -> Manifest:
    """The manifest of the backup in ``src``, once every check has passed.

    Args:
        service_id: the id the backup must be of (default: the plan's).

    Raises:
        BackupError: the first reason it cannot be restored here.
    """
    path = src / MANIFEST
    if not src.is_dir():
        raise BackupError(f"{src} is not a backup (not a directory)")
    size, _ = measure(path)
    if size is None:
        raise BackupError(f"{src} is not a backup: it has no {MANIFEST}")
    if size > MAX_MANIFEST_BYTES:
        raise BackupError(f"{MANIFEST} is over {MAX_MANIFEST_BYTES} bytes")
    manifest = decode_manifest(path.read_bytes())
    check_manifest(manifest, kind=plan.kind, service_id=service_id or plan.service_id)
    for entry in manifest.files:
        part, name = entry.path.split("/", 1)
        known = (
            (part == "sqlite" and plan.knows_sqlite(name))
            or (part == "secrets" and plan.secret_path(name) is not None)
            or (part == "streams" and any(s.path == entry.path for s in manifest.streams))
        )
        if not known:
            raise BackupError(f"{entry.path} is not part of {an(plan.kind)}'s state")
        check_file(entry, *measure(src / entry.path))
    for name in plan.sqlite:
        if manifest.file(f"sqlite/{name}") is None:
            raise BackupError(f"the backup has no {name}")
    names = {stream.name for stream in manifest.streams}
    if unknown := names - set(plan.streams):
        raise BackupError(f"stream {sorted(unknown)[0]} is not one of {an(plan.kind)}'s")
    if missing := set(plan.streams) - names:
        raise BackupError(f"the backup has no snapshot of stream {sorted(missing)[0]}")
    return manifest


def _targets(manifest: Manifest, plan: StatePlan) -> list[tuple[str, Path]]:
    """(path in the backup, where it goes) of the SQLite files and secrets."""
    targets = []
    for entry in manifest.files:
        part, name = entry.path.split("/", 1)
        if part == "sqlite":
            targets.append((entry.path, plan.state_dir / name))
        elif part == "secrets" and (secret := plan.secret_path(name)) is not None:
            targets.append((entry.path, secret))
    return targets


async def _check_stopped(plan: StatePlan, ports: list[int]) -> None:
    for port in ports:
        if port and await port_answers("127.0.0.1", port):
            raise BackupError(
                f"something answers on port {port}: stop the {plan.kind} before restoring"
            )


def _check_empty(manifest: Manifest, plan: StatePlan) -> None:
    for _, target in _targets(manifest, plan):
        if target.exists():
            raise BackupError(
                f"{target} exists: restore writes into an emptied state directory;"
                " move the old state away first"
            )
    for stream in manifest.streams:
        held = plan.state_dir / "jetstream"
        if held.exists() and any(held.glob(f"*/streams/{stream.name}")):
            raise BackupError(
                f"{held} already holds stream {stream.name}: move the old state away first"
            )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _copy_in(src: Path, manifest: Manifest, plan: StatePlan) -> None:
    for path, target in _targets(manifest, plan):
        copy_private(src / path, target)  # 0600 whatever the file: the graph is private too


async def _restore_streams(src: Path, manifest: Manifest, plan: StatePlan, nc: Client) -> list[str]:
    js = nc.jetstream()
    lines = []
    for stream in manifest.streams:
        with (src / stream.path).open("rb") as file:
            await restore_stream(nc, SnapshotInfo(stream.config, stream.state), file.read)
        info = await js.stream_info(stream.name)
        created = str(info.created)
        graph = plan.state_dir / plan.sqlite[0]  # the positions live in the first file
        await asyncio.to_thread(rekey_stream, graph, stream.created, created)
        last = int(info.state.last_seq)
        note = ""
        if stream.name == plan.follow_position:
            applied = await asyncio.to_thread(applied_seq, graph, created)
            if applied > last:
                # Purging up to a sequence past the last sets the stream's next one.
                await js.purge_stream(stream.name, seq=applied + 1)
                note = f" (moved past the graph's position {applied})"
                info = await js.stream_info(stream.name)
        lines.append(
            f"stream {stream.name}: {info.state.messages} messages,"
            f" next sequence {int(info.state.last_seq) + 1}{note}"
        )
    return lines


async def restore_backup(
    src: Path, manifest: Manifest, plan: StatePlan, *, ports: list[int], streams: bool = True
) -> list[str]:
    """Restore the checked backup in ``src`` (see :func:`read_backup`) into the plan's
    state directory; what was restored, one line each.

    Args:
        ports: the service's ports (API, embedded NATS): if any answers, it is running.
        streams: restore the streams (the service runs an embedded server on the state
            directory); ``False`` when they live on an external NATS, which kept them.

    Raises:
        BackupError: the service runs, or the state directory holds state already.
        NatsServerError: the restore server or a stream restore failed (nothing of the
            restore is left behind).
    """
    await _check_stopped(plan, ports)
    kept = manifest if streams else msgspec.structs.replace(manifest, streams=[])
    _check_empty(kept, plan)
    existed = plan.state_dir.exists()
    jetstream_existed = (plan.state_dir / "jetstream").exists()
    plan.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        await asyncio.to_thread(_copy_in, src, manifest, plan)
        lines = [f"{path} -> {target}" for path, target in _targets(manifest, plan)]
        if streams:
            lines += await _restore_with_server(src, manifest, plan)
        else:
            lines += [f"stream {s.name}: left to the external NATS" for s in manifest.streams]
        await asyncio.to_thread(fsync_tree, plan.state_dir)
    except BaseException:
        _undo(plan, manifest, existed=existed, jetstream_existed=jetstream_existed)
        raise
    return lines


async def _restore_with_server(src: Path, manifest: Manifest, plan: StatePlan) -> list[str]:
    """Restore the streams through a nats-server of our own on the state directory."""
    server = EmbeddedNatsServer(
        plan.state_dir,
        port=_free_port(),
        max_file_store=2 * plan.stream_bytes,
        name=f"restore-{plan.service_id}",
    )
    await server.start()
    try:
        nc = await nats.connect(server.url, max_reconnect_attempts=0)
        try:
            return await _restore_streams(src, manifest, plan, nc)
        finally:
            await nc.close()
    finally:
        await server.stop()


def _undo(plan: StatePlan, manifest: Manifest, *, existed: bool, jetstream_existed: bool) -> None:
    """Remove what a failed restore wrote."""
    if not existed:
        shutil.rmtree(plan.state_dir, ignore_errors=True)
        return
    for _, target in _targets(manifest, plan):
        with contextlib.suppress(OSError):
            target.unlink()
    if not jetstream_existed:
        shutil.rmtree(plan.state_dir / "jetstream", ignore_errors=True)
    for name in ("nats-server.conf", "nats-server.pid"):
        with contextlib.suppress(OSError):
            os.unlink(plan.state_dir / name)
