"""Multi-row upserts: rows applied in order, from a handful of statement texts."""

from __future__ import annotations

import sqlite3
from typing import Any

from edge_agent.graph.statements import Upsert, upsert_rows

# Keeps the last value per key and counts the writes, so order and completeness show.
KEEP_LAST = Upsert(
    "INSERT INTO t (k, v, n) VALUES",
    "(?, ?, 1)",
    "ON CONFLICT (k) DO UPDATE SET v = excluded.v, n = n + 1",
)


class Recorder:
    """A connection that notes each statement text it runs (before binding)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.texts: set[str] = set()

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        self.texts.add(sql)
        return self.db.execute(sql, params)


def test_every_row_in_order_from_at_most_ten_statement_texts() -> None:
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v INTEGER, n INTEGER)")
    recorder = Recorder(db)
    for total in range(1, 1201):
        rows = [(i % 300, total * 10_000 + i) for i in range(total)]
        upsert_rows(recorder, KEEP_LAST, rows, 500)  # type: ignore[arg-type]
    # Per key, the value of the last row written for it, and one write per row.
    expected: dict[int, tuple[int, int]] = {}
    for total in range(1, 1201):
        for i in range(total):
            _, n = expected.get(i % 300, (0, 0))
            expected[i % 300] = (total * 10_000 + i, n + 1)
    got = {k: (v, n) for k, v, n in db.execute("SELECT k, v, n FROM t")}
    assert got == expected
    # 500 rows, or a power of two up to 256: ten lengths, so ten texts to prepare and cache.
    assert len(recorder.texts) == 10
