"""Secondary indexes that config switches on and off (``graph.config.indexer.indexes``).

Plain B-tree indexes are created or dropped. The spatial (R*Tree) and temporal (hourly
bucket) indexes are tables the store fills while they are on; switching one on rebuilds
it from the triples, switching it off empties it. ``index_state`` remembers what is
built so a restart with the same config does no work.
"""

from __future__ import annotations

import sqlite3

from edge_agent.config import IndexesConfig
from edge_agent.graph.sql import write_transaction

__all__ = ["LATITUDE", "LONGITUDE", "TEMPORAL_BUCKET_MS", "reconcile_indexes"]

LATITUDE = "geo.location.latitude"
LONGITUDE = "geo.location.longitude"
TEMPORAL_BUCKET_MS = 3_600_000

# No index holds a triple's object: every reading rewrites it, and each such column
# costs an index delete and insert, which measured as 3x fewer applied events/s
# (docs/benchmarks.md). An edge's weight is indexed (PathRAG reads each node's edges
# strongest first) because readings restate it rather than change it, and a restated
# edge is written without touching its weight (statements.RESTATE_EDGE).
_BTREE = {
    "predicate": [
        "CREATE INDEX IF NOT EXISTS triples_predicate ON triples(predicate, subject)",
        "CREATE INDEX IF NOT EXISTS edges_by_predicate ON edges(predicate, subject)",
    ],
    "incoming": [
        "CREATE INDEX IF NOT EXISTS edges_to_by_weight ON edges(object, weight DESC, subject)"
    ],
    "alias": ["CREATE INDEX IF NOT EXISTS aliases_by_alias ON aliases(alias)"],
}
_BTREE_NAMES = {
    "predicate": ["triples_predicate", "edges_by_predicate"],
    "incoming": ["edges_to_by_weight"],
    "alias": ["aliases_by_alias"],
}
_REBUILD = {
    "spatial": [
        "DELETE FROM spatial",
        f"""INSERT INTO spatial
            SELECT e.rowid, lat.v, lat.v, lon.v, lon.v
            FROM entities e
            JOIN (SELECT subject, json_extract(object, '$') AS v FROM triples
                  WHERE predicate = '{LATITUDE}' AND json_type(object) IN ('integer', 'real'))
                 AS lat ON lat.subject = e.id
            JOIN (SELECT subject, json_extract(object, '$') AS v FROM triples
                  WHERE predicate = '{LONGITUDE}' AND json_type(object) IN ('integer', 'real'))
                 AS lon ON lon.subject = e.id""",
    ],
    "temporal": [
        "DELETE FROM temporal",
        f"INSERT INTO temporal SELECT id, updated_at / {TEMPORAL_BUCKET_MS} FROM entities",
    ],
}
#: Index definitions replaced by better ones, and the switch that builds the new one.
_RETIRED = {
    "edges_by_object": "incoming",
    "edges_incoming": "incoming",
    "edges_to": "incoming",
    "triples_by_predicate": "predicate",
}
_EMPTY = {"spatial": ["DELETE FROM spatial"], "temporal": ["DELETE FROM temporal"]}


def reconcile_indexes(db: sqlite3.Connection, wanted: IndexesConfig) -> list[str]:
    """Bring the built indexes in line with config, in one transaction.

    Returns:
        What changed, as ``"+name"`` (built) and ``"-name"`` (dropped).
    """
    _retire(db)
    built = {name: bool(on) for name, on in db.execute("SELECT name, enabled FROM index_state")}
    changes = []
    with write_transaction(db):
        for name in ("predicate", "incoming", "alias", "spatial", "temporal"):
            on = bool(getattr(wanted, name))
            if built.get(name, False) == on and name in built:
                continue
            for sql in _statements(name, on):
                db.execute(sql)
            db.execute("INSERT OR REPLACE INTO index_state VALUES (?, ?)", (name, int(on)))
            changes.append(("+" if on else "-") + name)
    return changes


def _statements(name: str, on: bool) -> list[str]:
    if name in _BTREE:
        if on:
            return _BTREE[name]
        return [f"DROP INDEX IF EXISTS {index}" for index in _BTREE_NAMES[name]]
    return _REBUILD[name] if on else _EMPTY[name]


def _retire(db: sqlite3.Connection) -> None:
    """Drop a retired index definition and forget its switch, so the new one is built."""
    for index, switch in _RETIRED.items():
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (index,)).fetchone():
            db.execute(f"DROP INDEX {index}")
            db.execute("DELETE FROM index_state WHERE name = ?", (switch,))
