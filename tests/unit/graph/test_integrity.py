"""Damage detection at open: the pure byte checks, then real SQLite files damaged on disk."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from edge_agent.config import IndexesConfig
from edge_agent.graph import GraphStore
from edge_agent.graph.integrity import (
    count_missing,
    header_problem,
    inspect,
    quarantine,
    salvage_ids,
    wal_problem,
)
from edge_agent.graph.recovery import RESYNC_MARKER, heal
from edge_agent.graph.share import merge_share
from edge_agent.sync.frames import EntityDelta
from tests.unit.graph.events import Feed, at, ev

PAGE = 4096


def make_store(path: Path, entities: int = 300) -> None:
    """A graph of ``entities`` drones, checkpointed into the file (no WAL left)."""
    store = GraphStore(path, origin="edge-1", indexes=IndexesConfig())
    feed = Feed(store)
    for start in range(0, entities, 50):
        feed(*(ev(f"d-{i:05d}", properties={"n": i}) for i in range(start, start + 50)))
    store.close()


def wal_with_frames(path: Path) -> bytes:
    """The WAL of a database with checkpoints off and several transactions in it."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA wal_autocheckpoint = 0")
    db.execute("CREATE TABLE t (x TEXT)")
    for i in range(6):
        db.execute("INSERT INTO t VALUES (?)", (str(i) * 3000,))
    wal = path.with_name(path.name + "-wal").read_bytes()
    db.close()
    return wal


def flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x10]) + data[offset + 1 :]


def test_header_problems() -> None:
    good = b"SQLite format 3\x00" + (PAGE).to_bytes(2, "big") + bytes(82)
    assert header_problem(good, PAGE * 3) == ""
    assert "truncated to 40" in header_problem(good[:40], 40)
    assert "not an SQLite database" in header_problem(b"x" * 100, PAGE)
    bad_size = good[:16] + (3000).to_bytes(2, "big") + good[18:]
    assert "page size 3000" in header_problem(bad_size, PAGE)
    assert "not a whole number" in header_problem(good, PAGE * 3 + 17)
    assert header_problem(good, PAGE * 3 + 17, wal=True) == ""  # the WAL may hold it


def test_a_whole_wal_passes_and_its_torn_tail_is_sqlites_business(tmp_path: Path) -> None:
    wal = wal_with_frames(tmp_path / "a.db")
    frames = (len(wal) - 32) // (24 + PAGE)
    assert frames >= 6
    assert wal_problem(wal) == ""
    assert wal_problem(b"") == ""
    last_page = 32 + (frames - 1) * (24 + PAGE) + 24 + 100
    assert wal_problem(flip(wal, last_page)) == ""  # a torn final write
    assert wal_problem(wal[: len(wal) - 1000]) == ""  # cut inside the last frame


def test_a_damaged_frame_with_frames_after_it_is_damage(tmp_path: Path) -> None:
    wal = wal_with_frames(tmp_path / "a.db")
    assert "frame 1 damaged" in wal_problem(flip(wal, 32 + (24 + PAGE) + 24 + 7))
    assert "inside its header" in wal_problem(wal[:20])
    assert "bad magic" in wal_problem(flip(wal, 0))
    assert "header damaged (checksum)" in wal_problem(flip(wal, 13))


def test_inspect_tells_fresh_whole_and_damaged(tmp_path: Path) -> None:
    path = tmp_path / "graph.db"
    assert inspect(path).verdict == "fresh"
    make_store(path)
    assert inspect(path).verdict == "ok"
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    found = inspect(path)
    assert found.verdict == "damaged", found
    path.write_bytes(os.urandom(len(whole)))
    assert inspect(path).verdict == "damaged"
    # A b-tree page overwritten: the header is fine, quick_check is not.
    pages = bytearray(whole)
    pages[3 * PAGE : 4 * PAGE] = b"\xff" * PAGE
    path.write_bytes(bytes(pages))
    found = inspect(path)
    assert found.verdict == "damaged" and found.reason, found


def test_inspect_sees_a_wal_that_lost_committed_frames(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    wal = wal_with_frames(path)  # closed: SQLite checkpointed and removed its WAL
    path.with_name("a.db-wal").write_bytes(flip(wal, 32 + (24 + PAGE) + 24 + 7))
    found = inspect(path)
    assert found.verdict == "wal_damaged" and "frame 1" in found.reason


def test_quarantine_keeps_every_file_and_salvage_counts_what_is_readable(
    tmp_path: Path,
) -> None:
    path = tmp_path / "graph.db"
    make_store(path, entities=300)
    pages = bytearray(path.read_bytes())
    size = len(pages)
    pages[size - 2 * PAGE : size - PAGE] = b"\x00" * PAGE  # lose one page near the end
    path.write_bytes(bytes(pages))
    (tmp_path / "graph.db-shm").write_bytes(b"shm")
    moved = quarantine(path, tmp_path / "damaged", now=0)
    assert moved.name == "19700101T000000Z-graph"
    assert sorted(p.name for p in moved.iterdir()) == ["graph.db", "graph.db-shm"]
    assert not path.exists() and oct(moved.stat().st_mode & 0o777) == "0o700"
    again = quarantine(tmp_path / "missing.db", tmp_path / "damaged", now=0)
    assert again != moved
    ids, _ = salvage_ids(moved, "graph.db")
    assert 0 < ids <= 300
    assert (moved / "graph.db").read_bytes() == bytes(pages)  # the evidence is as found
    fresh = tmp_path / "fresh.db"
    make_store(fresh, entities=100)  # ids d-00000 .. d-00099 are back
    missing = count_missing(moved / "entity-ids.db", fresh)
    assert missing == ids - sum(1 for i in range(100) if _salvaged(moved, f"d-{i:05d}"))


def _salvaged(moved: Path, entity_id: str) -> bool:
    db = sqlite3.connect(moved / "entity-ids.db")
    try:
        return db.execute("SELECT 1 FROM ids WHERE id = ?", (entity_id,)).fetchone() is not None
    finally:
        db.close()


def test_salvage_of_a_file_that_is_no_database_reads_nothing(tmp_path: Path) -> None:
    (tmp_path / "graph.db").write_bytes(os.urandom(3 * PAGE))
    moved = quarantine(tmp_path / "graph.db", tmp_path / "damaged")
    assert salvage_ids(moved, "graph.db") == (0, False)


def test_heal_moves_a_damaged_store_aside_and_asks_for_a_resync(tmp_path: Path) -> None:
    path = tmp_path / "graph.db"
    assert heal(path, resync=True) is None
    assert (tmp_path / RESYNC_MARKER).exists()  # a new store asks the hub for its share
    (tmp_path / RESYNC_MARKER).unlink()
    make_store(path)
    assert heal(path, resync=True) is None and not (tmp_path / RESYNC_MARKER).exists()
    path.write_bytes(b"garbage" * 1000)
    recovery = heal(path, resync=False, now=86400)
    assert recovery is not None and recovery.verdict == "damaged"
    assert recovery.moved_to.endswith("19700102T000000Z-graph")
    assert recovery.hub_resync == "none" and recovery.damaged_entities == 0
    assert not path.exists() and not (tmp_path / RESYNC_MARKER).exists()
    view = recovery.view()
    assert view["unrecovered_entities"] is None and view["read_complete"] is False


def test_a_share_merges_without_rolling_back_newer_local_writes(tmp_path: Path) -> None:
    store = GraphStore(
        tmp_path / "g.db", origin="edge-1", indexes=IndexesConfig(temporal=True), outbox="state"
    )
    # Applied locally since the restart: battery at second 50.
    Feed(store)(ev("d-1", timestamp=at(50), properties={"battery": 10}))
    old_ms, new_ms = 1_704_067_210_000, 1_704_067_290_000  # seconds 10 and 90 of 2024
    share = [
        EntityDelta(
            "d-1", "drone", 4, old_ms, 1, [("battery", 99, old_ms, "s"), ("alt", 5, old_ms, "s")]
        ),
        EntityDelta(
            "d-2",
            "drone",
            2,
            new_ms,
            3,
            [("battery", 7, new_ms, "s")],
            [("near", "d-1", 1.0, new_ms, "s")],
            ["two"],
        ),
    ]
    merged = store.database.transaction(merge_share, share, "edge-1", store.indexes)
    assert merged.changed == 2 and merged.touched == {"d-1", "d-2"}
    assert merged.held_by_hub == 0  # d-1 here is newer than the hub's copy: it still goes
    one, two = store.entity("d-1"), store.entity("d-2")
    assert one is not None and two is not None
    assert one["properties"] == {"battery": 10, "alt": 5}  # the newer local value stays
    assert two["properties"] == {"battery": 7} and two["aliases"] == ["two"]
    assert two["relationships"] == [{"predicate": "near", "object": "d-1", "weight": 1.0}]
    again = store.database.transaction(merge_share, share, "edge-1", store.indexes)
    assert (again.changed, again.touched) == (0, frozenset())  # idempotent
    with store.reader() as db:  # nothing merged is queued to go back to the hub
        assert db.execute("SELECT entity_id FROM sync_outbox").fetchall() == [("d-1",)]
    store.close()


@pytest.mark.parametrize("entities", [0, 1])
def test_count_missing_of_an_empty_graph(tmp_path: Path, entities: int) -> None:
    ids = tmp_path / "ids.db"
    db = sqlite3.connect(ids)
    db.execute("CREATE TABLE ids (id TEXT PRIMARY KEY) WITHOUT ROWID")
    db.executemany("INSERT INTO ids VALUES (?)", [(f"d-{i}",) for i in range(entities)])
    db.commit()
    db.close()
    make_store(tmp_path / "g.db", entities=0)
    assert count_missing(ids, tmp_path / "g.db") == entities
