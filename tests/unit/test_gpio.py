"""GPIO inputs on gpiozero's mock pins, with small mock devices for the MCP3008 and HC-SR04."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory, MockSPIDevice, MockTriggerPin

from edge_agent.config import load_config_bytes
from edge_agent.config.schema import GpioInputConfig
from edge_agent.errors import ConfigError
from edge_agent.ingest.gpio import GpioError, GpioInput, gpio_event
from edge_agent.model import decode_event

pytestmark = pytest.mark.filterwarnings("ignore::gpiozero.exc.PWMSoftwareFallback")


class FakePublisher:
    """Records what a component publishes, decoded."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.paths: set[str] = set()

    async def publish(self, events: Iterable[bytes], *, path: str) -> None:
        self.paths.add(path)
        for data in events:
            decode_event(data, max_bytes=64 << 10)  # what the real publisher checks
            self.events.append(json.loads(data))

    def values(self, key: str) -> list[Any]:
        return [e["properties"][key] for e in self.events]

    async def wait(self, count: int, timeout: float = 3.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.events) < count:
            assert time.monotonic() < deadline, f"{len(self.events)} events, not {count}"
            await asyncio.sleep(0.005)


class FakeMcp3008(MockSPIDevice):  # type: ignore[misc]
    """The ADC's side of the 3-byte exchange: after the start bit, single/diff bit and
    three channel bits (12 bits in all), it clocks out a null bit and 10 data bits."""

    def __init__(self, factory: MockFactory, readings: dict[int, int]) -> None:
        # SPI port 0, device 0: clock GPIO11, MOSI GPIO10, MISO GPIO9, select GPIO8.
        super().__init__(11, 10, 9, 8, pin_factory=factory)
        self.readings = readings

    def on_bit(self) -> None:
        if self.rx_bit == 12:
            channel = int("".join(str(int(b)) for b in self.rx_buf[9:12]), 2)
            self.tx_word(self.readings.get(channel, 0), 12)  # 2 leading zero bits + 10


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    """A fresh mock board, also gpiozero's default (its software SPI bus needs one)."""
    board = MockFactory()
    Device.pin_factory = board
    yield board
    board.close()
    Device.pin_factory = None


@pytest.fixture
async def running(factory: MockFactory) -> AsyncIterator[Any]:
    """Open and run GPIO inputs on the mock board; all are cancelled at teardown."""
    tasks: list[asyncio.Task[None]] = []

    async def start(**settings: Any) -> tuple[GpioInput, FakePublisher]:
        publisher = FakePublisher()
        gpio = GpioInput(GpioInputConfig(**settings), publisher, factory=factory)  # type: ignore[arg-type]
        await gpio.open()
        tasks.append(asyncio.create_task(gpio.run()))
        return gpio, publisher

    yield start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_button_publishes_its_state_then_each_change(
    factory: MockFactory, running: Any
) -> None:
    _, publisher = await running(kind="button", pin=17, entity_id="door-button", priority=4)
    await publisher.wait(1)
    pin = factory.pin(17)
    pin.drive_low()
    await publisher.wait(2)
    pin.drive_high()
    await publisher.wait(3)
    assert publisher.values("pressed") == [False, True, False]
    first = publisher.events[1]
    assert first["entity_id"] == "door-button"
    assert first["entity_type"] == "sensor"
    assert first["priority"] == 4
    assert first["source"] == "gpio"
    assert first["properties"] == {"pressed": True, "gpio.pin": 17}
    assert publisher.paths == {"gpio"}


async def test_a_bouncing_contact_inside_the_debounce_makes_one_event(
    factory: MockFactory, running: Any
) -> None:
    _, publisher = await running(kind="button", pin=17, entity_id="b", debounce=0.1)
    await publisher.wait(1)
    pin = factory.pin(17)
    pin.drive_low()  # pressed …
    pin.drive_high()  # … bounces open …
    pin.drive_low()  # … and settles pressed, all inside 100 ms
    await asyncio.sleep(0.25)
    assert publisher.values("pressed") == [False, True]


async def test_the_settled_value_follows_once_the_debounce_is_over(
    factory: MockFactory, running: Any
) -> None:
    _, publisher = await running(kind="button", pin=17, entity_id="b", debounce=0.1)
    await publisher.wait(1)
    await asyncio.sleep(0.15)  # the initial state's own window closes
    pin = factory.pin(17)
    started = time.monotonic()
    pin.drive_low()
    pin.drive_high()  # released again inside the window: held back, not lost
    await publisher.wait(2)
    assert publisher.values("pressed") == [False, True]
    await publisher.wait(3)
    assert time.monotonic() - started >= 0.1
    assert publisher.values("pressed") == [False, True, False]


async def test_changes_from_another_thread_reach_the_loop(
    factory: MockFactory, running: Any
) -> None:
    _, publisher = await running(kind="digital_input", pin=22, entity_id="reed-switch")
    await publisher.wait(1)
    driver = threading.Thread(target=factory.pin(22).drive_high)
    driver.start()
    driver.join()
    await publisher.wait(2)
    assert publisher.values("value") == [False, True]


async def test_motion_sensor_publishes_motion(factory: MockFactory, running: Any) -> None:
    _, publisher = await running(
        kind="motion_sensor", pin=4, entity_id="hall-pir", sample_rate=50, property="occupied"
    )
    await publisher.wait(1)
    factory.pin(4).drive_high()
    await publisher.wait(2)
    factory.pin(4).drive_low()
    await publisher.wait(3)
    assert publisher.values("occupied") == [False, True, False]


async def test_mcp3008_publishes_when_the_value_moves_more_than_min_change(
    factory: MockFactory, running: Any
) -> None:
    adc = FakeMcp3008(factory, {3: 512})
    _, publisher = await running(
        kind="mcp3008", channel=3, entity_id="soil", sample_rate=50, min_change=0.05
    )
    await publisher.wait(1)
    adc.readings[3] = 530  # +0.018: under min_change
    await asyncio.sleep(0.15)
    adc.readings[3] = 1023
    await publisher.wait(2)
    values = publisher.values("value")
    assert values[0] == pytest.approx(512 / 1023, abs=0.002)
    assert values[1] == pytest.approx(1.0)
    assert publisher.events[0]["properties"]["adc.channel"] == 3


async def test_distance_sensor_publishes_the_echo_distance(
    factory: MockFactory, running: Any
) -> None:
    echo = factory.pin(24)
    # The trigger pin raises the echo for 3 ms after each trigger: 0.003 s * 343 m/s / 2.
    factory.pin(23, pin_class=MockTriggerPin, echo_pin=echo, echo_time=0.003)
    _, publisher = await running(
        kind="distance_sensor",
        echo=24,
        trigger=23,
        entity_id="tank-level",
        sample_rate=20,
        min_change=0.2,
        max_distance=2.0,
    )
    await publisher.wait(1)
    await asyncio.sleep(0.3)  # readings jitter by far less than min_change
    assert len(publisher.events) == 1
    properties = publisher.events[0]["properties"]
    assert properties["distance_m"] == pytest.approx(0.515, abs=0.1)
    assert properties["gpio.pin"] == 24
    assert properties["gpio.trigger"] == 23


async def test_stopping_releases_the_pin(factory: MockFactory) -> None:
    config = GpioInputConfig(kind="button", pin=17, entity_id="b")
    gpio = GpioInput(config, FakePublisher(), factory=factory)  # type: ignore[arg-type]
    await gpio.open()
    task = asyncio.create_task(gpio.run())
    await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    again = GpioInput(config, FakePublisher(), factory=factory)  # type: ignore[arg-type]
    await again.open()  # would raise if the pin were still reserved
    await again.close()


async def test_a_pin_in_use_fails_to_open_with_the_component_named(
    factory: MockFactory, running: Any
) -> None:
    await running(kind="button", pin=17, entity_id="first")
    config = GpioInputConfig(kind="digital_input", pin=17, entity_id="second")
    second = GpioInput(config, FakePublisher(), factory=factory, where="components[1]")  # type: ignore[arg-type]
    with pytest.raises(GpioError, match=r"^components\[1\]: cannot open digital_input on GPIO17"):
        await second.open()


def test_the_event_names_the_entity_the_property_and_the_wiring() -> None:
    from datetime import UTC, datetime

    config = GpioInputConfig(kind="mcp3008", channel=5, entity_id="pot", entity_type="knob")
    data = gpio_event(config, 0.25, datetime(2024, 1, 15, tzinfo=UTC))
    assert json.loads(data) == {
        "entity_id": "pot",
        "entity_type": "knob",
        "timestamp": "2024-01-15T00:00:00Z",
        "properties": {"value": 0.25, "adc.channel": 5, "spi.device": 0},
        "source": "gpio",
    }


def load_gpio(settings: dict[str, Any]) -> list[str]:
    """The problems the loader finds in one ``gpio_input`` component's settings."""
    component = {"id": "in", "type": "gpio_input", "config": settings}
    try:
        load_config_bytes(json.dumps({"components": [component]}).encode(), env={})
    except ConfigError as exc:
        return exc.problems
    return []


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"kind": "switch", "pin": 4}, "components[0].config.kind: invalid enum value 'switch'"),
        ({"kind": "button"}, "components[0].config.pin: required for kind 'button'"),
        ({"kind": "mcp3008", "channel": 9}, "components[0].config.channel: expected `int` <= 7"),
        ({"kind": "button", "pin": 40}, "components[0].config.pin: expected `int` <= 27"),
        ({"kind": "distance_sensor", "echo": 5}, "components[0].config.trigger: required"),
        ({"kind": "distance_sensor", "echo": 5, "trigger": 5}, "config.trigger: must be another"),
        ({"kind": "mcp3008", "channel": 1, "pin": 4}, "config.pin: not used by kind 'mcp3008'"),
        ({"kind": "mcp3008", "channel": 1, "debounce": "20ms"}, "config.debounce: not used"),
        ({"kind": "button", "pin": 4, "spi": {"port": 0}}, "config.spi: not used by kind"),
        ({"kind": "button", "pin": 4, "pin_factory": "fake"}, "config.pin_factory: invalid"),
        ({"kind": "button", "pin": 4, "entity_id": "no spaces"}, "config.entity_id: entity_id"),
        ({"kind": "button", "pin": 4, "debounse": "1s"}, "config.debounse: unknown key"),
    ],
)
def test_a_bad_gpio_config_fails_at_load_naming_the_key(
    settings: dict[str, Any], problem: str
) -> None:
    problems = load_gpio({"entity_id": "x", **settings})
    assert any(problem in p for p in problems), problems


def test_a_good_gpio_config_loads() -> None:
    settings = {"kind": "button", "pin": 17, "entity_id": "b", "debounce": "30ms"}
    assert load_gpio(settings) == []
