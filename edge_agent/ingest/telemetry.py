"""System telemetry (component ``system_telemetry``): the device itself as an entity.

:class:`SystemSampler` reads the machine (psutil and a few sysfs files) into a dict of
dotted properties; a reading that this machine can't give is left out rather than
faked. :func:`run_system_telemetry` publishes one sample at once and then one every
``interval``, so the hub's dashboard can show device health.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import psutil

from edge_agent import __version__
from edge_agent.config.schema import SystemTelemetryConfig
from edge_agent.errors import GraphError
from edge_agent.graph.outbox import Backlog
from edge_agent.ingest.publisher import EventPublisher, PublishError
from edge_agent.model import EntityEvent, Scalar, encode_event

__all__ = [
    "SystemSampler",
    "cpu_percent",
    "parse_throttled",
    "pick_temperature",
    "run_system_telemetry",
    "telemetry_event",
]

log = logging.getLogger(__name__)

THERMAL_ZONE = Path("/sys/class/thermal/thermal_zone0/temp")
#: The Raspberry Pi firmware's throttling bitmask (under-voltage, capped, throttled …).
THROTTLED = Path("/sys/devices/platform/soc/soc:firmware/get_throttled")
# What the hub sees of the build it runs (x86_64 in CI, aarch64 on a Pi 3/4/5).
_MACHINE = platform.machine()
#: Sensors tried first, in order: the Pi's SoC, then common x86 CPU drivers.
_PREFERRED_SENSORS = ("cpu_thermal", "soc_thermal", "coretemp", "k10temp", "cpu-thermal")
#: A CPU percentage over less time than this is noise; the first sample waits it out.
_MIN_CPU_WINDOW_S = 0.1


class _CpuMark(NamedTuple):
    at: float
    times: Any  # psutil's scputimes


def cpu_percent(before: Any, after: Any) -> float | None:
    """The busy share of CPU time between two ``psutil.cpu_times()`` readings, in percent.

    Guest time is already counted in user time, and waiting on I/O counts as idle (as
    psutil does). Returns ``None`` when no time passed.
    """

    def busy_and_total(times: Any) -> tuple[float, float]:
        total = sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
        idle = times.idle + getattr(times, "iowait", 0.0)
        return total - idle, total

    busy_before, total_before = busy_and_total(before)
    busy_after, total_after = busy_and_total(after)
    elapsed = total_after - total_before
    if elapsed <= 0:
        return None
    return round(min(100.0, max(0.0, 100.0 * (busy_after - busy_before) / elapsed)), 1)


def parse_throttled(text: str) -> int | None:
    """The firmware's throttling bitmask from ``get_throttled`` (hex, e.g. ``50005``)."""
    raw = text.strip().removeprefix("throttled=")
    try:
        return int(raw, 16)
    except ValueError:
        return None


def pick_temperature(sensors: Mapping[str, Sequence[Any]]) -> float | None:
    """The CPU temperature in °C from ``psutil.sensors_temperatures()``, if any sensor has one."""
    names = [n for n in _PREFERRED_SENSORS if sensors.get(n)] + sorted(sensors)
    for name in names:
        for reading in sensors.get(name, ()):
            if reading.current is not None:
                return round(float(reading.current), 1)
    return None


class SystemSampler:
    """Reads the device's health into dotted properties; see :meth:`sample`.

    Args:
        disk_path: a path on the filesystem to report (the agent's state dir).
        nats_pid: returns the embedded nats-server's pid, or ``None`` (not embedded, or
            down); asked at each sample, so a restarted server is followed.
        backlog: returns the sync outbox's backlog; ``None`` when there is no outbox.
        thermal_zone: the sysfs temperature file, used when psutil has no sensor.
        throttled: the Raspberry Pi firmware's ``get_throttled`` file.
    """

    def __init__(
        self,
        disk_path: Path,
        *,
        nats_pid: Callable[[], int | None] = lambda: None,
        backlog: Callable[[], Backlog] | None = None,
        counters: Callable[[], Mapping[str, Scalar]] | None = None,
        thermal_zone: Path = THERMAL_ZONE,
        throttled: Path = THROTTLED,
    ) -> None:
        self._disk_path = disk_path
        self._nats_pid = nats_pid
        self._backlog = backlog
        self._counters = counters
        self._thermal_zone = thermal_zone
        self._throttled = throttled
        self._process = psutil.Process()
        self._cpu = _CpuMark(time.monotonic(), psutil.cpu_times())

    def sample(self) -> dict[str, Scalar]:
        """One reading of every source; blocking (it reads /proc, sysfs and SQLite).

        Returns:
            ``system.cpu_percent``, ``system.load_1m``/``5m``/``15m``,
            ``system.memory_used_bytes``/``total_bytes``/``percent``,
            ``system.disk_used_bytes``/``free_bytes``/``percent``,
            ``system.temperature_c``, ``system.uptime_s``, ``system.throttled``,
            ``agent.rss_bytes``, ``nats.rss_bytes``, ``sync.backlog_entities``/``bytes``,
            the agent's counters (``ingest.dead_letters``), ``agent.version`` and
            ``platform.machine`` (``aarch64`` on a Pi); a source that is absent or fails
            is left out.
        """
        properties: dict[str, Scalar] = {}
        for part in (
            self._cpu_part,
            self._memory_part,
            self._disk_part,
            self._temperature_part,
            self._throttled_part,
            self._process_part,
            self._backlog_part,
            self._counters_part,
        ):
            try:
                properties.update(part())
            except (OSError, psutil.Error, GraphError) as exc:
                log.debug("telemetry: %s failed: %s", part.__name__, exc)
        properties["agent.version"] = __version__
        properties["platform.machine"] = _MACHINE
        return properties

    def _cpu_part(self) -> dict[str, Scalar]:
        wait = _MIN_CPU_WINDOW_S - (time.monotonic() - self._cpu.at)
        if wait > 0:  # only the first sample, taken right after start
            time.sleep(wait)
        mark = _CpuMark(time.monotonic(), psutil.cpu_times())
        percent, self._cpu = cpu_percent(self._cpu.times, mark.times), mark
        load = psutil.getloadavg()
        found: dict[str, Scalar] = {
            "system.load_1m": round(load[0], 2),
            "system.load_5m": round(load[1], 2),
            "system.load_15m": round(load[2], 2),
            "system.uptime_s": int(time.time() - psutil.boot_time()),
        }
        if percent is not None:
            found["system.cpu_percent"] = percent
        return found

    def _memory_part(self) -> dict[str, Scalar]:
        memory = psutil.virtual_memory()
        return {
            "system.memory_used_bytes": int(memory.used),
            "system.memory_total_bytes": int(memory.total),
            "system.memory_percent": round(float(memory.percent), 1),
        }

    def _disk_part(self) -> dict[str, Scalar]:
        disk = psutil.disk_usage(str(self._disk_path))
        return {
            "system.disk_used_bytes": int(disk.used),
            "system.disk_free_bytes": int(disk.free),
            "system.disk_percent": round(float(disk.percent), 1),
        }

    def _temperature_part(self) -> dict[str, Scalar]:
        sensors = getattr(psutil, "sensors_temperatures", None)  # absent on some systems
        celsius = pick_temperature(sensors() if sensors else {})
        if celsius is None and self._thermal_zone.exists():
            celsius = round(int(self._thermal_zone.read_text().strip()) / 1000.0, 1)
        return {} if celsius is None else {"system.temperature_c": celsius}

    def _throttled_part(self) -> dict[str, Scalar]:
        if not self._throttled.exists():
            return {}
        mask = parse_throttled(self._throttled.read_text())
        return {} if mask is None else {"system.throttled": mask}

    def _process_part(self) -> dict[str, Scalar]:
        found: dict[str, Scalar] = {"agent.rss_bytes": int(self._process.memory_info().rss)}
        pid = self._nats_pid()
        if pid is not None:
            # psutil.Error: the server is restarting or gone; leave it out this time.
            with contextlib.suppress(psutil.Error):
                found["nats.rss_bytes"] = int(psutil.Process(pid).memory_info().rss)
        return found

    def _counters_part(self) -> dict[str, Scalar]:
        return dict(self._counters()) if self._counters else {}

    def _backlog_part(self) -> dict[str, Scalar]:
        if self._backlog is None:
            return {}
        backlog = self._backlog()
        return {"sync.backlog_entities": backlog.entities, "sync.backlog_bytes": backlog.bytes}


def telemetry_event(
    config: SystemTelemetryConfig,
    entity_id: str,
    properties: dict[str, Scalar],
    stamp: datetime,
) -> bytes:
    """The device's entity event for one sample (``source: system``)."""
    event = EntityEvent(
        entity_id=entity_id,
        entity_type=config.entity_type,
        priority=config.priority,
        timestamp=stamp,
        properties=properties,
        source="system",
    )
    return encode_event(event)


async def run_system_telemetry(
    config: SystemTelemetryConfig,
    publisher: EventPublisher,
    sampler: SystemSampler,
    *,
    entity_id: str,
) -> None:
    """Publish a sample now and then every ``interval`` until cancelled.

    Args:
        config: the component's settings.
        publisher: where events go (path ``system``).
        sampler: reads the device; run in a worker thread, as it blocks.
        entity_id: the device's entity (``config.entity_id`` or the agent's platform id).
    """
    while True:
        stamp = datetime.now(UTC)
        properties = await asyncio.to_thread(sampler.sample)
        event = telemetry_event(config, entity_id, properties, stamp)
        try:
            await publisher.publish([event], path="system")
        except PublishError as exc:
            log.warning("telemetry: sample not stored: %s", exc)
        await asyncio.sleep(config.interval)
