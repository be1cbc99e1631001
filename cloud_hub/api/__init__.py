"""The hub's HTTP API: the edge agent's routes plus the hub's own."""
