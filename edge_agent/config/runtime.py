"""Settings that ``POST /admin/config`` may change while the agent runs.

Keys are given as the seed's runbook writes them (``{"graph.workers": 16}``) or as full
config paths (``graph.config.workers``). Each is validated with the same rules as the
config file; an unknown key or a bad value names the key.
"""

from __future__ import annotations

from typing import Any

import msgspec

from edge_agent.config.schema import GraphSettings
from edge_agent.config.units import decode_hook
from edge_agent.errors import ConfigError

__all__ = ["RUNTIME_KEYS", "change_graph_settings", "runtime_values"]

_BATCH = ("indexer", "batch_processing", "size")
_EDGE_BATCH = ("data_manager", "edge_batch_size")
_CACHE_SIZE = ("querier", "max_cache_size")

#: Each accepted key and its path inside ``graph.config``.
RUNTIME_KEYS: dict[str, tuple[str, ...]] = {
    "graph.workers": ("workers",),
    "graph.queue_size": ("queue_size",),
    "graph.batch_size": _BATCH,
    "graph.indexer.batch_processing.size": _BATCH,
    "graph.edge_batch_size": _EDGE_BATCH,
    "graph.data_manager.edge_batch_size": _EDGE_BATCH,
    "graph.cache_size": _CACHE_SIZE,
    "graph.querier.max_cache_size": _CACHE_SIZE,
    "graph.querier.cache_enabled": ("querier", "cache_enabled"),
}


def change_graph_settings(settings: GraphSettings, changes: dict[str, Any]) -> GraphSettings:
    """Return ``settings`` with ``changes`` applied, all validated.

    Raises:
        ConfigError: an unknown key or an invalid value; every problem names its key.
    """
    problems = []
    for key, value in changes.items():
        path = RUNTIME_KEYS.get(key.replace("graph.config.", "graph.", 1))
        if path is None:
            known = ", ".join(sorted(RUNTIME_KEYS))
            problems.append(f"{key}: unknown key, or not changeable at run time ({known})")
            continue
        try:
            settings = _set(settings, path, value)
        except msgspec.ValidationError as exc:
            cause = str(exc).split(" - at ", 1)[0]
            problems.append(f"{key}: {cause[:1].lower()}{cause[1:]}")
    if problems:
        raise ConfigError(problems)
    return settings


def _set(settings: GraphSettings, path: tuple[str, ...], value: Any) -> GraphSettings:
    raw = msgspec.to_builtins(settings, enc_hook=_plain)
    node = raw
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return msgspec.convert(raw, GraphSettings, dec_hook=decode_hook)


def _plain(value: Any) -> Any:
    """Durations and sizes (float and int subclasses) as the plain numbers they are."""
    if isinstance(value, float):
        return float(value)
    if isinstance(value, int):
        return int(value)
    raise NotImplementedError(f"cannot encode {type(value).__name__}")


def runtime_values(settings: GraphSettings) -> dict[str, Any]:
    """The current value of every run-time key, by its short name."""
    raw = msgspec.to_builtins(settings, enc_hook=_plain)
    values = {}
    for key, path in RUNTIME_KEYS.items():
        node = raw
        for step in path:
            node = node[step]
        values[key] = node
    return values
