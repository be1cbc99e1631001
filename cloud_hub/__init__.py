"""SemStreams cloud hub: merges the graphs of many edges (built on ``edge_agent``'s core)."""

__version__ = "0.1.0"
