"""A small simulated event source for the demo: drones in fleets, reporting telemetry,
and (every ``reports_every`` rounds) a maintenance note or incident report about one of
them at a place (:mod:`edge_agent.ingest.reports`).

The event generator is pure (a seeded random stream of events); the component loop
publishes a round of events every ``interval`` through the common publisher.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterator
from datetime import UTC, datetime

from edge_agent.config import SimulatorConfig
from edge_agent.ingest.publisher import EventPublisher, PublishError
from edge_agent.ingest.reports import place_events, report_event
from edge_agent.model import EntityEvent, Relationship, encode_event

__all__ = ["run_simulator", "simulated_rounds"]

log = logging.getLogger(__name__)
_FLEETS = ("fleet-west", "fleet-east", "fleet-north")


def simulated_rounds(config: SimulatorConfig, start: datetime) -> Iterator[list[EntityEvent]]:
    """Yield rounds of events: one per drone per round, plus the fleets in round one.

    Args:
        config: how many drones, and the random seed.
        start: the timestamp of the first round; each round is ``interval`` later.
    """
    rng = random.Random(config.seed)
    battery = [rng.uniform(60, 100) for _ in range(config.entities)]
    position = [(37.7 + rng.uniform(-0.1, 0.1), -122.4 + rng.uniform(-0.1, 0.1)) for _ in battery]
    first = [
        EntityEvent(entity_id=f, entity_type="fleet", properties={"name": f}, source="simulator")
        for f in _FLEETS
    ]
    tick = 0
    while True:
        stamp = datetime.fromtimestamp(start.timestamp() + tick * config.interval, UTC)
        events = list(first) if tick == 0 else []
        for i in range(config.entities):
            battery[i] = max(0.0, battery[i] - rng.uniform(0, 0.5))
            lat, lon = position[i]
            position[i] = (lat + rng.uniform(-1e-3, 1e-3), lon + rng.uniform(-1e-3, 1e-3))
            events.append(
                EntityEvent(
                    entity_id=f"UAV-{config.first + i:03d}",
                    entity_type="drone",
                    priority=5 if battery[i] < 20 else 1,
                    timestamp=stamp,
                    properties={
                        "battery": round(battery[i], 2),
                        "geo.location.latitude": round(position[i][0], 6),
                        "geo.location.longitude": round(position[i][1], 6),
                    },
                    relationships=[Relationship("member_of", _FLEETS[i % len(_FLEETS)])],
                    source="simulator",
                )
            )
        if config.reports_every and tick % config.reports_every == 0:
            if tick == 0:
                events += place_events(stamp)
            drone = f"UAV-{config.first + rng.randrange(config.entities):03d}"
            number = config.first * 10_000 + tick // config.reports_every
            events.append(report_event(rng, number, drone, stamp)[0])
        yield events
        tick += 1


async def run_simulator(config: SimulatorConfig, publisher: EventPublisher) -> None:
    """Publish a round of simulated events every ``interval`` until cancelled."""
    for events in simulated_rounds(config, datetime.now(UTC)):
        try:
            await publisher.publish((encode_event(e) for e in events), path="simulator")
        except PublishError as exc:
            log.warning("simulator round not fully stored: %s", exc)
        await asyncio.sleep(config.interval)
