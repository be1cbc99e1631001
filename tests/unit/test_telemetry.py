"""System telemetry: the sample's keys and types, its sources' fallbacks, and the loop."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections import namedtuple
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from edge_agent import __version__
from edge_agent.config import load_config_bytes
from edge_agent.config.schema import SystemTelemetryConfig
from edge_agent.errors import ConfigError, GraphError
from edge_agent.graph.outbox import Backlog
from edge_agent.ingest.telemetry import (
    SystemSampler,
    cpu_percent,
    parse_throttled,
    pick_temperature,
    run_system_telemetry,
)
from edge_agent.model import decode_event

Times = namedtuple("Times", "user nice system idle iowait guest guest_nice")
Reading = namedtuple("Reading", "label current high critical")


@pytest.fixture
def child_pid() -> Iterator[int]:
    """A process standing in for nats-server."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def sampler(tmp_path: Path, **kwargs: Any) -> SystemSampler:
    """A sampler on ``tmp_path`` with no Pi files unless given."""
    kwargs.setdefault("thermal_zone", tmp_path / "no-thermal")
    kwargs.setdefault("throttled", tmp_path / "no-throttled")
    return SystemSampler(tmp_path, **kwargs)


def test_a_sample_has_every_reading_with_sane_types(tmp_path: Path, child_pid: int) -> None:
    backlog = Backlog(entities=3, bytes=1200, in_flight=0, oldest_ms=0)
    found = sampler(
        tmp_path,
        nats_pid=lambda: child_pid,
        backlog=lambda: backlog,
        counters=lambda: {"ingest.dead_letters": 4},
    ).sample()
    assert 0.0 <= found["system.cpu_percent"] <= 100.0  # type: ignore[operator]
    for key in ("system.load_1m", "system.load_5m", "system.load_15m"):
        assert isinstance(found[key], float)
    total = psutil.virtual_memory().total
    assert found["system.memory_total_bytes"] == total
    assert 0 < found["system.memory_used_bytes"] <= total  # type: ignore[operator]
    assert 0.0 < found["system.memory_percent"] <= 100.0  # type: ignore[operator]
    disk = psutil.disk_usage(str(tmp_path))
    assert found["system.disk_used_bytes"] + found["system.disk_free_bytes"] <= disk.total  # type: ignore[operator]
    assert 0.0 <= found["system.disk_percent"] <= 100.0  # type: ignore[operator]
    assert isinstance(found["system.uptime_s"], int)
    assert found["system.uptime_s"] >= 0
    assert found["agent.rss_bytes"] == pytest.approx(psutil.Process().memory_info().rss, rel=0.5)
    assert isinstance(found["nats.rss_bytes"], int)
    assert found["nats.rss_bytes"] > 0
    assert found["sync.backlog_entities"] == 3
    assert found["sync.backlog_bytes"] == 1200
    assert found["ingest.dead_letters"] == 4
    assert found["agent.version"] == __version__
    # The kernel's word for the machine (aarch64 when this runs on a Pi or under qemu).
    assert found["platform.machine"] == os.uname().machine
    assert all(isinstance(v, str | int | float | bool) for v in found.values())


def test_absent_sources_are_left_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psutil, "sensors_temperatures", dict, raising=False)

    def failing_backlog() -> Backlog:
        raise GraphError("query failed: database is locked")

    found = sampler(tmp_path, nats_pid=lambda: None, backlog=failing_backlog).sample()
    absent = {"system.temperature_c", "system.throttled", "nats.rss_bytes", "sync.backlog_entities"}
    assert absent.isdisjoint(found)
    assert "system.memory_percent" in found  # the rest is still there


def test_temperature_falls_back_to_the_thermal_zone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(psutil, "sensors_temperatures", dict, raising=False)
    zone = tmp_path / "temp"
    zone.write_text("51234\n")
    assert sampler(tmp_path, thermal_zone=zone).sample()["system.temperature_c"] == 51.2


def test_the_pi_throttling_mask_is_read(tmp_path: Path) -> None:
    throttled = tmp_path / "get_throttled"
    throttled.write_text("50005\n")
    assert sampler(tmp_path, throttled=throttled).sample()["system.throttled"] == 0x50005


def test_a_dead_nats_pid_is_left_out(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert "nats.rss_bytes" not in sampler(tmp_path, nats_pid=lambda: proc.pid).sample()


def test_cpu_percent_counts_busy_time_over_total() -> None:
    before = Times(user=10, nice=0, system=10, idle=80, iowait=0, guest=0, guest_nice=0)
    after = Times(user=40, nice=0, system=10, idle=140, iowait=10, guest=5, guest_nice=0)
    # Total time grew by 105 less the 5 of guest (already inside user), idle + iowait
    # by 70, so busy by 30 of 100.
    assert cpu_percent(before, after) == 30.0
    assert cpu_percent(before, before) is None


def test_pick_temperature_prefers_the_cpu_sensor() -> None:
    sensors = {
        "acpitz": [Reading("", 30.0, None, None)],
        "cpu_thermal": [Reading("", 47.26, None, None)],
    }
    assert pick_temperature(sensors) == 47.3
    assert pick_temperature({"acpitz": [Reading("", 30.0, None, None)]}) == 30.0
    assert pick_temperature({}) is None


@pytest.mark.parametrize(
    ("text", "mask"), [("0\n", 0), ("50005", 0x50005), ("throttled=0x4", 4), ("n/a", None)]
)
def test_parse_throttled(text: str, mask: int | None) -> None:
    assert parse_throttled(text) == mask


class FakePublisher:
    """Records what the loop publishes."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    async def publish(self, events: Iterable[bytes], *, path: str) -> None:
        assert path == "system"
        for data in events:
            decode_event(data, max_bytes=64 << 10)
            self.events.append(json.loads(data))


async def test_the_loop_publishes_a_sample_at_once_then_every_interval(tmp_path: Path) -> None:
    publisher = FakePublisher()
    config = SystemTelemetryConfig(interval=0.1)  # type: ignore[arg-type]
    task = asyncio.create_task(
        run_system_telemetry(config, publisher, sampler(tmp_path), entity_id="edge-7")  # type: ignore[arg-type]
    )
    try:
        async with asyncio.timeout(3):
            while len(publisher.events) < 2:
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    device = publisher.events[0]
    assert device["entity_id"] == "edge-7"
    assert device["entity_type"] == "device"
    assert device["source"] == "system"
    assert "system.cpu_percent" in device["properties"]


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"interval": "50ms"}, "components[0].config.interval: must be at least 100ms"),
        ({"interval": "soon"}, "components[0].config.interval: expected a duration"),
        ({"entity_id": "-edge"}, "components[0].config.entity_id: entity_id '-edge'"),
        ({"entity_type": "dev ice"}, "components[0].config.entity_type: entity_type"),
        ({"every": "1s"}, "components[0].config.every: unknown key"),
    ],
)
def test_a_bad_telemetry_config_fails_at_load(settings: dict[str, Any], problem: str) -> None:
    component = {"id": "device", "type": "system_telemetry", "config": settings}
    with pytest.raises(ConfigError) as caught:
        load_config_bytes(json.dumps({"components": [component]}).encode(), env={})
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems


def test_the_default_interval_is_thirty_seconds() -> None:
    assert SystemTelemetryConfig().interval == 30.0
