"""The fleet as the dashboard shows it: one row per edge, from the hub's own evidence.

Evidence comes from three places: the graph (what reached the log: counters, last
batch, lag, and the edge's ``system_telemetry`` entity, whose id is the edge's id), the
device registry (pending, approved, revoked; group; hardware), and this instance's
open links. :func:`fleet_rows` reads the graph and joins the other two, which the
caller passes in.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from cloud_hub.dashboard.history import edge_counters
from cloud_hub.dashboard.status import STATUSES, EdgeEvidence, Thresholds, judge

__all__ = ["TELEMETRY", "fleet_rows", "fleet_summary"]

#: The telemetry properties a fleet row shows, by column name.
TELEMETRY = {
    "cpu_percent": "system.cpu_percent",
    "memory_percent": "system.memory_percent",
    "disk_percent": "system.disk_percent",
    "temperature_c": "system.temperature_c",
    "backlog_entities": "sync.backlog_entities",
    "backlog_bytes": "sync.backlog_bytes",
    "agent_version": "agent.version",
    "dead_letters": "ingest.dead_letters",
}
_RECENT_SAMPLES = 4


def _telemetry(db: sqlite3.Connection, edge: str) -> dict[str, Any]:
    """The edge's own device entity's properties (the id ``system_telemetry`` uses)."""
    rows = db.execute(
        "SELECT predicate, json_extract(object, '$') FROM hub_triples"
        " WHERE subject = ? AND edge_id = ?",
        (edge, edge),
    )
    return dict(rows)


def _recent(db: sqlite3.Connection, edge: str) -> list[tuple[Any, ...]]:
    """The edge's newest history samples, oldest first."""
    rows = db.execute(
        "SELECT at_ms, deltas, wire_bytes, raw_bytes, backlog FROM hub_edge_history"
        " WHERE edge_id = ? ORDER BY at_ms DESC LIMIT ?",
        (edge, _RECENT_SAMPLES),
    ).fetchall()
    return rows[::-1]


def _rates(samples: Sequence[tuple[Any, ...]]) -> dict[str, float | None]:
    """events/s and bytes/s over the last two samples (None until there are two)."""
    names = ("events_per_s", "wire_bps", "raw_bps")
    if len(samples) < 2 or samples[-1][0] <= samples[-2][0]:
        return dict.fromkeys(names)
    (t0, *before), (t1, *after) = samples[-2][:4], samples[-1][:4]
    seconds = (t1 - t0) / 1000
    return {
        name: round(max(0, now - then) / seconds, 1)
        for name, then, now in zip(names, before, after, strict=True)
    }


def fleet_rows(
    db: sqlite3.Connection,
    *,
    now_ms: int,
    thresholds: Thresholds,
    links: Mapping[str, Mapping[str, Any]],
    devices: Sequence[Mapping[str, Any]],
    group_thresholds: Mapping[str, Thresholds] | None = None,
) -> list[dict[str, Any]]:
    """One row per edge known to the graph, the registry or this instance's links.

    Args:
        now_ms: the time the statuses are judged at (epoch milliseconds).
        thresholds, group_thresholds: when an edge counts as offline or degraded, for
            every edge and for the devices of a registry group.
        links: this instance's link views, by edge id (``SyncInput.link_views``).
        devices: the registry's devices as dicts (``id``, ``status``, ``group``, ...).
    """
    counters = edge_counters(db)
    registry = {device["id"]: device for device in devices}
    rows = []
    for edge in sorted(counters.keys() | registry.keys() | links.keys()):
        link, device, counted = links.get(edge, {}), registry.get(edge, {}), counters.get(edge)
        telemetry = _telemetry(db, edge) if counted else {}
        samples = _recent(db, edge) if counted else []
        evidence = EdgeEvidence(
            registry_status=str(device.get("status", "")),
            linked_here=bool(link.get("connected")),
            last_batch_ms=counted["last_batch_ms"] if counted else 0,
            lag_s=(counted or {}).get("lag_s") or 0.0,
            backlog=[s[4] for s in samples if s[4] is not None],
            telemetry=telemetry,
        )
        group = str(device.get("group", ""))
        verdict = judge(evidence, now_ms, (group_thresholds or {}).get(group, thresholds))
        row: dict[str, Any] = {
            "edge_id": edge,
            "status": verdict.status,
            "reasons": verdict.reasons,
            "group": group,
            "hostname": device.get("hostname", ""),
            "linked_here": evidence.linked_here,
            "last_seen_ms": max(evidence.last_batch_ms, int(link.get("last_seen_ms") or 0)) or None,
            "lag_s": (counted or {}).get("lag_s"),
            "deltas": (counted or {}).get("deltas", 0),
            **_rates(samples),
        }
        row.update({column: telemetry.get(key) for column, key in TELEMETRY.items()})
        rows.append(row)
    return rows


def fleet_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """How many edges have each status word."""
    counts = dict.fromkeys(STATUSES, 0)
    for row in rows:
        counts[row["status"]] += 1
    return counts
