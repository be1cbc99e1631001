"""Text search on the hub: each entity's searchable text, in SQLite FTS5, kept current in
the same transaction as the graph change.

An entity's text is its id (split into words), its type, its aliases, its string
property values, and the names of its relationships with the ids of their other ends
(outgoing and incoming, at most :data:`MAX_NEIGHBOURS` each way). Triggers on the graph
tables mark the entities a write touched (``graphrag_text_dirty``); :func:`refresh`,
called by the materialiser at the end of its write transaction, rebuilds the text of
those entities in one set-based statement and hands the ones whose text changed to the
embedding queue. ``graphrag_fts`` is an external-content FTS5 table over
``graphrag_text``, kept by triggers; ranking is bm25 with the id and type weighted
above the body.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence

import msgspec

from edge_agent.graph.migrations import Migration

__all__ = [
    "FREQUENT_MIN",
    "FREQUENT_SHARE",
    "MAX_NEIGHBOURS",
    "STOP_WORDS",
    "TEXT_MIGRATIONS",
    "TextHit",
    "fts_query",
    "rare_words",
    "refresh",
    "search_text",
]

#: Relationships (each way) whose names and other ends join an entity's text.
MAX_NEIGHBOURS = 50
#: bm25 weights of (entity_id, entity_type, body).
_WEIGHTS = (4.0, 2.0, 1.0)

# Not INSERT OR IGNORE: inside a trigger, the conflict clause of the statement that fired
# it (the hub's upserts) overrides the trigger's own, and a second mark of an entity in one
# transaction would fail the whole write.
_MARK = (
    "INSERT INTO graphrag_text_dirty SELECT {0}"
    " WHERE NOT EXISTS (SELECT 1 FROM graphrag_text_dirty WHERE entity_id = {0})"
)

# Every write to what an entity's text is made of marks it (and, for a relationship,
# its other end); a number changing (telemetry, most writes) is not part of it and marks
# nothing. The triggers run inside the writer's transaction: nothing is missed.
_T001_TEXT = f"""
        CREATE TABLE graphrag_text (
            entity_id TEXT PRIMARY KEY,
            entity_type TEXT NOT NULL,
            body TEXT NOT NULL
        );
        CREATE TABLE graphrag_text_dirty (entity_id TEXT PRIMARY KEY) WITHOUT ROWID;
        CREATE VIRTUAL TABLE graphrag_fts USING fts5(
            entity_id, entity_type, body,
            content='graphrag_text', content_rowid='rowid',
            tokenize='porter unicode61'
        );
        CREATE TRIGGER graphrag_text_ai AFTER INSERT ON graphrag_text BEGIN
            INSERT INTO graphrag_fts (rowid, entity_id, entity_type, body)
            VALUES (new.rowid, new.entity_id, new.entity_type, new.body);
        END;
        CREATE TRIGGER graphrag_text_ad AFTER DELETE ON graphrag_text BEGIN
            INSERT INTO graphrag_fts (graphrag_fts, rowid, entity_id, entity_type, body)
            VALUES ('delete', old.rowid, old.entity_id, old.entity_type, old.body);
        END;
        CREATE TRIGGER graphrag_text_au AFTER UPDATE ON graphrag_text BEGIN
            INSERT INTO graphrag_fts (graphrag_fts, rowid, entity_id, entity_type, body)
            VALUES ('delete', old.rowid, old.entity_id, old.entity_type, old.body);
            INSERT INTO graphrag_fts (rowid, entity_id, entity_type, body)
            VALUES (new.rowid, new.entity_id, new.entity_type, new.body);
        END;
        CREATE TRIGGER graphrag_dirty_entity_ai AFTER INSERT ON entities BEGIN
            {_MARK.format("new.id")};
        END;
        CREATE TRIGGER graphrag_dirty_entity_au AFTER UPDATE OF type ON entities
        WHEN new.type IS NOT old.type BEGIN
            {_MARK.format("new.id")};
        END;
        CREATE TRIGGER graphrag_dirty_entity_ad AFTER DELETE ON entities BEGIN
            {_MARK.format("old.id")};
        END;
        CREATE TRIGGER graphrag_dirty_triple_ai AFTER INSERT ON triples
        WHEN json_type(new.object) = 'text' BEGIN
            {_MARK.format("new.subject")};
        END;
        CREATE TRIGGER graphrag_dirty_triple_au AFTER UPDATE OF object ON triples
        WHEN new.object IS NOT old.object
         AND (json_type(new.object) = 'text' OR json_type(old.object) = 'text') BEGIN
            {_MARK.format("new.subject")};
        END;
        CREATE TRIGGER graphrag_dirty_triple_ad AFTER DELETE ON triples
        WHEN json_type(old.object) = 'text' BEGIN
            {_MARK.format("old.subject")};
        END;
        CREATE TRIGGER graphrag_dirty_edge_ai AFTER INSERT ON edges BEGIN
            {_MARK.format("new.subject")};
            {_MARK.format("new.object")};
        END;
        CREATE TRIGGER graphrag_dirty_edge_ad AFTER DELETE ON edges BEGIN
            {_MARK.format("old.subject")};
            {_MARK.format("old.object")};
        END;
        CREATE TRIGGER graphrag_dirty_alias_ai AFTER INSERT ON aliases BEGIN
            {_MARK.format("new.entity_id")};
        END;
        CREATE TRIGGER graphrag_dirty_alias_ad AFTER DELETE ON aliases BEGIN
            {_MARK.format("old.entity_id")};
        END;
        INSERT INTO graphrag_text_dirty SELECT id FROM entities;
"""

#: The text index's schema (after the hub's own migrations).
TEXT_MIGRATIONS: list[Migration] = [("graphrag_text_001", _T001_TEXT)]

# One statement builds the text of every marked entity that still exists. Ids are split
# into words ("UAV-001" → "UAV 001") so a query for either part finds them.
_BUILD = f"""
    INSERT INTO graphrag_text (entity_id, entity_type, body)
    SELECT e.id, e.type, trim(
        replace(replace(replace(e.id, '-', ' '), '_', ' '), '.', ' ') || ' ' || e.type
        || ' ' || coalesce((SELECT group_concat(alias, ' ') FROM aliases
                            WHERE entity_id = e.id), '')
        || ' ' || coalesce((SELECT group_concat(json_extract(object, '$'), ' ') FROM triples
                            WHERE subject = e.id AND json_type(object) = 'text'), '')
        || ' ' || coalesce((SELECT group_concat(predicate || ' ' || object, ' ') FROM
                            (SELECT predicate, object FROM edges WHERE subject = e.id
                             LIMIT {MAX_NEIGHBOURS})), '')
        || ' ' || coalesce((SELECT group_concat(predicate || ' ' || subject, ' ') FROM
                            (SELECT predicate, subject FROM edges WHERE object = e.id
                             LIMIT {MAX_NEIGHBOURS})), ''))
    FROM graphrag_text_dirty AS d JOIN entities AS e ON e.id = d.entity_id
    WHERE true
    ON CONFLICT (entity_id) DO UPDATE SET
        entity_type = excluded.entity_type, body = excluded.body
        WHERE body != excluded.body OR entity_type != excluded.entity_type
    RETURNING entity_id, body
"""
_GONE = """
    DELETE FROM graphrag_text WHERE entity_id IN (
        SELECT d.entity_id FROM graphrag_text_dirty AS d
        LEFT JOIN entities AS e ON e.id = d.entity_id WHERE e.id IS NULL)
    RETURNING entity_id
"""

#: Takes (entity_id, text, text_hash) of entities whose text changed ('' = gone), in
#: the same transaction: the embedding queue.
Changed = Callable[[sqlite3.Connection, Sequence[tuple[str, str, str]]], None]


class TextHit(msgspec.Struct, frozen=True):
    """One text search hit: bm25 made positive (higher is better) and a snippet."""

    entity_id: str
    entity_type: str
    score: float
    snippet: str


def refresh(db: sqlite3.Connection, changed: Changed | None = None) -> int:
    """Rebuild the text of the entities written since the last call; how many changed.

    Runs inside the caller's write transaction (the materialiser's), so the text is
    current exactly when the graph is.
    """
    built = db.execute(_BUILD).fetchall()
    gone = db.execute(_GONE).fetchall()
    db.execute("DELETE FROM graphrag_text_dirty")
    rows = [(entity_id, body, _digest(body)) for entity_id, body in built]
    rows += [(entity_id, "", "") for (entity_id,) in gone]
    if changed is not None and rows:
        changed(db, rows)
    return len(rows)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


_WORD = re.compile(r"\w+", re.UNICODE)
#: Words too common to rank by: each matches most of the graph, and ranking a query's
#: every match by bm25 is what makes a slow query.
STOP_WORDS = frozenset(
    [
        "a",
        "about",
        "after",
        "all",
        "also",
        "an",
        "and",
        "any",
        "are",
        "as",
        "at",
        "be",
        "been",
        "but",
        "by",
        "can",
        "could",
        "did",
        "do",
        "does",
        "for",
        "from",
        "had",
        "has",
        "have",
        "he",
        "her",
        "his",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "me",
        "my",
        "no",
        "not",
        "of",
        "on",
        "once",
        "or",
        "our",
        "out",
        "over",
        "she",
        "so",
        "some",
        "than",
        "that",
        "the",
        "their",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "to",
        "too",
        "up",
        "us",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "while",
        "who",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
    ]
)


def fts_query(text: str, joiner: str = " OR ") -> str:
    """An FTS5 MATCH expression for a user's words: each word quoted (no FTS5 syntax of
    the user's reaches SQLite), stop words left out (unless nothing else is left), the
    rest joined by ``joiner``.

    Returns '' when the text holds no word.
    """
    words = _WORD.findall(text)[:64]
    kept = [word for word in words if word.lower() not in STOP_WORDS] or words
    return joiner.join('"' + word.replace('"', '""') + '"' for word in kept)


def search_text(
    db: sqlite3.Connection,
    query: str,
    limit: int,
    entity_types: Iterable[str] = (),
) -> list[TextHit]:
    """The best ``limit`` entities for ``query`` by bm25, optionally of some types only.

    Entities holding every word are looked for first; only when they are fewer than
    ``limit`` do entities holding any of the words count, and then without the words in
    more than a tenth of the index (:func:`rare_words`): FTS5 ranks every match of an OR
    query, so one such word made most of the time (a query with "near", a relationship
    of most entities, took 50 ms on 100k entities; 4 ms without it).
    """
    types = list(entity_types)
    hits = _matching(db, fts_query(query, " AND "), limit, types)
    if len(hits) >= limit:
        return hits
    return _matching(db, fts_query(" ".join(rare_words(db, query)), " OR "), limit, types)


#: Words in more than this share of the indexed entities (and in more than
#: :data:`FREQUENT_MIN` of them: a small graph is fast anyway) are left out of an OR query.
FREQUENT_SHARE = 0.1
FREQUENT_MIN = 1000


def rare_words(db: sqlite3.Connection, query: str) -> list[str]:
    """The query's words (stop words out) that are not frequent (:data:`FREQUENT_SHARE`,
    :data:`FREQUENT_MIN`); the rarest one when all are.

    Each word is stemmed by FTS5's own tokenizer (in a private in-memory database, so
    the caller's connection is never written to and its snapshot never held) and looked
    up in the index's vocabulary (``fts5vocab``): no stemmer of our own can disagree.
    """
    words = [word for word in _WORD.findall(query)[:64] if word.lower() not in STOP_WORDS]
    if not words:
        return _WORD.findall(query)[:64]
    stems = _stems(words)
    terms = sorted(set(stems.values()))
    if not db.execute("SELECT 1 FROM sqlite_temp_master WHERE name = 'graphrag_vocab'").fetchone():
        # DDL: opens no transaction on the caller's connection.
        db.execute(
            "CREATE VIRTUAL TABLE temp.graphrag_vocab USING fts5vocab(main, graphrag_fts, row)"
        )
    marks = ",".join("?" * len(terms))
    counts = dict(
        db.execute(f"SELECT term, doc FROM temp.graphrag_vocab WHERE term IN ({marks})", terms)
    )
    (indexed,) = db.execute("SELECT coalesce(max(rowid), 0) FROM graphrag_text").fetchone()
    frequency = [counts.get(stems.get(n, ""), 0) for n in range(len(words))]
    kept = [
        word
        for word, count in zip(words, frequency, strict=True)
        if count <= max(indexed * FREQUENT_SHARE, FREQUENT_MIN)
    ]
    return kept or [min(zip(frequency, words, strict=True))[1]]


_local = threading.local()


def _stems(words: list[str]) -> dict[int, str]:
    """Each word's stem (by its position) as the index's tokenizer makes it."""
    stemmer = getattr(_local, "stemmer", None)
    if stemmer is None:
        stemmer = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        stemmer.execute("CREATE VIRTUAL TABLE words USING fts5(word, tokenize='porter unicode61')")
        stemmer.execute("CREATE VIRTUAL TABLE stems USING fts5vocab(words, instance)")
        _local.stemmer = stemmer
    stemmer.execute("DELETE FROM words")
    stemmer.executemany("INSERT INTO words (rowid, word) VALUES (?, ?)", enumerate(words))
    return dict(stemmer.execute("SELECT doc, term FROM stems"))


def _matching(db: sqlite3.Connection, match: str, limit: int, types: list[str]) -> list[TextHit]:
    if not match:
        return []
    type_filter = f"AND entity_type IN ({','.join('?' * len(types))})" if types else ""
    rows = db.execute(
        f"""SELECT entity_id, entity_type, bm25(graphrag_fts, ?, ?, ?) AS rank,
                   snippet(graphrag_fts, 2, '[', ']', '…', 12)
            FROM graphrag_fts WHERE graphrag_fts MATCH ? {type_filter}
            ORDER BY rank LIMIT ?""",
        (*_WEIGHTS, match, *types, limit),
    ).fetchall()
    return [TextHit(row[0], row[1], -float(row[2]), row[3]) for row in rows]
