"""Per-edge provenance on the hub's graph, without I/O beyond a SQLite file.

Each test plays edges' batches into a real hub store (the hub's migrations and
triggers) and reads the merged view the queries see, next to each edge's own part.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloud_hub.graph import fleet
from cloud_hub.graph.provenance import BatchResult, BatchStamp, apply_batch
from cloud_hub.graph.schema import HUB_MIGRATIONS
from edge_agent.config import IndexesConfig
from edge_agent.graph import GraphStore
from edge_agent.sync.frames import EntityDelta

ALL = IndexesConfig(predicate=True, incoming=True, alias=True, spatial=True, temporal=True)
NOW = 1_800_000_000_000  # the receiving hub's clock, epoch ms
SKEW = 1_000
DAY = 86_400_000


class Hub:
    """A hub store and a per-edge batch counter."""

    def __init__(self, path: Path) -> None:
        self.store = GraphStore(path, origin="hub", indexes=ALL, migrations=HUB_MIGRATIONS)
        self.seqs: dict[str, int] = {}

    def send(self, edge: str, *deltas: EntityDelta, at: int = NOW, seq: int = 0) -> BatchResult:
        seq = seq or self.seqs.get(edge, 0) + 1
        self.seqs[edge] = max(seq, self.seqs.get(edge, 0))
        stamp = BatchStamp(edge, seq, seq, at, at + SKEW)
        return self.store.database.transaction(apply_batch, stamp, list(deltas), indexes=ALL)

    def entity(self, entity_id: str) -> dict[str, Any] | None:
        return self.store.entity(entity_id)

    def parts(self, entity_id: str) -> dict[str, dict[str, Any]]:
        return self.store.database.read(fleet.contributions, entity_id)

    def rows(self, table: str) -> list[tuple[Any, ...]]:
        """Every row of ``table``, sorted."""
        return sorted(
            self.store.database.read(lambda db: db.execute(f"SELECT * FROM {table}").fetchall())
        )

    def conflicts(self) -> list[dict[str, Any]]:
        with self.store.reader() as db:
            return fleet.conflicts(db, limit=100)


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    found = Hub(tmp_path / "hub.db")
    yield found
    found.store.close()


def drone(
    entity_id: str,
    version: int,
    at: int,
    *,
    battery: float,
    fleet_id: str = "fleet-1",
    **flags: bool,
) -> EntityDelta:
    return EntityDelta(
        entity_id,
        "drone",
        version,
        at,
        3,
        [("battery", battery, at, "sensor")],
        [("member_of", fleet_id, 1.0, at, "sensor")],
        [f"tail-{entity_id}"],
        **flags,
    )


def test_one_edge_alone_is_the_merged_view_exactly(hub: Hub) -> None:
    hub.send("edge-b", drone("X", 1, NOW - 500, battery=90.0))
    hub.send("edge-b", drone("X", 2, NOW - 100, battery=80.0))
    merged = hub.entity("X")
    assert merged is not None
    assert merged["version"] == 2 and merged["origin"] == "edge-b"
    assert merged["properties"] == {"battery": 80.0}
    assert merged["relationships"] == [
        {"predicate": "member_of", "object": "fleet-1", "weight": 1.0}
    ]
    assert merged["aliases"] == ["tail-X"]
    assert hub.conflicts() == []


def test_a_resent_batch_changes_nothing(hub: Hub) -> None:
    hub.send("edge-b", drone("X", 1, NOW, battery=90.0))
    again = hub.send("edge-b", drone("X", 9, NOW, battery=1.0), seq=1)
    assert again.duplicate
    assert hub.entity("X")["properties"] == {"battery": 90.0}  # type: ignore[index]


def test_a_far_future_stamp_cannot_mask_a_correct_edge_past_the_skew(hub: Hub) -> None:
    hub.send("edge-b", drone("X", 1, NOW, battery=90.0))
    hub.send("edge-a", drone("X", 1, NOW + DAY, battery=0.0), at=NOW)  # a day ahead
    (conflict,) = hub.conflicts()
    assert conflict["kind"] == "future_timestamp" and conflict["edge_id"] == "edge-a"
    later = NOW + 2 * SKEW  # B's next reading, once past A's clamped stamp
    hub.send("edge-b", drone("X", 2, later, battery=70.0), at=later)
    assert hub.entity("X")["properties"]["battery"] == 70.0  # type: ignore[index]
    assert hub.parts("X")["edge-b"]["properties"] == {"battery": 70.0}


def test_a_foreign_replace_and_delete_remove_only_the_senders_part(hub: Hub) -> None:
    hub.send("edge-b", drone("X", 3, NOW, battery=90.0, fleet_id="fleet-b"))
    hub.send("edge-a", drone("X", 1, NOW + 10, battery=5.0, fleet_id="fleet-a", replace=True))
    assert set(hub.parts("X")) == {"edge-a", "edge-b"}
    gone = EntityDelta("X", "drone", 2, NOW + 20, 3, deleted=True)
    hub.send("edge-a", gone)
    merged = hub.entity("X")
    assert merged is not None, "edge-a's delete erased edge-b's entity"
    assert merged["properties"] == {"battery": 90.0} and merged["version"] == 3
    assert merged["origin"] == "edge-b"
    assert [r["object"] for r in merged["relationships"]] == ["fleet-b"]
    assert set(hub.parts("X")) == {"edge-b"}
    assert "foreign_delete" in {c["kind"] for c in hub.conflicts()}
    hub.send("edge-b", drone("X", 4, NOW + 30, battery=60.0, fleet_id="fleet-b"))
    assert hub.entity("X")["properties"] == {"battery": 60.0}  # type: ignore[index]


def test_the_last_contribution_takes_the_entity_and_its_index_rows(hub: Hub) -> None:
    located = EntityDelta(
        "P",
        "post",
        1,
        NOW,
        1,
        [("geo.location.latitude", 1.5, NOW, ""), ("geo.location.longitude", 2.5, NOW, "")],
    )
    hub.send("edge-b", located)
    hub.send("edge-b", EntityDelta("P", "post", 2, NOW + 1, 1, deleted=True))
    assert hub.entity("P") is None
    with hub.store.reader() as db:
        assert db.execute("SELECT count(*) FROM spatial").fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM temporal").fetchone() == (0,)


def test_shared_reference_entities_with_equal_values_are_no_conflict(hub: Hub) -> None:
    shared = EntityDelta("fleet-1", "fleet", 1, NOW, 1, [("region", "west", NOW, "")])
    hub.send("edge-a", shared)
    hub.send(
        "edge-b",
        EntityDelta("fleet-1", "fleet", 1, NOW - 50, 1, [("region", "west", NOW - 50, "")]),
    )
    assert hub.conflicts() == []
    merged = hub.entity("fleet-1")
    assert merged is not None and merged["version"] == 2  # one change from each edge
    assert fleet_shared(hub) == [{"entity_id": "fleet-1", "edges": ["edge-a", "edge-b"]}]


def fleet_shared(hub: Hub) -> list[dict[str, Any]]:
    return hub.store.database.read(fleet.shared_entities, 10)


def test_an_older_different_value_is_recorded_as_a_conflict_not_applied(hub: Hub) -> None:
    hub.send("edge-a", drone("X", 1, NOW, battery=50.0))
    hub.send("edge-b", drone("X", 1, NOW - 1_000, battery=99.0))
    assert hub.entity("X")["properties"] == {"battery": 50.0}  # type: ignore[index]
    (conflict,) = hub.conflicts()
    assert conflict["kind"] == "older_write" and conflict["kept_edge"] == "edge-a"
    assert hub.parts("X")["edge-b"]["properties"] == {"battery": 99.0}


def test_a_stale_resend_from_the_same_edge_leaves_its_newer_state(hub: Hub) -> None:
    # An edge restored from a backup sends again a change the hub has a newer state of.
    hub.send("edge-a", drone("X", 5, NOW, battery=50.0))
    before = (hub.entity("X"), hub.parts("X"), hub.rows("hub_triples"), hub.rows("hub_edges"))
    result = hub.send("edge-a", drone("X", 3, NOW - 10_000, battery=30.0))
    assert not result.duplicate and result.conflicts == {}
    after = (hub.entity("X"), hub.parts("X"), hub.rows("hub_triples"), hub.rows("hub_edges"))
    assert after == before
    # A change made after the restore (a newer stamp) is taken, whatever its version.
    hub.send("edge-a", drone("X", 4, NOW + 500, battery=40.0))
    assert hub.entity("X")["properties"] == {"battery": 40.0}  # type: ignore[index]


def test_an_edge_database_holds_no_hub_table(tmp_path: Path) -> None:
    GraphStore(tmp_path / "edge.db", origin="e", indexes=ALL).close()
    with sqlite3.connect(tmp_path / "edge.db") as db:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
    assert not {t for t in tables if t.startswith(("hub_", "sync_hwm", "sync_conflicts"))}


def test_many_readings_of_an_entity_in_one_batch_leave_what_one_batch_each_would(
    tmp_path: Path,
) -> None:
    together, apart = Hub(tmp_path / "together.db"), Hub(tmp_path / "apart.db")
    readings = [drone("X", v, NOW - 1_000 + 10 * v, battery=float(v)) for v in range(1, 6)]
    readings.append(drone("X", 6, NOW - 5_000, battery=6.0, fleet_id="fleet-2"))  # stamped older
    together.send("edge-a", *readings)
    for reading in readings:
        apart.send("edge-a", reading)
    merged = together.entity("X")
    # The reading stamped older loses, as it does on the edge (newer timestamp wins).
    assert merged is not None and merged["properties"] == {"battery": 5.0}
    assert merged == apart.entity("X")
    assert together.parts("X") == apart.parts("X")
    for table in ("hub_triples", "triples", "hub_edges", "edges"):
        assert together.rows(table) == apart.rows(table), table
    together.store.close()
    apart.store.close()


def test_the_merged_edge_follows_the_newest_contribution_restated_or_changed(hub: Hub) -> None:
    def member_of(edge: str, weight: float, at: int) -> None:
        delta = EntityDelta(
            "X", "drone", 1, at, 3, [], [("member_of", "fleet-1", weight, at, edge)]
        )
        hub.send(edge, delta, at=at)

    def merged() -> tuple[Any, ...]:
        (row,) = hub.rows("edges")
        return row[3], row[4], row[7]  # weight, ts, edge_id

    member_of("edge-a", 0.5, NOW - 300)
    member_of("edge-b", 0.5, NOW - 200)  # the same weight, newer: restated by edge-b
    assert merged() == (0.5, NOW - 200, "edge-b")
    member_of("edge-a", 0.5, NOW - 250)  # restated, but older than edge-b's
    assert merged() == (0.5, NOW - 200, "edge-b")
    member_of("edge-a", 0.9, NOW - 100)  # changed, newest
    assert merged() == (0.9, NOW - 100, "edge-a")
    member_of("edge-b", 0.9, NOW - 150)  # restated and older: edge-a keeps it
    assert merged() == (0.9, NOW - 100, "edge-a")
    member_of("edge-a", 0.2, NOW - 50)  # its own newer reading changes the weight
    assert merged() == (0.2, NOW - 50, "edge-a")
