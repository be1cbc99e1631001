"""An edge's share read back from a real hub store: its own part only, paged, bounded."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud_hub.graph.share import read_share
from cloud_hub.sync.input import _SHARE_FRAME_BYTES, _share_chunk, resync_wait
from edge_agent.sync.frames import EntityDelta
from tests.unit.hub.test_provenance import NOW, Hub, drone


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    found = Hub(tmp_path / "hub.db")
    yield found
    found.store.close()


def test_the_share_is_the_edges_own_part_paged_in_id_order(hub: Hub) -> None:
    hub.send("edge-a", drone("X", 1, NOW - 500, battery=90.0), drone("Y", 4, NOW - 400, battery=1))
    other = EntityDelta("X", "drone", 7, NOW - 100, 9, [("secret", "b's", NOW - 100, "b")])
    hub.send("edge-b", other)
    first = hub.store.database.read(read_share, "edge-a", after="", limit=1)
    assert [d.entity_id for d in first] == ["X"]
    x = first[0]
    assert x.replace and x.version == 1 and x.updated_at == NOW - 500
    assert x.triples == [("battery", 90.0, NOW - 500, "sensor")]  # not edge-b's secret
    assert x.edges == [("member_of", "fleet-1", 1.0, NOW - 500, "sensor")]
    assert x.aliases == ["tail-X"]
    rest = hub.store.database.read(read_share, "edge-a", after="X", limit=10)
    assert [d.entity_id for d in rest] == ["Y"]
    theirs = hub.store.database.read(read_share, "edge-b", after="", limit=10)
    assert [(d.entity_id, d.triples, d.version) for d in theirs] == [("X", other.triples, 7)]
    assert hub.store.database.read(read_share, "edge-c", after="", limit=10) == []


def test_a_chunk_is_halved_until_it_fits_a_frame() -> None:
    def big(i: int) -> EntityDelta:
        noise = os.urandom(100_000).hex()  # incompressible: 200 kB each
        return EntityDelta(f"e-{i}", "blob", 1, NOW, 1, [("data", noise, NOW, "s")])

    deltas = [big(i) for i in range(8)]
    payload, taken = _share_chunk(deltas, "zlib")
    assert len(payload) <= _SHARE_FRAME_BYTES and taken == deltas[: len(taken)]
    assert 1 <= len(taken) < len(deltas)
    huge = EntityDelta("h", "blob", 1, NOW, 1, [("data", os.urandom(600_000).hex(), NOW, "s")])
    assert _share_chunk([huge], "zlib") == (b"", [])


def test_a_resync_waits_out_the_interval_since_the_edges_last_one() -> None:
    assert resync_wait(None, now=100.0, interval=60.0) == 0.0
    assert resync_wait(90.0, now=100.0, interval=60.0) == 50.0
    assert resync_wait(30.0, now=100.0, interval=60.0) == 0.0
