"""Search quality on a generated corpus with planted answers, with the shipped model.

The corpus: 40 planted sensor reports, each the second half of a paraphrase pair
(``tests/fixtures/graphrag/paraphrases.json``) tagged with its asset (``asset-07``),
among 200 maintenance notes and incident reports from the demo's generator. The
queries: each pair's first half — two in three also name the asset, as an operator who
knows it would type; one in three is the paraphrase alone, sharing no distinctive word
with its answer. A query scores when its planted report is in the top 3.

Real parts: the hub's schema and text index in a SQLite file, ``cloud-hub
embed-server`` with its default model as a child process, the hub's embedding client,
vector index and searcher.
"""

from __future__ import annotations

import json
import random
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import numpy as np
import pytest

from cloud_hub.graphrag import text
from cloud_hub.graphrag.embedding.client import EmbeddingClient
from cloud_hub.graphrag.schema import GRAPH_MIGRATIONS
from cloud_hub.graphrag.search import Searcher, SearchQuery
from cloud_hub.graphrag.vectors import VectorIndex
from edge_agent.config.schema import EmbeddingConfig
from edge_agent.graph.migrations import migrate
from edge_agent.ingest.reports import report_event
from tests.embed_server import EmbedServer
from tests.helpers import FIXTURES

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

PAIRS: list[list[str]] = json.loads((FIXTURES / "graphrag" / "paraphrases.json").read_text())[
    "pairs"
]
DISTRACTORS = 200


def _corpus() -> tuple[dict[str, tuple[str, str]], list[tuple[str, str]]]:
    """Documents (id → (type, text)) and queries (query, planted id)."""
    docs: dict[str, tuple[str, str]] = {}
    queries = []
    for number, (asked, written) in enumerate(PAIRS):
        key = f"report-{number:02d}"
        docs[key] = ("sensor_report", f"asset-{number:02d}: {written}")
        query = asked if number % 3 == 2 else f"asset-{number:02d} {asked}"
        queries.append((query, key))
    rng = random.Random(11)
    stamp = datetime(2026, 12, 4, tzinfo=UTC)
    for number in range(DISTRACTORS):
        event, _ = report_event(rng, number, f"UAV-{rng.randrange(40):03d}", stamp)
        docs[event.entity_id] = (event.entity_type, str(event.properties["text"]))
    return docs, queries


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbedServer]:
    made = EmbedServer(tmp_path_factory.mktemp("embed"))
    made.start(timeout=60)
    yield made
    made.stop()


def _graph(path: Path, docs: dict[str, tuple[str, str]]) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    migrate(db, GRAPH_MIGRATIONS)
    db.execute("BEGIN")
    for key, (kind, words) in docs.items():
        db.execute("INSERT INTO entities VALUES (?, ?, 1, 5, 0, 0, 'test')", (key, kind))
        db.execute(
            "INSERT INTO triples (subject, predicate, object, ts, source)"
            " VALUES (?, 'text', ?, 0, 'test')",
            (key, msgspec.json.encode(words).decode()),
        )
    text.refresh(db)
    db.execute("COMMIT")
    return db


def _hit_rate(
    searcher: Searcher, db: sqlite3.Connection, queries: list[tuple[str, str]], mode: str
) -> float:
    hits = 0
    for query, planted in queries:
        answer = searcher.search(db, SearchQuery(query=query, mode=mode, limit=3))  # type: ignore[arg-type]
        assert answer["degraded"] is False, answer
        hits += planted in [hit["entity_id"] for hit in answer["results"]]
    return hits / len(queries)


def test_planted_answers_are_found_by_text_vectors_and_best_by_both(
    server: EmbedServer, tmp_path: Path
) -> None:
    docs, queries = _corpus()
    db = _graph(tmp_path / "hub.db", docs)
    client = EmbeddingClient(EmbeddingConfig(enabled=True, service_url=server.url))
    index = VectorIndex()
    ids = list(docs)
    rows = db.execute("SELECT entity_id, body FROM graphrag_text").fetchall()
    bodies = dict(rows)
    for start in range(0, len(ids), 64):
        chunk = ids[start : start + 64]
        vectors = np.stack([client.embed_now(bodies[key]) for key in chunk])  # type: ignore[arg-type]
        index.upsert(chunk, vectors)
    searcher = Searcher(embed=client.embed_now, nearest=index.search)

    rates = {mode: _hit_rate(searcher, db, queries, mode) for mode in ("text", "vector", "hybrid")}
    print(f"top-3 hit rates over {len(queries)} planted queries: {rates}")
    assert rates["vector"] >= 0.9
    assert rates["text"] >= 0.6
    assert rates["hybrid"] >= max(rates["text"], rates["vector"])
