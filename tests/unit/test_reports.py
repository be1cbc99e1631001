"""The simulator's text-bearing entities: places, notes and incident reports."""

from __future__ import annotations

import random
from datetime import UTC, datetime

from edge_agent.config import SimulatorConfig
from edge_agent.ingest.reports import FINDINGS, PLACES, report_event
from edge_agent.ingest.simulator import simulated_rounds

NOW = datetime(2026, 12, 4, tzinfo=UTC)


def test_a_report_names_its_drone_and_place_and_relates_to_both() -> None:
    event, kind = report_event(random.Random(3), 7, "UAV-004", NOW)
    text = str(event.properties["text"])
    assert text.startswith("UAV-004 at the ")
    place = next(key for key, name in PLACES if f"the {name}:" in text)
    relations = {(r.predicate, r.object) for r in event.relationships}
    assert relations == {("about", "UAV-004"), ("located_at", place)}
    assert event.properties["finding"] == kind
    assert event.entity_type == ("incident_report" if event.priority >= 8 else "maintenance_note")


def test_the_phrasings_of_a_finding_share_almost_no_words() -> None:
    # What makes paraphrase search hard for text alone: at most two content words shared.
    stop = {"the", "a", "was", "on", "in", "at", "with", "when", "it", "once", "while"}
    for _, _, wordings in FINDINGS:
        words = [set(w.lower().split()) - stop for w in wordings]
        for i, first in enumerate(words):
            for second in words[i + 1 :]:
                assert len(first & second) <= 2, (first & second, wordings)


def test_the_simulator_sends_places_once_and_a_report_every_n_rounds() -> None:
    rounds = simulated_rounds(SimulatorConfig(entities=4, reports_every=3, first=20), NOW)
    seen = [next(rounds) for _ in range(7)]
    places = [e for r in seen for e in r if e.entity_type == "place"]
    reports = [e for r in seen for e in r if e.entity_type != "place" and "text" in e.properties]
    assert len(places) == len(PLACES) and all(p in seen[0] for p in places)
    assert [e.entity_id.split("-")[1] for e in reports] == ["200000", "200001", "200002"]
    quiet = simulated_rounds(SimulatorConfig(entities=4), NOW)
    assert not [e for _ in range(4) for e in next(quiet) if "text" in e.properties]
