"""A credentialed link over plain ws:// beyond this host is named as a risk."""

from __future__ import annotations

import pytest

from edge_agent.sync.output import plain_link_warning


@pytest.mark.parametrize(
    ("url", "warned"),
    [
        ("ws://hub.example:8080/edge-sync", True),
        ("ws://10.0.0.5:8080/edge-sync", True),
        ("wss://hub.example:8443/edge-sync", False),
        ("ws://127.0.0.1:8080/edge-sync", False),
        ("ws://[::1]:8080/edge-sync", False),
        ("ws://localhost:8080/edge-sync", False),
    ],
)
def test_plain_ws_beyond_this_host_is_a_warning(url: str, warned: bool) -> None:
    warning = plain_link_warning(url)
    assert bool(warning) is warned
    if warned:
        assert "wss://" in warning and url in warning
