"""Embeddings for the hub's vector search: the embed server, its models, and its client."""
