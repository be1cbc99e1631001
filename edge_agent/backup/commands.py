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
from collections.abc import Awaitable, Callable
from pathlib import Path

from nats.aio.client import Client

from edge_agent.backup.manifest import BackupError, Manifest
from edge_agent.backup.plan import StatePlan
from edge_agent.backup.restore import read_backup, restore_backup
from edge_agent.backup.take import take_backup
from edge_agent.config import Config
from edge_agent.errors import SemStreamsError

__all__ = ["backup_command", "restore_command", "summary"]

EXIT_FAILURE = 1


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
    plan: Callable[[], StatePlan],
    dest: str,
    *,
    connect: Callable[[], Awaitable[Client]],
    prog: str,
    include_secrets: bool = False,
) -> int:
    """Back up the running service into ``dest``; print the summary.

    Args:
        connect: connects to the service's NATS (the CLI's, with the config's servers
            and credentials).

    Returns:
        0, or 1 with the reason on stderr (``dest`` is then left as it was).
    """

    async def main() -> Manifest:
        nc = await connect()
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
