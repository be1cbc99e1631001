"""The materialiser's apply step on a real hub store: one bad log message is skipped,
named and counted; the messages around it apply, and the position moves past it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from cloud_hub.graph.schema import HUB_MIGRATIONS
from cloud_hub.metrics import HubMetrics
from cloud_hub.sync import materialiser as module
from cloud_hub.sync.materialiser import Materialiser
from edge_agent.config import IndexesConfig
from edge_agent.graph import GraphStore
from edge_agent.metrics import Metrics
from edge_agent.sync.codec import encode_deltas
from edge_agent.sync.frames import Batch, EntityDelta, encode_frame

NOW = 1_800_000_000_000


def message(stream_seq: int, edge: str, seq: int, entity: str) -> Any:
    """A log message as nats-py hands it over (the fields the materialiser reads)."""
    delta = EntityDelta(entity, "drone", 1, NOW, 3, [("battery", 50, NOW, "t")])
    payload, _ = encode_deltas([delta], "zlib")
    headers = {
        "Semstreams-Edge": edge,
        "Semstreams-Seq": str(seq),
        "Semstreams-Received-Ms": str(NOW),
        "Semstreams-Ceiling-Ms": str(NOW + 60_000),
    }
    frame = encode_frame(Batch(seq=seq, encoding="zlib", count=1, payload=payload))
    sequence = SimpleNamespace(stream=stream_seq)
    return SimpleNamespace(headers=headers, data=frame, metadata=SimpleNamespace(sequence=sequence))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[GraphStore]:
    made = GraphStore(
        tmp_path / "hub.db", origin="hub", indexes=IndexesConfig(), migrations=HUB_MIGRATIONS
    )
    made.position("materialiser-test", "created")  # its consumer_state row
    yield made
    made.close()


def test_a_message_sqlite_cannot_store_is_skipped_alone(
    store: GraphStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_apply = module.apply_batch

    def apply(db: Any, stamp: Any, deltas: Any, **kwargs: Any) -> Any:
        result = real_apply(db, stamp, deltas, **kwargs)  # half written, then it fails
        if stamp.edge_id == "bad":
            raise OverflowError("Python int too large to convert to SQLite INTEGER")
        return result

    monkeypatch.setattr(module, "apply_batch", apply)
    metrics = Metrics()
    worker = Materialiser(
        None,  # type: ignore[arg-type]  # no NATS: only the apply step runs here
        store,
        instance="test",
        metrics=metrics,
        hub_metrics=HubMetrics(metrics),
        on_commit=lambda touched: None,
        max_frame_bytes=1 << 20,
        max_batch_bytes=1 << 20,
    )
    batch = [
        message(1, "good", 1, "G-1"),
        message(2, "bad", 1, "B-1"),
        message(3, "good", 2, "G-2"),
    ]
    results = store.database.transaction(worker._apply_in, batch)
    assert [r.conflicts for r in results] == [{}, {"unusable_log_message": 1}, {}]
    assert store.entity("G-1") is not None and store.entity("G-2") is not None
    assert store.entity("B-1") is None  # its half-written rows were undone
    assert store.position("materialiser-test", "created") == 3
