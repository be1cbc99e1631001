"""An LRU cache of query results, invalidated by the writes that touch them.

Each entry carries the ids of the entities its result depends on. A write invalidates
every entry that depends on an entity it touched. A query that ran while a write
touched one of its entities is not cached at all (its snapshot may predate the
write): callers take a :meth:`QueryCache.token` before querying and hand it to
:meth:`QueryCache.put`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Hashable, Iterable
from typing import Any

__all__ = ["MAX_DEPENDENCIES", "QueryCache"]

_RECENT_WRITES = 256
#: Results that depend on more entities than this are not cached: their dependency
#: index would cost more memory than recomputing them costs time.
MAX_DEPENDENCIES = 4096


class QueryCache:
    """Thread-safe LRU of query results keyed by request.

    Args:
        max_size: the most entries kept; 0 disables the cache.
        max_bytes: the most bytes the entries may add up to (as their callers size
            them); a result over a quarter of it is not cached. 0: no byte bound.
    """

    def __init__(self, max_size: int, max_bytes: int = 0) -> None:
        self.max_size = max_size
        self.max_bytes = max_bytes
        #: What the cached entries weigh, in bytes.
        self.bytes = 0
        self._entries: OrderedDict[Hashable, tuple[Any, frozenset[str], int]] = OrderedDict()
        self._by_entity: dict[str, set[Hashable]] = {}
        self._generation = 0
        self._recent: deque[tuple[int, frozenset[str]]] = deque(maxlen=_RECENT_WRITES)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> Any | None:
        """The cached result for ``key``, or ``None``."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry[0]

    def token(self) -> int:
        """Take before running a query whose result will be :meth:`put`."""
        with self._lock:
            return self._generation

    def put(
        self,
        key: Hashable,
        value: Any,
        depends_on: frozenset[str],
        token: int,
        size: int = 0,
    ) -> bool:
        """Cache a result of ``size`` bytes unless a write since ``token`` touched what
        it depends on, or it is too large.

        Returns:
            Whether the result was cached.
        """
        with self._lock:
            if (
                self.max_size == 0
                or len(depends_on) > MAX_DEPENDENCIES
                or (self.max_bytes and size > self.max_bytes // 4)
                or self._written_since(token, depends_on)
            ):
                return False
            self._drop(key)
            self._entries[key] = (value, depends_on, size)
            self.bytes += size
            for entity_id in depends_on:
                self._by_entity.setdefault(entity_id, set()).add(key)
            self._evict()
            return True

    def _evict(self) -> None:
        """Drop the least recently used entries until within both bounds."""
        while self._entries and (
            len(self._entries) > self.max_size or (self.max_bytes and self.bytes > self.max_bytes)
        ):
            self._drop(next(iter(self._entries)))

    def invalidate(self, entity_ids: Iterable[str]) -> int:
        """Forget every result that depends on one of ``entity_ids``; returns how many."""
        touched = frozenset(entity_ids)
        with self._lock:
            self._generation += 1
            self._recent.append((self._generation, touched))
            keys = set().union(*(self._by_entity.get(e, ()) for e in touched))
            for key in keys:
                self._drop(key)
            return len(keys)

    def resize(self, max_size: int) -> None:
        """Change the size limit, evicting the least recently used entries."""
        with self._lock:
            self.max_size = max_size
            self._evict()

    def _written_since(self, token: int, depends_on: frozenset[str]) -> bool:
        if token == self._generation:
            return False
        if not self._recent or self._recent[0][0] > token + 1:
            return True  # writes since then have scrolled out of the log: assume the worst
        return any(gen > token and touched & depends_on for gen, touched in self._recent)

    def _drop(self, key: Hashable) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        self.bytes -= entry[2]
        for entity_id in entry[1]:
            keys = self._by_entity.get(entity_id)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_entity[entity_id]
