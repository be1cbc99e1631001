"""Prometheus metrics, named as in the seed guide, each in the agent's own registry."""

from __future__ import annotations

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The agent's metrics.

    Args:
        include_runtime: also export Python GC and platform metrics (the seed's
            ``include_go_metrics``); process metrics (RSS, CPU, fds) are always on.
    """

    def __init__(self, *, include_runtime: bool = False) -> None:
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        if include_runtime:
            registry.register(GC_COLLECTOR)
            registry.register(PLATFORM_COLLECTOR)
        self.messages_processed = Counter(
            "semstreams_messages_processed",
            "Entity events applied to the graph.",
            registry=registry,
        )
        self.errors = Counter(
            "semstreams_errors",
            "Events refused or operations failed, by reason.",
            ["reason"],
            registry=registry,
        )
        self.queue_depth = Gauge(
            "semstreams_queue_depth",
            "Events fetched from JetStream and not yet committed to the graph.",
            registry=registry,
        )
        self.processing_duration = Histogram(
            "semstreams_processing_duration_seconds",
            "Time to decode, apply and commit one batch of events.",
            buckets=_BATCH_BUCKETS,
            registry=registry,
        )
        self.stream_pending = Gauge(
            "semstreams_stream_pending",
            "Events in JetStream not yet acknowledged by the graph processor.",
            registry=registry,
        )
        self.ingested = Counter(
            "semstreams_ingested",
            "Events accepted into JetStream by this agent's ingest paths, by path.",
            ["path"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "semstreams_dead_letters",
            "Events written to the dead-letter stream.",
            registry=registry,
        )
        self.cache_requests = Counter(
            "semstreams_cache_requests",
            "Query cache lookups.",
            registry=registry,
        )
        self.cache_hits = Counter(
            "semstreams_cache_hits",
            "Query cache lookups answered from the cache.",
            registry=registry,
        )
        self.nats_server_restarts = Counter(
            "semstreams_nats_server_restarts",
            "Restarts of the embedded nats-server after it died.",
            registry=registry,
        )
        self.rate_limited = Counter(
            "semstreams_rate_limited",
            "HTTP requests refused with 429 by the per-client rate limit.",
            registry=registry,
        )

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        return generate_latest(self.registry)
