"""Self-healing at open: a damaged store is moved aside and rebuilt, and what it lost is
counted.

:func:`heal` runs before the store is opened. A whole file is left alone. A damaged one
(not a database, truncated, failing ``quick_check``) is moved with its WAL and shared
memory into ``<state dir>/damaged/<UTC time>-<name>/`` (kept for a person to look at),
the entity ids still readable in it are saved there, and a fresh store starts: the edge
then gets back what JetStream still holds (a work queue holds only what was not
applied yet) and asks the hub for a resync of its share; the hub rebuilds from its
log. A database whose WAL lost committed frames is kept (SQLite keeps the valid part),
a copy of the files is put aside, and the edge asks for a resync to fill the gap.

:class:`Recovery` is what ``/health`` shows: where the files went, how many entity ids
the damaged file still showed, and how many of those the graph lacks now
(``unrecovered``; it falls as the stream and the hub's share come back). When the
damaged file could not be read to its end the count is a lower bound, and says so.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from edge_agent.graph.integrity import (
    copy_evidence,
    count_missing,
    inspect,
    quarantine,
    salvage_ids,
)

__all__ = ["RESYNC_MARKER", "Recovery", "heal", "request_resync"]

log = logging.getLogger(__name__)
#: The file in the state dir that makes the sync link ask the hub for a resync; it is
#: removed when the hub's share has arrived whole.
RESYNC_MARKER: Final = "resync-requested"
_DAMAGED_DIR: Final = "damaged"


@dataclass
class Recovery:
    """One recovery of a store at open, as ``/health`` reports it."""

    verdict: str
    reason: str
    moved_to: str
    at: float
    #: Entity ids still readable in the damaged file (None: nothing was moved aside).
    damaged_entities: int | None = None
    #: Whether the damaged file was read to its end (else the counts are lower bounds).
    read_complete: bool = True
    #: Of those ids, how many the graph lacks now (None: not counted yet).
    unrecovered: int | None = None
    #: ``requested``, ``done``, or ``none``: no sync link to ask (the hub rebuilds from
    #: its own log).
    hub_resync: str = "requested"
    share: dict[str, int] = field(default_factory=dict)

    def view(self) -> dict[str, Any]:
        """The JSON object ``/health`` shows under ``components.store.recovery``."""
        return {
            "verdict": self.verdict,
            "reason": self.reason,
            "moved_to": self.moved_to,
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.at)),
            "damaged_entities": self.damaged_entities,
            "read_complete": self.read_complete,
            "unrecovered_entities": self.unrecovered,
            "hub_resync": self.hub_resync,
            "share": dict(self.share),
        }

    _counting: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def recount(self, graph_path: Path) -> int | None:
        """Count again what the graph lacks of the damaged file's ids; the count.

        Counts take turns, so the one that started last (after the newest commit it
        must see) is the one whose answer stays.
        """
        if self.damaged_entities is None:
            return None
        with self._counting:
            try:
                ids = Path(self.moved_to) / "entity-ids.db"
                self.unrecovered = count_missing(ids, graph_path)
            except sqlite3.Error as exc:
                log.warning("recovery: cannot count what is missing: %s", exc)
            return self.unrecovered


def request_resync(state_dir: Path) -> None:
    """Make the sync link ask the hub for this edge's whole share on its next Hello."""
    (state_dir / RESYNC_MARKER).touch(mode=0o600)


def heal(path: Path, *, resync: bool, now: float | None = None) -> Recovery | None:
    """Check the store at ``path`` before it is opened; move it aside if damaged.

    Args:
        path: the database file.
        resync: this program can ask a hub for its share (an edge with a sync link):
            a fresh or recovered store then asks for it.
        now: the time to stamp the damaged directory with (default: the clock).

    Returns:
        What was done, or ``None`` when the store was whole (or new).
    """
    state_dir = path.parent
    found = inspect(path)
    if found.verdict in ("fresh", "ok"):
        if found.verdict == "fresh" and resync:
            # A reflashed or restored edge with no store: the hub may hold its share.
            request_resync(state_dir)
        return None
    stamp = time.time() if now is None else now
    if found.verdict == "wal_damaged":
        kept = copy_evidence(path, state_dir / _DAMAGED_DIR, now=stamp)
        log.error(
            "store %s: %s; keeping what SQLite can replay, a copy is in %s",
            path,
            found.reason,
            kept,
        )
        recovery = Recovery(found.verdict, found.reason, str(kept), stamp)
    else:
        moved = quarantine(path, state_dir / _DAMAGED_DIR, now=stamp)
        ids, complete = salvage_ids(moved, path.name)
        log.error(
            "store %s is damaged (%s): moved to %s; %d entity ids still readable in it%s;"
            " starting a fresh store and rebuilding",
            path,
            found.reason,
            moved,
            ids,
            "" if complete else " (it could not be read to its end: a lower bound)",
        )
        recovery = Recovery(found.verdict, found.reason, str(moved), stamp, ids, complete)
    if resync:
        request_resync(state_dir)
    else:
        recovery.hub_resync = "none"
    return recovery
