"""A damaged device registry is refused at open, with the file, the damage and a remedy."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud_hub.provision.registry import Registry
from edge_agent.errors import GraphError


def test_a_damaged_registry_is_refused_and_left_where_it_is(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    Registry(path).close()
    whole = path.read_bytes()
    path.write_bytes(whole[:1000])
    with pytest.raises(GraphError, match=r"device registry .*registry.db is damaged .*backup"):
        Registry(path)
    assert path.read_bytes() == whole[:1000]  # nothing moved, nothing replaced
    path.write_bytes(whole)
    Registry(path).close()
