"""The hub's graph: per-edge contributions, the merged view kept from them, cross-edge reads."""
