"""The stream position check (pure), its store columns, and the durability settings.

:func:`reconcile` decides where the graph processor resumes after a power cut may have
taken the JetStream store's tail; the integration tests (test_power_cut.py,
test_jetstream_damage.py) run it against real nats-servers.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cloud_hub.config import load_hub_config
from edge_agent.config import IndexesConfig, load_config_bytes
from edge_agent.errors import ConfigError
from edge_agent.graph import GraphStore
from edge_agent.graph.position import PositionMark, StreamFacts, reconcile, timestamp_ns
from edge_agent.model import EntityEvent
from edge_agent.nats.server import EmbeddedNatsServer, sync_interval_text
from edge_agent.nats.wire import ack_metadata

CREATED = "2026-01-01 00:00:00+00:00"
TS = 1_700_000_000_123_456_789


def mark(applied: int, seen: int = 0, ts: int = TS, created: str = CREATED) -> PositionMark:
    return PositionMark(created, applied, ts, seen or applied)


def test_no_mark_starts_at_zero() -> None:
    found = reconcile(None, StreamFacts(CREATED, 1, 0))
    assert (found.outcome, found.position, found.changed) == ("first_bind", 0, True)


def test_an_intact_stream_keeps_the_position() -> None:
    # The applied message was acked and removed: nothing at 100, the stream goes on.
    found = reconcile(mark(100, seen=150), StreamFacts(CREATED, 101, 180))
    assert (found.outcome, found.position, found.lost, found.changed) == ("intact", 100, 0, False)


def test_a_surviving_applied_message_is_intact() -> None:
    # The ack's removal was lost with the tail, the message itself kept: same timestamp.
    found = reconcile(mark(100), StreamFacts(CREATED, 95, 100, ts_at_applied=TS))
    assert (found.outcome, found.position) == ("intact", 100)


def test_a_shorter_stream_moves_the_position_back_and_counts_the_unapplied_lost() -> None:
    # Acked and removed up to 80; 81..90 survived with their removals lost. New messages
    # may already stand at 91.. : resume before the first message, not at the last.
    found = reconcile(mark(100, seen=130), StreamFacts(CREATED, 81, 95))
    assert found.outcome == "tail_lost"
    assert (found.position, found.reused, found.lost, found.previous) == (80, 5, 30, 100)
    assert found.reapplied == 15
    assert found.changed
    assert "at least 30 unapplied messages lost" in found.describe()
    assert "from 100 back to 80" in found.describe()


def test_an_emptied_stream_resumes_at_zero() -> None:
    found = reconcile(mark(100), StreamFacts(CREATED, 0, 0))
    assert (found.outcome, found.position, found.reused, found.reapplied) == (
        "tail_lost",
        0,
        100,
        0,
    )


def test_a_tail_lost_beyond_the_position_keeps_it_and_counts_the_loss() -> None:
    found = reconcile(mark(100, seen=130), StreamFacts(CREATED, 101, 120))
    assert (found.outcome, found.position, found.lost, found.reused) == ("tail_lost", 100, 10, 0)
    assert not found.changed


def test_a_reused_number_rewinds_before_the_first_message() -> None:
    # Message 100 is a new one (another timestamp): the stream lost its tail and was
    # refilled before the processor bound. Everything it holds is applied again.
    found = reconcile(mark(100), StreamFacts(CREATED, 97, 140, ts_at_applied=TS + 1))
    assert (found.outcome, found.position, found.reapplied) == ("reused", 96, 4)
    assert found.changed


def test_an_unknown_timestamp_cannot_prove_reuse() -> None:
    # Rows from before migration 006 carry no timestamp: no check, no rewind.
    found = reconcile(mark(100, ts=0), StreamFacts(CREATED, 97, 140, ts_at_applied=TS))
    assert (found.outcome, found.position) == ("intact", 100)


def test_a_recreated_stream_starts_at_zero() -> None:
    found = reconcile(mark(100, seen=120), StreamFacts("another time", 1, 5))
    assert (found.outcome, found.position, found.lost) == ("new_stream", 0, 20)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2023-11-14T22:13:20.123456789Z", TS),
        ("2023-11-14T22:13:20.1234567Z", TS - 89),
        ("2023-11-14T22:13:20Z", TS - 123_456_789),
        ("2023-11-15T00:13:20.123456789+02:00", TS),
    ],
)
def test_stream_times_are_read_to_the_nanosecond(text: str, expected: int) -> None:
    assert timestamp_ns(text) == expected


@pytest.mark.parametrize("text", ["", "yesterday", "2023-11-14 22:13:20Z", "2023-11-14T22:13Z"])
def test_a_malformed_time_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="RFC 3339"):
        timestamp_ns(text)


def test_ack_subjects_carry_sequence_timestamp_and_pending() -> None:
    old = b"$JS.ACK.GRAPH_ENTITIES.c.1.42.40.1700000000123456789.7"
    new = b"$JS.ACK.dom.hash.GRAPH_ENTITIES.c.1.42.40.1700000000123456789.7.tok"
    assert ack_metadata(old) == ack_metadata(new) == (42, TS, 7)


def test_apply_records_the_mark_and_set_position_resets_it(tmp_path: Path) -> None:
    store = GraphStore(tmp_path / "g.db", origin="e", indexes=IndexesConfig())
    assert store.position_mark("c") is None
    assert store.position("c", CREATED) == 0
    event = EntityEvent(entity_id="E-1", entity_type="t", timestamp=datetime.now(UTC))
    store.apply([(7, event)], consumer="c", now_ms=0, stream_ts=TS, seen_seq=12)
    assert store.position_mark("c") == PositionMark(CREATED, 7, TS, 12)
    # A redelivered batch is skipped and leaves the mark alone.
    assert store.apply([(7, event)], consumer="c", now_ms=0, stream_ts=TS + 5).skipped == 1
    assert store.position_mark("c") == PositionMark(CREATED, 7, TS, 12)
    store.set_position("c", CREATED, 3)
    assert store.position_mark("c") == PositionMark(CREATED, 3, 0, 3)
    assert store.apply([(5, event)], consumer="c", now_ms=0).applied == 1
    store.close()


def test_synchronous_is_what_the_setting_says(tmp_path: Path) -> None:
    for name, pragma in (("full", 2), ("normal", 1)):
        store = GraphStore(
            tmp_path / f"{name}.db", origin="e", indexes=IndexesConfig(), synchronous=name
        )
        assert store.database.connection.execute("PRAGMA synchronous").fetchone()[0] == pragma
        store.close()
    with sqlite3.connect(tmp_path / "full.db") as db:  # the file is an ordinary WAL database
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_sync_interval_reaches_the_server_config(tmp_path: Path) -> None:
    assert sync_interval_text("always") == "always"
    assert sync_interval_text("1s") == "1000ms"
    assert sync_interval_text("250ms") == "250ms"
    assert sync_interval_text("2m") == "120000ms"
    server = EmbeddedNatsServer(
        tmp_path, port=4333, max_file_store=1 << 30, name="e", sync_interval="2m"
    )
    assert "  sync_interval: 120000ms\n" in server.config_text()


def test_defaults_edge_one_second_and_full_hub_always(tmp_path: Path) -> None:
    edge = load_config_bytes(b"{}", env={})
    assert edge.nats.jetstream.sync_interval == ""  # the edge's default: EDGE_SYNC_INTERVAL
    assert edge.graph.config.sqlite_synchronous == "full"
    path = tmp_path / "hub.json"
    path.write_text("{}")
    assert load_hub_config(path, env={}).nats.jetstream.sync_interval == "always"
    path.write_text(json.dumps({"nats": {"jetstream": {"sync_interval": "5s"}}}))
    assert load_hub_config(path, env={}).nats.jetstream.sync_interval == "5s"


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"nats": {"jetstream": {"sync_interval": "sometimes"}}}, "sync_interval"),
        ({"nats": {"jetstream": {"sync_interval": "0s"}}}, "sync_interval"),
        ({"graph": {"config": {"sqlite_synchronous": "off"}}}, "sqlite_synchronous"),
    ],
)
def test_bad_durability_settings_name_their_key(section: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config_bytes(json.dumps(section).encode(), env={})
    assert key in str(caught.value)


def test_a_left_behind_consumer_store_is_moved_aside(tmp_path: Path) -> None:
    server = EmbeddedNatsServer(tmp_path, port=4333, max_file_store=1 << 30, name="e")
    obs = tmp_path / "jetstream/jetstream/$G/streams/GRAPH_ENTITIES/obs"
    (obs / "graph-e-all").mkdir(parents=True)
    (obs / "graph-e-all" / "o.dat").write_bytes(b"\x00" * 6)
    (obs / "other").mkdir()
    [moved] = server.set_aside_consumer("GRAPH_ENTITIES", "graph-e-all")
    assert moved.parent == tmp_path / "damaged"
    assert (moved / "o.dat").read_bytes() == b"\x00" * 6
    assert sorted(p.name for p in obs.iterdir()) == ["other"]
    assert server.set_aside_consumer("GRAPH_ENTITIES", "graph-e-all") == []


def test_a_stream_offline_for_a_damaged_consumer_is_healed(tmp_path: Path) -> None:
    server = EmbeddedNatsServer(tmp_path, port=4333, max_file_store=1 << 30, name="e")
    obs = tmp_path / "jetstream/jetstream/$G/streams/GRAPH_ENTITIES/obs"
    (obs / "graph-e-all").mkdir(parents=True)
    error = 'stream is offline: stopped - unsupported consumer "graph-e-all"'
    assert server.heal_offline_stream("GRAPH_ENTITIES", error)  # no process: no restart
    assert not (obs / "graph-e-all").exists()
    assert not server.heal_offline_stream("GRAPH_ENTITIES", error)  # nothing left to move
    assert not server.heal_offline_stream("GRAPH_ENTITIES", "insufficient resources")
