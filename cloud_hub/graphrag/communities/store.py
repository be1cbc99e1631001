"""The communities in the hub's graph database: tables, change feed, reads, writes, queries.

- ``graphrag_communities``: one row per community (any level) with its summary (JSON,
  :class:`.summary.Summary`) and keywords; ``graphrag_memberships``: each entity's
  community per level; ``graphrag_community_fts``: FTS5 over each community's keywords,
  top types and representative entities, for ranking communities against a query.
- ``graphrag_community_dirty``: the change feed. Triggers on ``entities`` (insert,
  delete, a changed type) and ``edges`` (insert, delete, a change of weight) put the
  entity ids concerned there, inside the materialiser's write transaction, so no change
  is missed. Each mark takes a rowid above every other (a re-marked id moves up), so a
  run deletes exactly the rows it read (rowid and id): an id marked again while the run
  computed keeps its row for the next run.

Reads take one snapshot (a read transaction) so the graph and the feed agree; writes run
in the caller's write transaction (``Database.transaction``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import msgspec

from cloud_hub.graphrag.communities.engine import Update
from cloud_hub.graphrag.communities.model import EdgeRow, EntityRow, GraphRows
from cloud_hub.graphrag.communities.summary import Summary
from cloud_hub.graphrag.text import fts_query
from edge_agent.graph.migrations import Migration
from edge_agent.graph.statements import RDF_TYPE

__all__ = [
    "COMMUNITY_MIGRATIONS",
    "communities",
    "community",
    "dirty_count",
    "memberships",
    "read_all",
    "read_changed",
    "search_communities",
    "stored_memberships",
    "write_update",
]

_MARK = """
            INSERT INTO graphrag_community_dirty (rowid, entity_id)
            SELECT coalesce(max(rowid), 0) + 1, {0} FROM graphrag_community_dirty WHERE true
            ON CONFLICT (entity_id) DO UPDATE SET rowid = excluded.rowid;"""

_C001_COMMUNITIES = f"""
        CREATE TABLE graphrag_communities (
            id TEXT PRIMARY KEY,
            level INTEGER NOT NULL,
            parent TEXT,
            size INTEGER NOT NULL,
            summary TEXT NOT NULL,
            keywords TEXT NOT NULL,
            updated_at REAL NOT NULL
        );
        CREATE INDEX graphrag_communities_by_level ON graphrag_communities (level, size);
        CREATE INDEX graphrag_communities_by_parent ON graphrag_communities (parent);
        CREATE TABLE graphrag_memberships (
            entity_id TEXT NOT NULL,
            level INTEGER NOT NULL,
            community_id TEXT NOT NULL,
            PRIMARY KEY (entity_id, level)
        ) WITHOUT ROWID;
        CREATE INDEX graphrag_memberships_by_community
            ON graphrag_memberships (community_id, entity_id);
        CREATE VIRTUAL TABLE graphrag_community_fts USING fts5(
            community_id UNINDEXED, level UNINDEXED, text
        );
        CREATE TABLE graphrag_community_dirty (entity_id TEXT PRIMARY KEY);

        CREATE TRIGGER graphrag_community_entity_insert AFTER INSERT ON entities BEGIN
            {_MARK.format("NEW.id")}
        END;
        CREATE TRIGGER graphrag_community_entity_delete AFTER DELETE ON entities BEGIN
            {_MARK.format("OLD.id")}
        END;
        CREATE TRIGGER graphrag_community_entity_type AFTER UPDATE OF type ON entities
        WHEN NEW.type IS NOT OLD.type BEGIN
            {_MARK.format("NEW.id")}
        END;
        CREATE TRIGGER graphrag_community_edge_insert AFTER INSERT ON edges BEGIN
            {_MARK.format("NEW.subject")}
            {_MARK.format("NEW.object")}
        END;
        CREATE TRIGGER graphrag_community_edge_update AFTER UPDATE ON edges
        WHEN NEW.weight IS NOT OLD.weight OR NEW.subject IS NOT OLD.subject
             OR NEW.object IS NOT OLD.object BEGIN
            {_MARK.format("OLD.subject")}
            {_MARK.format("OLD.object")}
            {_MARK.format("NEW.subject")}
            {_MARK.format("NEW.object")}
        END;
        CREATE TRIGGER graphrag_community_edge_delete AFTER DELETE ON edges BEGIN
            {_MARK.format("OLD.subject")}
            {_MARK.format("OLD.object")}
        END;
"""

#: The communities' schema, after the hub's (``HUB_MIGRATIONS``); names are unique.
COMMUNITY_MIGRATIONS: list[Migration] = [("graphrag_community_001", _C001_COMMUNITIES)]

#: Ids per ``IN (...)`` statement.
_CHUNK = 500
_json = msgspec.json.Encoder()
_summary = msgspec.json.Decoder(Summary)


# ---- reads for the service --------------------------------------------------------------


def _chunks(ids: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(ids), _CHUNK):
        yield ids[start : start + _CHUNK]


def _in(ids: Sequence[str]) -> str:
    return ",".join("?" * len(ids))


def _text(db: sqlite3.Connection, where: str, ids: Sequence[str]) -> dict[str, list[str]]:
    """String property values per entity (JSON strings in ``triples``)."""
    out: dict[str, list[str]] = {}
    rows = db.execute(
        f"SELECT subject, object FROM triples WHERE {where}"
        " AND predicate != ? AND substr(object, 1, 1) = '\"'",
        (*ids, RDF_TYPE),
    )
    for subject, value in rows:
        out.setdefault(subject, []).append(msgspec.json.decode(value))
    return out


def _devices(db: sqlite3.Connection, where: str, ids: Sequence[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for entity_id, edge_id in db.execute(
        f"SELECT entity_id, edge_id FROM hub_contributions WHERE {where}", ids
    ):
        out.setdefault(entity_id, []).append(edge_id)
    return out


def _entities(
    rows: Iterable[tuple[str, str]], text: dict[str, list[str]], devices: dict[str, list[str]]
) -> list[EntityRow]:
    return [EntityRow(e, t, tuple(text.get(e, ())), tuple(devices.get(e, ()))) for e, t in rows]


def _dirty(db: sqlite3.Connection, limit: int | None) -> list[tuple[int, str]]:
    sql = "SELECT rowid, entity_id FROM graphrag_community_dirty ORDER BY rowid"
    if limit is None:
        return [(int(r), str(e)) for r, e in db.execute(sql)]
    return [(int(r), str(e)) for r, e in db.execute(f"{sql} LIMIT ?", (limit,))]


def read_all(db: sqlite3.Connection) -> GraphRows:
    """The whole graph and the whole change feed, in one snapshot."""
    db.execute("BEGIN")
    try:
        dirty = _dirty(db, None)
        text = _text(db, "1", ())
        devices = _devices(db, "1", ())
        entities = _entities(db.execute("SELECT id, type FROM entities"), text, devices)
        edges: list[EdgeRow] = db.execute(
            "SELECT subject, predicate, object, weight FROM edges"
        ).fetchall()
    finally:
        db.execute("COMMIT")
    return GraphRows(entities, edges, dirty)


def read_changed(db: sqlite3.Connection, limit: int | None = None) -> GraphRows:
    """The change feed's rows (the oldest ``limit``), those of its entities that exist and
    every relationship with one of them at an end, in one snapshot."""
    db.execute("BEGIN")
    try:
        dirty = _dirty(db, limit)
        ids = sorted({e for _r, e in dirty})
        entities: list[EntityRow] = []
        edges: set[EdgeRow] = set()
        for chunk in _chunks(ids):
            where = f"IN ({_in(chunk)})"
            text = _text(db, f"subject {where}", chunk)
            devices = _devices(db, f"entity_id {where}", chunk)
            found = db.execute(f"SELECT id, type FROM entities WHERE id {where}", chunk)
            entities.extend(_entities(found, text, devices))
            for column in ("subject", "object"):
                edges.update(
                    db.execute(
                        "SELECT subject, predicate, object, weight FROM edges"
                        f" WHERE {column} {where}",
                        chunk,
                    )
                )
    finally:
        db.execute("COMMIT")
    return GraphRows(entities, sorted(edges), dirty)


def dirty_count(db: sqlite3.Connection) -> int:
    """How many entities the change feed holds."""
    (count,) = db.execute("SELECT count(*) FROM graphrag_community_dirty").fetchone()
    return int(count)


def stored_memberships(db: sqlite3.Connection) -> dict[str, list[str]]:
    """Every entity's stored community per level, level 0 first (to seed stable ids)."""
    out: dict[str, list[str]] = {}
    for entity_id, community in db.execute(
        "SELECT entity_id, community_id FROM graphrag_memberships ORDER BY entity_id, level"
    ):
        out.setdefault(entity_id, []).append(community)
    return out


# ---- the write --------------------------------------------------------------------------


def _fts_text(summary: Summary) -> str:
    words = [k for k, _s in summary.keywords]
    words += [t for t, _n in summary.types]
    words += [e for e, _s in summary.representatives]
    return " ".join(words)


def _put_summaries(db: sqlite3.Connection, summaries: Sequence[Summary], now: float) -> None:
    db.executemany(
        "INSERT INTO graphrag_communities VALUES (?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (id) DO UPDATE SET level = excluded.level, parent = excluded.parent,"
        " size = excluded.size, summary = excluded.summary, keywords = excluded.keywords,"
        " updated_at = excluded.updated_at",
        [
            (
                s.id,
                s.level,
                s.parent,
                s.size,
                _json.encode(s).decode(),
                " ".join(k for k, _score in s.keywords),
                now,
            )
            for s in summaries
        ],
    )
    db.executemany(
        "INSERT INTO graphrag_community_fts (community_id, level, text) VALUES (?, ?, ?)",
        [(s.id, s.level, _fts_text(s)) for s in summaries],
    )


def _drop_communities(db: sqlite3.Connection, ids: Sequence[str]) -> None:
    for chunk in _chunks(ids):
        where = f"IN ({_in(chunk)})"
        db.execute(f"DELETE FROM graphrag_communities WHERE id {where}", chunk)
        db.execute(f"DELETE FROM graphrag_community_fts WHERE community_id {where}", chunk)


def write_update(db: sqlite3.Connection, update: Update, now: float) -> None:
    """Store one run's result and delete the change-feed rows it consumed (in the
    caller's write transaction)."""
    if update.mode == "full":
        db.execute("DELETE FROM graphrag_communities")
        db.execute("DELETE FROM graphrag_community_fts")
        db.execute("DELETE FROM graphrag_memberships")
    else:
        _drop_communities(db, [*update.removed, *(s.id for s in update.summaries)])
        entity_ids = sorted(update.memberships)
        for chunk in _chunks(entity_ids):
            db.execute(f"DELETE FROM graphrag_memberships WHERE entity_id IN ({_in(chunk)})", chunk)
    _put_summaries(db, update.summaries, now)
    db.executemany(
        "INSERT INTO graphrag_memberships VALUES (?, ?, ?)",
        (
            (entity_id, level, community)
            for entity_id, chain in update.memberships.items()
            for level, community in enumerate(chain)
        ),
    )
    db.executemany(
        "DELETE FROM graphrag_community_dirty WHERE rowid = ? AND entity_id = ?",
        update.consumed,
    )


# ---- queries (a read connection in, plain data out) -------------------------------------


def _row(row: tuple[Any, ...]) -> dict[str, Any]:
    summary = _summary.decode(row[4])
    return {
        **msgspec.structs.asdict(summary),
        "keywords": [k for k, _s in summary.keywords],
        "keyword_scores": summary.keywords,
        "updated_at": row[6],
    }


_COLUMNS = "id, level, parent, size, summary, keywords, updated_at"


def communities(db: sqlite3.Connection, level: int, limit: int = 100) -> list[dict[str, Any]]:
    """The communities of ``level``, the largest first (at most ``limit``)."""
    rows = db.execute(
        f"SELECT {_COLUMNS} FROM graphrag_communities WHERE level = ?"
        " ORDER BY size DESC, id LIMIT ?",
        (level, limit),
    )
    return [_row(row) for row in rows]


def community(db: sqlite3.Connection, community_id: str) -> dict[str, Any] | None:
    """One community with its representative entities (id, type, score) and its
    children (id, size, keywords), or ``None``."""
    row = db.execute(
        f"SELECT {_COLUMNS} FROM graphrag_communities WHERE id = ?", (community_id,)
    ).fetchone()
    if row is None:
        return None
    out = _row(row)
    ids = [e for e, _s in out["representatives"]]
    types = dict(db.execute(f"SELECT id, type FROM entities WHERE id IN ({_in(ids)})", ids))
    out["top_entities"] = [
        {"entity_id": e, "entity_type": types.get(e), "score": s} for e, s in out["representatives"]
    ]
    out["children"] = [
        {"id": child, "size": size, "keywords": keywords.split()}
        for child, size, keywords in db.execute(
            "SELECT id, size, keywords FROM graphrag_communities WHERE parent = ?"
            " ORDER BY size DESC, id",
            (community_id,),
        )
    ]
    return out


def memberships(db: sqlite3.Connection, entity_ids: Sequence[str]) -> dict[str, list[str]]:
    """Each entity's community per level, level 0 first (entities in none are left out)."""
    out: dict[str, list[str]] = {}
    for chunk in _chunks(list(entity_ids)):
        for entity_id, community_id in db.execute(
            "SELECT entity_id, community_id FROM graphrag_memberships"
            f" WHERE entity_id IN ({_in(chunk)}) ORDER BY entity_id, level",
            chunk,
        ):
            out.setdefault(entity_id, []).append(community_id)
    return out


def search_communities(
    db: sqlite3.Connection, query: str, level: int, limit: int
) -> list[tuple[str, float]]:
    """Communities of ``level`` ranked against ``query`` by bm25 (higher is better)."""
    match = fts_query(query)  # the entities' text search's: words quoted, stop words out
    if not match:
        return []
    rows = db.execute(
        "SELECT community_id, bm25(graphrag_community_fts) AS rank"
        " FROM graphrag_community_fts WHERE graphrag_community_fts MATCH ? AND level = ?"
        " ORDER BY rank LIMIT ?",
        (match, level, limit),
    )
    return [(str(community_id), -float(rank)) for community_id, rank in rows]
