"""The dashboard's per-edge history: one sample per edge every ``sample_interval``, the
last ``history`` kept (table ``hub_edge_history`` in the hub's graph database).

A sample holds the edge's running counters (deltas applied, bytes on the wire and
before compression: from the log, so alike on every instance), its lag and outbox
backlog, and whether it was linked here. Rates are differences of counters between
samples; a sample whose edge was silent stores no lag, which a chart draws as a gap.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import Any

__all__ = ["edge_counters", "read_history", "record_samples"]

_COUNTERS = """
SELECT s.edge_id, s.deltas, s.wire_bytes, s.raw_bytes, s.received_at, s.newest_change,
       (SELECT json_extract(object, '$') FROM hub_triples t
        WHERE t.subject = s.edge_id AND t.edge_id = s.edge_id
          AND t.predicate = 'sync.backlog_entities')
FROM hub_edge_state s
"""


def edge_counters(db: sqlite3.Connection) -> dict[str, dict[str, Any]]:
    """Per edge heard from: its running counters, last batch time, lag and backlog."""
    found = {}
    for edge, deltas, wire, raw, received, newest, backlog in db.execute(_COUNTERS):
        found[edge] = {
            "deltas": deltas,
            "wire_bytes": wire,
            "raw_bytes": raw,
            "last_batch_ms": received,
            "lag_s": max(0.0, (received - newest) / 1000) if newest else None,
            "backlog": backlog if isinstance(backlog, int) else None,
        }
    return found


def record_samples(
    db: sqlite3.Connection,
    at_ms: int,
    *,
    keep_ms: int,
    silent_after_ms: int,
    linked: Mapping[str, bool],
) -> int:
    """Write one sample per edge at ``at_ms`` and forget those older than ``keep_ms``.

    Args:
        silent_after_ms: an edge whose last batch is older than this (and that is not
            linked here) gets no lag in this sample: a gap in its chart.
        linked: edges whose sync link is open to this instance.

    Returns:
        How many samples were written.
    """
    rows = []
    for edge, counters in edge_counters(db).items():
        live = linked.get(edge, False) or at_ms - counters["last_batch_ms"] <= silent_after_ms
        rows.append(
            (
                edge,
                at_ms,
                int(linked.get(edge, False)),
                counters["deltas"],
                counters["wire_bytes"],
                counters["raw_bytes"],
                counters["lag_s"] if live else None,
                counters["backlog"] if live else None,
            )
        )
    db.executemany("INSERT OR REPLACE INTO hub_edge_history VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
    db.execute("DELETE FROM hub_edge_history WHERE at_ms < ?", (at_ms - keep_ms,))
    return len(rows)


def read_history(db: sqlite3.Connection, edge_id: str, since_ms: int) -> dict[str, list[Any]]:
    """The edge's samples since ``since_ms`` as columns (uPlot's data layout): time in
    seconds, events/s, wire and raw bytes/s (from counter differences), lag, backlog.

    A rate is ``None`` for the first sample and where a counter went back (the hub's
    graph was rebuilt), so charts show a gap rather than a spike.
    """
    rows = db.execute(
        "SELECT at_ms, deltas, wire_bytes, raw_bytes, lag_s, backlog FROM hub_edge_history"
        " WHERE edge_id = ? AND at_ms >= ? ORDER BY at_ms",
        (edge_id, since_ms),
    ).fetchall()
    columns: dict[str, list[Any]] = {
        key: [] for key in ("t", "events_per_s", "wire_bps", "raw_bps", "lag_s", "backlog")
    }
    previous = None
    for row in rows:
        columns["t"].append(row[0] / 1000)
        for key, index in (("events_per_s", 1), ("wire_bps", 2), ("raw_bps", 3)):
            columns[key].append(_rate(previous, row, index))
        columns["lag_s"].append(row[4])
        columns["backlog"].append(row[5])
        previous = row
    return columns


def _rate(previous: tuple[Any, ...] | None, row: tuple[Any, ...], index: int) -> float | None:
    if previous is None or row[0] <= previous[0] or row[index] < previous[index]:
        return None
    per_second = (row[index] - previous[index]) * 1000 / (row[0] - previous[0])
    return round(float(per_second), 1)
