"""The ``backup`` and ``restore`` commands of ``edge-agent`` and ``cloud-hub``.

The backup runs in the command's own process, not through the service's API: it reads
the SQLite files of the state directory read-only (so it runs as the service's user,
or root) and snapshots the streams through the JetStream API of the service's NATS,
with the service's NATS credentials from the config. Nothing passes through the
service, which goes on taking events meanwhile, and a service whose API is down can
still be backed up.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path

import msgspec

from edge_agent.backup.manifest import BackupError, Manifest
from edge_agent.backup.plan import StatePlan
from edge_agent.backup.restore import read_backup, restore_backup
from edge_agent.backup.take import take_backup
from edge_agent.config import Config, Duration
from edge_agent.errors import SemStreamsError

__all__ = ["backup_command", "command_nats_urls", "restore_command", "summary"]

EXIT_FAILURE = 1


def command_nats_urls(config: Config, override: str | None) -> list[str]:
    """The NATS servers a command talks to: ``override``, the config's ``nats.urls``,
    or the embedded server on this host."""
    if override:
        return [override]
    return list(config.nats.urls) or [f"nats://127.0.0.1:{config.nats.port}"]


def summary(manifest: Manifest) -> list[str]:
    """What a manifest says, a line each (printed by both commands)."""
    lines = [
        f"{manifest.kind} {manifest.id}, version {manifest.version},"
        f" taken {manifest.created_at}, secrets {'included' if manifest.secrets else 'left out'}"
    ]
    lines += [
        f"  {entry.path}: {entry.size} bytes, sha256 {entry.sha256[:16]}…"
        for entry in manifest.files
    ]
    lines += [
        f"  stream {s.name}: {s.messages} messages, sequences {s.first_seq}..{s.last_seq}"
        for s in manifest.streams
    ]
    lines += [f"  {name} = {value}" for name, value in sorted(manifest.positions.items())]
    return lines


def backup_command(
    config: Config,
    plan: Callable[[], StatePlan],
    dest: str,
    *,
    prog: str,
    include_secrets: bool = False,
    nats_url: str | None = None,
) -> int:
    """Back up the running service of ``config`` into ``dest``; print the summary.

    Returns:
        0, or 1 with the reason on stderr (``dest`` is then left as it was).
    """
    from edge_agent.nats.client import connect

    async def main() -> Manifest:
        patient = msgspec.structs.replace(
            config.nats, max_reconnect=3, reconnect_wait=Duration(0.5)
        )
        nc = await connect(patient, command_nats_urls(config, nats_url), name=prog)
        try:
            return await take_backup(plan(), nc, Path(dest), include_secrets=include_secrets)
        finally:
            await nc.close()

    try:
        manifest = asyncio.run(main())
    except (SemStreamsError, OSError, TimeoutError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"{prog}: {dest}")
    print("\n".join(summary(manifest)))
    return 0


def restore_command(
    config: Config, plan: Callable[[], StatePlan], src: str, *, prog: str, ports: list[int]
) -> int:
    """Check the backup in ``src`` and restore it into the stopped service's state
    directory; print what was restored.

    Args:
        ports: the service's API ports (and its own listeners): if any answers, it runs.

    Returns:
        0, or 1 with the reason on stderr; a refused backup changed nothing.
    """
    from edge_agent.nats.client import embedded_port

    async def main(state: StatePlan, manifest: Manifest) -> list[str]:
        # The streams live on the state directory only with an embedded server; on an
        # external NATS (a cluster) they were kept there, and are left alone.
        port = await embedded_port(config.nats)
        listeners = [*ports, port] if port is not None else ports
        return await restore_backup(
            Path(src), manifest, state, ports=listeners, streams=port is not None
        )

    try:
        state = plan()
        manifest = read_backup(Path(src), state)
        lines = asyncio.run(main(state, manifest))
    except (SemStreamsError, OSError, TimeoutError) as exc:
        reason = exc if not isinstance(exc, BackupError) else f"refused: {exc}"
        print(f"{prog}: {reason}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"{prog}: restored {src} into {state.state_dir}")
    print("\n".join([*summary(manifest), *lines]))
    return 0
