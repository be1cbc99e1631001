"""What a service's state is made of, for backup and restore: a :class:`StatePlan`.

The edge's plan is here; the hub's (``cloud_hub/backup.py``) is built the same way from
its own parts. A plan names files by what they are in the state directory; restore
writes only to the places a plan names, never to a path read from a backup.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edge_agent.backup.manifest import BackupError, Kind
from edge_agent.config import Config
from edge_agent.graph.positions import PositionReader
from edge_agent.nats.subjects import DEAD_LETTER_STREAM, ENTITY_STREAM

__all__ = ["DEVICE_KEY", "ENROLMENT", "StatePlan", "edge_plan", "edge_service_id"]

#: The device key and the enrolment (its credential), under the state directory.
DEVICE_KEY = "device_key.pem"
ENROLMENT = "provisioning/enrolment.json"


@dataclass(frozen=True)
class StatePlan:
    """The parts of a service's state a backup holds.

    Attributes:
        kind: ``edge`` or ``hub``.
        service_id: the id the service runs as (a backup of another is refused).
        state_dir: the service's state directory.
        sqlite: SQLite files under the state directory that must be there.
        optional_sqlite: SQLite files copied when present (e.g. the hub's registry,
            made once enrolment is on).
        streams: the JetStream streams to snapshot.
        secrets: (name in the backup, path under the state directory) of the secret
            files, copied only when asked for.
        streams_first: snapshot the streams before the SQLite files. Right for a
            work-queue stream (the edge's), which drops what the graph has applied:
            what the stream lost meanwhile is in the later graph copy. A limits stream
            (the hub's log) only grows, so it goes after the graph and holds all the
            graph has, and the rest is replayed on start.
        follow_position: a stream whose next sequence must, after a restore, lie past
            the graph's position in it ("" for none): events the graph applied after
            the stream's snapshot have sequences the restored stream would hand out
            again, and the processor would skip the new events as applied.
        stream_bytes: the most the streams may hold (bounds a snapshot, and sizes the
            server a restore runs).
        extra_positions: more positions to read from a SQLite copy for the manifest.
    """

    kind: Kind
    service_id: str
    state_dir: Path
    sqlite: tuple[str, ...]
    streams: tuple[str, ...]
    secrets: tuple[tuple[str, str], ...]
    streams_first: bool
    stream_bytes: int
    optional_sqlite: tuple[str, ...] = ()
    follow_position: str = ""
    extra_positions: PositionReader | None = None

    def knows_sqlite(self, name: str) -> bool:
        """Whether ``name`` is one of this plan's SQLite files."""
        return name in self.sqlite or name in self.optional_sqlite

    def secret_path(self, name: str) -> Path | None:
        """Where the secret called ``name`` in a backup lives in the state directory."""
        for backup_name, relative in self.secrets:
            if backup_name == name:
                return self.state_dir / relative
        return None


def edge_service_id(config: Config, key: Path | None) -> str:
    """The id the edge agent runs (and enrols) as.

    Args:
        key: the device key file, when one is at hand (with provisioning on, a
            hostname-derived id carries its fingerprint).

    Raises:
        BackupError: the id depends on a device key that is not at hand.
    """
    settings = config.provisioning
    if not settings.enabled:
        return config.platform.id
    from edge_agent.provision.client import device_id_for
    from edge_agent.provision.identity import Identity

    if settings.device_id:
        return settings.device_id
    if key is None or not key.exists():
        raise BackupError(
            "cannot tell this device's id without its device key: set provisioning.device_id,"
            " or restore a backup taken with --include-secrets"
        )
    return device_id_for(settings, config.platform.id, Identity.load_or_create(key))


def edge_plan(config: Config, key: Path | None = None) -> StatePlan:
    """The edge agent's state: the graph (with its stream position and the sync outbox
    and position), the entity and dead-letter streams, and its secrets.

    Args:
        key: the device key to derive the id from (default: the state directory's).
    """
    state_dir = Path(config.state_dir)
    jetstream = config.nats.jetstream
    return StatePlan(
        kind="edge",
        service_id=edge_service_id(config, key or state_dir / DEVICE_KEY),
        state_dir=state_dir,
        sqlite=("graph.db",),
        streams=(ENTITY_STREAM, DEAD_LETTER_STREAM),
        secrets=(("device_key.pem", DEVICE_KEY), ("enrolment.json", ENROLMENT)),
        streams_first=True,
        follow_position=ENTITY_STREAM,
        stream_bytes=int(jetstream.max_bytes) + int(jetstream.dead_letter_max_bytes),
    )
