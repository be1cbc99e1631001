"""SemStreams edge agent: embedded NATS, durable ingest, SQLite knowledge graph."""

__version__ = "0.1.0"
