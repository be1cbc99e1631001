"""A hub's link worker that fails never dies silently: counted, nacked, closed, reconnected.

Real processes: a hub and an edge (``SyncPair``). The hub's own nats-server is frozen
(SIGSTOP) while the edge's link is cut, so the edge says hello to a hub whose replicated
log does not answer: nothing in the link's own handling covers that. The hub must count
the failure, close the link with 1011, stay up, and take the edge back once the log
answers, with nothing lost.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.integration.sync_harness import SyncPair, drone_round, metric, post_events

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def test_a_link_whose_log_stops_answering_is_counted_closed_and_taken_back(
    pair: SyncPair, tmp_path: Path
) -> None:
    post_events(pair.edge.api, drone_round(0, 50))
    pair.wait_synced(minimum=50)
    nats_pid = int((tmp_path / "hub-state" / "nats-server.pid").read_text())
    os.kill(nats_pid, signal.SIGSTOP)
    try:
        pair.proxy.cut()  # the edge reconnects and says hello while the log is frozen
        pair.proxy.restore()
        post_events(pair.edge.api, drone_round(1, 50))
        deadline = time.monotonic() + 60
        while metric(pair.hub.api, "semstreams_hub_link_failures_total") < 1:
            assert time.monotonic() < deadline, "no link failure counted"
            assert pair.hub.proc is not None and pair.hub.proc.poll() is None
            time.sleep(0.5)
    finally:
        os.kill(nats_pid, signal.SIGCONT)
    assert "the link of edge" in (tmp_path / "hub.log").read_text()
    # The hub stayed up; once its log answers, the edge links again and nothing is lost.
    assert pair.hub.proc is not None and pair.hub.proc.poll() is None
    synced = pair.wait_synced(timeout=90, minimum=50)
    assert len(synced) == 50  # equal to the edge's graph, the second round included
    pair.check_hub_records()
