"""The hub's own metrics, in the same registry as the shared ``semstreams_*`` ones."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from edge_agent.metrics import Metrics

__all__ = ["HubMetrics"]


class HubMetrics:
    """``semstreams_hub_*``: the log, the materialiser and the merge; and
    ``semstreams_embedding*``: the embedder's queue and its calls to the service.

    Args:
        metrics: the program's metrics, whose registry these join.
    """

    def __init__(self, metrics: Metrics) -> None:
        registry = metrics.registry
        self.conflicts = Counter(
            "semstreams_hub_conflicts",
            "Conflicts recorded by kind (future_timestamp, foreign_delete, older_write).",
            ["kind"],
            registry=registry,
        )
        self.log_pending = Gauge(
            "semstreams_hub_log_pending_batches",
            "Batches in SYNC_BATCHES this instance has not applied yet.",
            registry=registry,
        )
        self.materialised = Counter(
            "semstreams_hub_materialised_batches",
            "Batches applied to this instance's graph from the log, by outcome.",
            ["outcome"],
            registry=registry,
        )
        self.log_appends = Counter(
            "semstreams_hub_log_appends",
            "Appends to SYNC_BATCHES by outcome (stored, raced, failed).",
            ["outcome"],
            registry=registry,
        )
        self.link_failures = Counter(
            "semstreams_hub_link_failures",
            "Sync links whose worker failed unexpectedly; each was closed (1011) after"
            " nacking the batches it held, and its edge reconnects.",
            registry=registry,
        )
        self.embedding_backlog = Gauge(
            "semstreams_embedding_backlog",
            "Entities whose text changed and that wait for their vector.",
            registry=registry,
        )
        self.embedding_lag = Gauge(
            "semstreams_embedding_lag_seconds",
            "Age of the oldest entity text waiting for its vector (0 when none waits).",
            registry=registry,
        )
        self.embedding_requests = Counter(
            "semstreams_embedding_requests",
            "Requests to the embedding service by outcome (ok, failed, rejected; refused:"
            " not sent, the circuit breaker was open).",
            ["outcome"],
            registry=registry,
        )
        self.embeddings = Counter(
            "semstreams_embeddings",
            "Entity vectors stored (or deleted, for entities gone).",
            registry=registry,
        )
