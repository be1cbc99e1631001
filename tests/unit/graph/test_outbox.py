"""The sync outbox on real SQLite files: coalescing, deltas, filters, lanes, seqs, bounds."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import msgspec
import pytest

from edge_agent.errors import GraphError
from edge_agent.graph import GraphStore
from edge_agent.graph.outbox import Backlog, BatchLimits, OutboxBatch, SyncMode
from edge_agent.graph.share import merge_share
from edge_agent.sync.codec import decode_deltas
from edge_agent.sync.filters import SyncFilter, compile_filter
from edge_agent.sync.frames import EntityDelta
from tests.unit.graph.events import ALL_INDEXES, LAT, LON, NOW, Feed, at, ev, gone

LATER = NOW + 60_000  # every waiting row is past max_age by then
EVERYTHING = compile_filter({})


def ms(second: int) -> int:
    """``at(second)`` in epoch milliseconds."""
    return 1_704_067_200_000 + 1000 * second


def open_store(path: Path, mode: SyncMode = "state") -> GraphStore:
    store = GraphStore(path, origin="edge-1", indexes=ALL_INDEXES, outbox=mode)
    store.position("c", "stream-1")
    return store


@pytest.fixture
def store(tmp_path: Path) -> GraphStore:
    return open_store(tmp_path / "edge.db")


def take(
    store: GraphStore,
    limits: BatchLimits | None = None,
    sync_filter: SyncFilter = EVERYTHING,
    now: int = LATER,
) -> tuple[OutboxBatch | None, int]:
    return store.sync_take(limits or BatchLimits(), sync_filter, "zlib", now)


def unpack(batch: OutboxBatch | None) -> list[EntityDelta]:
    assert batch is not None
    deltas = decode_deltas(batch.payload, batch.encoding, max_bytes=1 << 24)
    assert len(deltas) == batch.count
    return deltas


def take_deltas(store: GraphStore, **kwargs: Any) -> list[EntityDelta]:
    batch, _ = take(store, **kwargs)
    return unpack(batch)


def rows(store: GraphStore, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(store.path) as db:
        return db.execute(sql).fetchall()


def waiting(store: GraphStore) -> set[str]:
    return {eid for (eid,) in rows(store, "SELECT entity_id FROM sync_outbox")}


def triples(delta: EntityDelta) -> dict[str, Any]:
    return {t[0]: t[1] for t in delta.triples}


# ---- state mode: coalescing and what a delta carries ---------------------------------


def test_state_mode_coalesces_rounds_into_one_row_per_entity(store: GraphStore) -> None:
    feed = Feed(store)
    ids = [f"UAV-{i}" for i in range(10)]
    for round_ in range(3):
        feed(
            *(
                ev(e, properties={"battery": 10 * round_ + i}, timestamp=at(round_))
                for i, e in enumerate(ids)
            )
        )
    assert len(rows(store, "SELECT * FROM sync_outbox")) == 10
    before = store.sync_backlog()
    assert (before.entities, before.in_flight, before.oldest_ms) == (10, 0, NOW)
    assert before.bytes > 0

    batch, filtered = take(store)
    deltas = unpack(batch)
    assert filtered == 0
    assert batch is not None and batch.seq == 1 and batch.count == 10
    assert sorted(d.entity_id for d in deltas) == sorted(ids)
    for d in deltas:
        i = int(d.entity_id.removeprefix("UAV-"))
        assert d.version == 3
        assert triples(d) == {"battery": 20 + i}
        assert d.updated_at == ms(2)
        assert (d.deleted, d.replace) == (False, False)
    assert rows(store, "SELECT * FROM sync_outbox") == []
    in_flight = store.sync_backlog()
    assert (in_flight.entities, in_flight.in_flight) == (10, 1)  # not acked yet
    assert in_flight.bytes == len(batch.payload)

    store.sync_ack(batch.seq)
    assert store.sync_backlog() == Backlog(0, 0, 0, 0)
    assert take(store) == (None, 0)


def test_a_delta_carries_only_the_triples_changed_since_the_last_take(store: GraphStore) -> None:
    feed = Feed(store)
    fleet = {"predicate": "member_of", "object": "fleet-west"}
    near = {"predicate": "near", "object": "UAV-2", "weight": 0.3}
    first = {LAT: 37.7, LON: -122.4, "battery": 90}
    feed(ev("UAV-1", properties=first, relationships=[fleet, near], timestamp=at(1)))
    [delta] = take_deltas(store)
    assert triples(delta) == first
    assert sorted(e[0] for e in delta.edges) == ["member_of", "near"]

    # battery changes, the position is restated; one edge's weight changes, one is restated
    moved_near = {**near, "weight": 0.7}
    again = {LAT: 37.7, LON: -122.4, "battery": 80}
    feed(ev("UAV-1", properties=again, relationships=[fleet, moved_near], timestamp=at(2)))
    [delta] = take_deltas(store)
    assert delta.version == 2
    assert delta.triples == [("battery", 80, ms(2), "")]
    assert delta.edges == [("near", "UAV-2", 0.7, ms(2), "")]

    # a reading that restates everything is a new version with nothing to carry
    feed(ev("UAV-1", properties=again, relationships=[fleet, moved_near], timestamp=at(3)))
    [delta] = take_deltas(store)
    assert (delta.version, delta.triples, delta.edges) == (3, [], [])


def test_changes_in_several_applies_before_a_take_are_all_carried(store: GraphStore) -> None:
    feed = Feed(store)
    feed(ev("UAV-1", properties={"a": 1, "b": 1, "c": 1}, timestamp=at(1)))
    take(store)
    feed(ev("UAV-1", properties={"a": 2}, timestamp=at(2)))
    feed(ev("UAV-1", properties={"b": 2}, timestamp=at(3)))
    [delta] = take_deltas(store)
    assert triples(delta) == {"a": 2, "b": 2}
    assert delta.version == 3


def test_a_deleted_entity_gives_a_deleted_delta(store: GraphStore) -> None:
    feed = Feed(store)
    feed(ev("UAV-1", properties={"battery": 5}))
    take(store)
    feed(gone("UAV-1"))
    [delta] = take_deltas(store)
    assert delta.entity_id == "UAV-1"
    assert delta.deleted
    assert (delta.triples, delta.edges, delta.aliases) == ([], [], [])


@pytest.mark.parametrize("together", [True, False], ids=["one-apply", "three-applies"])
def test_delete_then_recreate_before_a_take_replaces_whole(
    store: GraphStore, together: bool
) -> None:
    feed = Feed(store)
    feed(ev("UAV-1", properties={"a": 1, "b": 2}, aliases=["old"], timestamp=at(1)))
    take(store)
    events = [
        gone("UAV-1"),
        ev("UAV-1", properties={"a": 1}, timestamp=at(2)),  # a restated value, after a delete
        ev("UAV-1", properties={"c": 3}, aliases=["new"], timestamp=at(3)),
    ]
    if together:
        feed(*events)
    else:
        for event in events:
            feed(event)
    [delta] = take_deltas(store)
    assert delta.replace and not delta.deleted
    assert triples(delta) == {"a": 1, "c": 3}  # all of them, and not b
    assert delta.aliases == ["new"]
    assert delta.version == 2


# ---- filters ------------------------------------------------------------------------------


def test_a_priority_filter_drops_and_counts_low_priority_rows(store: GraphStore) -> None:
    feed = Feed(store)
    feed(*(ev(f"LOW-{i}", priority=1) for i in range(3)), ev("HIGH-1", priority=5))
    batch, filtered = take(store, sync_filter=compile_filter({"priority": {"gte": 3}}))
    assert [d.entity_id for d in unpack(batch)] == ["HIGH-1"]
    assert filtered == 3
    assert waiting(store) == set()  # they left the outbox

    feed(ev("LOW-9", priority=2))
    assert take(store, sync_filter=compile_filter({"priority": {"gte": 3}})) == (None, 1)
    assert waiting(store) == set()
    assert store.sync_acked_seq() == 0
    assert store.sync_resume(0) == [batch]  # no batch was made of the filtered row


def test_a_predicate_filter_drops_triples_and_edges(store: GraphStore) -> None:
    feed = Feed(store)
    feed(
        ev(
            "UAV-1",
            properties={LAT: 1.0, LON: 2.0, "battery": 50},
            relationships=[
                {"predicate": "member_of", "object": "fleet"},
                {"predicate": "geo.near", "object": "UAV-2"},
            ],
        )
    )
    [delta] = take_deltas(store, sync_filter=compile_filter({"predicate": {"prefix": "geo."}}))
    assert triples(delta) == {LAT: 1.0, LON: 2.0}
    assert [e[0] for e in delta.edges] == ["geo.near"]


def test_a_property_filter_uses_current_values_not_just_changed_ones(store: GraphStore) -> None:
    feed = Feed(store)
    low_battery = compile_filter({"properties.battery": {"lt": 20}})
    feed(
        ev("UAV-1", properties={"battery": 10, "mode": "idle"}),
        ev("UAV-2", properties={"battery": 90, "mode": "idle"}),
    )
    batch, filtered = take(store, sync_filter=low_battery)
    assert ([d.entity_id for d in unpack(batch)], filtered) == (["UAV-1"], 1)

    feed(ev("UAV-1", properties={"mode": "flying"}), ev("UAV-2", properties={"mode": "flying"}))
    batch, filtered = take(store, sync_filter=low_battery)
    [delta] = unpack(batch)
    assert delta.entity_id == "UAV-1"  # battery (10) was not in this change, still selects
    assert triples(delta) == {"mode": "flying"}
    assert filtered == 1


# ---- priority lanes and readiness --------------------------------------------------------


@pytest.mark.parametrize("lanes", [True, False])
def test_priority_lanes_let_an_urgent_change_overtake_the_backlog(
    store: GraphStore, lanes: bool
) -> None:
    feed = Feed(store)
    feed(*(ev(f"BULK-{i:04d}", properties={"n": i}) for i in range(1000)))
    feed(ev("ALERT-1", priority=9, properties={"fire": True}))
    batch, _ = take(store, limits=BatchLimits(lanes=lanes, max_count=100))
    ids = [d.entity_id for d in unpack(batch)]
    assert len(ids) == 100
    if lanes:
        assert ids[0] == "ALERT-1"
    else:
        assert "ALERT-1" not in ids
        assert "ALERT-1" in waiting(store)


def test_a_fresh_small_outbox_waits_for_max_age(store: GraphStore) -> None:
    Feed(store)(ev("UAV-1"), ev("UAV-2"))
    limits = BatchLimits(max_age_ms=500, max_count=3)
    assert take(store, limits, now=NOW) == (None, 0)
    assert take(store, limits, now=NOW + 499) == (None, 0)
    assert waiting(store) == {"UAV-1", "UAV-2"}
    batch, _ = take(store, limits, now=NOW + 500)
    assert batch is not None and batch.count == 2


def test_a_full_count_is_taken_at_once(store: GraphStore) -> None:
    Feed(store)(ev("UAV-1"), ev("UAV-2"), ev("UAV-3"))
    batch, _ = take(store, BatchLimits(max_age_ms=500, max_count=3), now=NOW)
    assert batch is not None and batch.count == 3


@pytest.mark.parametrize("lanes", [True, False])
def test_an_urgent_row_is_taken_at_once_with_lanes(store: GraphStore, lanes: bool) -> None:
    Feed(store)(ev("UAV-1"), ev("ALERT-1", priority=7))
    batch, _ = take(store, BatchLimits(max_age_ms=500, urgent_priority=7, lanes=lanes), now=NOW)
    if lanes:
        assert [d.entity_id for d in unpack(batch)] == ["ALERT-1", "UAV-1"]
    else:
        assert batch is None


@pytest.mark.parametrize("together", [True, False], ids=["one-apply", "two-applies"])
def test_a_coalesced_urgent_change_keeps_its_lane(store: GraphStore, together: bool) -> None:
    # "a change of urgent_priority or more is sent without waiting for batch.max_age"
    # (WebsocketOutputConfig): a routine reading of the same entity right after an alarm
    # must not demote the waiting alarm.
    feed = Feed(store)
    feed(*(ev(f"BULK-{i:02d}") for i in range(50)))
    alarm = ev("UAV-1", priority=9, properties={"fire": True})
    routine = ev("UAV-1", priority=1, properties={"battery": 80})
    if together:
        feed(alarm, routine)
    else:
        feed(alarm)
        feed(routine)
    batch, _ = take(store, BatchLimits(max_age_ms=500, max_count=10), now=NOW)
    assert batch is not None, "the alarm waits for max_age"
    delta = unpack(batch)[0]
    assert delta.entity_id == "UAV-1"
    assert triples(delta) == {"fire": True, "battery": 80}


# ---- seqs, sizes, flight, resume -----------------------------------------------------------


def test_max_bytes_splits_batches_and_seqs_persist_across_reopening(tmp_path: Path) -> None:
    path = tmp_path / "edge.db"
    store = open_store(path)
    feed = Feed(store)
    feed(*(ev(f"UAV-{i:02d}", properties={"note": "x" * 100}) for i in range(30)))
    limits = BatchLimits(max_bytes=1000)
    taken: list[OutboxBatch] = []
    while (batch := take(store, limits)[0]) is not None:
        taken.append(batch)
    assert [b.seq for b in taken] == list(range(1, len(taken) + 1))
    assert len(taken) >= 3
    assert sum(b.count for b in taken) == 30
    for b in taken:
        parts = sum(len(msgspec.msgpack.encode(d)) for d in unpack(b))
        assert parts <= limits.max_bytes
        assert b.count < 10  # each delta is over 100 bytes
    store.close()

    reopened = open_store(path)
    assert reopened.sync_resume(0) == taken  # still in flight, byte for byte
    Feed(reopened, feed.seq)(ev("UAV-99"))
    batch, _ = take(reopened)
    assert batch is not None and batch.seq == len(taken) + 1


def test_max_bytes_bounds_the_whole_uncompressed_batch(store: GraphStore) -> None:
    # Deltas of one exact size, and a limit of exactly four of them: the batch that
    # holds four must not be bigger than the limit once the array header is added.
    Feed(store)(*(ev(f"UAV-{i}", properties={"note": "y" * 50}) for i in range(8)))
    [one] = [
        len(msgspec.msgpack.encode(d)) for d in take_deltas(store, limits=BatchLimits(max_count=1))
    ]
    limits = BatchLimits(max_bytes=4 * one)
    batch, _ = take(store, limits)
    assert batch is not None
    assert batch.raw_bytes <= limits.max_bytes, (batch.count, batch.raw_bytes)


def test_resume_sends_again_only_what_the_hub_lacks(store: GraphStore) -> None:
    feed = Feed(store)
    sent = []
    for i in range(3):
        feed(ev(f"UAV-{i}", properties={"battery": i}))
        batch, _ = take(store)
        assert batch is not None
        sent.append(batch)
    assert [b.seq for b in sent] == [1, 2, 3]
    store.sync_ack(1)
    assert store.sync_acked_seq() == 1
    again = store.sync_resume(2)
    assert again == [sent[2]]
    assert again[0].payload == sent[2].payload
    assert store.sync_acked_seq() == 2
    assert store.sync_backlog().in_flight == 1

    # the hub knows more than this edge ever sent (its store was replaced)
    assert store.sync_resume(50) == []
    assert store.sync_acked_seq() == 50
    feed(ev("UAV-9"))
    batch, _ = take(store)
    assert batch is not None and batch.seq == 51


def test_an_ack_below_the_acked_seq_changes_nothing(store: GraphStore) -> None:
    feed = Feed(store)
    for i in range(2):
        feed(ev(f"UAV-{i}"))
        take(store)
    store.sync_ack(2)
    store.sync_ack(1)
    assert store.sync_acked_seq() == 2
    assert store.sync_resume(0) == []


# ---- events mode ------------------------------------------------------------------------------


def test_events_mode_queues_every_reading_in_order(tmp_path: Path) -> None:
    store = open_store(tmp_path / "edge.db", mode="events")
    feed = Feed(store)
    feed(
        ev("UAV-1", properties={"battery": 90}, timestamp=at(1)),
        ev("UAV-2", properties={"battery": 50}, timestamp=at(1)),
        ev("UAV-1", properties={"battery": 90}, timestamp=at(2)),  # a restatement is sent too
        ev("UAV-1", properties={"battery": 70}, timestamp=at(3)),
    )
    assert len(rows(store, "SELECT * FROM sync_events")) == 4
    deltas = take_deltas(store)
    assert [(d.entity_id, d.version, triples(d)["battery"]) for d in deltas] == [
        ("UAV-1", 1, 90),
        ("UAV-2", 1, 50),
        ("UAV-1", 2, 90),
        ("UAV-1", 3, 70),
    ]
    assert [d.updated_at for d in deltas] == [ms(1), ms(1), ms(2), ms(3)]

    feed(ev("UAV-1", properties={"battery": 60}), gone("UAV-2"), ev("UAV-1", properties={}))
    deltas = take_deltas(store)
    assert [(d.entity_id, d.version, d.deleted) for d in deltas] == [
        ("UAV-1", 4, False),
        ("UAV-2", 0, True),
        ("UAV-1", 5, False),
    ]


# ---- a resync's share drops what the hub already holds ---------------------------------------


def share_of(*copies: tuple[str, int]) -> list[EntityDelta]:
    """The hub's copies (entity id, updated_at ms) of ``drone`` entities in a share."""
    return [
        EntityDelta(eid, "drone", 9, stamp, 3, [("battery", 1, stamp, "")]) for eid, stamp in copies
    ]


def merge(store: GraphStore, share: list[EntityDelta]) -> int:
    merged = store.database.transaction(merge_share, share, "edge-1", store.indexes)
    return merged.held_by_hub


def test_a_share_drops_the_waiting_changes_the_hub_holds_as_new(store: GraphStore) -> None:
    feed = Feed(store)
    feed(*(ev(f"UAV-{i}", properties={"battery": i}, timestamp=at(5)) for i in (1, 2, 3, 7)))
    feed(gone("UAV-3"), gone("UAV-7"))  # queued at NOW
    share = share_of(("UAV-1", ms(5)), ("UAV-2", ms(4)), ("UAV-3", ms(9)), ("UAV-4", ms(9)))
    share.append(EntityDelta("UAV-7", "drone", 9, NOW - 1, 3, [("battery", 1, NOW - 1, "")]))
    assert merge(store, share) == 2
    # UAV-1: the hub's copy is as new (sent by the edge's lost self): not sent again.
    # UAV-2: newer here than at the hub.
    # UAV-3: the hub's copy is newer than the deletion here: it comes back, not deleted.
    # UAV-7: deleted here after the hub's copy: not brought back; the deletion goes.
    assert waiting(store) == {"UAV-2", "UAV-7"}
    assert store.entity("UAV-3") is not None and store.entity("UAV-7") is None
    assert merge(store, share) == 0


def test_a_share_drops_a_recreated_entity_the_hub_holds_as_new(store: GraphStore) -> None:
    """Deleted and made again: the waiting change replaces the hub's copy whole when
    sent; a hub whose copy is as new already holds it (its lost sender sent it)."""
    feed = Feed(store)
    for eid, made_again in (("UAV-5", 6), ("UAV-6", 7)):
        feed(ev(eid, properties={"battery": 1}, timestamp=at(1)))
        feed(gone(eid))
        feed(ev(eid, properties={"alt": 2}, timestamp=at(made_again)))
    assert merge(store, share_of(("UAV-5", ms(9)), ("UAV-6", ms(6)))) == 1
    assert waiting(store) == {"UAV-6"}
    [delta] = take_deltas(store)
    assert (delta.entity_id, delta.replace, triples(delta)) == ("UAV-6", True, {"alt": 2})


def test_a_deletion_after_a_waiting_change_is_dated_by_the_deletion(store: GraphStore) -> None:
    """Changed (queued), then deleted ten seconds later while still waiting: a hub copy
    stamped between the two is older than the deletion. Merged, it would bring the
    entity back here for good, while the dropped deletion never reached the hub."""
    feed = Feed(store)
    feed(ev("UAV-8", properties={"battery": 1}, timestamp=at(1)))
    feed.now_ms = NOW + 10_000
    feed(gone("UAV-8"))
    hub_copy = EntityDelta("UAV-8", "drone", 9, NOW + 5_000, 3, [("battery", 1, NOW + 5_000, "")])
    assert merge(store, [hub_copy]) == 0
    assert store.entity("UAV-8") is None
    [delta] = take_deltas(store)
    assert (delta.entity_id, delta.deleted) == ("UAV-8", True)


def test_a_share_drops_the_readings_the_hub_holds_in_events_mode(tmp_path: Path) -> None:
    store = open_store(tmp_path / "edge.db", mode="events")
    Feed(store)(
        ev("UAV-1", properties={"battery": 90}, timestamp=at(1)),
        ev("UAV-2", properties={"battery": 50}, timestamp=at(2)),
        ev("UAV-1", properties={"battery": 70}, timestamp=at(3)),
    )
    assert merge(store, share_of(("UAV-1", ms(2)))) == 1
    deltas = take_deltas(store)
    assert [(d.entity_id, d.updated_at) for d in deltas] == [("UAV-2", ms(2)), ("UAV-1", ms(3))]


def test_a_share_drops_a_deletion_of_what_the_hub_holds_in_events_mode(tmp_path: Path) -> None:
    """The merge puts the hub's copy back here (a share has no tombstones): sent, the
    queued deletion would erase it at the hub alone, and the two would disagree."""
    store = open_store(tmp_path / "edge.db", mode="events")
    feed = Feed(store)
    feed(ev("UAV-1", properties={"battery": 90}, timestamp=at(1)))
    feed(gone("UAV-1"), gone("UAV-2"))
    feed(ev("UAV-1", properties={"alt": 3}, timestamp=at(3)))
    assert merge(store, share_of(("UAV-1", ms(8)))) == 3
    # The hub never had UAV-2 in this edge's share: its deletion still goes.
    assert [(d.entity_id, d.deleted) for d in take_deltas(store)] == [("UAV-2", True)]
    assert store.entity("UAV-1") is not None


@pytest.mark.parametrize("mode", ["state", "events"])
def test_requeue_all_queues_every_entity_whole(tmp_path: Path, mode: SyncMode) -> None:
    store = open_store(tmp_path / "edge.db", mode=mode)
    feed = Feed(store)
    feed(*(ev(f"UAV-{i}", properties={"battery": i, "alt": 10}) for i in (1, 2)))
    feed(ev("UAV-1", properties={"battery": 5}))
    while (batch := take(store)[0]) is not None:
        store.sync_ack(batch.seq)
    assert store.sync_backlog().entities == 0
    assert store.sync_requeue_all(NOW) == 2
    deltas = {d.entity_id: d for d in take_deltas(store)}
    # Whole: the unchanged alt too, as a hub that lost the batches needs it.
    assert {eid: triples(d) for eid, d in deltas.items()} == {
        "UAV-1": {"battery": 5, "alt": 10},
        "UAV-2": {"battery": 2, "alt": 10},
    }
    assert not any(d.replace or d.deleted for d in deltas.values())


# ---- bounds ------------------------------------------------------------------------------------


def test_trim_drops_lowest_priority_then_oldest_rows_first(store: GraphStore) -> None:
    feed = Feed(store)
    # one apply each, so cseq orders them; equal sizes (same id and property lengths)
    for eid, priority in [("LOW-A", 1), ("HIGH1", 9), ("LOW-B", 1), ("MID-1", 5)]:
        feed(ev(eid, priority=priority, properties={"v": 1}))
    sizes = {size for (size,) in rows(store, "SELECT size FROM sync_outbox")}
    assert len(sizes) == 1
    size = sizes.pop()
    assert store.sync_backlog().bytes == 4 * size

    assert store.sync_trim(4 * size) == 0
    assert store.sync_trim(3 * size) == 1
    assert waiting(store) == {"HIGH1", "LOW-B", "MID-1"}
    assert store.sync_trim(size) == 2
    assert waiting(store) == {"HIGH1"}
    assert store.sync_trim(size) == 0
    [delta] = take_deltas(store)
    assert delta.entity_id == "HIGH1"


def test_trim_in_events_mode_keeps_urgent_readings(tmp_path: Path) -> None:
    store = open_store(tmp_path / "edge.db", mode="events")
    feed = Feed(store)
    feed(*(ev("UAV-1", priority=p, properties={"p": p}) for p in (1, 8, 1, 1)))
    (total,) = rows(store, "SELECT sum(size) FROM sync_events")[0]
    (urgent,) = rows(store, "SELECT size FROM sync_events WHERE priority = 8")[0]
    assert store.sync_trim(urgent) == 3
    assert [(d.priority, triples(d)) for d in take_deltas(store)] == [(8, {"p": 8})]
    assert total > urgent


# ---- atomicity -------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "table"), [("state", "sync_outbox"), ("events", "sync_events")])
def test_the_outbox_row_and_the_change_commit_together(
    tmp_path: Path, mode: SyncMode, table: str
) -> None:
    store = open_store(tmp_path / "edge.db", mode=mode)
    with sqlite3.connect(store.path) as db:
        db.execute(
            f"CREATE TRIGGER refuse BEFORE INSERT ON {table}"
            " BEGIN SELECT RAISE(ABORT, 'outbox refused'); END"
        )
    with pytest.raises(GraphError, match="outbox refused"):
        store.apply([(1, ev("UAV-1", properties={"a": 1}))], consumer="c", now_ms=NOW)
    assert store.entity("UAV-1") is None
    assert rows(store, f"SELECT * FROM {table}") == []
    assert store.position("c", "stream-1") == 0

    with sqlite3.connect(store.path) as db:
        db.execute("DROP TRIGGER refuse")
    store.apply([(1, ev("UAV-1", properties={"a": 1}))], consumer="c", now_ms=NOW)
    assert store.entity("UAV-1") is not None
    assert len(rows(store, f"SELECT * FROM {table}")) == 1


def test_the_bound_holds_after_every_commit_and_counts_what_it_drops(tmp_path: Path) -> None:
    probe = open_store(tmp_path / "probe.db")
    Feed(probe)(ev("E-00000", properties={"v": 1}))
    [(size,)] = rows(probe, "SELECT size FROM sync_outbox")
    limit = 40 * size
    store = GraphStore(
        tmp_path / "edge.db",
        origin="edge-1",
        indexes=ALL_INDEXES,
        outbox="state",
        max_outbox_bytes=limit,
    )
    store.position("c", "stream-1")
    feed = Feed(store)
    for i in range(300):  # one commit per entity: 300 x size, 7.5 times the limit
        feed(ev(f"E-{i:05d}", priority=9 if i == 3 else 1, properties={"v": 1}))
        assert store.sync_backlog().bytes <= limit
    kept = waiting(store)
    assert store.sync_dropped() == 300 - len(kept)
    assert len(kept) >= 39  # trimmed to 0.5 % under the limit, not below
    assert "E-00003" in kept  # the urgent one outlives newer routine ones
    assert "E-00299" in kept  # and the newest routine ones outlive the oldest
    assert "E-00000" not in kept
