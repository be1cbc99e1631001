"""The hub's schema: the graph's migrations, then the hub's own.

Each edge's contribution to an entity lives apart (``hub_contributions``,
``hub_triples``, ``hub_edges``, ``hub_aliases``, keyed by entity and edge). The graph's
own tables (``entities``, ``triples``, ``edges``, ``aliases``), which every query reads,
hold the merged view, and triggers keep it from the contributions inside the same
statement, so the two can never disagree:

- a property shows the value of the contribution with the greatest ``(ts, edge_id)``;
  an edge's stamps only grow (a stored ``ts`` is the greatest that edge ever sent for
  that property), so its newest value always replaces its older one;
- a relationship (predicate, object) is there while any edge contributes it, with the
  weight of the newest contribution; an alias while any edge gives it;
- the entity's ``type``, ``origin`` and ``updated_at`` come from its newest contribution,
  its ``version`` is the sum of the contributions' versions (so it equals the edge's
  own version while one edge reports it, and only ever grows while none is removed);
- removing a contribution re-derives only what it showed, from what remains; the entity
  disappears with its last contribution.
"""

from __future__ import annotations

from edge_agent.graph.migrations import MIGRATIONS, Migration

__all__ = ["HUB_MIGRATIONS"]

_H001_PROVENANCE = """
        ALTER TABLE triples ADD COLUMN edge_id TEXT NOT NULL DEFAULT '';
        ALTER TABLE edges ADD COLUMN edge_id TEXT NOT NULL DEFAULT '';

        CREATE TABLE hub_contributions (
            entity_id TEXT NOT NULL,
            edge_id TEXT NOT NULL,
            type TEXT NOT NULL,
            version INTEGER NOT NULL,
            priority INTEGER NOT NULL,
            updated_at INTEGER NOT NULL,
            received_at INTEGER NOT NULL,
            PRIMARY KEY (entity_id, edge_id)
        ) WITHOUT ROWID;
        CREATE INDEX hub_contributions_by_edge ON hub_contributions(edge_id, type);
        CREATE TABLE hub_triples (
            subject TEXT NOT NULL,
            predicate TEXT NOT NULL,
            edge_id TEXT NOT NULL,
            object TEXT NOT NULL,
            ts INTEGER NOT NULL,
            source TEXT NOT NULL,
            PRIMARY KEY (subject, predicate, edge_id)
        ) WITHOUT ROWID;
        CREATE TABLE hub_edges (
            subject TEXT NOT NULL,
            predicate TEXT NOT NULL,
            object TEXT NOT NULL,
            edge_id TEXT NOT NULL,
            weight REAL NOT NULL,
            ts INTEGER NOT NULL,
            source TEXT NOT NULL,
            PRIMARY KEY (subject, predicate, object, edge_id)
        ) WITHOUT ROWID;
        CREATE INDEX hub_edges_by_object ON hub_edges(object, edge_id);
        CREATE TABLE hub_aliases (
            entity_id TEXT NOT NULL,
            alias TEXT NOT NULL,
            edge_id TEXT NOT NULL,
            PRIMARY KEY (entity_id, alias, edge_id)
        ) WITHOUT ROWID;

        -- Per edge: the last batch applied and when, the newest change it carried.
        CREATE TABLE hub_edge_state (
            edge_id TEXT PRIMARY KEY,
            seq INTEGER NOT NULL,
            stream_seq INTEGER NOT NULL,
            applied_at INTEGER NOT NULL,
            received_at INTEGER NOT NULL,
            newest_change INTEGER NOT NULL,
            batches INTEGER NOT NULL,
            deltas INTEGER NOT NULL
        );
        CREATE TABLE hub_conflicts (
            id INTEGER PRIMARY KEY,
            entity_id TEXT NOT NULL,
            edge_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            detail TEXT NOT NULL,
            kept_edge TEXT NOT NULL,
            recorded_at INTEGER NOT NULL
        );

        CREATE TRIGGER hub_triples_insert AFTER INSERT ON hub_triples BEGIN
            INSERT INTO triples (subject, predicate, object, ts, source, cseq, edge_id)
            VALUES (NEW.subject, NEW.predicate, NEW.object, NEW.ts, NEW.source, 0, NEW.edge_id)
            ON CONFLICT (subject, predicate) DO UPDATE SET
                object = excluded.object, ts = excluded.ts, source = excluded.source,
                edge_id = excluded.edge_id
            WHERE triples.edge_id = excluded.edge_id
               OR (excluded.ts, excluded.edge_id) > (triples.ts, triples.edge_id);
        END;
        CREATE TRIGGER hub_triples_update AFTER UPDATE ON hub_triples BEGIN
            INSERT INTO triples (subject, predicate, object, ts, source, cseq, edge_id)
            VALUES (NEW.subject, NEW.predicate, NEW.object, NEW.ts, NEW.source, 0, NEW.edge_id)
            ON CONFLICT (subject, predicate) DO UPDATE SET
                object = excluded.object, ts = excluded.ts, source = excluded.source,
                edge_id = excluded.edge_id
            WHERE triples.edge_id = excluded.edge_id
               OR (excluded.ts, excluded.edge_id) > (triples.ts, triples.edge_id);
        END;
        CREATE TRIGGER hub_triples_delete AFTER DELETE ON hub_triples
        WHEN (SELECT edge_id FROM triples
              WHERE subject = OLD.subject AND predicate = OLD.predicate) = OLD.edge_id
        BEGIN
            DELETE FROM triples WHERE subject = OLD.subject AND predicate = OLD.predicate;
            INSERT INTO triples (subject, predicate, object, ts, source, cseq, edge_id)
            SELECT subject, predicate, object, ts, source, 0, edge_id FROM hub_triples
            WHERE subject = OLD.subject AND predicate = OLD.predicate
            ORDER BY ts DESC, edge_id DESC LIMIT 1;
        END;

        CREATE TRIGGER hub_edges_insert AFTER INSERT ON hub_edges BEGIN
            INSERT INTO edges (subject, predicate, object, weight, ts, source, cseq, edge_id)
            VALUES (NEW.subject, NEW.predicate, NEW.object, NEW.weight, NEW.ts, NEW.source,
                    0, NEW.edge_id)
            ON CONFLICT (subject, predicate, object) DO UPDATE SET
                weight = excluded.weight, ts = excluded.ts, source = excluded.source,
                edge_id = excluded.edge_id
            WHERE edges.edge_id = excluded.edge_id
               OR (excluded.ts, excluded.edge_id) > (edges.ts, edges.edge_id);
        END;
        CREATE TRIGGER hub_edges_update AFTER UPDATE ON hub_edges BEGIN
            INSERT INTO edges (subject, predicate, object, weight, ts, source, cseq, edge_id)
            VALUES (NEW.subject, NEW.predicate, NEW.object, NEW.weight, NEW.ts, NEW.source,
                    0, NEW.edge_id)
            ON CONFLICT (subject, predicate, object) DO UPDATE SET
                weight = excluded.weight, ts = excluded.ts, source = excluded.source,
                edge_id = excluded.edge_id
            WHERE edges.edge_id = excluded.edge_id
               OR (excluded.ts, excluded.edge_id) > (edges.ts, edges.edge_id);
        END;
        CREATE TRIGGER hub_edges_delete AFTER DELETE ON hub_edges
        WHEN (SELECT edge_id FROM edges WHERE subject = OLD.subject
              AND predicate = OLD.predicate AND object = OLD.object) = OLD.edge_id
        BEGIN
            DELETE FROM edges
            WHERE subject = OLD.subject AND predicate = OLD.predicate AND object = OLD.object;
            INSERT INTO edges (subject, predicate, object, weight, ts, source, cseq, edge_id)
            SELECT subject, predicate, object, weight, ts, source, 0, edge_id FROM hub_edges
            WHERE subject = OLD.subject AND predicate = OLD.predicate AND object = OLD.object
            ORDER BY ts DESC, edge_id DESC LIMIT 1;
        END;

        CREATE TRIGGER hub_aliases_insert AFTER INSERT ON hub_aliases BEGIN
            INSERT OR IGNORE INTO aliases VALUES (NEW.entity_id, NEW.alias);
        END;
        CREATE TRIGGER hub_aliases_delete AFTER DELETE ON hub_aliases
        WHEN NOT EXISTS (SELECT 1 FROM hub_aliases
                         WHERE entity_id = OLD.entity_id AND alias = OLD.alias)
        BEGIN
            DELETE FROM aliases WHERE entity_id = OLD.entity_id AND alias = OLD.alias;
        END;

        CREATE TRIGGER hub_contributions_insert AFTER INSERT ON hub_contributions BEGIN
            INSERT INTO entities (id, type, version, priority, created_at, updated_at, origin)
            VALUES (NEW.entity_id, NEW.type, NEW.version, NEW.priority, NEW.received_at,
                    NEW.updated_at, NEW.edge_id)
            ON CONFLICT (id) DO UPDATE SET
                version = entities.version + excluded.version,
                priority = max(entities.priority, excluded.priority),
                type = iif((excluded.updated_at, excluded.origin)
                           > (entities.updated_at, entities.origin), excluded.type, entities.type),
                origin = iif((excluded.updated_at, excluded.origin)
                             > (entities.updated_at, entities.origin),
                             excluded.origin, entities.origin),
                updated_at = max(entities.updated_at, excluded.updated_at);
        END;
        CREATE TRIGGER hub_contributions_update AFTER UPDATE ON hub_contributions BEGIN
            UPDATE entities SET
                version = version + NEW.version - OLD.version,
                priority = max(priority, NEW.priority),
                type = iif(origin = NEW.edge_id
                           OR (NEW.updated_at, NEW.edge_id) > (updated_at, origin),
                           NEW.type, type),
                origin = iif((NEW.updated_at, NEW.edge_id) > (updated_at, origin),
                             NEW.edge_id, origin),
                updated_at = max(updated_at, NEW.updated_at)
            WHERE id = NEW.entity_id;
        END;
        CREATE TRIGGER hub_contributions_delete AFTER DELETE ON hub_contributions BEGIN
            DELETE FROM entities WHERE id = OLD.entity_id
                AND NOT EXISTS (SELECT 1 FROM hub_contributions WHERE entity_id = OLD.entity_id);
            UPDATE entities SET
                (version, priority) = (SELECT sum(version), max(priority)
                                       FROM hub_contributions WHERE entity_id = OLD.entity_id),
                (type, updated_at, origin) = (SELECT type, updated_at, edge_id
                                              FROM hub_contributions
                                              WHERE entity_id = OLD.entity_id
                                              ORDER BY updated_at DESC, edge_id DESC LIMIT 1)
            WHERE id = OLD.entity_id;
        END;
"""

# Bytes on the wire and before compression, per edge, counted from the log (so alike on
# every instance); and the dashboard's bounded per-edge history, sampled by each instance.
_H002_EDGE_HISTORY = """
        ALTER TABLE hub_edge_state ADD COLUMN wire_bytes INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE hub_edge_state ADD COLUMN raw_bytes INTEGER NOT NULL DEFAULT 0;
        CREATE TABLE hub_edge_history (
            edge_id TEXT NOT NULL,
            at_ms INTEGER NOT NULL,
            linked INTEGER NOT NULL,
            deltas INTEGER NOT NULL,
            wire_bytes INTEGER NOT NULL,
            raw_bytes INTEGER NOT NULL,
            lag_s REAL,
            backlog INTEGER,
            PRIMARY KEY (edge_id, at_ms)
        ) WITHOUT ROWID;
        CREATE INDEX hub_edge_history_by_time ON hub_edge_history (at_ms);
"""

# The merged edge's weight is in two indexes (PathRAG reads a node's edges strongest
# first). SQLite rewrites the entries of every indexed column an UPDATE sets, changed or
# not, so a contribution restating its weight (every reading does) must not set it: the
# UPDATE takes the restatement, the upsert only new edges and changed weights.
_MERGED_EDGE_WRITE = """
            UPDATE edges SET ts = NEW.ts, source = NEW.source, edge_id = NEW.edge_id
            WHERE subject = NEW.subject AND predicate = NEW.predicate AND object = NEW.object
              AND weight IS NEW.weight
              AND (edge_id = NEW.edge_id OR (NEW.ts, NEW.edge_id) > (ts, edge_id));
            INSERT INTO edges (subject, predicate, object, weight, ts, source, cseq, edge_id)
            VALUES (NEW.subject, NEW.predicate, NEW.object, NEW.weight, NEW.ts, NEW.source,
                    0, NEW.edge_id)
            ON CONFLICT (subject, predicate, object) DO UPDATE SET
                weight = excluded.weight, ts = excluded.ts, source = excluded.source,
                edge_id = excluded.edge_id
            WHERE excluded.weight IS NOT edges.weight
              AND (edges.edge_id = excluded.edge_id
                   OR (excluded.ts, excluded.edge_id) > (edges.ts, edges.edge_id));
"""
_H003_EDGE_WEIGHT_KEPT = f"""
        DROP TRIGGER hub_edges_insert;
        DROP TRIGGER hub_edges_update;
        CREATE TRIGGER hub_edges_insert AFTER INSERT ON hub_edges BEGIN
            {_MERGED_EDGE_WRITE}
        END;
        CREATE TRIGGER hub_edges_update AFTER UPDATE ON hub_edges BEGIN
            {_MERGED_EDGE_WRITE}
        END;
"""

#: The hub graph's migrations: the edge's graph schema, then the hub's own.
HUB_MIGRATIONS: list[Migration] = [
    *MIGRATIONS,
    ("hub_001_provenance", _H001_PROVENANCE),
    ("hub_002_edge_history", _H002_EDGE_HISTORY),
    ("hub_003_edge_weight_kept", _H003_EDGE_WEIGHT_KEPT),
]
