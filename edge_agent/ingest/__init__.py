"""Ingest: getting entity events into JetStream and from JetStream into the graph."""
