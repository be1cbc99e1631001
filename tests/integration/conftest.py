"""Fixtures the integration tests share."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.sync_harness import SyncPair


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[SyncPair]:
    """A started hub and edge with the edge's link through a proxy (:class:`SyncPair`);
    both processes and the proxy are stopped afterwards."""
    made = SyncPair(tmp_path)
    made.start()
    yield made
    made.stop()
