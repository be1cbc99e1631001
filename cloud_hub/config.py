"""The hub's config: the edge's schema and loader, plus the components only a hub runs.

The file format is the edge's (``edge_agent.config``); what the hub adds is the
``websocket_input`` component type, decoded and checked by the same loader.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

import msgspec

from cloud_hub.graphrag.communities.config import CommunitiesConfig
from edge_agent.config import Config, Duration, IndexesConfig, load_config
from edge_agent.config.schema import COMPONENT_TYPES, Port, Section
from edge_agent.config.units import ByteSize
from edge_agent.provision.messages import DEVICE_ID_PATTERN

__all__ = [
    "HUB_COMPONENT_TYPES",
    "HUB_INDEXES",
    "CommunitiesConfig",
    "DashboardConfig",
    "DashboardGroupConfig",
    "DeviceConfig",
    "WebsocketInputConfig",
    "communities_settings",
    "dashboard_settings",
    "load_hub_config",
    "sync_inputs",
]


class DeviceConfig(Section, frozen=True):
    """``websocket_input.config.devices.<edge id>``: an edge's static credential."""

    token: str


class WebsocketInputConfig(Section, frozen=True):
    """``components[].config`` of type ``websocket_input``: the hub's listener for edges.

    On the API's port (the seed's 8080) the sync path is served by the API server
    itself; on another port, by a listener of its own on the API's host. ``devices``
    maps each edge id to its credential. A frame over ``max_frame_bytes`` or a payload
    expanding past ``max_batch_bytes`` closes that edge's connection; past
    ``slow_threshold`` batches waiting hub-wide, edges are told to slow down.
    ``max_clock_skew`` bounds how far in the future an edge's timestamps may lie: later
    stamps are clamped to the receive time plus this, so no edge's clock can mask
    another edge's later writes for longer. ``stream_replicas`` (0: 3 on a cluster, 1
    on one server) is the ``SYNC_BATCHES`` stream's replication.

    Bounds against hostile peers: at most ``max_connections`` links at once (more are
    refused at the handshake), a link that sends no hello within ``hello_timeout`` is
    closed, and batches are decoded off the event loop, as many at once as
    ``decode_budget`` holds of ``max_batch_bytes`` (at least one). A resync of an edge's
    share (which reads all of it) starts at most once per ``resync_min_interval`` per
    edge: one asked sooner waits, with its link open, until the interval has passed.
    """

    port: Port = 8080
    path: str = "/edge-sync"
    devices: dict[str, DeviceConfig] = msgspec.field(default_factory=dict)
    max_frame_bytes: ByteSize = ByteSize(8 << 20)
    max_batch_bytes: ByteSize = ByteSize(64 << 20)
    slow_threshold: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 16
    ping_interval: Duration = Duration(10.0)
    ping_timeout: Duration = Duration(10.0)
    stream_max_bytes: ByteSize = ByteSize(1 << 30)
    stream_replicas: Annotated[int, msgspec.Meta(ge=0, le=5)] = 0
    max_clock_skew: Duration = Duration(60.0)
    max_connections: Annotated[int, msgspec.Meta(ge=1)] = 1024
    hello_timeout: Duration = Duration(10.0)
    decode_budget: ByteSize = ByteSize(256 << 20)
    resync_min_interval: Duration = Duration(60.0)

    def problems(self) -> list[tuple[str, str]]:
        """Device ids off the pattern, and empty device tokens (an unset environment
        variable, most likely)."""
        found = [
            (f"devices.{edge}", "not a device id: 1-64 of [A-Za-z0-9_-], starting alphanumeric")
            for edge in self.devices
            if not re.fullmatch(DEVICE_ID_PATTERN, edge)
        ]
        return found + [
            (f"devices.{edge}.token", "empty (is the environment variable it names set?)")
            for edge, device in self.devices.items()
            if not device.token
        ]


class DashboardGroupConfig(Section, frozen=True):
    """``dashboard.config.groups.<group>``: thresholds for the devices of one group (a
    group of Pis on a cellular link may be quiet for longer than those on the LAN)."""

    offline_after: Duration | None = None
    lag_warning: Duration | None = None


class DashboardConfig(Section, frozen=True):
    """``components[].config`` of type ``dashboard``: the fleet page at ``/``.

    The hub serves the dashboard without this component, with these defaults; the
    component changes them. An edge is ``offline`` when it is not linked to this
    instance and no batch of it reached the log for ``offline_after`` (its
    ``system_telemetry`` sends at least one every ``interval``, 30 s by default);
    ``degraded`` past ``lag_warning`` seconds of lag, ``usage_warning`` percent of disk
    or memory, ``temperature_warning`` degrees Celsius, or with an outbox backlog that
    grew over the last samples; ``groups`` sets other thresholds for the devices of a
    registry group. Every ``sample_interval`` each edge's counters are sampled into a
    history of the last ``history``.
    """

    enabled: bool = True
    offline_after: Duration = Duration(90.0)
    lag_warning: Duration = Duration(30.0)
    usage_warning: Annotated[float, msgspec.Meta(gt=0, le=100)] = 90.0
    temperature_warning: float = 80.0
    sample_interval: Duration = Duration(10.0)
    history: Duration = Duration(3600.0)
    groups: dict[str, DashboardGroupConfig] = msgspec.field(default_factory=dict)

    def problems(self) -> list[tuple[str, str]]:
        """A sample interval too short to be cheap, or a history shorter than it."""
        found = []
        if self.sample_interval < 1:
            found.append(("sample_interval", "must be at least 1s"))
        if self.history < self.sample_interval:
            found.append(("history", "must be at least sample_interval"))
        return found


#: The component types a hub runs: the edge's, plus ``websocket_input``, ``dashboard``
#: and ``communities`` (GraphRAG's community settings).
HUB_COMPONENT_TYPES: Mapping[str, type[Section]] = {
    **COMPONENT_TYPES,
    "websocket_input": WebsocketInputConfig,
    "dashboard": DashboardConfig,
    "communities": CommunitiesConfig,
}


#: The hub keeps every index by default (the seed's cloud hub config turns all five on).
HUB_INDEXES = IndexesConfig(predicate=True, incoming=True, alias=True, spatial=True, temporal=True)


def load_hub_config(path: Path | str | None, env: Mapping[str, str] | None = None) -> Config:
    """:func:`edge_agent.config.load_config` with the hub's component types and defaults.

    Where the file leaves ``graph.config.indexer.indexes`` at the edge's defaults, the
    hub keeps all five (:data:`HUB_INDEXES`): cross-edge spatial, temporal and alias
    queries are what a hub is for.

    Raises:
        ConfigError: the file is unreadable or invalid; each problem names its key path.
    """
    config = _durable_log(load_config(path, env, component_types=HUB_COMPONENT_TYPES))
    settings = config.graph.config
    if settings.indexer.indexes != IndexesConfig():
        return config
    indexer = msgspec.structs.replace(settings.indexer, indexes=HUB_INDEXES)
    graph = msgspec.structs.replace(
        config.graph, config=msgspec.structs.replace(settings, indexer=indexer)
    )
    return msgspec.structs.replace(config, graph=graph)


def _durable_log(config: Config) -> Config:
    """The hub acks an edge's batch once its log (JetStream) holds it: unless the file
    says otherwise, its embedded server fsyncs before every PubAck (``"always"``)."""
    jetstream = config.nats.jetstream
    if jetstream.sync_interval:
        return config
    nats = msgspec.structs.replace(
        config.nats, jetstream=msgspec.structs.replace(jetstream, sync_interval="always")
    )
    return msgspec.structs.replace(config, nats=nats)


def dashboard_settings(config: Config) -> DashboardConfig:
    """The ``dashboard`` component's settings (the defaults when there is none)."""
    found = [c.config for c in config.components if isinstance(c.config, DashboardConfig)]
    return found[0] if found else DashboardConfig()


def communities_settings(config: Config) -> CommunitiesConfig:
    """The ``communities`` component's settings (the defaults when there is none)."""
    found = [c.config for c in config.components if isinstance(c.config, CommunitiesConfig)]
    return found[0] if found else CommunitiesConfig()


def sync_inputs(config: Config) -> list[WebsocketInputConfig]:
    """The config's ``websocket_input`` components' settings, in order."""
    return [c.config for c in config.components if isinstance(c.config, WebsocketInputConfig)]
