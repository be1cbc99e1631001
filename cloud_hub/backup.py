"""The hub's state for ``cloud-hub backup`` / ``restore`` (see :mod:`edge_agent.backup`).

The graph (with the materialiser's log position and each edge's last applied batch),
the device registry when enrolment made one, the log ``SYNC_BATCHES`` (each edge's
resume point is its newest message there), and the hub's signing key as its secret.
"""

from __future__ import annotations

from pathlib import Path

from cloud_hub.config import sync_inputs
from cloud_hub.graph.fleet import edge_positions
from cloud_hub.sync.log import SYNC_STREAM
from edge_agent.backup.plan import StatePlan
from edge_agent.config import Config

__all__ = ["HUB_KEY", "hub_plan", "hub_ports"]

HUB_KEY = "hub_key.pem"


def hub_plan(config: Config) -> StatePlan:
    """The hub's state, as a backup holds it.

    The log is a limits stream that only grows (oldest batches age out by bytes), so it
    is snapshotted after the graph: it holds everything the graph copy has applied, and
    the materialiser applies the rest after a restore.
    """
    inputs = sync_inputs(config)
    stream_bytes = int(inputs[0].stream_max_bytes) if inputs else 1 << 30
    return StatePlan(
        kind="hub",
        service_id=config.platform.id,
        state_dir=Path(config.state_dir),
        sqlite=("graph.db",),
        optional_sqlite=("registry.db",),
        streams=(SYNC_STREAM,),
        secrets=(("hub_key.pem", HUB_KEY),),
        streams_first=False,
        stream_bytes=stream_bytes,
        extra_positions=edge_positions,
    )


def hub_ports(config: Config) -> list[int]:
    """The hub's own listeners: the API, and each sync input's port."""
    ports = [config.services.service_manager.config.http_port]
    return ports + [int(settings.port) for settings in sync_inputs(config)]
