"""Inputs on the device: a mock GPIO button and system telemetry in a real agent's graph."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from gpiozero import Device

from edge_agent.app import Agent
from edge_agent.ingest.gpio import mock_pin_factory
from tests.conftest import StartAgent
from tests.helpers import wait_for

COMPONENTS = [
    {
        "id": "door",
        "type": "gpio_input",
        "config": {
            "kind": "button",
            "pin": 17,
            "debounce": "20ms",
            "entity_id": "door-button",
            "pin_factory": "mock",
        },
    },
    {"id": "health", "type": "system_telemetry", "config": {"interval": "200ms"}},
]


@pytest.fixture(autouse=True)
def fresh_mock_board() -> Iterator[None]:
    """The agent's mock pins start released and are forgotten afterwards."""
    Device.pin_factory = None
    yield
    if Device.pin_factory is not None:
        Device.pin_factory.close()
    Device.pin_factory = None


async def entity(agent: Agent, entity_id: str) -> dict[str, Any] | None:
    return await asyncio.to_thread(agent.store.entity, entity_id)


async def test_a_button_and_the_device_itself_become_entities(start_agent: StartAgent) -> None:
    agent = await start_agent(components=COMPONENTS)

    async def button_is(pressed: bool) -> bool:
        found = await entity(agent, "door-button")
        return found is not None and found["properties"].get("pressed") is pressed

    await wait_for(lambda: button_is(False), timeout=10, what="the button's initial state")
    mock_pin_factory().pin(17).drive_low()
    await wait_for(lambda: button_is(True), timeout=10, what="the press in the graph")
    button = await entity(agent, "door-button")
    assert button is not None
    assert button["entity_type"] == "sensor"
    assert button["properties"]["gpio.pin"] == 17

    async def device_sampled_twice() -> bool:
        found = await entity(agent, "test-edge")
        return found is not None and found["version"] >= 2

    await wait_for(device_sampled_twice, timeout=10, what="two telemetry samples")
    device = await entity(agent, "test-edge")
    assert device is not None
    assert device["entity_type"] == "device"
    properties = device["properties"]
    assert 0.0 <= properties["system.cpu_percent"] <= 100.0
    assert properties["system.memory_total_bytes"] > 0
    assert properties["system.disk_free_bytes"] > 0
    assert properties["agent.rss_bytes"] > 0
    assert properties["nats.rss_bytes"] > 0  # the embedded server's pid is followed
    assert isinstance(properties["agent.version"], str)
