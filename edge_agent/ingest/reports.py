"""Text-bearing entities for the demo and for search tests: places, maintenance notes
and incident reports that mention drones and places.

Pure and seeded. Each report is written from one of several phrasings of its finding,
so a search for one phrasing has to find another: what text search alone misses and
vectors catch.
"""

from __future__ import annotations

import random
from datetime import datetime

from edge_agent.model import EntityEvent, Relationship

__all__ = ["FINDINGS", "PLACES", "place_events", "report_event"]

#: Places the reports are about: (id, name).
PLACES = (
    ("place-north-depot", "north depot"),
    ("place-river-crossing", "river crossing"),
    ("place-harbour", "harbour"),
    ("place-solar-farm", "solar farm"),
    ("place-quarry", "quarry"),
    ("place-east-hangar", "east hangar"),
)

#: Findings: (kind, severity, phrasings). A report uses one phrasing; the others are
#: how someone else would say the same.
FINDINGS: tuple[tuple[str, int, tuple[str, ...]], ...] = (
    (
        "battery",
        7,
        (
            "battery swelling found after landing",
            "the power cell was bulging once the aircraft was back on the ground",
            "lithium pack puffed up following touchdown",
        ),
    ),
    (
        "rotor",
        6,
        (
            "rotor blade cracked during inspection",
            "a propeller had a fracture when checked",
            "split prop found on the walkaround",
        ),
    ),
    (
        "gps",
        5,
        (
            "GPS signal lost twice in flight",
            "satellite positioning dropped out repeatedly while airborne",
            "navigation fix went missing mid-mission",
        ),
    ),
    (
        "motor",
        8,
        (
            "motor overheating on climb",
            "engine temperature too high while ascending",
            "the drive unit ran hot going up",
        ),
    ),
    (
        "camera",
        3,
        (
            "camera gimbal jittering in wind",
            "the imaging mount shook in gusts",
            "video stabiliser wobbling when it was breezy",
        ),
    ),
    (
        "collision",
        9,
        (
            "near miss with a bird at low altitude",
            "almost struck a seagull flying low",
            "close call with wildlife close to the ground",
        ),
    ),
)


def place_events(stamp: datetime) -> list[EntityEvent]:
    """One event per place (named, so text search finds it by its name)."""
    return [
        EntityEvent(
            entity_id=key,
            entity_type="place",
            timestamp=stamp,
            properties={"name": name},
            source="simulator",
        )
        for key, name in PLACES
    ]


def report_event(
    rng: random.Random, number: int, drone: str, stamp: datetime, *, phrasing: int | None = None
) -> tuple[EntityEvent, str]:
    """A maintenance note or incident report about ``drone`` at a place; and its
    finding's kind.

    ``phrasing`` picks which wording of the finding the text uses (random if ``None``).
    """
    kind, severity, wordings = FINDINGS[rng.randrange(len(FINDINGS))]
    wording = wordings[rng.randrange(len(wordings)) if phrasing is None else phrasing]
    place_id, place = PLACES[rng.randrange(len(PLACES))]
    incident = severity >= 8
    entity_type = "incident_report" if incident else "maintenance_note"
    text = f"{drone} at the {place}: {wording}."
    event = EntityEvent(
        entity_id=f"{'incident' if incident else 'note'}-{number:05d}",
        entity_type=entity_type,
        priority=min(9, severity),
        timestamp=stamp,
        properties={"text": text, "severity": severity, "finding": kind},
        relationships=[Relationship("about", drone), Relationship("located_at", place_id)],
        source="simulator",
    )
    return event, kind
