"""GraphRAG benchmark: search latency at 100,000 entities / 300,000 edges, the shipped
embedding model's speed, communities, and how fresh search is.

Run it with ``.venv/bin/python bench/graphrag.py`` (``--help`` for the knobs). Needs
no network: the embedding service is ``cloud-hub embed-server`` (the packaged model) as
a child process on loopback. The last line is one JSON object.

1. **Graph**: 100,000 entities in the hub's schema (a SQLite file with the hub's and
   GraphRAG's migrations): 20,000 maintenance notes and incident reports from the
   demo's generator (free text, related to a drone and a place), drones, places and
   other assets with string properties; 300,000 relationships (each report's two,
   the rest random). The text index is built by ``text.refresh``, the materialiser's
   own call (``text_index_s``).
2. **Text search** (``text_p50_ms``, ``text_p99_ms``): the searcher's ``text`` mode;
   half the queries are a finding's phrasings (with a place name or not), half are
   questions in other words (the slow path: no entity holds all their words).
   **Local search** (``local_text_p50_ms``, ``local_text_p99_ms``): the same texts
   through ``Searcher.local`` in ``text`` mode: the hits' neighbourhoods and the PathRAG
   paths joining the first five.
3. **Vectors** (``vector_*``, ``hybrid_*``): the index is filled with 100,000 unit
   vectors of the model's dimension — random ones: a search's time does not depend on
   what the vectors hold, and embedding 100,000 texts with the default model would
   take half an hour (``embed_per_s``). Each query is embedded by the running service
   (one HTTP call, as a search does), so the figures include it.
4. **embed_per_s**: texts per second through the service in batches of 64, for the
   default model and for the fast option (``embed_per_s_fast``).
5. **Communities**: ``bench/communities.py``'s ``measure`` on a 100k / 300k graph.
6. **Fresh** (``search_fresh_s``): a new report committed to the graph (with its text,
   in the same transaction, as the materialiser does) until it is the first hit by text
   (``search_fresh_text_s``) and by vector, the hub's embedder running against the
   service (``search_fresh_s``).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from common import die_with_parent, free_port, percentile

from cloud_hub.config import HUB_INDEXES
from cloud_hub.graphrag import text, vectors
from cloud_hub.graphrag.embedder import Embedder
from cloud_hub.graphrag.embedding.client import EmbeddingClient
from cloud_hub.graphrag.schema import GRAPH_MIGRATIONS
from cloud_hub.graphrag.search import LocalQuery, Searcher, SearchQuery
from cloud_hub.graphrag.vectors import VectorIndex
from edge_agent.config.schema import EmbeddingConfig
from edge_agent.graph import GraphStore
from edge_agent.graph.database import Database
from edge_agent.ingest.reports import FINDINGS, PLACES, report_event

FAST_MODEL = "wordllama-l2-supercat-256"


def build_graph(path: Path, entities: int, edges: int, reports: int, seed: int) -> float:
    """The graph, straight into the merged tables; the seconds ``text.refresh`` took."""
    rng = random.Random(seed)
    stamp = datetime(2026, 12, 4, tzinfo=UTC)
    # The hub's schema and indexes (all five, as the hub keeps them), then plain inserts.
    GraphStore(path, origin="bench", indexes=HUB_INDEXES, migrations=GRAPH_MIGRATIONS).close()
    db = sqlite3.connect(path, isolation_level=None)
    ids: list[str] = []
    db.execute("BEGIN")
    for key, name in PLACES:
        _entity(db, key, "place", {"name": name})
        ids.append(key)
    for number in range(reports):
        drone = f"UAV-{rng.randrange(2000):04d}"
        event, _ = report_event(rng, number, drone, stamp)
        _entity(db, event.entity_id, event.entity_type, event.properties)
        for relation in event.relationships:
            _edge(db, event.entity_id, relation.predicate, relation.object, 1.0)
        ids.append(event.entity_id)
    kinds = ("drone", "sensor", "charger", "vehicle")
    while len(ids) < entities:
        kind = kinds[len(ids) % len(kinds)]
        key = f"UAV-{len(ids) - reports:04d}" if kind == "drone" else f"{kind}-{len(ids):06d}"
        status = rng.choice(("flying", "docked", "charging", "idle", "maintenance"))
        _entity(db, key, kind, {"status": status, "model": f"model {rng.randrange(20)}"})
        ids.append(key)
    for _ in range(edges - 2 * reports):
        subject, target = rng.choice(ids), rng.choice(ids)
        predicate = rng.choice(("near", "member_of", "follows", "charges_at", "reports_to"))
        _edge(db, subject, predicate, target, round(rng.random(), 3))
    db.execute("COMMIT")
    started = time.perf_counter()
    db.execute("BEGIN IMMEDIATE")
    text.refresh(db)
    db.execute("COMMIT")
    took = time.perf_counter() - started
    db.close()
    return took


def _entity(db: sqlite3.Connection, key: str, kind: str, properties: dict[str, Any]) -> None:
    db.execute("INSERT OR IGNORE INTO entities VALUES (?, ?, 1, 5, 0, 0, 'bench')", (key, kind))
    db.executemany(
        "INSERT OR REPLACE INTO triples (subject, predicate, object, ts, source)"
        " VALUES (?, ?, ?, 0, 'bench')",
        [(key, name, msgspec.json.encode(value).decode()) for name, value in properties.items()],
    )


def _edge(db: sqlite3.Connection, subject: str, predicate: str, target: str, weight: float) -> None:
    db.execute(
        "INSERT OR IGNORE INTO edges (subject, predicate, object, weight, ts, source)"
        " VALUES (?, ?, ?, ?, 0, 'bench')",
        (subject, predicate, target, weight),
    )


#: How an operator who has not read the reports asks (none of these is a phrasing of theirs).
_ASKED = (
    "power cell problems after flights",
    "which aircraft had a bird strike risk",
    "broken propellers this week",
    "lost satellite fix during missions",
    "overheating engines when climbing",
    "shaky video in windy weather",
    "drones that landed hard",
    "anything wrong near the water",
    "charging faults at the hangar",
    "inspection findings at the quarry",
)


def queries(count: int, seed: int) -> list[str]:
    """Search texts: half a finding's phrasing (sometimes with a place), half questions
    in other words."""
    rng = random.Random(seed)
    made = []
    for number in range(count):
        if number % 2:
            made.append(rng.choice(_ASKED))
            continue
        _, _, wordings = FINDINGS[rng.randrange(len(FINDINGS))]
        wording = rng.choice(wordings)
        made.append(f"{wording} at the {rng.choice(PLACES)[1]}" if rng.random() < 0.5 else wording)
    return made


def timed(fn: Callable[[str], Any], texts: list[str]) -> dict[str, float | None]:
    """p50 and p99 in ms of ``fn`` over ``texts`` (after a short warm-up)."""
    for query in texts[:10]:
        fn(query)
    times = []
    for query in texts:
        started = time.perf_counter()
        fn(query)
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {
        "p50": round(percentile(times, 0.5) or 0, 2),
        "p99": round(percentile(times, 0.99) or 0, 2),
    }


class Service:
    """``cloud-hub embed-server`` as a child process on a free loopback port."""

    def __init__(self, model: str = "") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, "-m", "cloud_hub.cli", "embed-server", "--port", str(self.port)]
        self.process = subprocess.Popen(
            [*argv, *(["--model", model] if model else [])],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
            preexec_fn=die_with_parent,  # noqa: PLW1509 - only a prctl call
        )
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError("embed-server did not come up") from None
                time.sleep(0.2)

    def stop(self) -> None:
        """Stop it."""
        self.process.terminate()
        self.process.wait(10)


def embed_rate(url: str, texts: list[str]) -> float:
    """Texts per second through the service, in batches of 64."""
    client = EmbeddingClient(EmbeddingConfig(enabled=True, service_url=url, batch_size=64))

    async def run() -> float:
        started = time.perf_counter()
        await client.embed(texts)
        took = time.perf_counter() - started
        await client.aclose()
        return len(texts) / took

    return asyncio.run(run())


def fast_rate(texts: list[str]) -> float | None:
    """``embed_per_s`` of the fast option, when its package is installed (``None``: not)."""
    if importlib.util.find_spec("wordllama") is None:
        print(f"{FAST_MODEL}: pip install wordllama to measure it", file=sys.stderr)
        return None
    fast = Service(FAST_MODEL)
    try:
        return round(embed_rate(fast.url, texts), 1)
    finally:
        fast.stop()


def search_figures(path: Path, url: str, count: int, seed: int) -> dict[str, Any]:
    """Text, vector and hybrid latency on the graph at ``path``."""
    client = EmbeddingClient(EmbeddingConfig(enabled=True, service_url=url))
    probe = client.embed_now("probe")
    assert probe is not None, "the embedding service does not answer"
    index = VectorIndex()
    rng = np.random.default_rng(seed)
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        keys = [row[0] for row in db.execute("SELECT entity_id FROM graphrag_text")]
    for start in range(0, len(keys), 10_000):
        chunk = keys[start : start + 10_000]
        index.upsert(chunk, rng.normal(size=(len(chunk), len(probe))).astype(np.float32))
    searcher = Searcher(embed=client.embed_now, nearest=index.search)
    texts = queries(count, seed)
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    figures: dict[str, Any] = {"vectors": len(index), "dim": len(probe)}
    for mode in ("text", "vector", "hybrid"):
        result = timed(lambda q, m=mode: searcher.search(db, SearchQuery(query=q, mode=m)), texts)
        figures[f"{mode}_p50_ms"], figures[f"{mode}_p99_ms"] = result["p50"], result["p99"]
    # Local search: text hits, their neighbourhoods, and PathRAG (both, depth 3) from
    # each of the first five to the others.
    result = timed(lambda q: searcher.local(db, LocalQuery(query=q, mode="text")), texts)
    figures["local_text_p50_ms"], figures["local_text_p99_ms"] = result["p50"], result["p99"]
    db.close()
    return figures


def freshness(path: Path, url: str, seed: int) -> dict[str, float]:
    """Seconds from a new report's commit until it is the first hit by text, by vector."""
    database = Database(path, GRAPH_MIGRATIONS, what="bench graph")
    client = EmbeddingClient(EmbeddingConfig(enabled=True, service_url=url))
    index = VectorIndex()
    embedder = Embedder(
        client, index, read=database.read, write=database.write_transaction, idle=0.05
    )
    words = "the cooling fan of the charger squealed like a kettle"
    key = f"note-fresh-{seed}"

    def commit(db: sqlite3.Connection) -> None:
        _entity(db, key, "maintenance_note", {"text": words})
        text.refresh(db, lambda conn, rows: vectors.enqueue(conn, rows, time.time()))

    async def run() -> dict[str, float]:
        await embedder.start()
        try:
            started = time.perf_counter()
            await database.write_transaction(commit)
            searcher = Searcher(embed=embedder.embed_query, nearest=index.search)
            found_text = await _until_first(
                database, started, key, words, mode="text", searcher=searcher
            )
            found_vector = await _until_first(
                database, started, key, words, mode="vector", searcher=searcher
            )
        finally:
            await embedder.stop()
            database.close()
        return {"search_fresh_text_s": found_text, "search_fresh_s": found_vector}

    return asyncio.run(run())


async def _until_first(
    database: Database, started: float, key: str, words: str, *, mode: str, searcher: Searcher
) -> float:
    query = SearchQuery(query=words, mode=mode, limit=1)  # type: ignore[arg-type]
    while True:
        answer = await asyncio.to_thread(database.read, lambda db: searcher.search(db, query))
        if answer["results"] and answer["results"][0]["entity_id"] == key:
            return round(time.perf_counter() - started, 3)
        if time.perf_counter() - started > 120:
            raise RuntimeError(f"not findable by {mode} after 120 s")
        await asyncio.sleep(0.02)


def main() -> None:
    """Run the benchmark; print the figures, then one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--edges", type=int, default=300_000)
    parser.add_argument("--reports", type=int, default=20_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-communities", action="store_true")
    args = parser.parse_args()
    figures: dict[str, Any] = {"entities": args.entities, "edges": args.edges}
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "hub.db"
        figures["text_index_s"] = round(
            build_graph(path, args.entities, args.edges, args.reports, args.seed), 2
        )
        print(f"graph built, text index {figures['text_index_s']} s", file=sys.stderr)
        service = Service()
        try:
            figures.update(search_figures(path, service.url, args.queries, args.seed))
            samples = [words for _, _, phrasings in FINDINGS for words in phrasings] * 36
            figures["embed_per_s"] = round(embed_rate(service.url, samples[:640]), 1)
            figures.update(freshness(path, service.url, args.seed))
        finally:
            service.stop()
        figures["embed_per_s_fast"] = fast_rate(samples * 10)
    if not args.no_communities:
        from communities import measure

        found = measure(entities=args.entities, edges=args.edges)
        figures["communities_full_s"] = found["communities_full_s"]
        figures["communities_incremental_s"] = found["communities_incremental_s"]
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
