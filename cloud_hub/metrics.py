"""The hub's own metrics, in the same registry as the shared ``semstreams_*`` ones."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from edge_agent.metrics import Metrics

__all__ = ["HubMetrics"]


class HubMetrics:
    """``semstreams_hub_*``: the log, the materialiser and the merge; and
    ``semstreams_embedding*``: the embedder's queue and its calls to the service;
    ``semstreams_communit*``: the GraphRAG communities' runs.

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
        self.resyncs = Counter(
            "semstreams_hub_resyncs",
            "Resyncs of an edge's share by outcome: started, or deferred (asked again within"
            " resync_min_interval; it starts when the interval has passed).",
            ["outcome"],
            registry=registry,
        )
        for outcome in ("started", "deferred"):
            self.resyncs.labels(outcome)
        self.full_resends = Counter(
            "semstreams_hub_full_resends",
            "Edges asked to send everything they wrote again: they had batches acked that"
            " this hub no longer holds (restored from a backup, or its log lost them).",
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
        self._community_levels = 0
        self.communities = Gauge(
            "semstreams_communities",
            "GraphRAG communities per hierarchy level (0 the finest), after the last run.",
            ["level"],
            registry=registry,
        )
        self.community_update_seconds = Histogram(
            "semstreams_community_update_seconds",
            "Duration of a community update (read, compute, write) by mode (full, incremental).",
            ["mode"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=registry,
        )
        self.community_modularity = Gauge(
            "semstreams_community_modularity",
            "Modularity of the level-0 community partition after the last run.",
            registry=registry,
        )

    def record_communities(
        self, mode: str, seconds: float, modularity: float, per_level: list[int]
    ) -> None:
        """One community run's figures: duration by mode, modularity, communities per
        level (levels no longer present drop to 0)."""
        self.community_update_seconds.labels(mode).observe(seconds)
        self.community_modularity.set(modularity)
        for level in range(max(len(per_level), self._community_levels)):
            count = per_level[level] if level < len(per_level) else 0
            self.communities.labels(str(level)).set(count)
        self._community_levels = max(self._community_levels, len(per_level))
