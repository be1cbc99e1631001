"""The dashboard's pure parts: the status word and its reasons, the history, the rows."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloud_hub.config import DashboardConfig, DashboardGroupConfig
from cloud_hub.dashboard.fleet import fleet_rows, fleet_summary
from cloud_hub.dashboard.history import read_history, record_samples
from cloud_hub.dashboard.service import Dashboard
from cloud_hub.dashboard.status import EdgeEvidence, Thresholds, judge
from cloud_hub.graph.provenance import BatchStamp, apply_batch
from cloud_hub.graph.schema import HUB_MIGRATIONS
from edge_agent.config import Duration, IndexesConfig
from edge_agent.graph import GraphStore
from edge_agent.sync.frames import EntityDelta

NOW = 1_800_000_000_000
LIMITS = Thresholds(offline_after=60, lag_warning=30, usage_warning=90, temperature_warning=80)


def verdict(**evidence: Any) -> tuple[str, list[str]]:
    judged = judge(EdgeEvidence(**evidence), NOW, LIMITS)
    return judged.status, judged.reasons


def test_registry_decisions_come_first() -> None:
    assert verdict(registry_status="revoked", linked_here=True) == ("revoked", ["device revoked"])
    assert verdict(registry_status="rejected")[0] == "revoked"
    assert verdict(registry_status="pending", linked_here=True)[0] == "pending"


def test_offline_is_no_link_here_and_no_recent_batch() -> None:
    assert verdict() == ("offline", ["never heard from"])
    assert verdict(last_batch_ms=NOW - 61_000) == ("offline", ["no batch for 61 s"])
    # Linked to another instance: its batches still reach the log, so it is online.
    assert verdict(last_batch_ms=NOW - 5_000) == ("online", [])
    # Linked here but quiet: online (its link is the evidence).
    assert verdict(linked_here=True, last_batch_ms=NOW - 600_000) == ("online", [])


def test_degraded_names_every_reason() -> None:
    status, reasons = verdict(
        linked_here=True,
        lag_s=45.0,
        backlog=[10, 10, 40, 90],
        telemetry={
            "system.disk_percent": 97.0,
            "system.memory_percent": 50,
            "system.temperature_c": 85.5,
        },
    )
    assert status == "degraded"
    assert reasons == [
        "lag 45 s",
        "outbox backlog rising (90 entities)",
        "disk 97 % used",
        "temperature 86 °C",
    ]


@pytest.mark.parametrize(
    ("backlog", "rising"),
    [
        ([1, 2, 3, 4], True),
        ([5, 5, 5, 9], True),
        ([1, 2, 3], False),
        ([4, 3, 5, 6], False),
        ([7, 7, 7, 7], False),
        ([9, 1, 2, 3, 4], True),
    ],
)
def test_a_backlog_rises_when_it_grew_and_never_fell_over_the_window(
    backlog: list[int], rising: bool
) -> None:
    status, _ = verdict(linked_here=True, backlog=backlog)
    assert status == ("degraded" if rising else "online")


def test_telemetry_that_is_not_a_number_is_ignored() -> None:
    assert verdict(linked_here=True, telemetry={"system.disk_percent": "full", "x": True}) == (
        "online",
        [],
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[GraphStore]:
    indexes = IndexesConfig(predicate=True)
    made = GraphStore(tmp_path / "hub.db", origin="hub", indexes=indexes, migrations=HUB_MIGRATIONS)
    yield made
    made.close()


def send(store: GraphStore, edge: str, seq: int, at: int, *, cpu: float, backlog: int) -> None:
    device = EntityDelta(
        edge,
        "device",
        seq,
        at - 500,
        1,
        [
            ("system.cpu_percent", cpu, at - 500, "system"),
            ("sync.backlog_entities", backlog, at - 500, "system"),
        ],
    )
    stamp = BatchStamp(edge, seq, seq, at, at + 60_000, wire_bytes=1_000, raw_bytes=4_000)
    store.database.transaction(apply_batch, stamp, [device], indexes=store.indexes)


def test_history_rates_lag_and_the_gap_while_silent(store: GraphStore) -> None:
    send(store, "e1", 1, NOW, cpu=10.0, backlog=5)
    sample = store.database.transaction
    sample(record_samples, NOW, keep_ms=3_600_000, silent_after_ms=60_000, linked={"e1": True})
    send(store, "e1", 2, NOW + 10_000, cpu=20.0, backlog=7)
    sample(record_samples, NOW + 10_000, keep_ms=3_600_000, silent_after_ms=60_000, linked={})
    # 70 s later, nothing new and no link: silent, so no lag (a gap in the chart).
    sample(record_samples, NOW + 80_000, keep_ms=3_600_000, silent_after_ms=60_000, linked={})
    history = store.database.read(read_history, "e1", 0)
    assert history["t"] == [NOW / 1000, NOW / 1000 + 10, NOW / 1000 + 80]
    assert history["events_per_s"] == [None, 0.1, 0.0]
    assert history["wire_bps"] == [None, 100.0, 0.0]
    assert history["raw_bps"] == [None, 400.0, 0.0]
    assert history["lag_s"] == [0.5, 0.5, None]
    assert history["backlog"] == [5, 7, None]
    # Samples older than the kept window go.
    sample(record_samples, NOW + 3_650_000, keep_ms=3_600_000, silent_after_ms=60_000, linked={})
    assert store.database.read(read_history, "e1", 0)["t"][0] == NOW / 1000 + 80


def test_rows_join_the_graph_the_registry_and_the_links(store: GraphStore) -> None:
    send(store, "e1", 1, NOW, cpu=12.5, backlog=0)
    devices = [
        {"id": "e1", "status": "approved", "group": "north", "hostname": "pi-1"},
        {"id": "e2", "status": "pending", "group": "", "hostname": "pi-2"},
    ]
    links = {"e3": {"connected": True, "last_seen_ms": NOW}}
    rows = store.database.read(
        fleet_rows, now_ms=NOW + 1_000, thresholds=LIMITS, links=links, devices=devices
    )
    by_id = {row["edge_id"]: row for row in rows}
    assert [row["edge_id"] for row in rows] == ["e1", "e2", "e3"]
    assert by_id["e1"]["status"] == "online" and by_id["e1"]["group"] == "north"
    assert by_id["e1"]["cpu_percent"] == 12.5 and by_id["e1"]["lag_s"] == 0.5
    assert by_id["e2"]["status"] == "pending"
    assert by_id["e3"]["status"] == "online" and by_id["e3"]["linked_here"] is True
    assert fleet_summary(rows) == {
        "offline": 0,
        "degraded": 0,
        "pending": 1,
        "revoked": 0,
        "online": 2,
    }


def test_a_group_can_have_its_own_offline_threshold(store: GraphStore) -> None:
    for edge in ("lan-1", "cell-1"):
        send(store, edge, 1, NOW, cpu=1.0, backlog=0)
    devices = [
        {"id": "lan-1", "status": "approved", "group": "lan"},
        {"id": "cell-1", "status": "approved", "group": "cellular"},
    ]
    patient = Thresholds(offline_after=600)
    rows = store.database.read(
        fleet_rows,
        now_ms=NOW + 120_000,  # two minutes without a batch
        thresholds=LIMITS,
        group_thresholds={"cellular": patient},
        links={},
        devices=devices,
    )
    assert {row["edge_id"]: row["status"] for row in rows} == {
        "cell-1": "online",
        "lan-1": "offline",
    }


def test_group_thresholds_come_from_the_dashboard_component() -> None:
    settings = DashboardConfig(
        offline_after=Duration(90),
        groups={"cellular": DashboardGroupConfig(offline_after=Duration(900))},
    )
    dashboard = Dashboard(settings, store=None, links=dict, devices=list)  # type: ignore[arg-type]
    assert dashboard.thresholds.offline_after == 90
    assert dashboard.group_thresholds["cellular"].offline_after == 900
    assert dashboard.group_thresholds["cellular"].lag_warning == dashboard.thresholds.lag_warning
