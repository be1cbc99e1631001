"""run_service: what happens between a service's start and its stop."""

from __future__ import annotations

import gc
import os
import signal
from collections.abc import Iterator

import pytest

from edge_agent.cli import run_service


class _Service:
    """Starts at once; when asked for its status (at READY) it notes the collector's
    frozen count and asks to be stopped, as systemd would with SIGTERM."""

    def __init__(self) -> None:
        self.frozen_at_ready: int | None = None
        self.stopped = False

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        self.stopped = True

    def status_line(self) -> str:
        if self.frozen_at_ready is None:
            self.frozen_at_ready = gc.get_freeze_count()
            os.kill(os.getpid(), signal.SIGTERM)  # run_service's loop handles it
        return "ready"


@pytest.fixture
def unfrozen(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    gc.unfreeze()
    yield
    gc.unfreeze()  # the test process's objects go back to the collector


@pytest.mark.usefixtures("unfrozen")
def test_what_start_up_built_is_frozen_out_of_the_collector_by_ready() -> None:
    service = _Service()
    assert gc.get_freeze_count() == 0

    assert run_service(service, "test") == 0

    assert service.frozen_at_ready is not None
    assert service.frozen_at_ready > 0
    assert service.stopped
