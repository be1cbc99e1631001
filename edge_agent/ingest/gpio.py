"""GPIO inputs (component ``gpio_input``): gpiozero devices published as entity events.

Edge-triggered kinds (button, digital input, PIR motion sensor) publish each change;
polled kinds (HC-SR04 distance sensor, MCP3008 ADC channel) are read ``sample_rate``
times a second and publish when the value moved by more than ``min_change``, to spare
the link. gpiozero calls back on its own threads: a callback only hands the value to
the event loop (``call_soon_threadsafe``), and blocking reads run in worker threads.

Call :meth:`GpioInput.open` (it raises if the device can't be opened), then run
:meth:`GpioInput.run` as a task; cancelling it releases the device.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from edge_agent.config.schema import GpioInputConfig
from edge_agent.errors import ConfigError, SemStreamsError
from edge_agent.ingest.publisher import EventPublisher, PublishError
from edge_agent.model import EntityEvent, Scalar, encode_event

__all__ = ["Debouncer", "GpioError", "GpioInput", "gpio_event", "mock_pin_factory"]

log = logging.getLogger(__name__)

#: Changes waiting to be published, at most; past it the oldest are dropped and logged.
_MAX_PENDING = 1000
_DEFAULT_SAMPLE_RATE = 1.0
_MOTION_SAMPLE_RATE = 10.0
_mock_factory: Any = None


class GpioError(SemStreamsError):
    """A GPIO device could not be opened (no pin factory, pin in use, no permission)."""


def mock_pin_factory() -> Any:
    """The process's gpiozero mock board, used by ``pin_factory: "mock"``.

    It is gpiozero's default factory (``Device.pin_factory``) when that is unset or
    already a ``MockFactory``: gpiozero builds some helpers, such as its software SPI
    bus, on the default factory whatever factory the device was given. Tests and demos
    drive its pins (``mock_pin_factory().pin(17).drive_low()``).
    """
    global _mock_factory  # noqa: PLW0603 - one mock board per process, like a real one
    from gpiozero import Device
    from gpiozero.pins.mock import MockFactory

    if Device.pin_factory is None:
        Device.pin_factory = MockFactory()
    if isinstance(Device.pin_factory, MockFactory):
        return Device.pin_factory
    if _mock_factory is None:  # a real board is the default: keep a mock one beside it
        _mock_factory = MockFactory()
    return _mock_factory


def gpio_event(config: GpioInputConfig, value: Scalar, stamp: datetime) -> bytes:
    """The entity event for one reading: the property, where it is wired, ``source: gpio``.

    Args:
        config: the input's settings (entity, property, priority, wiring).
        value: the reading (a bool for edge-triggered kinds, a float for polled ones).
        stamp: when it was read.
    """
    properties: dict[str, Scalar] = {config.property_key(): value, **_wiring(config)}
    event = EntityEvent(
        entity_id=config.entity_id,
        entity_type=config.entity_type,
        priority=config.priority,
        timestamp=stamp,
        properties=properties,
        source="gpio",
    )
    return encode_event(event)


def _wiring(config: GpioInputConfig) -> dict[str, Scalar]:
    if config.kind == "distance_sensor":
        return {"gpio.pin": config.echo, "gpio.trigger": config.trigger}
    if config.kind == "mcp3008":
        spi = config.spi
        return {"adc.channel": config.channel, "spi.device": spi.device if spi else 0}
    return {"gpio.pin": config.pin}


class Debouncer:
    """Publishes a change at once, then holds later ones back for ``window`` seconds.

    When the window closes, the latest value is published if it differs from the one
    published, so a contact that bounces makes one event and the settled state is never
    lost. Call :meth:`feed` on the event loop's thread only.

    Args:
        window: seconds to hold changes back after one is published (0: none).
        emit: called with each value to publish and when it was seen.
        loop: the event loop whose timer closes the window.
    """

    def __init__(
        self,
        window: float,
        emit: Callable[[bool, datetime], None],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._window = window
        self._emit = emit
        self._loop = loop
        self._latest: tuple[bool, datetime] | None = None
        self._published: bool | None = None
        self._holding = False

    @property
    def seen(self) -> bool:
        """Whether any value has been fed yet."""
        return self._latest is not None

    def feed(self, value: bool, stamp: datetime) -> None:
        """Take a value read at ``stamp``; it is published now, later, or not at all."""
        self._latest = (value, stamp)
        if not self._holding:
            self._flush()

    def _flush(self) -> None:
        assert self._latest is not None
        value, stamp = self._latest
        if value == self._published:
            return
        self._published = value
        self._emit(value, stamp)
        if self._window > 0:
            self._holding = True
            self._loop.call_later(self._window, self._release)

    def _release(self) -> None:
        self._holding = False
        self._flush()


class GpioInput:
    """One ``gpio_input`` component: a gpiozero device whose readings become events.

    Args:
        config: the component's settings.
        publisher: where events go (path ``gpio``).
        factory: a gpiozero pin factory; default: the one ``config.pin_factory`` names.
        where: the component's config path, for error messages.
    """

    def __init__(
        self,
        config: GpioInputConfig,
        publisher: EventPublisher,
        *,
        factory: Any = None,
        where: str = "gpio_input",
    ) -> None:
        if problems := config.problems():
            raise ConfigError([f"{where}.config.{key}: {cause}" for key, cause in problems])
        self.config = config
        self._publisher = publisher
        self._factory = factory
        self._where = where
        self.device: Any = None
        self._pending: collections.deque[bytes] = collections.deque()
        self._wake = asyncio.Event()
        self.dropped = 0

    async def open(self) -> None:
        """Open the device (in a worker thread) and, for edge kinds, watch its changes.

        Raises:
            GpioError: gpiozero could not open it; the message names the component.
        """
        loop = asyncio.get_running_loop()
        try:
            self.device = await asyncio.to_thread(self._build)
        except Exception as exc:  # gpiozero raises many unrelated types
            hint = " (no GPIO here? try pin_factory: mock)" if "pin factory" in str(exc) else ""
            raise GpioError(f"{self._where}: cannot open {self._describe()}: {exc}{hint}") from exc
        if self.config.edge_triggered():
            await self._watch(loop)
        log.info("gpio: %s open", self._describe())

    async def run(self) -> None:
        """Publish readings until cancelled, then release the device."""
        try:
            if self.config.edge_triggered():
                await self._publish_changes()
            else:
                await self._poll()
        finally:
            await self.close()

    async def close(self) -> None:
        """Release the device (its pins and gpiozero's threads); safe to call twice."""
        device, self.device = self.device, None
        if device is not None:
            await asyncio.to_thread(device.close)

    # ---- opening -----------------------------------------------------------------

    def _describe(self) -> str:
        c = self.config
        if c.kind == "distance_sensor":
            return f"distance_sensor on GPIO{c.echo}/GPIO{c.trigger}"
        if c.kind == "mcp3008":
            return f"mcp3008 channel {c.channel}"
        return f"{c.kind} on GPIO{c.pin}"

    def _build(self) -> Any:
        import gpiozero

        c = self.config
        factory = self._factory
        if factory is None and c.pin_factory == "mock":
            factory = mock_pin_factory()
        pull_up = c.pull_up if c.pull_up is not None else c.kind == "button"
        bounce = c.debounce or None
        if c.kind == "button":
            # when_held is unused; a short hold_time only bounds how long close() waits
            # for gpiozero's hold thread while the button is down (1 s by default).
            return gpiozero.Button(
                c.pin, pull_up=pull_up, bounce_time=bounce, hold_time=0.1, pin_factory=factory
            )
        if c.kind == "digital_input":
            return gpiozero.DigitalInputDevice(
                c.pin, pull_up=pull_up, bounce_time=bounce, pin_factory=factory
            )
        if c.kind == "motion_sensor":
            rate = c.sample_rate or _MOTION_SAMPLE_RATE
            return gpiozero.MotionSensor(
                c.pin, pull_up=pull_up, sample_rate=rate, pin_factory=factory
            )
        if c.kind == "distance_sensor":
            # partial: readings from the first echo on, so reading never blocks.
            return gpiozero.DistanceSensor(
                echo=c.echo,
                trigger=c.trigger,
                max_distance=c.max_distance,
                partial=True,
                pin_factory=factory,
            )
        spi = c.spi
        return gpiozero.MCP3008(
            channel=c.channel,
            port=spi.port if spi else 0,
            device=spi.device if spi else 0,
            pin_factory=factory,
        )

    async def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Route the device's changes, then its current value, through a debouncer."""
        debouncer = Debouncer(self.config.debounce, self._enqueue, loop)

        def handoff(value: bool) -> Callable[[], None]:
            def changed() -> None:  # on a gpiozero thread: never block here
                # RuntimeError: the loop is closed, the agent is gone.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(debouncer.feed, value, datetime.now(UTC))

            return changed

        self.device.when_activated = handoff(True)
        self.device.when_deactivated = handoff(False)
        stamp = datetime.now(UTC)
        initial = bool(await asyncio.to_thread(lambda: self.device.is_active))
        # A change seen meanwhile is at least as new as this reading.
        if not debouncer.seen:
            debouncer.feed(initial, stamp)

    # ---- publishing --------------------------------------------------------------

    def _enqueue(self, value: Scalar, stamp: datetime) -> None:
        if len(self._pending) >= _MAX_PENDING:
            self._pending.popleft()
            self.dropped += 1
            log.warning("gpio: %s: publishing lags, oldest change dropped", self._describe())
        self._pending.append(gpio_event(self.config, value, stamp))
        self._wake.set()

    async def _publish_changes(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            events = list(self._pending)
            self._pending.clear()
            await self._publish(events)

    async def _poll(self) -> None:
        interval = 1.0 / (self.config.sample_rate or _DEFAULT_SAMPLE_RATE)
        last: float | None = None
        while True:
            stamp = datetime.now(UTC)
            value = await asyncio.to_thread(self._read)
            if value is not None and (last is None or abs(value - last) > self.config.min_change):
                last = value
                await self._publish([gpio_event(self.config, value, stamp)])
            await asyncio.sleep(interval)

    def _read(self) -> float | None:
        """One polled reading (in a worker thread); ``None`` while there is none yet."""
        if self.config.kind == "distance_sensor":
            # With partial readings gpiozero answers 0.0 until the first echo returns.
            distance = float(self.device.distance)
            return round(distance, 3) if distance > 0.0 else None
        return round(float(self.device.value), 4)

    async def _publish(self, events: list[bytes]) -> None:
        try:
            await self._publisher.publish(events, path="gpio")
        except PublishError as exc:
            log.warning("gpio: %s: readings not stored: %s", self._describe(), exc)
