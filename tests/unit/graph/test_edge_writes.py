"""Edge writes: one batch ends as the events one by one would; restating moves no cseq.

Edges are written by two statements over a batch (RESTATE_EDGE, then UPSERT_EDGE) so
that readings restating a weight never rewrite the weight indexes; these tests hold
that split to the meaning of applying events in stream order.
"""

from __future__ import annotations

import sqlite3
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.config import IndexesConfig
from edge_agent.graph import GraphStore
from edge_agent.model import EntityEvent, Relationship

MINUTE_MS = 60_000
START_MS = int(datetime(2024, 1, 1, tzinfo=UTC).timestamp() * 1000)
# Each write: (object, weight, minute of its timestamp, source).
writes = st.lists(
    st.tuples(
        st.sampled_from(["fleet-a", "fleet-b"]),
        st.sampled_from([0.5, 1.0]),
        st.integers(0, 3),
        st.sampled_from(["s1", "s2"]),
    ),
    min_size=1,
    max_size=8,
)


def event(obj: str, weight: float, minute: int, source: str) -> EntityEvent:
    return EntityEvent(
        entity_id="UAV-1",
        entity_type="drone",
        timestamp=datetime(2024, 1, 1, 0, minute, tzinfo=UTC),
        source=source,
        relationships=[Relationship("member_of", obj, weight)],
    )


def edges(path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as db:
        return db.execute(
            "SELECT predicate, object, weight, ts, source FROM edges ORDER BY object"
        ).fetchall()


def open_store(path: Path) -> GraphStore:
    store = GraphStore(path, origin="e", indexes=IndexesConfig())
    store.position("c", "s")
    return store


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(before=writes, batch=writes)
def test_a_batch_leaves_the_edges_that_its_events_one_by_one_leave(
    before: list[tuple[str, float, int, str]], batch: list[tuple[str, float, int, str]]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        together, one_by_one = open_store(Path(tmp) / "a.db"), open_store(Path(tmp) / "b.db")
        for store in (together, one_by_one):
            for seq, write in enumerate(before, 1):
                store.apply([(seq, event(*write))], consumer="c", now_ms=0)
        start = len(before) + 1
        together.apply(
            [(start + i, event(*write)) for i, write in enumerate(batch)], consumer="c", now_ms=0
        )
        for i, write in enumerate(batch):
            one_by_one.apply([(start + i, event(*write))], consumer="c", now_ms=0)
        assert edges(together.path) == edges(one_by_one.path)
        together.close()
        one_by_one.close()


def test_restating_a_weight_moves_no_change_sequence(tmp_path: Path) -> None:
    store = open_store(tmp_path / "g.db")
    store.apply([(1, event("fleet-a", 0.5, 0, "s1"))], consumer="c", now_ms=0)

    def cseq() -> int:
        with sqlite3.connect(store.path) as db:
            return int(db.execute("SELECT cseq FROM edges").fetchone()[0])

    first = cseq()
    store.apply([(2, event("fleet-a", 0.5, 1, "s2"))], consumer="c", now_ms=0)
    assert cseq() == first  # restated: nothing for the sync link to send
    assert edges(store.path)[0][3:] == (START_MS + MINUTE_MS, "s2")  # but newer and from s2
    store.apply([(3, event("fleet-a", 1.0, 2, "s2"))], consumer="c", now_ms=0)
    assert cseq() > first
    assert edges(store.path)[0][2] == 1.0
