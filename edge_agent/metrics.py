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

from edge_agent.graph.position import OUTCOMES as POSITION_OUTCOMES
from edge_agent.model import REASONS

__all__ = ["CONTENT_TYPE", "ERROR_REASONS", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Every ``reason`` of ``semstreams_errors_total``: refused events, refused requests
#: (``auth``), batches not applied, and storage refusals (``disk_full``: under
#: ``nats.jetstream.min_free_bytes``, or SQLite's SQLITE_FULL on a commit the processor
#: retries; ``stream_full``: JetStream refused at the stream's byte limit; ``mdns_error``:
#: mDNS could not be set up to advertise or discover, and the agent runs without). Each series
#: exists at zero from the start, so the seed's ``rate(semstreams_errors_total[5m])``
#: answers 0 on a healthy agent, not "no data".
ERROR_REASONS = (
    *REASONS,
    "auth",
    "store_error",
    "nats_error",
    "disk_full",
    "stream_full",
    "mdns_error",
)
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
        for reason in ERROR_REASONS:
            self.errors.labels(reason=reason)
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
        self.clamped_timestamps = Counter(
            "semstreams_clamped_timestamps",
            "Events stamped further ahead than graph.config.max_clock_skew, clamped to it.",
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
        self.stream_checks = Counter(
            "semstreams_stream_position_checks",
            "Graph consumer binds, by what the check of its stream position found.",
            ["outcome"],
            registry=registry,
        )
        for outcome in POSITION_OUTCOMES:
            self.stream_checks.labels(outcome=outcome)
        self.stream_lost = Counter(
            "semstreams_stream_lost_messages",
            "Messages the entity stream held, unapplied, and lost (a power cut took its"
            " tail); a lower bound.",
            registry=registry,
        )
        self.stream_reapplied = Counter(
            "semstreams_stream_reapplied_messages",
            "At most this many messages applied again after the stream reused sequence numbers.",
            registry=registry,
        )
        self.nats_server_restarts = Counter(
            "semstreams_nats_server_restarts",
            "Restarts of the embedded nats-server after it died.",
            registry=registry,
        )
        self.task_failures = Counter(
            "semstreams_task_failures",
            "Background tasks (graph processor, sync link, components) that failed and"
            " were logged; each is started again after a backoff.",
            ["task"],
            registry=registry,
        )
        self.rate_limited = Counter(
            "semstreams_rate_limited",
            "HTTP requests refused with 429 by the per-client rate limit.",
            registry=registry,
        )
        self.exports = Counter(
            "semstreams_exports",
            "POST /admin/export by how its snapshot was let go: complete, timed_out "
            "(graph.config.export_timeout), client_gone, failed.",
            ["outcome"],
            registry=registry,
        )

        self.storage_free = Gauge(
            "semstreams_storage_free_bytes",
            "Free bytes on the filesystem of each store: graph (SQLite), jetstream (embedded).",
            ["store"],
            registry=registry,
        )
        self.storage_low = Gauge(
            "semstreams_storage_low",
            "1 while a store's filesystem is under nats.jetstream.min_free_bytes (ingest is"
            " refused when the jetstream one is).",
            ["store"],
            registry=registry,
        )

        self._sync_metrics(registry)

    def _sync_metrics(self, registry: CollectorRegistry) -> None:
        """``semstreams_sync_*``: the edge → hub link, as seen from either end."""
        self.sync_bytes_sent = Counter(
            "semstreams_sync_bytes_sent",
            "Batch bytes sent to the hub: stage=uncompressed (msgpack) or wire (frames).",
            ["stage"],
            registry=registry,
        )
        self.sync_bytes_received = Counter(
            "semstreams_sync_bytes_received",
            "Batch bytes received from edges: stage=wire (frames) or uncompressed.",
            ["stage"],
            registry=registry,
        )
        self.sync_batches = Counter(
            "semstreams_sync_batches",
            "Batches by direction: sent and resent (edge), received and duplicate (hub).",
            ["direction"],
            registry=registry,
        )
        self.sync_acks = Counter(
            "semstreams_sync_acks",
            "Batches acked (sent by the hub, received by the edge).",
            registry=registry,
        )
        self.sync_nacks = Counter(
            "semstreams_sync_nacks",
            "Batches refused for now, by reason.",
            ["reason"],
            registry=registry,
        )
        self.sync_backlog_entities = Gauge(
            "semstreams_sync_backlog_entities",
            "Changes the hub has not acked: outbox rows plus deltas in flight.",
            registry=registry,
        )
        self.sync_backlog_bytes = Gauge(
            "semstreams_sync_backlog_bytes",
            "Bytes the hub has not acked: outbox rows (estimated) plus payloads in flight.",
            registry=registry,
        )
        self.sync_lag = Gauge(
            "semstreams_sync_lag_seconds",
            "Edge: age of the oldest change not yet acked. Hub: now minus the newest"
            " change in the last batch applied, per edge.",
            ["edge"],
            registry=registry,
        )
        self.sync_reconnects = Counter(
            "semstreams_sync_reconnects", "Link attempts after the first.", registry=registry
        )
        self.sync_connected = Gauge(
            "semstreams_sync_connected",
            "Links up (edge: 0 or 1; hub: edges connected).",
            registry=registry,
        )
        self.sync_dropped = Counter(
            "semstreams_sync_dropped",
            "Changes not sent, by reason: outbox_full (dropped to stay in max_outbox_bytes),"
            " filtered (the link's filters keep them on the device), held_by_hub (a"
            " resync showed the hub already holds them: a restored edge does not send"
            " again what its lost self sent).",
            ["reason"],
            registry=registry,
        )
        for reason in ("outbox_full", "filtered", "held_by_hub"):
            self.sync_dropped.labels(reason)
        self.sync_refused = Counter(
            "semstreams_sync_refused",
            "Links closed or refused by reason (credentials, bad frame, protocol).",
            ["reason"],
            registry=registry,
        )
        self.sync_deltas = Counter(
            "semstreams_sync_deltas",
            "Entity deltas by outcome: sent (edge); applied (hub).",
            ["outcome"],
            registry=registry,
        )
        self.storage_recoveries = Counter(
            "semstreams_storage_recoveries",
            "Stores found damaged at start, by verdict: damaged (moved aside, rebuilt),"
            " wal_damaged (the WAL lost committed frames; a resync fills the gap).",
            ["verdict"],
            registry=registry,
        )
        for verdict in ("damaged", "wal_damaged"):
            self.storage_recoveries.labels(verdict)
        self.storage_unrecovered = Gauge(
            "semstreams_storage_unrecovered_entities",
            "Entities readable in the damaged store the graph still lacks (0 when none).",
            registry=registry,
        )
        self.sync_full_resends = Counter(
            "semstreams_sync_full_resends",
            "Times the hub said it lacks batches it had acked (restored from a backup, or"
            " rebuilt from a log that lost them), and this edge queued everything it wrote.",
            registry=registry,
        )
        self.sync_full_resends_deferred = Counter(
            "semstreams_sync_full_resends_deferred",
            "Times the hub asked for a full resend within 10 minutes of the last one, and"
            " this edge did not queue everything again (served at a later link).",
            registry=registry,
        )
        self.share_entities = Counter(
            "semstreams_sync_share_entities",
            "Entities of this edge's share received from the hub in a resync, by outcome"
            " (applied, unchanged).",
            ["outcome"],
            registry=registry,
        )
        for outcome in ("applied", "unchanged"):
            self.share_entities.labels(outcome)

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        return generate_latest(self.registry)
